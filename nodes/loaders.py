"""Loader nodes: checkpoints, text encoders and codecs. Each one calls t2i_core and returns its object."""
from __future__ import annotations

import json

from comfy_api.latest import io

from ..t2i_core import (
    TINY_TEXT_CONFIG,
    PixelCodec,
    load_checkpoint,
    load_pretrained_text_encoder,
    load_text_encoder_file,
    load_vae,
    tiny_text_encoder,
)
from . import paths
from .types import CATEGORY, Codec, T2IModel, TextEncoder, combo_error

LOADERS = f"{CATEGORY}/loaders"


class CheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniCheckpointLoader",
            display_name="Load T2I Mini Checkpoint",
            category=LOADERS,
            description="Loads a Text-to-Image Mini checkpoint from models/t2i_mini: the U-Net with the text "
                        "encoder and codec it was trained with.",
            inputs=[
                io.Combo.Input("ckpt_name", options=paths.checkpoint_names(),
                               tooltip="A .safetensors checkpoint in ComfyUI's models/t2i_mini folder "
                                       "(the Train from Dataset node writes there)."),
            ],
            outputs=[
                T2IModel.Output(display_name="MODEL", tooltip="The model: U-Net, noise schedule, text encoder, codec."),
                TextEncoder.Output(display_name="TEXT_ENCODER",
                                   tooltip="The text encoder the model was trained with; encode prompts with it."),
                Codec.Output(display_name="CODEC", tooltip="The codec the model denoises in (pixels or a VAE)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name):
        if ckpt_name is not None and ckpt_name not in paths.checkpoint_names():  # None: linked, known later
            return (f"checkpoint {ckpt_name!r} is not in the models/{paths.MODEL_FOLDER} folder ({paths.model_dir()}); "
                    "train one with Train from Dataset, or copy a .safetensors file there and refresh")
        return True

    @classmethod
    def fingerprint_inputs(cls, ckpt_name):
        # The same name may be re-trained or overwritten: reload when the file changes.
        try:
            return paths.file_stamp(paths.checkpoint_path(ckpt_name))
        except FileNotFoundError:
            return f"missing:{ckpt_name}"

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        model = load_checkpoint(paths.checkpoint_path(ckpt_name), device="cpu")
        return io.NodeOutput(model, model.text_encoder, model.codec)


class TinyTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniTinyTextEncoder",
            display_name="Tiny Text Encoder (random, offline)",
            category=LOADERS,
            description="A small CLIP text tower (width 256, 4 layers) with random weights drawn from a seed. "
                        "Needs no download; a model trained with it learns its captions' wording. Use the same "
                        "seed at training and generation.",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seed of the random weights. A model only understands the encoder it was "
                                     "trained with, so keep this fixed."),
            ],
            outputs=[TextEncoder.Output(display_name="TEXT_ENCODER", tooltip="The frozen text encoder.")],
        )

    @classmethod
    def execute(cls, seed) -> io.NodeOutput:
        return io.NodeOutput(tiny_text_encoder(seed))


class OpenCLIPTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniOpenCLIPTextEncoder",
            display_name="Load open_clip Text Encoder",
            category=LOADERS,
            description="A pretrained CLIP text tower from open_clip (only the text tower is built). The weights "
                        "download once into the Hugging Face cache; offline, it fails at once with a message.",
            inputs=[
                io.String.Input("model_name", default="ViT-B-32",
                                tooltip="An open_clip model name, e.g. ViT-B-32, ViT-L-14, ViT-H-14 "
                                        "(open_clip.list_models())."),
                io.String.Input("pretrained", default="laion2b_s34b_b79k",
                                tooltip="An open_clip pretrained tag for that model, e.g. openai or laion2b_s34b_b79k "
                                        "(open_clip.list_pretrained())."),
            ],
            outputs=[TextEncoder.Output(display_name="TEXT_ENCODER", tooltip="The frozen text encoder.")],
        )

    @classmethod
    def validate_inputs(cls, model_name, pretrained):
        if model_name is None or pretrained is None:  # linked: checked when the node runs
            return True
        import open_clip
        model_name, pretrained = model_name.strip(), pretrained.strip()
        if open_clip.get_model_config(model_name) is None:
            return f"unknown open_clip model {model_name!r}; see open_clip.list_models()"
        if not open_clip.get_pretrained_cfg(model_name, pretrained):
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            return f"open_clip has no pretrained tag {pretrained!r} for {model_name}; known tags: {', '.join(tags)}"
        return True

    @classmethod
    def execute(cls, model_name, pretrained) -> io.NodeOutput:
        return io.NodeOutput(load_pretrained_text_encoder(model_name.strip(), pretrained.strip()))


