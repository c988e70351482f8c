"""Conversions between t2i_core's objects and ComfyUI's data formats. Layout only, no model logic.

    CONDITIONING  [[context (B, L, D), {"pooled_output": (B, E), "attention_mask": (B, L) bool}], ...]
    LATENT        {"samples": (B, C, h, w)}  the raw, unscaled latent (codec.unscale(z); codec.scale takes it back)
    IMAGE         (B, H, W, 3) float 0..1
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from ..t2i_core import Conditioning

log = logging.getLogger("t2i_mini")

PREVIEW_SIZE = 512  # longest side of a progress preview, in pixels
# Keys of the record of the text encoder a CONDITIONING came from, and of the codec a LATENT is in: core nodes
# carry such extra keys along, and the pack's sampler and Decode compare them with the model's.
TEXT_ENCODER_KEY = "t2i_mini_text_encoder"
CODEC_KEY = "t2i_mini_codec"
# The token ids (prompts, L) behind a CONDITIONING's states, where the encoder reports them: Attention Maps reads
# the prompt's words from them.
TOKENS_KEY = "t2i_mini_tokens"


def part_stamp(part) -> dict:
    """What a CONDITIONING or LATENT records about the part that made it: identity and name."""
    record = part.record()
    return {"identity": part.identity, "name": record.get("name") or record.get("source"), "kind": record.get("kind"),
            "label": record.get("label")}


def to_comfy_conditioning(cond: Conditioning, device, text_encoder=None, tokens=None) -> list:
    extra = {}
    if tokens is not None:
        extra[TOKENS_KEY] = tokens.cpu()
    if cond.pooled is not None:
        extra["pooled_output"] = cond.pooled.to(device)
    if cond.key_mask is not None:
        extra["attention_mask"] = cond.key_mask.to(device)
    if text_encoder is not None:
        extra[TEXT_ENCODER_KEY] = part_stamp(text_encoder)
    return [[cond.context.to(device), extra]]


def text_encoder_stamp(conditioning) -> dict:
    """The stamp of the encoder that made a CONDITIONING ({} for one from core CLIP Text Encode)."""
    try:
        return dict(conditioning[0][1].get(TEXT_ENCODER_KEY) or {})
    except (TypeError, IndexError, AttributeError):
        return {}


def conditioning_tokens(conditioning, name: str = "positive"):
    """The token ids (prompts, L) a CONDITIONING from Text Encode (T2I Mini) carries, checked against its states."""
    try:
        context, extra = conditioning[0][0], conditioning[0][1]
        tokens = extra.get(TOKENS_KEY)
    except (TypeError, IndexError, KeyError, AttributeError):
        tokens = None
    if not torch.is_tensor(tokens):
        raise ValueError(f"the {name} conditioning does not say which words it holds: encode the prompt with Text "
                         "Encode (T2I Mini) and the model's own T2I Mini text encoder (core CLIP Text Encode and a "
                         "ComfyUI CLIP do not record the tokens)")
    if torch.is_tensor(context) and tokens.shape[0] != context.shape[0]:
        raise ValueError(f"the {name} conditioning has {context.shape[0]} prompts but tokens for {tokens.shape[0]}: "
                         "connect Text Encode (T2I Mini) directly")
    return tokens


def from_comfy_conditioning(conditioning, name: str, context_dim: int) -> Conditioning:
    """The first entry of a CONDITIONING as a t2i_core Conditioning, checked against the model's text width."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(f"{name}: expected a CONDITIONING with at least one entry, got {type(conditioning).__name__}")
    if len(conditioning) > 1:
        log.warning("T2I Mini: %s holds %d conditionings (e.g. from ConditioningCombine); only the first is used. "
                    "ConditioningConcat or ConditioningAverage give one.", name, len(conditioning))
    context, extra = conditioning[0][0], conditioning[0][1]
    if not torch.is_tensor(context) or context.dim() != 3:
        raise ValueError(f"{name}: expected text states of shape (batch, tokens, width), got "
                         f"{tuple(context.shape) if torch.is_tensor(context) else type(context).__name__}")
    width = context.shape[-1]
    if width != context_dim:
        raise ValueError(f"{name} conditioning is {width} wide but the model reads {context_dim}-wide text states: "
                         "encode the prompt with the model's own text encoder (the TEXT_ENCODER output of Load T2I "
                         "Mini Checkpoint, or the encoder or CLIP it was trained with)")
    mask = extra.get("attention_mask")
    if torch.is_tensor(mask):
        mask = mask.bool().reshape(mask.shape[0], -1)
        if mask.shape[0] not in (1, context.shape[0]):
            mask = None
        else:
            mask = mask.expand(context.shape[0], -1)
            length = context.shape[1]
            if mask.shape[1] < length:  # ConditioningConcat appends tokens but keeps the first mask
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], length - mask.shape[1])], dim=1)
            mask = mask[:, :length]
    else:
        mask = None
    pooled = extra.get("pooled_output")
    return Conditioning(context.float(), mask, pooled if torch.is_tensor(pooled) else None)


def images_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) 0..1 -> ComfyUI IMAGE (B, H, W, 3)."""
    return images.float().clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def grid(images: torch.Tensor, columns: int = 0, padding: int = 0, pad_value: float = 0.0) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> one image (1, H', W', C) with the batch laid out in rows."""
    b, h, w, c = images.shape
    columns = columns if columns > 0 else int(np.ceil(np.sqrt(b)))
    columns = min(columns, b)
    rows = -(-b // columns)
    out = images.new_full((rows * h + (rows - 1) * padding, columns * w + (columns - 1) * padding, c), pad_value)
    for i in range(b):
        r, col = divmod(i, columns)
        out[r * (h + padding): r * (h + padding) + h, col * (w + padding): col * (w + padding) + w] = images[i]
    return out[None]


def preview(images: torch.Tensor, max_images: int = 16):
    """Images (B, 3, H, W) 0..1 as a ComfyUI progress preview ("JPEG", PIL image, max size), upscaled sharply."""
    tile = grid(images_to_comfy(images[:max_images].detach().cpu()), padding=1)[0]
    pil = Image.fromarray((tile.numpy() * 255).round().astype(np.uint8))
    scale = max(1, PREVIEW_SIZE // max(pil.size))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    return "JPEG", pil, PREVIEW_SIZE
