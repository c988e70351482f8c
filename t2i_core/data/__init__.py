"""Datasets for training: user folders of captioned images, built-in datasets, and an on-disk tensor cache."""

from .cache import TensorCache
from .digits import (
    DIGIT_WORDS,
    digits_caption,
    digits_split,
    load_digits_arrays,
    make_digits_dataset,
    parse_digits_caption,
)
from .folder import (
    CaptionedImages,
    DatasetError,
    DatasetItem,
    ScanResult,
    fingerprint,
    load_dataset,
    scan_dataset,
)
from .shapes import SHAPES_VOCAB, generate_shapes, make_shapes_dataset, parse_shapes_caption, shapes_caption
from .sprites import (
    COLOR_NAMES,
    SPRITES_COUNT,
    dominant_color,
    load_sprites,
    make_sprites_dataset,
    parse_sprites_caption,
    sprites_caption,
)

__all__ = [
    "CaptionedImages", "DatasetError", "DatasetItem", "ScanResult", "fingerprint", "load_dataset", "scan_dataset",
    "TensorCache",
    "DIGIT_WORDS", "SHAPES_VOCAB", "digits_caption", "digits_split", "generate_shapes", "load_digits_arrays",
    "make_digits_dataset", "make_shapes_dataset", "parse_digits_caption", "parse_shapes_caption", "shapes_caption",
    "COLOR_NAMES", "SPRITES_COUNT", "dominant_color", "load_sprites", "make_sprites_dataset", "parse_sprites_caption",
    "sprites_caption",
]
