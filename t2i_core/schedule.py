"""Noise schedules: betas, the forward process, training targets and the timesteps a sampler visits.

Notation (Ho et al. 2020; Song et al. 2021): alpha_bar_t = prod_{s<=t} (1 - beta_s) and
    q(x_t | x_0):  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
The model predicts eps ("epsilon") or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 ("v_prediction").

Betas and timesteps follow diffusers' schedulers formula for formula, so the same config gives the same numbers
(tests/test_schedule.py). The samplers' step rules that use them are in t2i_core.samplers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass
class ScheduleConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "epsilon"
    timestep_spacing: str = "trailing"  # trailing reaches t = T-1, so sampling starts from pure noise
    steps_offset: int = 0
    set_alpha_to_one: bool = True  # DDIM's last step lands on alpha_bar = 1 (a clean image)

    def __post_init__(self):
        for name, value, allowed in [("beta_schedule", self.beta_schedule, BETA_SCHEDULES),
                                     ("prediction_type", self.prediction_type, PREDICTION_TYPES),
                                     ("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)]:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScheduleConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown schedule config keys {sorted(unknown)}")
        return cls(**d)

    def diffusers_config(self) -> dict:
        """The same schedule in diffusers' terms (for DDIMScheduler/DDPMScheduler.from_config)."""
        return dict(num_train_timesteps=self.num_train_timesteps, beta_start=self.beta_start, beta_end=self.beta_end,
                    beta_schedule="squaredcos_cap_v2" if self.beta_schedule == "cosine" else self.beta_schedule,
                    prediction_type=self.prediction_type, timestep_spacing=self.timestep_spacing,
                    steps_offset=self.steps_offset, set_alpha_to_one=self.set_alpha_to_one, clip_sample=False)


def make_betas(cfg: ScheduleConfig) -> torch.Tensor:
    T = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float32)
    if cfg.beta_schedule == "scaled_linear":  # linear in sqrt(beta): Stable Diffusion's schedule
        return torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, T, dtype=torch.float32) ** 2
    # cosine (Nichol & Dhariwal 2021): alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2), betas capped at 0.999
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                        dtype=torch.float32)


class NoiseSchedule:
    def __init__(self, cfg: ScheduleConfig | None = None):
        self.cfg = cfg or ScheduleConfig()
        self.betas = make_betas(self.cfg)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if self.cfg.set_alpha_to_one else self.alphas_cumprod[0]

    @property
    def num_train_timesteps(self) -> int:
        return self.cfg.num_train_timesteps

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(like.device)[t.to(like.device).long()]
        return a.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    # ---- forward process and the training target ----
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self._abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def target(self, x0, t, noise) -> torch.Tensor:
        """What the model should output for x_t = q_sample(x0, t, noise)."""
        return noise if self.cfg.prediction_type == "epsilon" else self.velocity(x0, t, noise)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(t.device)[t.long()]
        return a / (1 - a)

    # ---- sampling ----
    def timesteps(self, steps: int) -> list[int]:
        """The descending timesteps a `steps`-step sampler visits, with diffusers' spacings."""
        T = self.cfg.num_train_timesteps
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be between 1 and {T}, got {steps}")
        if self.cfg.timestep_spacing == "leading":
            ts = [i * (T // steps) + self.cfg.steps_offset for i in range(steps)]
        elif self.cfg.timestep_spacing == "trailing":
            ratio = T / steps
            ts = [round(T - i * ratio) - 1 for i in range(steps)][::-1]
        else:  # linspace
            ts = [int(x) for x in np.linspace(0, T - 1, steps).round()]
        return [int(t) for t in reversed(ts)]

    def abar_prev(self, t_prev: int, final: torch.Tensor) -> torch.Tensor:
        """alpha_bar at t_prev, or `final` for a step to the clean image (t_prev < 0)."""
        return self.alphas_cumprod[t_prev] if t_prev >= 0 else final

    def predict_x0_eps(self, model_output, x_t, t: int):
        """(x0, eps) implied by the model output at timestep t."""
        a = self.alphas_cumprod[t]
        if self.cfg.prediction_type == "epsilon":
            return (x_t - (1 - a).sqrt() * model_output) / a.sqrt(), model_output
        return a.sqrt() * x_t - (1 - a).sqrt() * model_output, a.sqrt() * model_output + (1 - a).sqrt() * x_t
