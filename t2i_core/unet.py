"""The text-conditioned U-Net: ResBlocks carry the timestep, transformer blocks read the text.

The layout follows Stable Diffusion's U-Net, cut down to what a small model needs:

    conv_in -> [ResBlock (+ Transformer)] x n, Downsample      (per level, skips pushed)
            -> ResBlock, Transformer, ResBlock                  (middle)
            -> [concat skip, ResBlock (+ Transformer)] x (n+1), Upsample   (per level, reversed)
            -> GroupNorm, SiLU, conv_out

Three choices matter for a small model:
- the context is the text encoder's per-token states (B, L, D), not one pooled vector, so each
  image position can attend to the words that concern it;
- GroupNorm uses the largest group count <= 32 that divides the channels, so any width works;
- attention sits only at the levels named in `attention_levels` (by default not the full-resolution
  one): self-attention costs (H*W)^2 there and the text has little to say about single pixels.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cancel import calling, check_cancel
from .geometry import latent_shape
from .pieces import conv2d_in_bands, output_size, rows_per_band


@dataclass
class UNetConfig:
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1, 2)  # level indices (0 = full resolution) with transformers
    num_heads: int = 4
    context_dim: int = 256
    transformer_depth: int = 1
    dropout: float = 0.0
    # Pixels per side of one cell of the first level: the input is read as (C * p^2, H / p, W / p) by
    # pixel-unshuffle, and the output written back by pixel-shuffle. With 2, a 32 px image costs what a 16 px
    # one does at p = 1, and self-attention (positions squared) a sixteenth.
    patch_size: int = 1

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be at least 1, got {self.patch_size}")
        self.attention_levels = tuple(self.attention_levels)
        for level in self.attention_levels:
            if not 0 <= level < len(self.channel_mult):
                raise ValueError(f"attention level {level} is outside the U-Net's levels 0..{len(self.channel_mult) - 1}")
        for mult in self.channel_mult:
            if (self.base_channels * mult) % self.num_heads:
                raise ValueError(f"{self.base_channels * mult} channels do not split into {self.num_heads} heads")

    @property
    def downsample_factor(self) -> int:
        """Height and width of the input must be multiples of this."""
        return self.patch_size * 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U-Net config keys {sorted(unknown)}")
        return cls(**d)


# Named sizes. `micro` is for a CPU budget of minutes at 16 px (the demo): half of `tiny`'s time per step, and at
# that budget steps matter more than width (docs/QUALITY.md, "The 3-minute demo"). `tiny` trains on a CPU in
# minutes at 16 px. `tiny-patch2` is `tiny` on 2x2-pixel cells, so 32 px costs it what 16 px costs `tiny`, and it
# learns the 32 px sprites in a CPU budget where `tiny` does not (docs/QUALITY.md, "sprites"). `sd` is Stable
# Diffusion 1.x's shape.
TINY = dict(base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1, attention_levels=(1, 2), num_heads=4)
PRESETS: dict[str, dict] = {
    "micro": dict(base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, attention_levels=(1, 2), num_heads=2),
    "tiny": TINY,
    "tiny-patch2": {**TINY, "patch_size": 2},
    "small": dict(base_channels=64, channel_mult=(1, 2, 4), num_res_blocks=2, attention_levels=(1, 2), num_heads=4),
    "base": dict(base_channels=128, channel_mult=(1, 2, 2, 4), num_res_blocks=2, attention_levels=(1, 2, 3), num_heads=8),
    "sd": dict(base_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(0, 1, 2), num_heads=8),
}


def preset_config(name: str, **overrides) -> UNetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; choose one of {', '.join(PRESETS)}")
    return UNetConfig(**{**PRESETS[name], **overrides})


def group_norm(channels: int) -> nn.GroupNorm:
    groups = max(g for g in range(1, 33) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM and Stable Diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on x's device produce here: autocast's, when it is on."""
    device = x.device.type
    try:
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
    except (TypeError, AttributeError):  # torch < 2.4
        if device == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        if device == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return x.dtype


