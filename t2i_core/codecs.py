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

from .cancel import check_cancel, checked_before
from .conditioning import Codec
from .data.cache import module_digest
from .files import state_dict_problems
from .pieces import convolutions_in_bands


class CodecError(RuntimeError):
    pass


VAE_CONFIGS = Path(__file__).resolve().parent / "vae_configs"  # diffusers configs of the standard VAEs
VAE_FAMILIES = ("auto", "sd15", "sdxl")


class LatentScale:
    """Model space <-> the raw latent: z = (latent - shift) * scale. Every latent codec has it."""
    scaling_factor: float
    shift_factor: float

    def scale(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scaling_factor

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scaling_factor + self.shift_factor

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        """Images from a raw (unscaled) latent, as a host's LATENT holds it."""
        return self.decode(self.scale(latent))


class PixelCodec(nn.Module):
    """Pixel space: the model denoises the image itself, mapped from 0..1 to -1..1. Lets small models train on a CPU."""
    channels, factor = 3, 1

    @property
    def spec(self) -> dict:
        return {"kind": "pixel"}

    @property
    def identity(self) -> str:
        return "pixel"

    def record(self) -> dict:
        return {**self.spec, "identity": self.identity, "channels": 3, "factor": 1}

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {}

    def process_state(self) -> dict[str, torch.Tensor]:
        return {}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 - 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z.float() + 1) / 2).clamp(0, 1)

    def scale(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decode(latent)


# diffusers' names for the decoder's blocks, and its convolutions: at 1024 px one ResnetBlock2D of an SD VAE holds
# two 128-channel convolutions over a million positions, so Cancel is checked before each of them too
# (docs/RELIABILITY.md, "Cancel at any size")
DECODER_BLOCKS = ("ResnetBlock2D", "Attention", "Upsample2D", "Conv2d")
# Latents of more positions than this (a 512 px image from an SD VAE) are decoded one image at a time, with a
# Cancel check between images; smaller batches in one call, as before
DECODE_ONE_BY_ONE_ABOVE_POSITIONS = 64 * 64
# A VAE's latent with a side longer than DECODE_TILE positions is decoded in overlapping tiles of at most that
# side, blended linearly over DECODE_TILE_OVERLAP: every operation inside then covers one tile, so the longest
# wait for Cancel and the decoder's memory stay those of a 512 px decode at any size (a whole 1024 px decode has
# single operations of seconds, the mid-block attention among them). Tiles see only their surroundings, so
# seams are blended, not exact; a latent that fits one tile is decoded in one call, as before
# (docs/RELIABILITY.md, "Limits").
DECODE_TILE, DECODE_TILE_OVERLAP = 64, 16


def decode_in_pieces(codec: Codec, latent: torch.Tensor) -> torch.Tensor:
    """codec.decode_raw(latent): one image at a time when they are large, each in tiles when larger still (a
    VAE's), checking Cancel between the pieces."""
    tiled = codec.factor > 1 and max(latent.shape[-2:]) > DECODE_TILE
    decode = (lambda one: decode_in_tiles(codec, one, DECODE_TILE, DECODE_TILE_OVERLAP)) if tiled else codec.decode_raw
    if latent.shape[0] == 1 or latent.shape[-2] * latent.shape[-1] <= DECODE_ONE_BY_ONE_ABOVE_POSITIONS:
        return decode(latent)
    images = []
    for i in range(latent.shape[0]):
        images.append(decode(latent[i:i + 1]))
        check_cancel()
    return torch.cat(images)


def decode_in_tiles(codec: Codec, latent: torch.Tensor, tile: int = DECODE_TILE,
                    overlap: int = DECODE_TILE_OVERLAP) -> torch.Tensor:
    """codec.decode_raw(latent) computed tile by tile: overlapping latent tiles of at most `tile` positions a
    side, each decoded alone, weighted by a ramp across the overlaps and normalised, with a Cancel check after
    each."""
    b, _, height, width = latent.shape
    f = codec.factor
    image = weight = None
    for top, tile_h in tile_spans(height, tile, overlap):
        rows = overlap_ramp(top, tile_h, height, overlap, f)
        for left, tile_w in tile_spans(width, tile, overlap):
            piece = codec.decode_raw(latent[:, :, top:top + tile_h, left:left + tile_w])
            if image is None:
                image = piece.new_zeros(b, piece.shape[1], height * f, width * f)
                weight = piece.new_zeros(height * f, width * f)
            mask = (rows[:, None] * overlap_ramp(left, tile_w, width, overlap, f)[None, :]).to(piece)
            where = (slice(top * f, (top + tile_h) * f), slice(left * f, (left + tile_w) * f))
            image[(..., *where)] += piece * mask
            weight[where] += mask
            check_cancel()
    return image / weight


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) of the tiles along an axis of `size`: as few as cover it with tiles of at most `tile`
    that overlap by at least `overlap`, all of one length and evenly spaced, so no tile is mostly overlap."""
    if size <= tile:
        return [(0, size)]
    n = -(-(size - overlap) // (tile - overlap))
    length = -(-(size + (n - 1) * overlap) // n)  # n * length >= size + (n - 1) * overlap, and length <= tile
    return [(i * (size - length) // (n - 1), length) for i in range(n)]


def overlap_ramp(start: int, length: int, size: int, overlap: int, factor: int) -> torch.Tensor:
    """One axis of a decoded tile's blending weights, in pixels (`factor` per latent position): rising across the
    first `overlap` positions where a tile before it overlaps, falling across the last where one after it does,
    1 elsewhere (never 0, so every pixel has weight)."""
    ramp = overlap * factor
    weights = torch.ones(length * factor)
    steps = torch.arange(1, ramp + 1) / (ramp + 1)
    if start > 0:
        weights[:ramp] = steps
    if start + length < size:
        weights[-ramp:] = torch.minimum(weights[-ramp:], steps.flip(0))
    return weights


class VAECodec(LatentScale, nn.Module):
    """A diffusers AutoencoderKL (Stable Diffusion's VAE family), frozen. A checkpoint embeds its weights."""

    def __init__(self, vae, scaling_factor: float | None = None, shift_factor: float | None = None,
                 source: str | None = None):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else cfg.scaling_factor)
        self.shift_factor = float(shift_factor if shift_factor is not None else (getattr(cfg, "shift_factor", None) or 0.0))
        self.channels = cfg.latent_channels
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.source = source  # the file it was read from, for the record
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

    def record(self) -> dict:
        return {**self.spec, "identity": self.identity, "channels": self.channels, "factor": self.factor,
                "name": self.source}

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return self.vae.state_dict()

    def process_state(self) -> dict[str, torch.Tensor]:
        return self.checkpoint_state()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # the posterior's mean: the deterministic choice, so a cached latent stands for its image
        latent = self.vae.encode(images.to(self.vae.dtype) * 2 - 1).latent_dist.mean
        return self.scale(latent.float())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # Cancel is checked before each decoder block and convolution and between the bands of a large
        # convolution, so a large decode stops within a fraction of a second instead of one whole image
        with checked_before(m for m in self.vae.decoder.modules() if type(m).__name__ in DECODER_BLOCKS), \
                convolutions_in_bands(self.vae.decoder.modules()):
            images = self.vae.decode(self.unscale(z).to(self.vae.dtype)).sample
        return ((images.float() + 1) / 2).clamp(0, 1)


