"""Datasets for training: user folders of captioned images, built-in datasets, and an on-disk tensor cache."""

from .builtin import (
    COLOR_NAMES,
    DIGIT_WORDS,
    SHAPES_VOCAB,
    SPRITES_COUNT,
    digits_caption,
    digits_split,
    dominant_color,
    generate_shapes,
    load_digits_arrays,
    load_sprites,
    make_digits_dataset,
    make_shapes_dataset,
    make_sprites_dataset,
    parse_digits_caption,
    parse_shapes_caption,
    parse_sprites_caption,
    shapes_caption,
    sprites_caption,
)
from .cache import TensorCache
from .folder import (
    CaptionedImages,
    DatasetError,
    DatasetItem,
    ScanResult,
    fingerprint,
    load_dataset,
    scan_dataset,
)

__all__ = [
    "CaptionedImages", "DatasetError", "DatasetItem", "ScanResult", "fingerprint", "load_dataset", "scan_dataset",
    "TensorCache",
    "DIGIT_WORDS", "SHAPES_VOCAB", "digits_caption", "digits_split", "generate_shapes", "load_digits_arrays",
    "make_digits_dataset", "make_shapes_dataset", "parse_digits_caption", "parse_shapes_caption", "shapes_caption",
    "COLOR_NAMES", "SPRITES_COUNT", "dominant_color", "load_sprites", "make_sprites_dataset", "parse_sprites_caption",
    "sprites_caption",
]
