"""ComfyUI's own CLIP and VAE objects as the engine's text encoder and codec.

`ComfyCLIPTextEncoder` and `ComfyVAECodec` implement t2i_core's TextEncoder and Codec interfaces
(t2i_core/conditioning.py) on top of a core `CLIP` (CLIPLoader, DualCLIPLoader, a checkpoint loader) and a
core `VAE` (VAELoader, a checkpoint loader), so training, Text Encode, Noise Latent and Decode take them where
they take the pack's own. A checkpoint trained on them records them by name and weight digest
(t2i_core/external.py); their weights stay in the user's models folders.
"""
from __future__ import annotations

import logging
import weakref

import torch

from ..t2i_core import Conditioning, EncodedText, cancel
from ..t2i_core.codecs import CodecError, LatentScale
from ..t2i_core.data.cache import TensorCache
from ..t2i_core.pieces import convolutions_in_bands

log = logging.getLogger("t2i_mini")

# Latent scaling of the VAE families a (channels, downscale) pair names: scale and shift so the model sees
# latents of about unit variance. Four channels at 1/8: Stable Diffusion 1.x/2.x's VAE (vae-ft-mse-840000 and
# kin; TAESD's latents are made to match). SDXL's VAE has the same shape and is scaled by 0.13025 in SDXL; with
# 0.18215 its latents have a spread of about 1.4 instead of 1, which training tolerates.
LATENT_SCALES = {(4, 8): (0.18215, 0.0)}

_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_digest(module: torch.nn.Module, *extra: str) -> str:
    """A digest of a ComfyUI model's weights, cast to fp16 first: ComfyUI keeps text encoders in fp16 on every
    device, and the same file then gives the same digest whether its copy in memory is fp16 or fp32. Computed
    once per module and `extra`."""
    key = tuple(extra)
    cached = _digests.setdefault(module, {})
    if key not in cached:
        parts: list[str | bytes] = list(extra)
        for name, tensor in sorted(module.state_dict().items()):
            if torch.is_tensor(tensor) and tensor.is_floating_point():
                parts += [name, tensor.detach().to("cpu", torch.float16).numpy().tobytes()]
        cached[key] = TensorCache.key(*parts)[:16]
    return cached[key]


def loader_of(hidden, input_name: str) -> dict:
    """The loader node feeding `input_name` of the running node, as {"node": class, <its widget values>}, read
    from the prompt in the node's hidden inputs (PROMPT, UNIQUE_ID): how a checkpoint tells the user which file
    to load. {} when it can't be seen (no prompt, or the link comes through another node)."""
    try:
        link = hidden.prompt[str(hidden.unique_id)]["inputs"][input_name]
        source = hidden.prompt[str(link[0])]
    except (AttributeError, KeyError, TypeError, IndexError):
        return {}
    values = {k: v for k, v in source.get("inputs", {}).items() if isinstance(v, (str, int, float, bool))}
    return {"node": source.get("class_type"), **values}


def file_name(loader: dict) -> str | None:
    return next((loader[k] for k in ("clip_name", "clip_name1", "vae_name", "ckpt_name") if k in loader), None)


def how_to_load(loader: dict, kind: str, connect_to: str) -> str:
    """'load clip_l.safetensors with CLIPLoader (type stable_diffusion) and connect its CLIP to Text Encode'."""
    name = file_name(loader)
    if not name:
        return f"connect the {kind} it was trained with to {connect_to}"
    settings = ", ".join(f"{k} {v}" for k, v in loader.items() if k not in ("node", "clip_name", "vae_name", "ckpt_name"))
    node = loader.get("node") or "its loader"
    return f"load {name} with {node}{f' ({settings})' if settings else ''} and connect its {kind} to {connect_to}"


