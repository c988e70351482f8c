"""The captions of a training run, encoded once: one padded table of text states that batches index into."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..conditioning import Conditioning, TextEncoder
from .cache import TensorCache


class CaptionTable:
    """Every distinct caption's text states, encoded once (and cached on disk by content), as one padded tensor.

    Row 0 is the empty prompt, which CFG dropout substitutes. Each caption keeps its real tokens only (up to
    and including end-of-text) and the rows are padded to the longest: the key mask hides the padding, so this
    changes no output and saves cross-attention work. Each caption is encoded alone, so its states are a
    function of the encoder and the text only, whichever captions share the cache.
    """

    def __init__(self, encoder: TextEncoder, captions: list[str], cache: TensorCache | None, device):
        self.rows = {c: i for i, c in enumerate(dict.fromkeys(["", *captions]))}
        states = [self.encoded(encoder, text, cache) for text in self.rows]
        lengths = torch.tensor([len(s) for s in states])
        length = int(lengths.max())
        self.context = torch.stack([F.pad(s, (0, 0, 0, length - len(s))) for s in states]).to(device)
        self.key_mask = (torch.arange(length)[None] < lengths[:, None]).to(device)

    @staticmethod
    def encoded(encoder: TextEncoder, text: str, cache: TensorCache | None) -> torch.Tensor:
        """The caption's real-token states (L, D), from the cache or the encoder."""
        key = TensorCache.key("caption real-token states", encoder.identity, text)
        hit = cache.get(key) if cache is not None else None
        if hit is None:
            cond = encoder.encode([text]).conditioning
            real = cond.context.shape[1] if cond.key_mask is None else int(cond.key_mask[0].nonzero().max()) + 1
            hit = cond.context[0, :real].float().cpu()
            if cache is not None:
                cache.put(key, hit)
        return hit

    def lookup(self, captions: list[str], drop: torch.Tensor) -> Conditioning:
        rows = torch.tensor([self.rows[c] for c in captions])
        rows = torch.where(drop, torch.zeros_like(rows), rows).to(self.context.device)
        return Conditioning(self.context[rows], self.key_mask[rows])
