"""The checkpoint format: one .safetensors file that is enough to generate.

Tensors                        Metadata (JSON strings)
  unet.*   U-Net weights         format = "t2i-mini", format_version
                                 unet_config, schedule, text_encoder (spec), codec (spec), training (summary)
  text_encoder.*  (unless the encoder is an open_clip pretrained tag, which is fetched by name)
  codec.*  VAE weights (VAE codec only)

The trainer saves its EMA weights as `unet.*`: they are the ones to generate with. No pickle anywhere.
The file is written atomically (t2i_core.files), so a crash mid-write never leaves a half-written
checkpoint. Loading checks everything and names the file and the problem.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .codecs import codec_from_spec
from .files import prefixed, read_safetensors, save_safetensors, state_dict_problems, take
from .pipeline import T2IModel
from .schedule import NoiseSchedule, ScheduleConfig
from .text_encoder import (
    TextEncoderError,
    TextEncoderSpec,
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


def save_checkpoint(path: str | os.PathLike, model: T2IModel, training: dict | None = None) -> Path:
    tensors = prefixed("unet", model.unet.state_dict())
    spec = model.text_encoder.spec
    if spec.pretrained is None:
        tensors.update(prefixed("text_encoder", model.text_encoder.tower.state_dict()))
    if model.codec.spec["kind"] == "vae":
        tensors.update(prefixed("codec", model.codec.vae.state_dict()))
    metadata = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION),
        "unet_config": json.dumps(model.unet.cfg.to_dict()),
        "schedule": json.dumps(model.schedule.cfg.to_dict()),
        "text_encoder": json.dumps(spec.to_dict()),
        "codec": json.dumps(model.codec.spec),
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
        spec = TextEncoderSpec.from_dict(meta["text_encoder"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid config in metadata: {e}") from e

    unet_state = take(tensors, "unet")
    check_state(path, "unet", unet.state_dict(), unet_state)
    unet.load_state_dict(unet_state)

    try:
        if spec.pretrained is not None:
            text_encoder = load_pretrained_text_encoder(spec.model_name, spec.pretrained)
        else:
            text_encoder = build_text_encoder(spec)
            te_state = take(tensors, "text_encoder")
            check_state(path, "text_encoder", text_encoder.tower.state_dict(), te_state)
            load_tower_weights(text_encoder, te_state, str(path))
    except TextEncoderError as e:
        raise CheckpointError(f"{path}: cannot rebuild its text encoder: {e}") from e
    if text_encoder.width != unet.cfg.context_dim:
        raise CheckpointError(f"{path}: text encoder width {text_encoder.width} != U-Net context_dim {unet.cfg.context_dim}")

    codec_state = take(tensors, "codec") or None
    try:
        codec = codec_from_spec(meta["codec"])
        if codec_state is not None or meta["codec"].get("kind") == "vae":
            check_state(path, "codec", codec.vae.state_dict(), codec_state or {})
            codec.vae.load_state_dict(codec_state)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot rebuild its codec: {e}") from e
    if codec.channels != unet.cfg.in_channels:
        raise CheckpointError(f"{path}: codec has {codec.channels} channels but the U-Net takes {unet.cfg.in_channels}")

    model = T2IModel(unet.eval(), schedule, text_encoder, codec, meta.get("training", {}))
    return model.to(device)