def vae_from_config(config: dict, **kw) -> VAECodec:
    from diffusers import AutoencoderKL
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return VAECodec(AutoencoderKL.from_config(config), **kw)


# The original (LDM) layout of Stable Diffusion's VAE files, as ComfyUI's models/vae holds them; a full SD
# checkpoint keeps the same keys under "first_stage_model.".
LDM_VAE_MARKER = "encoder.down.0.block.0.norm1.weight"
LDM_VAE_PREFIXES = ("", "first_stage_model.", "vae.")


def ldm_vae_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The LDM-layout VAE weights in `sd` with any checkpoint prefix removed, or None if it holds none."""
    for prefix in LDM_VAE_PREFIXES:
        if prefix + LDM_VAE_MARKER in sd:
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return None


def standard_vae_config(family: str, path: Path) -> dict:
    """The shipped diffusers config of a standard VAE. SD 1.x/2.x's and SDXL's VAEs have one architecture and
    differ in their latent scaling (0.18215 and 0.13025); "auto" tells them apart by the file name."""
    if family not in VAE_FAMILIES:
        raise CodecError(f"unknown VAE family {family!r}; choose one of {', '.join(VAE_FAMILIES)}")
    if family == "auto":
        family = "sdxl" if "xl" in path.name.lower() else "sd15"
    return json.loads((VAE_CONFIGS / f"{family}.json").read_text())


def load_ldm_vae(path: Path, sd: dict[str, torch.Tensor], family: str = "auto") -> VAECodec:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    config = standard_vae_config(family, path)
    channels = sd["decoder.conv_in.weight"].shape[1]
    if channels != config["latent_channels"]:
        raise CodecError(f"{path.name} is a {channels}-channel VAE; this pack reads the 4-channel Stable Diffusion "
                         "VAEs (SD 1.x, 2.x, SDXL) from single files. For another VAE use ComfyUI's VAELoader, "
                         "whose VAE the pack's nodes take too")
    codec = vae_from_config(config, source=path.name)
    converted = convert_ldm_vae_checkpoint(sd, dict(codec.vae.config))
    problems = state_dict_problems(codec.vae.state_dict(), converted)
    if problems:
        raise CodecError(f"{path.name} does not fit the {config['sample_size']}-px Stable Diffusion VAE: "
                         f"{', '.join(problems)}")
    codec.vae.load_state_dict(converted)
    return codec


def load_vae(path: str | Path, family: str = "auto") -> VAECodec:
    """A VAE from local files, with no network:
    - a diffusers folder (config.json + weights);
    - a .safetensors file in diffusers' layout with a same-name .json config beside it (what this pack writes);
    - a single Stable Diffusion VAE file in the original layout (ComfyUI's models/vae: vae-ft-mse-840000, the
      SDXL VAE), read with the config of `family`: "sd15", "sdxl", or "auto" (by the file name).
    """
    path = Path(path)
    try:
        from diffusers import AutoencoderKL
        if path.is_dir():
            return VAECodec(AutoencoderKL.from_pretrained(str(path), local_files_only=True), source=path.name)
        if not path.is_file():
            raise CodecError(f"VAE file {path} does not exist")
        from safetensors.torch import load_file
        sd = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(str(path), map_location="cpu",
                                                                                  weights_only=True)
        sd = sd.get("state_dict", sd)
        ldm = ldm_vae_state(sd)
        if ldm is not None:
            return load_ldm_vae(path, ldm, family)
        config_file = path.with_suffix(".json")
        if not config_file.is_file():
            raise CodecError(f"{path.name} is neither a Stable Diffusion VAE file (no {LDM_VAE_MARKER}) nor a "
                             f"diffusers state dict with a {config_file.name} config beside it")
        codec = vae_from_config(json.loads(config_file.read_text()), source=path.name)
        codec.vae.load_state_dict(sd)
        return codec
    except CodecError:
        raise
    except Exception as e:
        raise CodecError(f"cannot load a VAE from {path}: {e}. Give a Stable Diffusion VAE file, a diffusers "
                         "AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors) or a "
                         ".safetensors file with a same-name .json config beside it") from e


def codec_from_spec(spec: dict) -> Codec:
    """The codec a spec describes, with a VAE's weights still to be loaded (the checkpoint holds them)."""
    kind = spec.get("kind")
    if kind == "pixel":
        return PixelCodec()
    if kind == "vae":
        return vae_from_config(spec["config"], scaling_factor=spec["scaling_factor"], shift_factor=spec["shift_factor"],
                               source=spec.get("name"))
    raise CodecError(f"unknown codec kind {kind!r}; expected 'pixel' or 'vae'")
