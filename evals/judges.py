"""The judges, one Evaluation per built-in dataset: t2i_core.data.builtin.BUILTIN_DATASETS names each dataset's
judge by its key here, and bench.quality loops over both. A new dataset's judge is one module in evals/ with an
`*_evaluation(resolution)` function, and one entry here."""
from __future__ import annotations

from collections.abc import Callable

from .digits import digits_evaluation
from .judgement import Evaluation
from .shapes import shapes_evaluation
from .sprites import sprites_evaluation

JUDGES: dict[str, Callable[[int], Evaluation]] = {
    "shapes": shapes_evaluation,
    "digits": digits_evaluation,
    "sprites": sprites_evaluation,
}


def evaluation(judge: str, resolution: int) -> Evaluation:
    if judge not in JUDGES:
        raise ValueError(f"unknown judge {judge!r}; choose one of {', '.join(JUDGES)}")
    return JUDGES[judge](resolution)
