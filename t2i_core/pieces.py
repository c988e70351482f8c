"""Convolutions in bands of output rows, with a Cancel check after each band.

One convolution over a large map is one long kernel call that Cancel cannot stop (a 512 px SD VAE decode has
two of 155 G multiply-adds each). Computed in bands of output rows, each band reading the input rows it
needs and zeros beyond the edges as zero padding gives, it is the same convolution to float rounding, and the
caller's check runs between bands. The U-Net's convolutions use it above a size (`t2i_core.unet.Conv2d`); a VAE
decode, the pack's or a core one, switches it on for its decoder's convolutions for the duration of the call
(`convolutions_in_bands`). Measurements: docs/RELIABILITY.md, "GroupNorm and SiLU inside the convolution's
bands" and "Limits".
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cancel import check_cancel

# The work of one band in a VAE decode's convolutions (2^32 multiply-adds, 7 rows of a 512-channel 256 px map):
# short enough for Cancel, wide enough that the bands cost the decode nothing measurable (docs/RELIABILITY.md,
# "Limits").
VAE_BAND_MAX_MACS = 1 << 32


def output_size(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1


def rows_per_band(conv: nn.Conv2d, x: torch.Tensor, max_macs: int) -> int:
    """Output rows per band so that a band is at most `max_macs` multiply-adds (at least one row)."""
    kh, kw = conv.kernel_size
    out_w = output_size(conv, x.shape[-2], x.shape[-1])[1]
    row_macs = x.shape[0] * out_w * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw
    return max(1, max_macs // row_macs)


def group_norm_scale_shift(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm(x)` as x * scale + shift, both (B, C, 1, 1) in x's dtype, so that bands of x can be normalised one
    at a time. The group statistics come from a sum and a norm in fp32, far faster on a CPU than torch.var_mean
    (docs/RELIABILITY.md, "GroupNorm and SiLU inside the convolution's bands"); the variance as
    E[x^2] - E[x]^2 loses a few digits only where a group's mean dwarfs its spread."""
    b, c = x.shape[:2]
    groups = x.reshape(b, norm.num_groups, -1)
    n = groups.shape[-1]
    mean = groups.sum(-1, dtype=torch.float32) / n
    var = (torch.linalg.vector_norm(groups, dim=-1, dtype=torch.float32).square() / n - mean.square()).clamp_min(0)
    per_channel = c // norm.num_groups
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_channel, dim=1) * norm.weight.float()
    shift = norm.bias.float() - mean.repeat_interleave(per_channel, dim=1) * scale
    return scale.to(x.dtype)[:, :, None, None], shift.to(x.dtype)[:, :, None, None]


def conv2d_in_bands(conv: nn.Conv2d, x: torch.Tensor, band: int, norm: nn.GroupNorm | None = None) -> torch.Tensor:
    """conv(x), or conv(silu(norm(x))) with `norm`, computed `band` output rows at a time with a Cancel check
    after each. With `norm` each band normalises only the rows it reads, so the normalised map of a large image
    is never held whole (allocating a map that large is itself a long pause without a check)."""
    b, _, h, w = x.shape
    (kh, _), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    out_h, out_w = output_size(conv, h, w)
    scale_shift = None if norm is None else group_norm_scale_shift(norm, x)
    out = x.new_empty(b, conv.out_channels, out_h, out_w)
    for top in range(0, out_h, band):
        bottom = min(out_h, top + band)
        first, last = top * sh - ph, (bottom - 1) * sh - ph + kh  # input rows [first, last) incl. padding
        rows = x[:, :, max(first, 0):min(last, h)]
        if scale_shift is not None:
            rows = F.silu(torch.addcmul(scale_shift[1], rows, scale_shift[0]))
        rows = F.pad(rows, (0, 0, max(0, -first), max(0, last - h)))
        out[:, :, top:bottom] = F.conv2d(rows, conv.weight, conv.bias, (sh, sw), (0, pw), conv.dilation, conv.groups)
        check_cancel()
    return out


def bands_apply(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether `conv` is a convolution whose call conv2d_in_bands computes exactly: a 2-d convolution with zero
    padding given as numbers, whose weights are used as stored (ComfyUI's ops may cast or patch them per call:
    those are left to their own forward)."""
    return (isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not getattr(conv, "comfy_cast_weights", False) and not getattr(conv, "weight_function", None)
            and not getattr(conv, "bias_function", None) and x.dim() == 4
            and conv.weight.device == x.device and conv.weight.dtype == x.dtype)


@contextlib.contextmanager
def convolutions_in_bands(modules: Iterable[nn.Module], max_macs: int | None = None) -> Iterator[None]:
    """For the duration of a with-block, each convolution among `modules` for which bands apply and whose call is
    more than one band of `max_macs` (default VAE_BAND_MAX_MACS) runs in bands; every other call runs its own
    forward. The modules are left as they were after (a core VAE is ComfyUI's object)."""
    max_macs = max_macs or VAE_BAND_MAX_MACS
    patched = []
    for module in modules:
        if not isinstance(module, nn.Conv2d) or "forward" in module.__dict__:
            continue

        def forward(x, *args, conv=module, own=module.forward, **kwargs):
            if args or kwargs or not bands_apply(conv, x):
                return own(x, *args, **kwargs)
            band = rows_per_band(conv, x, max_macs)
            if band >= output_size(conv, x.shape[-2], x.shape[-1])[0]:
                return own(x)
            return conv2d_in_bands(conv, x, band)
        module.forward = forward
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
