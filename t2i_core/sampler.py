"""Classifier-free guided sampling (Ho & Salimans 2022).

    eps~ = eps(x_t, t, uncond) + w * (eps(x_t, t, cond) - eps(x_t, t, uncond))

The conditional and unconditional predictions come from ONE forward pass over the batch
[uncond, cond]; at w == 1 the formula reduces to eps(cond), so the uncond half is not computed.
The text's cross-attention keys/values are the same at every step and are projected once.

Guidance can be limited to an interval of the sampling run (Kynkaanniemi et al. 2024, "Applying guidance in a
limited interval improves sample and distribution quality"): at high noise levels guidance mostly pulls every
sample towards the same typical image, so skipping it there keeps the variety of the samples and their
adherence, and those steps cost half as much. Outside the interval the step uses eps(cond) alone.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch

from .conditioning import Conditioning, concat_conditionings, match_batch
from .devices import autocast
from .samplers import sampler_named
from .schedule import NoiseSchedule
from .unet import PreparedContext, TextConditionedUNet


def make_noise(seeds: Sequence[int], shape: Sequence[int], device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Starting noise with one CPU generator per image, so image i depends on seeds[i] alone
    (not on the batch size or the device)."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device, dtype)


def noise_fingerprint_seeds(noise: torch.Tensor) -> list[int]:
    # Steps that add fresh noise (DDPM, DDIM with eta > 0) need per-image randomness too; deriving it from
    # each image's starting noise keeps "same starting noise -> same image" true without passing seeds around.
    return [int.from_bytes(hashlib.sha256(n.float().cpu().numpy().tobytes()).digest()[:8], "little") >> 1 for n in noise]


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023, eq. 15-16: match the guided prediction's std to the conditional one, then blend by phi."""
    dims = tuple(range(1, guided.dim()))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


StepCallback = Callable[[int, int, torch.Tensor], None]


def guidance_context(unet: TextConditionedUNet, cond: Conditioning, uncond: Conditioning | None, batch: int,
                     precision: str = "fp32") -> PreparedContext:
    """The text the U-Net reads for `batch` images, its keys and values projected once: [uncond; cond] for
    guidance (the U-Net then shares each image between the two halves), or cond alone when uncond is None."""
    cond = match_batch(cond, batch, "cond")
    text = concat_conditionings(match_batch(uncond, batch, "uncond"), cond) if uncond is not None else cond
    param = next(unet.parameters())
    with torch.inference_mode(), autocast(param.device, precision):
        return unet.prepare_context(text.context.to(param.device, param.dtype),
                                    None if text.key_mask is None else text.key_mask.to(param.device))


@torch.inference_mode()
def sample(
    unet: TextConditionedUNet,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None = None,
    *,
    steps: int = 25,
    guidance_scale: float = 3.0,
    sampler: str = "ddim",
    eta: float = 0.0,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    precision: str = "fp32",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Denoise `noise` (B, C, H, W), in the model's latent space, into x0.

    `uncond` is the empty prompt's conditioning or a negative prompt's. `callback(step, total, x0_estimate)`
    runs after every step; raising from it (for example on a user's cancel) stops sampling there.
    `guidance_interval` (start, end): guide only the steps whose progress 1 - t/T (0 = pure noise, 1 = clean,
    as ComfyUI's start/end percents) lies within it; the default guides every step.
    `sampler` names a step rule of t2i_core.samplers.SAMPLERS.
    """
    rule = sampler_named(sampler)
    start, end = guidance_interval
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"guidance_interval must be (start, end) with 0 <= start <= end <= 1, got {guidance_interval}")
    device = noise.device
    batch = noise.shape[0]
    use_cfg = guidance_scale != 1.0
    if use_cfg and uncond is None:
        raise ValueError("guidance_scale != 1 needs an unconditional (empty or negative) conditioning")

    dtype = next(unet.parameters()).dtype
    prepared = guidance_context(unet, cond, uncond if use_cfg else None, batch, precision)

    stochastic = rule.adds_noise(eta)
    generators = [torch.Generator().manual_seed(s) for s in noise_fingerprint_seeds(noise)] if stochastic else []

    x = noise.float()
    pairs = rule.step_pairs(schedule, steps)
    total_t = schedule.cfg.num_train_timesteps
    guided = [use_cfg and start <= 1 - t / total_t <= end for t, _ in pairs]
    cond_only = prepared.select(slice(batch, 2 * batch)) if use_cfg and not all(guided) else prepared
    for i, (t, t_prev) in enumerate(pairs):
        with autocast(device, precision):
            # with CFG the prepared context is [uncond; cond]: the U-Net shares x between the two halves
            out = unet(x.to(dtype), torch.tensor([t], device=device), prepared if guided[i] else cond_only).float()
        if guided[i]:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
            if guidance_rescale > 0:
                out = rescale_guidance(out, out_cond, guidance_rescale)
        step_noise = make_noise_from(generators, x) if stochastic else None
        x, x0 = rule.step(schedule, out, x, t, t_prev, eta=eta, noise=step_noise)
        if callback is not None:
            callback(i + 1, len(pairs), x0)
    return x


def make_noise_from(generators: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.randn(*like.shape[1:], generator=g) for g in generators]).to(like.device, like.dtype)
