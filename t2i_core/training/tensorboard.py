"""Optional TensorBoard logging of a run (TrainConfig.log_dir), as kohya's and diffusers' trainers write it:

    train/loss, train/lr, train/images_per_s    scalars per step
    validation                                  each validation round's images, its prompts as text

`tensorboard --logdir DIR` shows them. The package is optional: asking for a log without it fails before
training starts. A resumed run appends to the same folder and hides what the interrupted run logged after its
last checkpoint (SummaryWriter's purge_step), so the curves show each step once.
"""
from __future__ import annotations

import os

import torch

from .config import Progress
from .state import TrainingError

TENSORBOARD_INSTALL = "pip install tensorboard"


class TensorBoardLog:
    def __init__(self, log_dir: str | os.PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TrainingError(f"log_dir {str(log_dir)!r} asks for a TensorBoard log, but the tensorboard package "
                                f"is not installed ({e}). Install it into this Python ({TENSORBOARD_INSTALL}), or "
                                "leave log_dir empty; nothing was trained") from None
        self.log_dir, self.writer_class, self.writer = str(log_dir), SummaryWriter, None

    def open(self, step: int) -> None:
        """Start writing after `step`, the step resumed from: an earlier run's events past it are hidden."""
        self.writer = self.writer_class(self.log_dir, purge_step=step + 1 if step else None)

    def progress(self, p: Progress) -> None:
        for name in ("loss", "lr", "images_per_s"):
            self.writer.add_scalar(f"train/{name}", getattr(p, name), p.step)

    def validation(self, step: int, images: torch.Tensor, prompts: list[str]) -> None:
        self.writer.add_images("validation", images.float().clamp(0, 1), step)
        self.writer.add_text("validation/prompts", "\n\n".join(f"{i}: {p}" for i, p in enumerate(prompts)), step)
        self.writer.flush()  # a validation is a moment to look: show it now, not at the writer's next flush

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
