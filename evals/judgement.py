"""What every judge returns, and what a dataset's evaluation is made of.

A judge reads generated images against their captions and returns a Judgement: the share of images that match
their caption (adherence, the headline figure) and named per-attribute scores. A dataset's Evaluation adds what
a benchmark needs around the judge: the prompts to sample and the real images to compare with (FD, diversity).
evals.judges.JUDGES names one Evaluation per built-in dataset.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass
class Judgement:
    adherence: float  # share of images that show what their caption says, in 0..1
    scores: dict[str, float]  # per attribute, in the judge's `attributes` order


class Judge(Protocol):
    attributes: tuple[str, ...]  # the keys of Judgement.scores, in table order

    def judge(self, images, captions: list[str]) -> Judgement:
        """images: [B, 3, H, W] floats in 0..1 (torch or numpy), one caption each."""
        ...

    def matches(self, images, captions: list[str]) -> np.ndarray:
        """Per image, whether it shows what its caption says: the adherence's per-image form."""
        ...


@dataclass
class Evaluation:
    judge: Judge
    prompts: Callable[[int], list[str]]  # n prompts that cover the dataset's captions evenly
    reference_images: torch.Tensor  # real images the comparison space (PCA) is fit on
    heldout_images: torch.Tensor  # real images the samples are compared with (FD, diversity)
    heldout_captions: list[str]
    about: str  # one sentence on what the judge reads, for a benchmark's table
