"""The design's plain way of sampling, on OUR U-Net's weights: the baseline that bench.sampler compares with.

The plain way, as the project's starting design sketched it, runs classifier-free guidance as two forward
passes per step (cond, then uncond) and computes every attention by hand, softmax(QK^T / sqrt(d)) V, projecting the text's
keys and values again in every block at every step, over the whole 77-token context. This module does
exactly that with plain functional ops (F.conv2d, F.group_norm, F.linear, matmul, softmax) that read the
weights of a `t2i_core.unet.TextConditionedUNet`. It never calls the modules' own forward methods, so
optimisations made to t2i_core leave this baseline unchanged, and because the weights and the arithmetic
are the same, its outputs equal t2i_core's to float tolerance (tests/test_fast_paths.py checks this).

Masked tokens (padding after end-of-text) get a -inf score, as t2i_core does; the plain sketch has no mask,
and without one the outputs would not be comparable.

Options let bench.sampler add t2i_core's levers to this baseline one at a time:
    batched_cfg   one forward over [uncond; cond] instead of two passes
    attention     "manual" (by hand) or "sdpa" (F.scaled_dot_product_attention)
    cache_kv      project the text's K/V once per sampling run, cut to the longest real prompt
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i_core.conditioning import Conditioning, concat_conditionings, match_batch
from t2i_core.samplers import SAMPLERS
from t2i_core.unet import Downsample, TextConditionedUNet, UNetStage, Upsample

ATTENTION = ("manual", "sdpa")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _gn(m: nn.GroupNorm, x):
    return F.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)


def _ln(m: nn.LayerNorm, x):
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


def _conv(m: nn.Conv2d, x):
    return F.conv2d(x, m.weight, m.bias, m.stride, m.padding)


def _lin(m: nn.Linear, x):
    return F.linear(x, m.weight, m.bias)


def res_block(m, x, temb):
    h = _conv(m.conv1, F.silu(_gn(m.norm1, x)))
    h = h + _lin(m.temb_proj, F.silu(temb))[:, :, None, None]
    h = _conv(m.conv2, F.silu(_gn(m.norm2, h)))
    skip = x if isinstance(m.skip, nn.Identity) else _conv(m.skip, x)
    return skip + h


def split_heads(x, heads):
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def attention(m, x, context, key_mask, kv, mode: str):
    q = split_heads(_lin(m.to_q, x), m.heads)
    if kv is None:
        ctx = x if context is None else context
        k, v = split_heads(_lin(m.to_k, ctx), m.heads), split_heads(_lin(m.to_v, ctx), m.heads)
    else:
        k, v = kv
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if mode == "manual":
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = scores.softmax(dim=-1) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, h, n, d = out.shape
    return _lin(m.to_out, out.transpose(1, 2).reshape(b, n, h * d))


def spatial_transformer(m, x, context, key_mask, kvs, mode):
    b, c, hh, ww = x.shape
    tokens = _lin(m.proj_in, _gn(m.norm, x).reshape(b, c, hh * ww).transpose(1, 2))
    for i, blk in enumerate(m.blocks):
        tokens = tokens + attention(blk.attn1, _ln(blk.norm1, tokens), None, None, None, mode)
        kv = None if kvs is None else kvs[i]
        tokens = tokens + attention(blk.attn2, _ln(blk.norm2, tokens), context, key_mask, kv, mode)
        h, gate = _lin(blk.ff.proj_in, _ln(blk.norm3, tokens)).chunk(2, dim=-1)
        tokens = tokens + _lin(blk.ff.proj_out, h * F.gelu(gate))
    return x + _lin(m.proj_out, tokens).transpose(1, 2).reshape(b, c, hh, ww)


def prepare_kv(unet: TextConditionedUNet, context, key_mask):
    """(context, key_mask, kvs) with padding cut to the longest real prompt and K/V projected once."""
    if key_mask is not None:
        if key_mask.all():
            key_mask = None
        else:
            n = int(key_mask.sum(1).max())
            context, key_mask = context[:, :n], key_mask[:, :n]
    kvs = []
    for st in unet.stages():
        if st.attn is not None:
            kvs.append([(split_heads(_lin(b.attn2.to_k, context), b.attn2.heads),
                         split_heads(_lin(b.attn2.to_v, context), b.attn2.heads)) for b in st.attn.blocks])
    return context, key_mask, kvs


def reference_forward(unet: TextConditionedUNet, x, t, context, key_mask=None, *, mode: str = "manual",
                      kvs: list | None = None):
    """The U-Net's output computed op by op from its weights (see the module docstring)."""
    if mode not in ATTENTION:
        raise ValueError(f"mode must be one of {ATTENTION}")
    kv_iter = iter(kvs) if kvs is not None else None

    def stage(m: UNetStage, h):
        h = res_block(m.res, h, temb)
        if m.attn is not None:
            h = spatial_transformer(m.attn, h, context, key_mask, None if kv_iter is None else next(kv_iter), mode)
        return h

    t = t.expand(x.shape[0]) if t.numel() == 1 else t
    te = unet.time_embed
    temb = _lin(te[2], F.silu(_lin(te[0], timestep_embedding(t, unet.cfg.base_channels).to(x.dtype))))
    h = _conv(unet.conv_in, x)
    skips = [h]
    for m in unet.down:
        h = stage(m, h) if isinstance(m, UNetStage) else _conv(m.conv, h)
        assert isinstance(m, (UNetStage, Downsample))
        skips.append(h)
    for m in unet.mid:
        h = stage(m, h)
    for m in unet.up:
        if isinstance(m, UNetStage):
            h = stage(m, torch.cat([h, skips.pop()], dim=1))
        else:
            assert isinstance(m, Upsample)
            h = _conv(m.conv, F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(unet.conv_out, F.silu(_gn(unet.norm_out, h)))


@torch.inference_mode()
def reference_sample(unet: TextConditionedUNet, schedule, noise: torch.Tensor, cond: Conditioning,
                     uncond: Conditioning, *, steps: int = 25, guidance_scale: float = 3.0,
                     batched_cfg: bool = False, mode: str = "manual", cache_kv: bool = False) -> torch.Tensor:
    """Deterministic DDIM (eta=0) with classifier-free guidance, fp32, the plain way unless options say otherwise."""
    batch = noise.shape[0]
    cond, uncond = match_batch(cond, batch), match_batch(uncond, batch)
    if batched_cfg:
        both = concat_conditionings(uncond, cond)
        passes = [(both.context, both.key_mask)]
    else:  # the plain way: cond and uncond each at full length, two passes
        passes = [(cond.context, cond.key_mask), (uncond.context, uncond.key_mask)]
    if cache_kv:
        passes = [prepare_kv(unet, c, m) for c, m in passes]
    else:
        passes = [(c, m, None) for c, m in passes]

    x = noise.float()
    for t, t_prev in SAMPLERS["ddim"].step_pairs(schedule, steps):
        tt = torch.tensor([t])
        if batched_cfg:
            c, m, kvs = passes[0]
            e_u, e_c = reference_forward(unet, torch.cat([x, x]), tt, c, m, mode=mode, kvs=kvs).chunk(2)
        else:
            (cc, cm, ckv), (uc, um, ukv) = passes
            e_c = reference_forward(unet, x, tt, cc, cm, mode=mode, kvs=ckv)
            e_u = reference_forward(unet, x, tt, uc, um, mode=mode, kvs=ukv)
        x, _ = SAMPLERS["ddim"].step(schedule, e_u + guidance_scale * (e_c - e_u), x, t, t_prev)
    return x
