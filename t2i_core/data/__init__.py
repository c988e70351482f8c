"""Datasets for training: user folders of captioned images, built-in datasets, and an on-disk tensor cache."""

from .builtin import (
    DIGIT_WORDS,
    SHAPES_VOCAB,
    digits_caption,
    digits_split,
    generate_shapes,
    load_digits_arrays,
    make_digits_dataset,
    make_shapes_dataset,
    parse_digits_caption,
    parse_shapes_caption,
    shapes_caption,
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
]
