"""Image size <-> latent shape: the one rule, with its error message.

The codec shrinks each side by `codec_factor` (8 for Stable Diffusion's VAE, 1 for pixels) and the U-Net
halves it once per level below the first, so an image side must be a multiple of codec_factor x unet_factor.
"""
from __future__ import annotations


def image_multiple(codec_factor: int, unet_factor: int = 1) -> int:
    """An image side must be a multiple of this."""
    return codec_factor * unet_factor


def latent_shape(height: int, width: int, *, channels: int, codec_factor: int, unet_factor: int = 1,
                 what: str = "height and width") -> tuple[int, int, int]:
    """(C, h, w) of the model-space tensor for a `height` x `width` image; ValueError if the size does not fit.
    For a check in model space (the U-Net's input), give codec_factor 1."""
    f = image_multiple(codec_factor, unet_factor)
    if height < f or width < f or height % f or width % f:
        parts = ([f"codec factor {codec_factor}"] if codec_factor > 1 or unet_factor == 1 else []) + (
            [f"U-Net factor {unet_factor}"] if unet_factor > 1 else [])
        raise ValueError(f"{what} must be multiples of {f} ({' x '.join(parts)}), got {width}x{height} "
                         f"(width x height); try {max(f, width // f * f)}x{max(f, height // f * f)}")
    return channels, height // codec_factor, width // codec_factor


def image_size(latent_height: int, latent_width: int, codec_factor: int) -> tuple[int, int]:
    """(height, width) in pixels of the image a latent of that many cells decodes to."""
    return latent_height * codec_factor, latent_width * codec_factor


# ---- what a size costs, before it runs ----
# Self-attention over the positions of a feature map costs (positions)^2, so doubling each side of the image
# costs 16x in the attention layers: a 1024 px image from a model trained at 16 px ran for minutes per step.
# Sizes are checked before sampling or training starts, against these limits, unless the caller opts in.
MAX_SIZE_FACTOR = 16  # sampling: positions per attention layer up to 16x the trained size's (4x each side)
MAX_ATTENTION_TOKENS = 4096  # training, and sampling a model of unknown training size: 64x64 positions,
                             # Stable Diffusion's largest attention layer at 512 px


def attention_tokens(height: int, width: int, *, codec_factor: int, attention_level: int, patch_size: int = 1) -> int:
    """Positions per image in the U-Net's largest attention layer, the one at `attention_level` (0 = the latent
    read in patch_size x patch_size cells; each level halves the sides)."""
    f = codec_factor * patch_size * 2 ** attention_level
    return (height // f) * (width // f)


def finest_attention_level(unet_cfg) -> int:
    """The highest-resolution level with attention: the first of attention_levels, or the middle block's."""
    levels = tuple(unet_cfg.attention_levels)
    return min(levels) if levels else len(unet_cfg.channel_mult) - 1


def _size_message(height: int, width: int, batch: int, tokens: int, reference: str, relative: float,
                  limit: str, override: str) -> str:
    def times(x: float) -> str:
        return f"{x:,.0f}x" if x >= 10 else f"{x:.3g}x"
    images = f" per image (batch {batch}: {batch}x that)" if batch > 1 else ""
    return (f"{width}x{height} px (width x height) puts {tokens:,} positions in the U-Net's largest attention layer, "
            f"{times(relative)} {reference}: its attention then costs about {times(relative ** 2)} as much{images}, "
            f"and one U-Net block may run for minutes before Cancel can stop it. The limit is {limit}. Use a "
            f"smaller size, or {override} to run it anyway")


def check_sample_size(height: int, width: int, *, codec_factor: int, unet_cfg, trained_resolution: int | None,
                      batch: int = 1, allow_large: bool = False,
                      override: str = "pass allow_large_sizes=True") -> int:
    """Refuse (ValueError) an image size far beyond what the model was trained at: more than MAX_SIZE_FACTOR x
    the trained size's positions per attention layer, or MAX_ATTENTION_TOKENS when the training size is not
    known. Returns the positions per image in the largest attention layer."""
    level = finest_attention_level(unet_cfg)
    tokens = attention_tokens(height, width, codec_factor=codec_factor, attention_level=level,
                              patch_size=unet_cfg.patch_size)
    if allow_large:
        return tokens
    if trained_resolution:
        trained = attention_tokens(trained_resolution, trained_resolution, codec_factor=codec_factor,
                                   attention_level=level, patch_size=unet_cfg.patch_size)
        if trained and tokens > MAX_SIZE_FACTOR * trained:
            side = int(trained_resolution * MAX_SIZE_FACTOR ** 0.5)
            raise ValueError(_size_message(
                height, width, batch, tokens, f"the {trained:,} of the {trained_resolution} px it was trained at",
                tokens / trained, f"{MAX_SIZE_FACTOR}x the trained size's positions (e.g. {side}x{side} px)",
                override))
    elif tokens > MAX_ATTENTION_TOKENS:
        raise ValueError(_size_message(
            height, width, batch, tokens, f"the {MAX_ATTENTION_TOKENS:,} this pack allows for a model whose "
            "training size it does not know", tokens / MAX_ATTENTION_TOKENS,
            f"{MAX_ATTENTION_TOKENS:,} positions", override))
    return tokens


def check_train_size(resolution: int, *, codec_factor: int, unet_cfg, allow_large: bool = False,
                     override: str = "set allow_large_sizes=True") -> int:
    """Refuse (ValueError) a training resolution whose largest attention layer has more than
    MAX_ATTENTION_TOKENS positions. Returns that layer's positions per image."""
    level = finest_attention_level(unet_cfg)
    tokens = attention_tokens(resolution, resolution, codec_factor=codec_factor, attention_level=level,
                              patch_size=unet_cfg.patch_size)
    if not allow_large and tokens > MAX_ATTENTION_TOKENS:
        side = int(MAX_ATTENTION_TOKENS ** 0.5) * codec_factor * unet_cfg.patch_size * 2 ** level
        raise ValueError(_size_message(
            resolution, resolution, 1, tokens, f"the {MAX_ATTENTION_TOKENS:,} this pack trains at unasked",
            tokens / MAX_ATTENTION_TOKENS, f"{MAX_ATTENTION_TOKENS:,} positions ({side} px for this preset and "
            "codec)", override))
    return tokens