class TextEncoderFile(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniTextEncoderFile",
            display_name="Load Text Encoder File",
            category=LOADERS,
            description="A CLIP text tower whose weights are a local file in models/text_encoders (.safetensors, "
                        "or a pickle-free .pt/.bin). The architecture comes from an open_clip model name, or from "
                        "text_config when the name is 'custom'.",
            inputs=[
                io.Combo.Input("file", options=paths.text_encoder_names(),
                               tooltip="The weights file (a full CLIP state dict or just the text tower)."),
                io.String.Input("model_name", default="custom",
                                tooltip="The open_clip model the file belongs to (e.g. ViT-L-14), or 'custom' to "
                                        "build the architecture from text_config."),
                io.String.Input("text_config", multiline=True, default=json.dumps(TINY_TEXT_CONFIG),
                                tooltip="For 'custom': open_clip text config as JSON (context_length, vocab_size, "
                                        "width, heads, layers). Ignored for a named model."),
            ],
            outputs=[TextEncoder.Output(display_name="TEXT_ENCODER", tooltip="The frozen text encoder.")],
        )

    @classmethod
    def validate_inputs(cls, file):
        return combo_error(cls, file=file) or True

    @classmethod
    def fingerprint_inputs(cls, file, model_name, text_config):
        try:
            return paths.file_stamp(paths.text_encoder_file(file))
        except FileNotFoundError:
            return f"missing:{file}"

    @classmethod
    def execute(cls, file, model_name, text_config) -> io.NodeOutput:
        path = paths.text_encoder_file(file)
        model_name = model_name.strip() or "custom"
        if model_name != "custom":
            return io.NodeOutput(load_text_encoder_file(path, model_name=model_name))
        try:
            config = json.loads(text_config)
        except json.JSONDecodeError as e:
            raise ValueError(f"text_config is not valid JSON ({e}); give e.g. {json.dumps(TINY_TEXT_CONFIG)}") from None
        if not isinstance(config, dict):
            raise ValueError("text_config must be a JSON object such as " + json.dumps(TINY_TEXT_CONFIG))
        return io.NodeOutput(load_text_encoder_file(path, model_name="custom", text_config=config))


class VAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniVAELoader",
            display_name="Load VAE (T2I Mini)",
            category=LOADERS,
            description="A diffusers AutoencoderKL from models/vae, as a codec: a diffusers folder (config.json "
                        "+ weights, listed as 'name/'), a .safetensors file with a same-name .json config beside "
                        "it, or a single Stable Diffusion VAE file.",
            inputs=[
                io.Combo.Input("vae_name", options=paths.vae_choices(),
                               tooltip="A VAE file or diffusers folder (ends in '/') in ComfyUI's models/vae."),
            ],
            outputs=[Codec.Output(display_name="CODEC", tooltip="The VAE codec: images <-> scaled latents.")],
        )

    @classmethod
    def validate_inputs(cls, vae_name):
        return combo_error(cls, vae_name=vae_name) or True

    @classmethod
    def fingerprint_inputs(cls, vae_name):
        try:
            return paths.file_stamp(paths.vae_path(vae_name))
        except FileNotFoundError:
            return f"missing:{vae_name}"

    @classmethod
    def execute(cls, vae_name) -> io.NodeOutput:
        return io.NodeOutput(load_vae(paths.vae_path(vae_name)))


class PixelCodecNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniPixelCodec",
            display_name="Pixel Codec",
            category=LOADERS,
            description="The identity codec: the model denoises the image itself (scaled to -1..1). What small "
                        "models trained on a CPU use.",
            inputs=[],
            outputs=[Codec.Output(display_name="CODEC", tooltip="The pixel codec (3 channels, factor 1).")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(PixelCodec())


NODES = [CheckpointLoader, TinyTextEncoder, OpenCLIPTextEncoder, TextEncoderFile, VAELoader, PixelCodecNode]
