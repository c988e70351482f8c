"""A text-to-image model: U-Net, noise schedule, text encoder and codec, and the one call that uses them."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .codecs import Codec
from .sampler import Conditioning, StepCallback, make_noise, sample
from .schedule import NoiseSchedule
from .text_encoder import FrozenCLIPTextEncoder
from .unet import TextConditionedUNet


@dataclass
class T2IModel:
    unet: TextConditionedUNet
    schedule: NoiseSchedule
    text_encoder: FrozenCLIPTextEncoder
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
        f = self.codec.factor * self.unet.cfg.downsample_factor
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of {f} for this model "
                             f"(codec factor {self.codec.factor} x U-Net factor {self.unet.cfg.downsample_factor}), "
                             f"got {height}x{width}")
        return self.codec.channels, height // self.codec.factor, width // self.codec.factor

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        return self.text_encoder.encode(list(prompts)).conditioning

    def generate(self, prompts: str | Sequence[str], *, seeds: Sequence[int] | int = 0, height: int = 32,
                 width: int = 32, negative_prompt: str | None = None, steps: int = 25, guidance_scale: float = 3.0,
                 sampler: str = "ddim", eta: float = 0.0, guidance_rescale: float = 0.0,
                 guidance_interval: tuple[float, float] = (0.0, 1.0), precision: str = "fp32",
                 callback: StepCallback | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in 0..1, one per prompt (a single prompt is repeated for every seed)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = list(range(seeds, seeds + len(prompts))) if isinstance(seeds, int) else list(seeds)
        if len(prompts) == 1:
            prompts = prompts * len(seeds)
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        cond = self.encode_prompts(prompts)
        uncond = self.encode_prompts([negative_prompt]) if negative_prompt else self.text_encoder.empty()
        noise = make_noise(seeds, self.latent_shape(height, width), device=self.device)
        z = sample(self.unet, self.schedule, noise, cond, uncond, steps=steps, guidance_scale=guidance_scale,
                   sampler=sampler, eta=eta, guidance_rescale=guidance_rescale, guidance_interval=guidance_interval,
                   precision=precision, callback=callback)
        with torch.inference_mode():
            return self.codec.decode(z)
