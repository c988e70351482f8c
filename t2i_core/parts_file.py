"""The parts file: a text encoder and codec handed to other processes of a training run on this machine.

Always with the weights another process needs to rebuild each part (`process_state`), whatever their size: it
is a temporary file, not a checkpoint. A BERT encoder is named by its package or folder; each rank reloads it
and checks its digest. The same record layout as a checkpoint's parts (checkpoint.part_tensors).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import load_codec_part, load_text_encoder_part, part_tensors
from .codecs import VAECodec
from .conditioning import Codec, TextEncoder
from .files import read_safetensors, save_safetensors, take
from .training.state import TrainingError

PARTS_FORMAT = "t2i-mini-parts"


def save_parts(path: str | os.PathLike, text_encoder: TextEncoder, codec: Codec) -> Path:
    def state_of(name: str, obj):
        state = obj.process_state()
        if state is None:
            raise TrainingError(f"training in several processes needs this pack's own {name.replace('_', ' ')} "
                                f"(a {obj.record().get('kind', type(obj).__name__)} lives in this program only): "
                                "load it with the pack's loader nodes, or train with processes 1")
        return state
    tensors, records = part_tensors({"text_encoder": text_encoder, "codec": codec}, state_of)
    return save_safetensors(tensors, {"format": PARTS_FORMAT, **{k: json.dumps(v) for k, v in records.items()}}, path)


def load_parts(path: str | os.PathLike) -> tuple[TextEncoder, Codec]:
    tensors, meta = read_safetensors(path, expected_format=PARTS_FORMAT, what="parts file", error=TrainingError)
    codec_record = json.loads(meta["codec"])
    text_encoder = load_text_encoder_part(path, json.loads(meta["text_encoder"]), take(tensors, "text_encoder"))
    codec = load_codec_part(path, codec_record, take(tensors, "codec"))
    if isinstance(codec, VAECodec):
        # The same weights and config as the caller's VAE, so the caller's identity: a VAE rebuilt from its
        # config loses diffusers' private `_use_default_values` key, which VAECodec.identity hashes, and the
        # checkpoint the ranks save must name the VAE the user connects (external.check_same_part compares them).
        codec._id = codec_record["identity"]
    return text_encoder, codec