def zero_module(module: nn.Module) -> nn.Module:
    # Residual branches start as the identity, which keeps early training stable.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# bf16 attention on the CPU: scaled_dot_product_attention's CPU kernel is slow for the short key sequences and
# small heads of this library's models, where two oneDNN matmuls and a softmax are faster. From 512 keys on the
# kernel is faster again, and its flash-style loop never stores the scores, so the matmul form is used up to
# 256 keys and never beyond this many scores (batch x heads x queries x keys; 32M bf16 scores = 64 MB).
# Measurements: docs/PERFORMANCE.md, "Attention kernel".
CPU_MATMUL_ATTENTION_MAX_SCORES = 1 << 25
MATMUL_ATTENTION_MAX_KEYS = 256


def use_matmul_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return False
    b, heads, n, _ = q.shape
    keys = k.shape[-2]
    if b * heads * n * keys > CPU_MATMUL_ATTENTION_MAX_SCORES:
        return False
    # up to 16x16 positions (and any text): the matmul form; at 32x32 positions and above the flash kernel
    return keys <= MATMUL_ATTENTION_MAX_KEYS


# Attention over more query positions than this (a 64x64 level, the most training allows unasked) runs in query
# chunks, each exact attention over all keys: a 1024 px sample's 512x512-position level is otherwise one kernel
# call of minutes that Cancel cannot stop, and kernels that store scores grow with the square of the positions.
# Below it nothing changes. Measurements: docs/RELIABILITY.md, "Cancel at any size".
CHUNK_ABOVE_QUERIES = 4096
# Scores (batch x heads x chunk queries x keys) per chunk: 128M, 512 MB in fp32 for a kernel that stores them. It
# bounds a chunk's memory and its time (4 x 128M x head width FLOPs, a fraction of a second on a CPU). Smaller
# chunks cost more: each one reads all the keys again (docs/RELIABILITY.md, "Cancel at any size").
CHUNK_MAX_SCORES = 1 << 27

# Above this many positions per image at the first level (256x256 at patch size 1), forward runs one
# conditioning row at a time, so the longest single operation (a level-0 convolution, a feed-forward) covers one
# row, not a whole CFG batch (docs/RELIABILITY.md, "Cancel at any size"). Below it, one batched pass.
ROW_BY_ROW_ABOVE_POSITIONS = 1 << 16
# At those sizes a single convolution over the first level, or a feed-forward over an attention level, is still
# one long call that grows with the image; each runs in pieces of at most this much work (multiply-adds, about
# 2 GFLOP), checking Cancel between them (docs/RELIABILITY.md,
# "Cancel at any size"). Below ROW_BY_ROW_ABOVE_POSITIONS, and for the feed-forward below CHUNK_ABOVE_QUERIES,
# one call as before.
PIECE_MAX_MACS = 1 << 30
# A forward pass without gradients holds a multiple of its rows' feature maps (every level's channels x positions,
# summed) at once: skips kept for the up path, a block's working tensors, attention chunks. A training step holds
# a larger one: the tensors autograd saves for the backward. Both factors sit above the measured peaks with a
# margin, so an estimate refuses what would not fit and not what would (docs/RELIABILITY.md, "Memory at large sizes").
FORWARD_MAP_FACTOR = 28
TRAIN_MAP_FACTOR = 120


def feature_map_elements(cfg: UNetConfig, height: int, width: int) -> int:
    """One image's feature maps: every level's channels x positions, summed, for a `height` x `width` input in
    model space."""
    h, w = height // cfg.patch_size, width // cfg.patch_size
    return sum(cfg.base_channels * m * (h >> level) * (w >> level) for level, m in enumerate(cfg.channel_mult))


