"""The checkpoint format: one .safetensors file that is enough to generate.

Tensors                        Metadata (JSON strings)
  unet.*   U-Net weights         format = "t2i-mini", format_version
                                 unet_config, schedule, training (summary)
  text_encoder.*  (when embedded) text_encoder: the encoder's record (kind, name, identity, how to rebuild it)
  codec.*  (when embedded)       codec: the codec's record (kind, channels, factor, scaling, identity, ...)

A record says whether the part's weights are inside (`embedded`): a small encoder or VAE of this pack's is;
a large text encoder, an open_clip pretrained tag (fetched by name) or another program's part (a ComfyUI CLIP
or VAE) is only named, and loads as a t2i_core.external stand-in that says which file to connect. A BERT
sentence encoder is named by its package (or folder) and weight digest, and reloads from there when the digest
matches.
The trainer saves its EMA weights as `unet.*`: they are the ones to generate with. No pickle anywhere.
The file is written atomically (t2i_core.files), so a crash mid-write never leaves a half-written
checkpoint. Loading checks everything and names the file and the problem.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .codecs import codec_from_spec
from .conditioning import Codec, TextEncoder
from .external import ExternalCodec, ExternalTextEncoder
from .files import prefixed, read_safetensors, save_safetensors, state_dict_problems, take
from .pipeline import T2IModel
from .schedule import NoiseSchedule, ScheduleConfig
from .text_encoder import (
    TextEncoderError,
    TextEncoderSpec,
    bert_text_encoder_from_record,
    build_text_encoder,
    load_pretrained_text_encoder,
    load_tower_weights,
)
from .unet import TextConditionedUNet, UNetConfig

FORMAT = "t2i-mini"
FORMAT_VERSION = 1
REQUIRED_METADATA = ("format", "format_version", "unet_config", "schedule", "text_encoder", "codec")


class CheckpointError(ValueError):
    pass


def part_tensors(parts: dict, state_of: Callable) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The tensors of each part (text encoder, codec) under its name's prefix, with `state_of(name, part)` as its
    weights, and its record marked with whether they are embedded."""
    tensors, records = {}, {}
    for name, obj in parts.items():
        state = state_of(name, obj)
        tensors.update(prefixed(name, state))
        records[name] = {**obj.record(), "embedded": bool(state)}
    return tensors, records


def save_checkpoint(path: str | os.PathLike, model: T2IModel, training: dict | None = None) -> Path:
    tensors, records = part_tensors({"text_encoder": model.text_encoder, "codec": model.codec},
                                    lambda name, obj: obj.checkpoint_state())
    tensors.update(prefixed("unet", model.unet.state_dict()))
    metadata = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION),
        "unet_config": json.dumps(model.unet.cfg.to_dict()),
        "schedule": json.dumps(model.schedule.cfg.to_dict()),
        "text_encoder": json.dumps(records["text_encoder"]),
        "codec": json.dumps(records["codec"]),
        "training": json.dumps(training if training is not None else model.training),
    }
    return save_safetensors(tensors, metadata, path)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and parsed metadata of a checkpoint file, after checking its header."""
    tensors, raw = read_safetensors(path, expected_format=FORMAT, what="checkpoint", error=CheckpointError)
    missing = [k for k in REQUIRED_METADATA if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: metadata lacks {missing}; the file is damaged or from another tool")
    try:
        version = int(raw["format_version"])
    except ValueError:
        raise CheckpointError(f"{path}: format_version {raw['format_version']!r} is not a number") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}, but this pack reads version "
                              f"{FORMAT_VERSION}; update the pack (or re-save the model with this version)")
    meta = {"format_version": version}
    for key in ("unet_config", "schedule", "text_encoder", "codec", "training"):
        try:
            meta[key] = json.loads(raw.get(key, "{}"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({e})") from None
    return tensors, meta


def check_state(path, part: str, expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]):
    problems = state_dict_problems(expected, given, prefix=part)
    if problems:
        raise CheckpointError(f"{path}: {part} weights do not match its config: {', '.join(problems)}")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> T2IModel:
    tensors, meta = read_checkpoint(path)
    try:
        unet = TextConditionedUNet(UNetConfig.from_dict(meta["unet_config"]))
        schedule = NoiseSchedule(ScheduleConfig.from_dict(meta["schedule"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid config in metadata: {e}") from e

    unet_state = take(tensors, "unet")
    check_state(path, "unet", unet.state_dict(), unet_state)
    unet.load_state_dict(unet_state)

    text_encoder = load_text_encoder_part(path, meta["text_encoder"], take(tensors, "text_encoder"))
    if text_encoder.width != unet.cfg.context_dim:
        raise CheckpointError(f"{path}: text encoder width {text_encoder.width} != U-Net context_dim {unet.cfg.context_dim}")
    codec = load_codec_part(path, meta["codec"], take(tensors, "codec"))
    if codec.channels != unet.cfg.in_channels:
        raise CheckpointError(f"{path}: codec has {codec.channels} channels but the U-Net takes {unet.cfg.in_channels}")

    model = T2IModel(unet.eval(), schedule, text_encoder, codec, meta.get("training", {}))
    return model.to(device)


def embedded(record: dict) -> bool:
    # records written before the flag existed embedded every part but a pretrained tag's weights
    return record.get("embedded", record.get("kind", "open_clip") in ("open_clip", "vae") and not record.get("pretrained"))


def load_text_encoder_part(path, record: dict, state: dict[str, torch.Tensor]) -> TextEncoder:
    kind = record.get("kind", "open_clip")
    try:
        if kind == "bert":
            if record.get("folder") is not None and not Path(record["folder"]).is_dir():
                return ExternalTextEncoder(record)  # a folder of another machine: the user connects it by hand
            return bert_text_encoder_from_record(record)
        if kind != "open_clip":
            return ExternalTextEncoder(record)
        spec = TextEncoderSpec.from_dict(record)
        if spec.pretrained is not None:
            return load_pretrained_text_encoder(spec.model_name, spec.pretrained)
        if not embedded(record):
            return ExternalTextEncoder(record)
        text_encoder = build_text_encoder(spec)
        check_state(path, "text_encoder", text_encoder.tower.state_dict(), state)
        load_tower_weights(text_encoder, state, str(path))
        return text_encoder
    except CheckpointError:
        raise
    except (TextEncoderError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild its text encoder: {e}") from e


def load_codec_part(path, record: dict, state: dict[str, torch.Tensor]) -> Codec:
    try:
        if record.get("kind") not in ("pixel", "vae") or (record.get("kind") == "vae" and not embedded(record)):
            return ExternalCodec(record)
        codec = codec_from_spec(record)
        if record["kind"] == "vae":
            check_state(path, "codec", codec.vae.state_dict(), state)
            codec.vae.load_state_dict(state)
        return codec
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot rebuild its codec: {e}") from e