class ComfyCLIPTextEncoder:
    """A core CLIP as t2i_core's text encoder. Each prompt is encoded exactly as core CLIP Text Encode does
    (tokenize, encode_from_tokens_scheduled), so a model trained here also samples from CLIP Text Encode's
    conditioning: per-token states of every token the CLIP returns (77, or 77 per chunk of a long prompt),
    the pooled vector, and a mask only where the CLIP gives one."""

    def __init__(self, clip, loader: dict | None = None):
        self.clip = clip
        self.loader = loader or {}
        self._empty: Conditioning | None = None

    def _encode_one(self, prompt: str):
        encoded = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))
        if len(encoded) != 1:
            raise ValueError(f"the CLIP gave {len(encoded)} scheduled conditionings for one prompt (CLIP hooks with "
                             "keyframes); training and Text Encode take a CLIP without scheduled hooks")
        states, extra = encoded[0]
        mask = extra.get("attention_mask")
        return states.float(), None if mask is None else mask.bool().reshape(1, -1), extra.get("pooled_output")

    def encode(self, prompts: list[str] | str) -> EncodedText:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = [self._encode_one(p) for p in prompts]
        length = max(s.shape[1] for s, _, _ in rows)
        contexts, masks = [], []
        for states, mask, _ in rows:
            real = torch.ones(1, states.shape[1], dtype=torch.bool) if mask is None else mask
            contexts.append(torch.nn.functional.pad(states, (0, 0, 0, length - states.shape[1])))
            masks.append(torch.nn.functional.pad(real, (0, length - states.shape[1]), value=False))
        mask = torch.cat(masks)
        pooled = [p for _, _, p in rows]
        cond = Conditioning(torch.cat(contexts), None if mask.all() else mask,
                            torch.cat(pooled).float() if all(p is not None for p in pooled) else None)
        return EncodedText(cond, [False] * len(prompts))  # long prompts are encoded in chunks, never cut

    def empty(self) -> Conditioning:
        if self._empty is None:
            self._empty = self.encode([""]).conditioning
        return self._empty

    @property
    def width(self) -> int:
        return self.empty().width

    @property
    def context_length(self) -> int:
        return self.empty().context.shape[1]

    @property
    def identity(self) -> str:
        # the weights, the layer read and the keys a LoRA patches (what changes the output of the same file)
        return weights_digest(self.clip.cond_stage_model, type(self.clip.cond_stage_model).__name__,
                              str(self.clip.layer_idx), str(sorted(self.clip.patcher.patches)))

    def record(self) -> dict:
        return {"kind": "comfyui_clip", "name": file_name(self.loader), "loader": self.loader,
                "identity": self.identity, "width": self.width, "context_length": self.context_length,
                "hint": how_to_load(self.loader, "CLIP", "Text Encode")}

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {}

    def process_state(self) -> None:
        return None  # ComfyUI's object lives in the server's process only

    def to(self, device) -> ComfyCLIPTextEncoder:
        return self  # ComfyUI's model management moves it


# ComfyUI's names for an image VAE decoder's parts (comfy/ldm/modules/diffusionmodules/model.py, comfy.ops)
CORE_DECODER_PARTS = ("ResnetBlock", "AttnBlock", "Upsample", "Conv2d")


class ComfyVAECodec(LatentScale):
    """A core VAE as t2i_core's codec: images <-> the VAE's latent, scaled to about unit variance for the model."""

    def __init__(self, vae, loader: dict | None = None, scaling: tuple[float, float] | None = None):
        factor = vae.downscale_ratio
        if getattr(vae, "latent_dim", 2) != 2 or not isinstance(factor, int):
            raise CodecError("this VAE is not an image VAE (it encodes video or audio); connect an image VAE "
                             "such as Stable Diffusion's")
        self.vae, self.loader = vae, loader or {}
        self.channels, self.factor = int(vae.latent_channels), factor
        if scaling is None:
            scaling = LATENT_SCALES.get((self.channels, self.factor))
            if scaling is None:
                log.warning("T2I Mini: no known latent scaling for a %d-channel VAE at 1/%d; the model will see "
                            "its latents unscaled", self.channels, self.factor)
                scaling = (1.0, 0.0)
        self.scaling_factor, self.shift_factor = (float(v) for v in scaling)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.scale(self.vae.encode(images.movedim(1, -1)).float())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_raw(self.unscale(z))

    @torch.no_grad()
    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        """What core VAE Decode gives for this LATENT, as (B, 3, H, W). Cancel is checked before each of the
        decoder's blocks and convolutions, and between the bands of a large convolution, while it runs."""
        parts = self.decoder_parts()
        with cancel.checked_before(parts), convolutions_in_bands(parts):
            return self.vae.decode(latent).float().movedim(-1, 1).clamp(0, 1)

    def decoder_parts(self) -> list[torch.nn.Module]:
        # the same parts the pack's own VAECodec checks before (t2i_core.codecs.DECODER_BLOCKS, and why)
        decoder = getattr(self.vae.first_stage_model, "decoder", None)
        return [] if decoder is None else [m for m in decoder.modules() if type(m).__name__ in CORE_DECODER_PARTS]

    @property
    def identity(self) -> str:
        return weights_digest(self.vae.first_stage_model, type(self.vae.first_stage_model).__name__,
                              f"{self.scaling_factor}:{self.shift_factor}")

    def record(self) -> dict:
        return {"kind": "comfyui_vae", "name": file_name(self.loader), "loader": self.loader,
                "identity": self.identity, "channels": self.channels, "factor": self.factor,
                "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
                "hint": how_to_load(self.loader, "VAE", "Decode (or VAE Decode)")}

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {}

    def process_state(self) -> None:
        return None  # ComfyUI's object lives in the server's process only

    def to(self, device) -> ComfyVAECodec:
        return self


def as_text_encoder(obj, loader: dict | None = None):
    """The engine's text encoder for what a text_encoder input received: the pack's own, or a core CLIP."""
    import comfy.sd
    return ComfyCLIPTextEncoder(obj, loader) if isinstance(obj, comfy.sd.CLIP) else obj


def as_codec(obj, loader: dict | None = None, scaling: tuple[float, float] | None = None):
    """The engine's codec for what a codec input received: the pack's own, or a core VAE."""
    import comfy.sd
    return ComfyVAECodec(obj, loader, scaling) if isinstance(obj, comfy.sd.VAE) else obj
