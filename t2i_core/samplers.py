"""The samplers' step rules: how each one goes from x_t to x_{t_prev}, one class per sampler, in one table.

`SAMPLERS` maps a name to its sampler. `t2i_core.sampler.sample` runs any of them with classifier-free guidance,
and the Guided Sampler node's choices and `bench.steps` list the table, so a new sampler is one class here and
one entry in `SAMPLERS`. Each follows its diffusers scheduler formula for formula (with clip_sample=False),
including how it picks the previous timestep, so the same config gives the same numbers; tests/test_schedule.py
checks that for every sampler in the table.
"""
from __future__ import annotations

import torch

from .schedule import NoiseSchedule


class Sampler:
    """One sampler's step rule over a NoiseSchedule. Subclasses set name, description and diffusers_class."""

    name: str
    description: str  # a line for the node's tooltip
    diffusers_class: str  # the diffusers scheduler it agrees with
    uses_eta: bool  # whether the eta input changes its steps

    def step_pairs(self, schedule: NoiseSchedule, steps: int) -> list[tuple[int, int]]:
        """(t, t_prev) for each step; t_prev < 0 means "to the clean image"."""
        raise NotImplementedError

    def adds_noise(self, eta: float) -> bool:
        """Whether a step draws fresh noise (then `step` needs `noise`)."""
        raise NotImplementedError

    def step(self, schedule: NoiseSchedule, model_output: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, *,
             eta: float = 0.0, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_{t_prev}, the x0 estimate) from the model's output at timestep t."""
        raise NotImplementedError


class DDIM(Sampler):
    """Song et al. 2021, eq. 12. eta = 0 is deterministic, eta = 1 has DDPM's variance."""

    name = "ddim"
    description = "ddim: deterministic for eta 0, works with few steps."
    diffusers_class = "DDIMScheduler"
    uses_eta = True

    def step_pairs(self, schedule, steps):
        # DDIMScheduler's rule: from t to t - T // steps whatever the spacing ("linspace" does not always land on
        # the next visited timestep)
        return [(t, t - schedule.cfg.num_train_timesteps // steps) for t in schedule.timesteps(steps)]

    def adds_noise(self, eta):
        return eta > 0

    def step(self, schedule, model_output, x_t, t, t_prev, *, eta=0.0, noise=None):
        a_t, a_prev = schedule.alphas_cumprod[t], schedule.abar_prev(t_prev, schedule.final_alpha_cumprod)
        x0, eps = schedule.predict_x0_eps(model_output, x_t, t)
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = eta * variance.sqrt()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
        if eta > 0:
            x_prev = x_prev + std * noise
        return x_prev, x0


class DDPM(Sampler):
    """Ancestral sampling from the posterior q(x_{t_prev} | x_t, x0) with its 'fixed small' variance (Ho et al. 2020)."""

    name = "ddpm"
    description = "ddpm: the ancestral sampler, needs more steps."
    diffusers_class = "DDPMScheduler"
    uses_eta = False

    def step_pairs(self, schedule, steps):
        ts = schedule.timesteps(steps)  # DDPMScheduler goes to the next visited timestep
        return list(zip(ts, ts[1:] + [-1]))

    def adds_noise(self, eta):
        return True

    def step(self, schedule, model_output, x_t, t, t_prev, *, eta=0.0, noise=None):
        a_t, a_prev = schedule.alphas_cumprod[t], schedule.abar_prev(t_prev, torch.tensor(1.0))
        alpha_t, beta_t = a_t / a_prev, 1 - a_t / a_prev
        x0, _ = schedule.predict_x0_eps(model_output, x_t, t)
        mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + (alpha_t.sqrt() * (1 - a_prev) / (1 - a_t)) * x_t
        if t > 0:
            variance = torch.clamp((1 - a_prev) / (1 - a_t) * beta_t, min=1e-20)
            mean = mean + variance.sqrt() * noise
        return mean, x0


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (DDIM(), DDPM())}


def sampler_named(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]
