"""What a training run is asked to do (TrainConfig), what it reports while it runs (Progress, TrainCallbacks) and
what it returns (TrainResult), and the learning-rate schedule."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from ..pipeline import T2IModel
from ..unet import PRESETS
from .optim import OPTIMIZERS

# after the linear warmup: stay, or fall to 0 at `steps` or at the end of the time budget (lr_factor)
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    dataset: str
    output: str  # the checkpoint to write, e.g. models/t2i_mini/shapes.safetensors
    preset: str = "tiny"
    resolution: int = 16
    steps: int = 1000
    max_minutes: float = 0.0  # training-time budget; 0 = none. Reaching it saves and stops, like a cancel
    batch_size: int = 64
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # AdamW's; Muon's is MUON_LR_RATIO times this (t2i_core.training.optim)
    lr_schedule: str = "constant"  # or "cosine"
    warmup_steps: int = 50
    # "muon": Muon for the U-Net's hidden weight matrices and AdamW for the rest; "adamw": AdamW for all. Muon
    # learns the demo's shapes in half the steps (docs/QUALITY.md, "Muon")
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    ema_decay: float = 0.999
    # Min-SNR-gamma weighting, 0 = off (the plain loss, the default). Min-SNR weights a timestep by about its SNR,
    # which starves the high noise where the caption's layout (position) is decided: the plain loss wins in short
    # runs and on identity captions (sprites), Min-SNR-5 on attribute captions (shapes) in long runs of `tiny`
    # (docs/QUALITY.md, "Loss weighting"). So 5 is worth a try for attribute captions and many steps.
    min_snr_gamma: float = 0.0
    noise_offset: float = 0.0
    # v-prediction: higher adherence in fewer steps than epsilon on digits, with a lower Frechet distance
    # (docs/QUALITY.md, "What moved it")
    prediction_type: str = "v_prediction"
    beta_schedule: str = "scaled_linear"
    precision: str = "auto"
    # torch.compile the U-Net's training forward and backward: faster steps on a GPU after minutes of compiling,
    # so for long GPU runs; on this project's CPUs it does not repay its compile time (docs/PERFORMANCE.md, "GPU")
    compile: bool = False
    seed: int = 0
    resume: bool = True
    checkpoint_every: int = 250
    keep_last: int = 2  # step-numbered snapshots kept beside the checkpoint; 0 keeps none
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = 0  # 0: only at the end (when there are prompts)
    validation_steps: int = 20
    validation_guidance: float = 3.0
    random_crop: bool = False
    random_flip: bool = False
    # aspect-ratio buckets (t2i_core.data.buckets): "auto" uses them when the images are not all one shape
    buckets: str = "auto"  # or "on", "off" (centre-crop every image square)
    cache_dir: str | None = None  # caption/latent cache; default ~/.cache/t2i-mini
    log_dir: str | None = None  # a TensorBoard log of the run here (t2i_core.training.tensorboard); None: none
    # a resolution whose largest attention layer has more than geometry.MAX_ATTENTION_TOKENS positions is refused
    # with its cost estimate unless this is on
    allow_large_sizes: bool = False

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name in ("steps", "batch_size", "grad_accum", "resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (0 = no time budget), got {self.max_minutes}")
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if self.buckets not in ("auto", "on", "off"):
            raise ValueError(f"buckets must be 'auto', 'on' or 'off', got {self.buckets!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not str(self.output).endswith(".safetensors"):
            raise ValueError(f"output must be a .safetensors path, got {self.output!r}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})

    # What must match for a run to be resumed (changing steps, lr or validation settings is fine).
    ARCHITECTURE_FIELDS = ("preset", "resolution", "prediction_type", "beta_schedule")


@dataclass
class Progress:
    step: int
    total: int
    loss: float
    lr: float
    images_per_s: float
    eta_s: float


@dataclass
class TrainCallbacks:
    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None  # checked every step; True saves and stops
    on_validation: Callable[[int, torch.Tensor], None] | None = None  # (step, images [B,3,H,W] 0..1)
    log: Callable[[str], None] | None = None


@dataclass
class TrainResult:
    model: T2IModel  # with EMA weights
    checkpoint: Path
    step: int
    stopped: bool  # cancelled, or out of time, before config.steps
    history: list[dict]
    out_of_time: bool = False  # stopped because config.max_minutes of training time were spent


def lr_factor(cfg: TrainConfig, step: int, budget_spent: float = 0.0) -> float:
    """The learning rate's multiplier at `step`. budget_spent: the fraction of max_minutes spent so far. The
    cosine falls to 0 at `steps` or at the end of the time budget, whichever comes first, so a run that the budget
    stops on a slower CPU still ends its decay (stopped halfway, the weights are those of a high learning rate)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        progress = max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), budget_spent)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0
