"""The built-in digits dataset: scikit-learn's 1,797 real 8x8 handwritten digits (bundled with the package, no
download), upscaled bicubic to `resolution`, white digit on black, three equal channels, captioned
"a handwritten digit seven"."""

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .builtin_folder import mark_complete, prepare_output_folder

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_HELDOUT_FRACTION = 0.2
DIGITS_SPLITS = ("train", "heldout", "all")
DIGITS_VERSION = 1
DIGITS_CAPTION = re.compile(r"^a handwritten digit (?P<word>" + "|".join(DIGIT_WORDS) + r")$")


def digits_caption(label: int) -> str:
    """"a handwritten digit seven"."""
    return f"a handwritten digit {DIGIT_WORDS[int(label)]}"


def parse_digits_caption(caption: str) -> int:
    match = DIGITS_CAPTION.match(caption.strip().lower())
    if not match:
        raise ValueError(f"not a digits caption: {caption!r}; expected e.g. \"a handwritten digit seven\"")
    return DIGIT_WORDS.index(match["word"])


@lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits (values 0..16) and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits dataset comes with scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, heldout) indices into the 1,797 digits: 20% of each class held out, chosen by `seed`."""
    _, labels = _sklearn_digits()
    rng = np.random.default_rng(seed)
    heldout = []
    for label in range(10):
        members = np.flatnonzero(labels == label)
        heldout.append(rng.permutation(members)[: round(len(members) * DIGITS_HELDOUT_FRACTION)])
    heldout = np.sort(np.concatenate(heldout))
    train = np.setdiff1d(np.arange(len(labels)), heldout)
    return train, heldout


def _digits_indices(split: str, seed: int) -> np.ndarray:
    if split not in DIGITS_SPLITS:
        raise ValueError(f"unknown digits split {split!r}; choose one of {', '.join(DIGITS_SPLITS)}")
    if split == "all":
        return np.arange(len(_sklearn_digits()[1]))
    train, heldout = digits_split(seed)
    return train if split == "train" else heldout


def load_digits_arrays(resolution: int = 16, split: str = "train", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float [N, 3, R, R] in 0..1, labels long [N]) exactly as the PNGs hold them."""
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"digits resolution must be an integer >= 8 pixels, got {resolution!r}")
    images, labels = _sklearn_digits()
    indices = _digits_indices(split, seed)
    small = torch.from_numpy(images[indices] / 16.0)[:, None]
    large = F.interpolate(small, size=(resolution, resolution), mode="bicubic", align_corners=False).clamp(0, 1)
    large = (large * 255).round() / 255  # the same 8-bit values the PNG files store
    return large.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels[indices])


def make_digits_dataset(folder: str | Path, resolution: int = 16, split: str = "train", seed: int = 0) -> Path:
    """Write one split as digit_NNNN.png + .txt (NNNN: index in scikit-learn's set); returns the folder."""
    settings = {"resolution": resolution, "split": split, "seed": seed, "version": DIGITS_VERSION}
    images, labels = load_digits_arrays(resolution, split, seed)  # validates arguments before touching the folder
    folder = Path(folder).expanduser()
    names = [f"digit_{i:04d}" for i in _digits_indices(split, seed)]
    files = [f"{name}{ext}" for name in names for ext in (".png", ".txt")]
    if prepare_output_folder(folder, "digits", settings, files):
        return folder
    pixels = (images[:, 0] * 255).round().to(torch.uint8).numpy()
    for name, image, label in zip(names, pixels, labels.tolist()):
        Image.fromarray(np.repeat(image[:, :, None], 3, axis=2)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(digits_caption(label) + "\n", encoding="utf-8")
    mark_complete(folder)
    return folder