def forward_memory_bytes(cfg: UNetConfig, height: int, width: int, rows: int, element_bytes: int = 4) -> int:
    """About the most memory one forward pass without gradients holds at once for `rows` rows (CFG's cond and
    uncond rows each count) of a `height` x `width` input in model space: FORWARD_MAP_FACTOR x the feature maps
    of the rows computed together (one at a time above ROW_BY_ROW_ABOVE_POSITIONS), plus the output."""
    positions = (height // cfg.patch_size) * (width // cfg.patch_size)
    together = 1 if rows > 1 and positions > ROW_BY_ROW_ABOVE_POSITIONS else rows
    output = rows * cfg.out_channels * height * width
    return element_bytes * (FORWARD_MAP_FACTOR * together * feature_map_elements(cfg, height, width) + 2 * output)


def train_memory_bytes(cfg: UNetConfig, height: int, width: int, batch: int, element_bytes: int = 4) -> int:
    """About the most memory a training step of `batch` images holds: what autograd keeps for the backward."""
    return element_bytes * TRAIN_MAP_FACTOR * batch * feature_map_elements(cfg, height, width)


def attention_chunk_size(q: torch.Tensor, k: torch.Tensor) -> int | None:
    """Queries per chunk for this call, or None: one call over all of them."""
    b, heads, n, _ = q.shape
    if n <= CHUNK_ABOVE_QUERIES:
        return None
    chunk = max(1, CHUNK_MAX_SCORES // (b * heads * k.shape[-2]))
    return chunk if chunk < n else None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, heads, N, d) queries and (B, heads, L, d) keys and values.

    `mask` (B, 1, 1, L): bool, True = attend, or an additive float mask (0 or -inf) of q's dtype, which the U-Net
    builds once per forward pass. The same function whichever kernel computes it. Beyond CHUNK_ABOVE_QUERIES
    queries it runs chunk by chunk, checking Cancel (t2i_core.cancel) after each."""
    chunk = attention_chunk_size(q, k)
    if chunk is None:
        return attention_kernel(q, k, v, mask)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for start in range(0, q.shape[-2], chunk):
        out[:, :, start:start + chunk] = attention_kernel(q[:, :, start:start + chunk], k, v, mask)
        check_cancel()
    return out


def attention_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One call of the kernel `use_matmul_attention` picks for these shapes."""
    if use_matmul_attention(q, k):
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        return scores.softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class CrossAttention(nn.Module):
    """Multi-head attention of queries x (B, N, C) over a context (B, L, D): softmax(QK^T/sqrt(d)) V.

    With context=None it is self-attention. `key_mask` (B, L), True = keep, hides padding tokens.
    Keys and values of a fixed context can be computed once with `project_context` and passed as `kv`,
    which the sampler does because the text is the same at every step.

    `attention_probs_hook(q, k, mask)`, when set (t2i_core.attention_maps.record_attention sets it on the
    cross-attention layers while it records), sees each call's queries, keys and mask before the attention.
    """

    attention_probs_hook = None  # off: one attribute check per call

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 4):
        super().__init__()
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)  # (B, heads, N, d)

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split_heads(self.to_k(context)), self.split_heads(self.to_v(context))

    def forward(self, x, context=None, key_mask=None, kv=None):
        """key_mask: (B, L) bool, True = attend, or already shaped (B, 1, 1, L) as the U-Net passes it."""
        q = self.split_heads(self.to_q(x))
        k, v = kv if kv is not None else self.project_context(x if context is None else context)
        mask = key_mask if key_mask is None or key_mask.dim() == 4 else key_mask[:, None, None, :]
        if q.shape[-2] > ROW_BY_ROW_ABOVE_POSITIONS:  # the projections above take a while there too
            check_cancel()
        if self.attention_probs_hook is not None:
            self.attention_probs_hook(q, k, mask)
        out = attention(q, k, v, mask)
        b, h, n, d = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))


