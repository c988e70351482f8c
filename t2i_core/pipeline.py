"""A text-to-image model: U-Net, noise schedule, text encoder and codec, and the one call that uses them."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .conditioning import Codec, Conditioning, TextEncoder, match_batch
from .devices import check_memory
from .geometry import check_sample_size, latent_shape
from .sampler import StepCallback, make_noise, sample
from .schedule import NoiseSchedule
from .unet import TextConditionedUNet, forward_memory_bytes


@dataclass
class T2IModel:
    unet: TextConditionedUNet
    schedule: NoiseSchedule
    text_encoder: TextEncoder
    codec: Codec
    training: dict = field(default_factory=dict)  # summary of how it was trained (steps, data, losses)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device) -> T2IModel:
        for m in (self.unet, self.text_encoder, self.codec):
            m.to(device)
        return self

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the model-space tensor for an image of height x width pixels."""
        return latent_shape(height, width, channels=self.codec.channels, codec_factor=self.codec.factor,
                            unet_factor=self.unet.cfg.downsample_factor)

    @property
    def trained_resolution(self) -> int | None:
        """The image side it was trained at, from the training summary (None for a model without one)."""
        resolution = (self.training or {}).get("config", {}).get("resolution")
        return int(resolution) if isinstance(resolution, (int, float)) and resolution > 0 else None

    def check_size(self, height: int, width: int, batch: int = 1, allow_large: bool = False,
                   override: str = "pass allow_large_sizes=True", rows: int | None = None) -> int:
        """ValueError, with the cost estimate, for a size far beyond the trained one (geometry.check_sample_size),
        and, whatever allow_large says, for one whose sampling would not fit in the device's free memory. rows: the
        U-Net's rows a step (default 2 x batch, CFG's cond and uncond)."""
        tokens = check_sample_size(height, width, codec_factor=self.codec.factor, unet_cfg=self.unet.cfg,
                                   trained_resolution=self.trained_resolution, batch=batch, allow_large=allow_large,
                                   override=override)
        channels, h, w = self.latent_shape(height, width)
        rows = rows or 2 * batch
        # the forward pass, and the sampler's own latents (the noisy sample, the guided prediction, the next one)
        needed = forward_memory_bytes(self.unet.cfg, h, w, rows) + 4 * rows * channels * h * w * 4
        check_memory(needed, f"sampling {width}x{height} px (width x height) at batch {batch}",
                     next(self.unet.parameters()).device, "Use a smaller size or batch")
        return tokens

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        return self.text_encoder.encode(list(prompts)).conditioning

    def generate(self, prompts: str | Sequence[str], *, seeds: Sequence[int] | int = 0, height: int = 32,
                 width: int = 32, negative_prompt: str | None = None, steps: int = 25, guidance_scale: float = 3.0,
                 sampler: str = "ddim", eta: float = 0.0, guidance_rescale: float = 0.0,
                 guidance_interval: tuple[float, float] = (0.0, 1.0), precision: str = "fp32",
                 callback: StepCallback | None = None, allow_large_sizes: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W) in 0..1, one per seed: one prompt for every seed, one prompt per seed, or
        seeds / prompts images per prompt in order. An int `seeds` gives one seed per prompt from there on.
        A size far beyond the trained one is refused unless allow_large_sizes (see check_size)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = list(range(seeds, seeds + len(prompts))) if isinstance(seeds, int) else list(seeds)
        self.latent_shape(height, width)  # the multiple-of check first: its message names the nearest sizes
        self.check_size(height, width, len(seeds), allow_large=allow_large_sizes)
        cond = match_batch(self.encode_prompts(prompts), len(seeds), "prompts")
        uncond = self.encode_prompts([negative_prompt]) if negative_prompt else self.text_encoder.empty()
        noise = make_noise(seeds, self.latent_shape(height, width), device=self.device)
        z = sample(self.unet, self.schedule, noise, cond, uncond, steps=steps, guidance_scale=guidance_scale,
                   sampler=sampler, eta=eta, guidance_rescale=guidance_rescale, guidance_interval=guidance_interval,
                   precision=precision, callback=callback)
        with torch.inference_mode():
            return self.codec.decode(z)
