"""Image size <-> latent shape: the one rule, with its error message.

The codec shrinks each side by `codec_factor` (8 for Stable Diffusion's VAE, 1 for pixels) and the U-Net
halves it once per level below the first, so an image side must be a multiple of codec_factor x unet_factor.
"""
from __future__ import annotations


def latent_shape(height: int, width: int, *, channels: int, codec_factor: int, unet_factor: int = 1,
                 what: str = "height and width") -> tuple[int, int, int]:
    """(C, h, w) of the model-space tensor for a `height` x `width` image; ValueError if the size does not fit."""
    f = codec_factor * unet_factor
    if height < f or width < f or height % f or width % f:
        parts = [f"codec factor {codec_factor}"] + ([f"U-Net factor {unet_factor}"] if unet_factor > 1 else [])
        raise ValueError(f"{what} must be multiples of {f} ({' x '.join(parts)}), got {width}x{height} "
                         f"(width x height); try {max(f, width // f * f)}x{max(f, height // f * f)}")
    return channels, height // codec_factor, width // codec_factor


def image_size(latent_height: int, latent_width: int, codec_factor: int) -> tuple[int, int]:
    """(height, width) in pixels of the image a latent of that many cells decodes to."""
    return latent_height * codec_factor, latent_width * codec_factor
