"""Codecs: the map between images (B, 3, H, W) in 0..1 and the space the U-Net denoises.

Both implement `t2i_core.conditioning.Codec`, so the sampler and the trainer never ask which one they hold:
    encode(images) -> z,   decode(z) -> images,   channels, factor (pixels per latent cell), spec, identity.
`z` is the *model-space* tensor (for a VAE: its latent scaled by the scaling factor, so it has roughly unit
variance); `unscale(z)` is the raw latent the VAE itself reads and writes, and `scale` maps it back.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from .conditioning import Codec
from .data.cache import module_digest


class CodecError(RuntimeError):
    pass


class PixelCodec(nn.Module):
    """Pixel space: the model denoises the image itself, mapped from 0..1 to -1..1. Lets small models train on a CPU."""
    channels, factor = 3, 1

    @property
    def spec(self) -> dict:
        return {"kind": "pixel"}

    @property
    def identity(self) -> str:
        return "pixel"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 - 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z.float() + 1) / 2).clamp(0, 1)

    def scale(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z


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
        self._id: str | None = None

    @property
    def spec(self) -> dict:
        return {"kind": "vae", "config": dict(self.vae.config), "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor}

    @property
    def identity(self) -> str:
        """A digest of the VAE's config, scaling and weights: the key under which caches store its latents."""
        if self._id is None:
            self._id = module_digest(self, json.dumps(self.spec, sort_keys=True, default=str))
        return self._id

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # the posterior's mean: the deterministic choice, so a cached latent stands for its image
        latent = self.vae.encode(images.to(self.vae.dtype) * 2 - 1).latent_dist.mean
        return self.scale(latent.float())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(self.unscale(z).to(self.vae.dtype)).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    def scale(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scaling_factor

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scaling_factor + self.shift_factor


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


def codec_from_spec(spec: dict) -> Codec:
    """The codec a spec describes, with a VAE's weights still to be loaded (the checkpoint holds them)."""
    kind = spec.get("kind")
    if kind == "pixel":
        return PixelCodec()
    if kind == "vae":
        return vae_from_config(spec["config"], scaling_factor=spec["scaling_factor"], shift_factor=spec["shift_factor"])
    raise CodecError(f"unknown codec kind {kind!r}; expected 'pixel' or 'vae'")
