"""Text as the U-Net reads it, and the two small interfaces the engine's frozen parts implement.

`Conditioning` is the one form the text takes from the encoder to the U-Net: per-token states, which tokens
are real, and the pooled vector. `TextEncoder` and `Codec` are what the sampler, the trainer and the
checkpoint ask of a text encoder and of a codec; the open_clip encoder and the pixel and VAE codecs of this
package implement them, and so can adapters to another host's objects (ComfyUI's CLIP and VAE), which live
with that host's code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@dataclass
class Conditioning:
    """Per-token states (B, L, D), which tokens are real, and the pooled vector."""
    context: torch.Tensor
    key_mask: torch.Tensor | None = None  # (B, L) bool, True = a real token; None = all real
    pooled: torch.Tensor | None = None  # (B, E)

    def __len__(self) -> int:
        return self.context.shape[0]

    @property
    def width(self) -> int:
        return self.context.shape[-1]

    def map(self, fn) -> Conditioning:
        """The same conditioning with `fn` applied to each of its tensors (e.g. moving it to a device)."""
        return Conditioning(fn(self.context), None if self.key_mask is None else fn(self.key_mask),
                            None if self.pooled is None else fn(self.pooled))


def match_batch(cond: Conditioning, batch: int, name: str = "conditioning") -> Conditioning:
    """The conditioning for a batch of `batch` images: one prompt for every image, one prompt per image, or
    k = batch / prompts images per prompt, in order (a prompts x seeds grid). Raises ValueError otherwise."""
    n = len(cond)
    if n == batch:
        return cond
    if n == 1:
        return cond.map(lambda t: t.expand(batch, *t.shape[1:]))
    if batch % n:
        raise ValueError(f"{name} holds {n} prompts but there are {batch} images; give one prompt, or one per image, "
                         f"or make the image count a multiple of the prompt count ({n}, {2 * n}, ...)")
    return cond.map(lambda t: t.repeat_interleave(batch // n, dim=0))


def concat_conditionings(a: Conditioning, b: Conditioning) -> Conditioning:
    """Stack two conditionings on the batch axis, padding the shorter token axis with masked zeros.

    The mask is None when every token of both is real. The pooled vectors are kept when both have one."""
    length = max(a.context.shape[1], b.context.shape[1])
    contexts, masks = [], []
    for c in (a, b):
        pad = length - c.context.shape[1]
        mask = c.key_mask if c.key_mask is not None else torch.ones(c.context.shape[:2], dtype=torch.bool,
                                                                    device=c.context.device)
        contexts.append(F.pad(c.context, (0, 0, 0, pad)))
        masks.append(F.pad(mask, (0, pad), value=False))
    mask = torch.cat(masks)
    pooled = torch.cat([a.pooled, b.pooled]) if a.pooled is not None and b.pooled is not None else None
    return Conditioning(torch.cat(contexts), None if mask.all() else mask, pooled)


@dataclass
class EncodedText:
    conditioning: Conditioning
    truncated: list[bool] = field(default_factory=list)  # per prompt: was it cut to the context length?
    # (B, L) the token id at each position of the states, where the encoder can tell (t2i_core.attention_maps
    # reads the prompt's words from it); None otherwise
    tokens: torch.Tensor | None = None


@runtime_checkable
class TextEncoder(Protocol):
    """A frozen text encoder: prompts -> Conditioning.

    `identity` is a digest of the encoder's architecture and weights: caches key its outputs by it, and a
    checkpoint records it, so two different encoders never share cache entries and a model is not sampled
    with an encoder it was not trained with. `record()` is what a checkpoint stores about the encoder (its
    kind, name, identity, and how to get it back); `checkpoint_state()` the weights it embeds ({} for parts
    that are too large to copy into every checkpoint, or that belong to another program); `process_state()` the
    weights another process on this machine needs besides the record to rebuild it (training in several
    processes), or None for a part that lives in this program only."""
    width: int  # D of the per-token states
    context_length: int  # tokens per prompt, at most
    identity: str

    def encode(self, prompts: list[str]) -> EncodedText: ...

    def empty(self) -> Conditioning:
        """The empty prompt's conditioning: CFG's unconditional input."""
        ...

    def record(self) -> dict: ...

    def checkpoint_state(self) -> dict[str, torch.Tensor]: ...

    def process_state(self) -> dict[str, torch.Tensor] | None: ...

    def to(self, device) -> TextEncoder: ...


@runtime_checkable
class Codec(Protocol):
    """The map between images (B, 3, H, W) in 0..1 and the space the U-Net denoises ("model space").

    A VAE's model space is its latent times a scaling factor (so it has about unit variance); `unscale` gives
    the raw latent (what ComfyUI's LATENT holds, what the VAE decodes) and `scale` takes it back."""
    channels: int
    factor: int  # image pixels per latent cell, along each side
    identity: str

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def scale(self, latent: torch.Tensor) -> torch.Tensor: ...

    def unscale(self, z: torch.Tensor) -> torch.Tensor: ...

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        """Images from a raw latent (decode(scale(latent)), or the VAE directly)."""
        ...

    def record(self) -> dict: ...

    def checkpoint_state(self) -> dict[str, torch.Tensor]: ...

    def process_state(self) -> dict[str, torch.Tensor] | None:
        """As TextEncoder.process_state."""
        ...

    def to(self, device) -> Codec: ...
