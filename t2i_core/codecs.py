"""Codecs: the map between images (B, 3, H, W) in 0..1 and the space the U-Net denoises.

Both codecs expose the same interface, so the sampler and the trainer never ask which one they hold:
    encode(images) -> z,   decode(z) -> images,   channels, factor (pixels per latent cell), spec.
`z` is the *model-space* tensor (for a VAE: scaled by its scaling factor so it has roughly unit
variance). ComfyUI's LATENT holds the *unscaled* VAE latent; `to_comfy` / `from_comfy` convert.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


class CodecError(RuntimeError):
    pass


class PixelCodec(nn.Module):
    """Pixel space: the model denoises the image itself, mapped from 0..1 to -1..1. Lets small models train on a CPU."""
    channels, factor = 3, 1
    scaling_factor, shift_factor = 1.0, 0.0

    @property
    def spec(self) -> dict:
        return {"kind": "pixel"}

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return images * 2 - 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z.float() + 1) / 2).clamp(0, 1)

    def to_comfy(self, z):
        return z

    def from_comfy(self, latent):
        return latent


class VAECodec(nn.Module):
    """A diffusers AutoencoderKL (Stable Diffusion's VAE family), frozen."""

    def __init__(self, vae, scaling_factor: float | None = None, shift_factor: float | None = None):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else cfg.scaling_factor)
        self.shift_factor = float(shift_factor if shift_factor is not None else (getattr(cfg, "shift_factor", None) or 0.0))
        self.channels = cfg.latent_channels
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)

    @property
    def spec(self) -> dict:
        return {"kind": "vae", "config": dict(self.vae.config), "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor}

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        dist = self.vae.encode(images.to(self.vae.dtype) * 2 - 1).latent_dist
        # The posterior's mean is the deterministic choice; sampling it is a mild augmentation when asked for.
        latent = dist.mean if generator is None else dist.mean + dist.std * torch.randn(
            dist.mean.shape, generator=generator).to(dist.mean)
        return self.to_model(latent.float())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(self.to_comfy(z).to(self.vae.dtype)).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    def to_model(self, latent):
        return (latent - self.shift_factor) * self.scaling_factor

    def to_comfy(self, z):
        return z / self.scaling_factor + self.shift_factor

    def from_comfy(self, latent):
        return self.to_model(latent)


Codec = PixelCodec | VAECodec


def vae_from_config(config: dict, **scale):
    from diffusers import AutoencoderKL
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return VAECodec(AutoencoderKL.from_config(config), **scale)


def load_vae(path: str | Path) -> VAECodec:
    """A VAE from a diffusers folder (config.json + weights) or a single .safetensors file, with no network.

    A single file may be in diffusers' layout or in the original Stable Diffusion layout (as in ComfyUI's
    models/vae folder); diffusers' single-file loader converts the latter using its bundled SD config.
    """
    path = Path(path)
    try:
        from diffusers import AutoencoderKL
        if path.is_dir():
            return VAECodec(AutoencoderKL.from_pretrained(str(path), local_files_only=True))
        if not path.is_file():
            raise CodecError(f"VAE file {path} does not exist")
        config_file = path.with_suffix(".json")
        if config_file.is_file():  # a diffusers state dict saved beside its config (what this pack writes)
            import json

            from safetensors.torch import load_file
            codec = vae_from_config(json.loads(config_file.read_text()))
            codec.vae.load_state_dict(load_file(str(path)))
            return codec
        return VAECodec(AutoencoderKL.from_single_file(str(path), local_files_only=True))
    except CodecError:
        raise
    except Exception as e:
        raise CodecError(f"cannot load a VAE from {path}: {e}. Give a diffusers AutoencoderKL folder "
                         "(config.json + diffusion_pytorch_model.safetensors) or a .safetensors file with a "
                         "same-name .json config beside it") from e


def codec_from_spec(spec: dict, state: dict[str, torch.Tensor] | None = None) -> Codec:
    kind = spec.get("kind")
    if kind == "pixel":
        return PixelCodec()
    if kind == "vae":
        codec = vae_from_config(spec["config"], scaling_factor=spec["scaling_factor"], shift_factor=spec["shift_factor"])
        if state is not None:
            codec.vae.load_state_dict(state)
        return codec
    raise CodecError(f"unknown codec kind {kind!r}; expected 'pixel' or 'vae'")