class FeedForward(nn.Module):
    """GEGLU feed-forward (Shazeer 2020), as in Stable Diffusion's transformer blocks. Over more than
    CHUNK_ABOVE_QUERIES positions it runs in chunks of positions of at most PIECE_MAX_MACS, checking Cancel
    between them; each position's result is the same computation either way."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult * 2)
        self.proj_out = nn.Linear(dim * mult, dim)

    def forward(self, x):
        b, n, dim = x.shape
        chunk = max(1, PIECE_MAX_MACS // (b * dim * self.proj_in.out_features * 3 // 2))
        if n <= CHUNK_ABOVE_QUERIES or chunk >= n:
            return self.feed(x)
        pieces = []
        for start in range(0, n, chunk):
            pieces.append(self.feed(x[:, start:start + chunk]))
            check_cancel()
        return torch.cat(pieces, dim=1)

    def feed(self, x):
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(h * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: self-attention, cross-attention to the text, feed-forward."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), CrossAttention(dim, None, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), CrossAttention(dim, context_dim, heads)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim)

    def forward(self, x, context, key_mask=None, kv=None):
        x = x + self.attn1(self.norm1(x))
        check_cancel()
        x = x + self.attn2(self.norm2(x), context, key_mask, kv)
        check_cancel()
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Runs transformer blocks over the (H*W) positions of a feature map, as a residual branch."""

    def __init__(self, channels: int, context_dim: int, heads: int, depth: int = 1):
        super().__init__()
        self.norm = group_norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, context_dim, heads) for _ in range(depth))
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x, context, key_mask=None, kvs=None):
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, H*W, C)
        if h * w > ROW_BY_ROW_ABOVE_POSITIONS:
            check_cancel()
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, context, key_mask, None if kvs is None else kvs[i])
        return x + self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (the same parameters and state dict) that, over more than ROW_BY_ROW_ABOVE_POSITIONS input
    positions, computes its output in bands of rows of at most PIECE_MAX_MACS each, checking Cancel between
    them (t2i_core.pieces): the same convolution, to float rounding.

    forward(x, norm) is the convolution of silu(norm(x)), a ResBlock's GroupNorm-SiLU-conv: in bands, each band
    normalises just the rows it reads, so the normalised map of a large image is never held whole."""

    def forward(self, x, norm: nn.GroupNorm | None = None):
        if x.shape[-2] * x.shape[-1] > ROW_BY_ROW_ABOVE_POSITIONS:
            band = rows_per_band(self, x, PIECE_MAX_MACS)
            if band < output_size(self, *x.shape[-2:])[0]:
                return conv2d_in_bands(self, x, band, norm)
        return super().forward(x if norm is None else F.silu(norm(x)))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the timestep embedding added in between."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2, self.dropout = group_norm(out_ch), nn.Dropout(dropout)
        self.conv2 = zero_module(Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, temb_act):
        """temb_act: the timestep embedding after its SiLU, (B or 1, temb_dim); the U-Net applies the SiLU once
        for all blocks."""
        h = self.conv1(x, self.norm1)
        h = h + self.temb_proj(temb_act).reshape(temb_act.shape[0], -1, 1, 1)
        if self.training and self.dropout.p > 0:
            h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        else:
            h = self.conv2(h, self.norm2)
        return (x if isinstance(self.skip, nn.Identity) else self.skip(x)) + h


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetStage(nn.Module):
    """One ResBlock, optionally followed by a SpatialTransformer: the U-Net's repeating unit."""

    def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, temb_dim: int, attention: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, temb_dim, cfg.dropout)
        self.attn = SpatialTransformer(out_ch, cfg.context_dim, cfg.num_heads, cfg.transformer_depth) if attention else None

    def forward(self, x, temb, context, key_mask, kv_iter):
        x = self.res(x, temb)
        if self.attn is not None:
            check_cancel()
            if x.shape[0] < context.shape[0]:  # x shared by several conditionings: widen it where the text enters
                x = x.repeat(context.shape[0] // x.shape[0], 1, 1, 1)
            x = self.attn(x, context, key_mask, None if kv_iter is None else next(kv_iter))
        return x


def trim_padding(context: torch.Tensor, key_mask: torch.Tensor | None):
    """(context, key_mask) cut after the last column any row attends to; a mask that keeps everything becomes None.

    Masked keys get zero attention weight, so dropping them changes no output (nor any gradient) and saves the
    work on them: CLIP pads every prompt to 77 tokens, and short captions use 5-15 of them."""
    if key_mask is None or bool(key_mask.all()):
        return context, None
    used = key_mask.any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return context[:, :length], key_mask[:, :length]


@dataclass
class PreparedContext:
    """The text as the U-Net reads it, computed once per sampling run.

    Holds the cross-attention keys and values of every transformer block (one pair per block) and the
    key mask, with the context cut to its longest unmasked length: masked keys contribute nothing, so
    dropping them gives the same output for less work.
    """
    context: torch.Tensor
    key_mask: torch.Tensor | None
    kvs: list = field(default_factory=list)  # per SpatialTransformer: list of (k, v) per block

    def select(self, index) -> PreparedContext:
        pick = lambda t: t[index]  # noqa: E731
        return PreparedContext(
            pick(self.context),
            None if self.key_mask is None else pick(self.key_mask),
            [[(pick(k), pick(v)) for k, v in blocks] for blocks in self.kvs],
        )


class TextConditionedUNet(nn.Module):
    # Called between the stages of forward when set: ComfyUI's nodes check Cancel there, so a large image stops
    # within one block instead of one whole forward pass. None (the default) costs one comparison per stage.
    between_blocks: Callable[[], None] | None = None

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch = [cfg.base_channels * m for m in cfg.channel_mult]
        temb_dim = cfg.base_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(cfg.base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = Conv2d(cfg.in_channels * cfg.patch_size ** 2, ch[0], 3, padding=1)

        self.down = nn.ModuleList()
        skip_ch = [ch[0]]
        prev = ch[0]
        for level, out in enumerate(ch):
            for _ in range(cfg.num_res_blocks):
                self.down.append(UNetStage(prev, out, cfg, temb_dim, level in cfg.attention_levels))
                prev = out
                skip_ch.append(prev)
            if level < len(ch) - 1:
                self.down.append(Downsample(prev))
                skip_ch.append(prev)

        self.mid = nn.ModuleList([
            UNetStage(prev, prev, cfg, temb_dim, attention=True),
            UNetStage(prev, prev, cfg, temb_dim, attention=False),
        ])

        self.up = nn.ModuleList()
        for level in reversed(range(len(ch))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(UNetStage(prev + skip_ch.pop(), ch[level], cfg, temb_dim, level in cfg.attention_levels))
                prev = ch[level]
            if level > 0:
                self.up.append(Upsample(prev))

        self.norm_out = group_norm(prev)
        self.conv_out = zero_module(Conv2d(prev, cfg.out_channels * cfg.patch_size ** 2, 3, padding=1))

    @contextlib.contextmanager
    def calling_between_blocks(self, hook: Callable[[], None] | None):
        """Sets `between_blocks`, and the Cancel check inside blocks (t2i_core.cancel), for the duration of a
        with-block (raising from the hook stops forward there)."""
        previous, self.between_blocks = self.between_blocks, hook
        try:
            with calling(hook):
                yield self
        finally:
            self.between_blocks = previous

    def stages(self):
        """Every UNetStage in forward order: the order PreparedContext.kvs follows."""
        return [m for m in [*self.down, *self.mid, *self.up] if isinstance(m, UNetStage)]

    def prepare_context(self, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> PreparedContext:
        context, key_mask = trim_padding(context, key_mask)
        kvs = [[blk.attn2.project_context(context) for blk in st.attn.blocks] for st in self.stages() if st.attn is not None]
        return PreparedContext(context, key_mask, kvs)

    def forward(self, x, t, context, key_mask=None):
        """x: (B, C, H, W) noisy input; t: (B,) or (1,) timesteps; context: (B, L, D) text states or a PreparedContext.

        The context may have k*B rows for B images: x is then shared by k conditionings, as in classifier-free
        guidance's [uncond; cond], and the output has k*B rows, row j computed from x[j % B]. Everything before
        the first cross-attention is computed once for the B images, not k times.
        """
        if isinstance(context, PreparedContext):
            prepared = context
        else:
            if context.shape[-1] != self.cfg.context_dim:
                raise ValueError(
                    f"the text conditioning is {context.shape[-1]} wide but this U-Net reads {self.cfg.context_dim}-wide "
                    "text: use the text encoder the model was trained with")
            if key_mask is not None and key_mask.device.type == "cpu":  # (on a GPU the cut would cost a sync)
                context, key_mask = trim_padding(context, key_mask)
            prepared = PreparedContext(context, key_mask, [])
        latent_shape(x.shape[-2], x.shape[-1], channels=x.shape[1], codec_factor=1,
                     unet_factor=self.cfg.downsample_factor, what="the U-Net input's height and width")
        kv_iter = iter(prepared.kvs) if prepared.kvs else None
        ctx, mask = prepared.context, prepared.key_mask
        batch = x.shape[0]
        groups = ctx.shape[0] // batch if ctx.shape[0] > batch else 1
        if groups * batch != max(ctx.shape[0], batch):
            raise ValueError(f"{ctx.shape[0]} text conditionings for {batch} images: give one per image, or a "
                             "multiple of the number of images (each image is then shared by that many conditionings)")
        t = t.reshape(-1)
        if t.shape[0] not in (1, batch):
            raise ValueError(f"{t.shape[0]} timesteps for {batch} images: give one, or one per image")
        rows = max(ctx.shape[0], batch)
        if rows > 1 and x.shape[-2] * x.shape[-1] // self.cfg.patch_size ** 2 > ROW_BY_ROW_ABOVE_POSITIONS:
            # row j reads image j % batch, as the batched pass does
            outs = []
            for j in range(rows):
                i = j % batch
                outs.append(self(x[i:i + 1], t[i:i + 1] if t.shape[0] > 1 else t,
                                 prepared.select(slice(j, j + 1)) if ctx.shape[0] > 1 else prepared))
            return torch.cat(outs)

        # one timestep for the batch (sampling): embed it once and let it broadcast
        temb = F.silu(self.time_embed(timestep_embedding(t, self.cfg.base_channels).to(x.dtype)))
        temb_wide = temb.repeat(groups, 1) if groups > 1 and temb.shape[0] > 1 else temb
        if mask is not None:  # built once for every attention: additive, (B, heads, queries, keys)
            bias = torch.zeros(mask.shape, dtype=compute_dtype(x), device=mask.device)
            mask = bias.masked_fill_(~mask, float("-inf"))[:, None, None, :]

        def temb_for(h):
            return temb if h.shape[0] == temb.shape[0] else temb_wide

        hook = self.between_blocks
        h = self.conv_in(F.pixel_unshuffle(x, self.cfg.patch_size) if self.cfg.patch_size > 1 else x)
        skips = [h]
        for m in self.down:
            h = m(h, temb_for(h), ctx, mask, kv_iter) if isinstance(m, UNetStage) else m(h)
            skips.append(h)
            if hook is not None:
                hook()
        for m in self.mid:
            h = m(h, temb_for(h), ctx, mask, kv_iter)
            if hook is not None:
                hook()
        for m in self.up:
            if isinstance(m, UNetStage):
                skip = skips.pop()
                if skip.shape[0] != h.shape[0]:  # computed before x was widened
                    skip = skip.repeat(h.shape[0] // skip.shape[0], 1, 1, 1)
                h = m(torch.cat([h, skip], dim=1), temb_for(h), ctx, mask, kv_iter)
            else:
                h = m(h)
            if hook is not None:
                hook()
        out = self.conv_out(h, self.norm_out)
        return F.pixel_shuffle(out, self.cfg.patch_size) if self.cfg.patch_size > 1 else out
