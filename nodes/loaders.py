"""Loader nodes: checkpoints, text encoders and codecs. Each one calls t2i_core and returns its object."""
from __future__ import annotations

import json
import logging

from comfy_api.latest import io, ui

from ..t2i_core import (
    TINY_TEXT_CONFIG,
    PixelCodec,
    load_bert_text_encoder,
    load_checkpoint,
    load_pretrained_text_encoder,
    load_text_encoder_file,
    load_vae,
    tiny_text_encoder,
)
from ..t2i_core.codecs import VAE_FAMILIES
from ..t2i_core.external import ExternalCodec, ExternalTextEncoder, describe
from ..t2i_core.text_encoder import MINILM_REQUIREMENT
from . import paths
from .comfy_model import core_model
from .types import CATEGORY, Codec, Node, T2IModel, TextEncoder

LOADERS = f"{CATEGORY}/loaders"
log = logging.getLogger("t2i_mini")


class CheckpointLoader(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniCheckpointLoader",
            display_name="Load T2I Mini Checkpoint",
            category=LOADERS,
            description="Loads a Text-to-Image Mini checkpoint from models/t2i_mini: the U-Net with the text "
                        "encoder and codec it was trained with, and the same model as a core MODEL for ComfyUI's "
                        "KSampler and custom samplers. A model trained on a ComfyUI CLIP or VAE names the file to "
                        "connect (shown on the node); its TEXT_ENCODER / CODEC outputs then stand for it.",
            inputs=[
                io.Combo.Input("ckpt_name", options=paths.checkpoint_names(),
                               tooltip="A .safetensors checkpoint in ComfyUI's models/t2i_mini folder "
                                       "(the Train from Dataset node writes there)."),
            ],
            outputs=[
                T2IModel.Output(display_name="MODEL", tooltip="The model: U-Net, noise schedule, text encoder, codec."),
                TextEncoder.Output(display_name="TEXT_ENCODER",
                                   tooltip="The text encoder the model was trained with; encode prompts with it."),
                Codec.Output(display_name="CODEC", tooltip="The codec the model denoises in (pixels or a VAE); for "
                                                           "Noise Latent / Empty Latent and Decode."),
                io.Model.Output(display_name="CORE_MODEL",
                                tooltip="The same model as a core MODEL: connect it to KSampler, CFGGuider, "
                                        "SamplerCustomAdvanced, ... (with Text Encode's conditioning and an Empty "
                                        "Latent (T2I Mini) for pixel models, or Empty Latent Image for VAE ones)."),
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
        # only the parts the checkpoint names but could not rebuild here (a package-loaded MiniLM needs nothing)
        needs = [f"{part}: {describe(obj.record())}. {obj.record().get('hint') or ''}".strip()
                 for part, obj in (("text encoder", model.text_encoder), ("VAE", model.codec))
                 if isinstance(obj, (ExternalTextEncoder, ExternalCodec))]
        for line in needs:
            log.info("T2I Mini: %s needs its %s", ckpt_name, line)
        ui_text = ui.PreviewText("\n".join(f"needs {line}" for line in needs)) if needs else None
        return io.NodeOutput(model, model.text_encoder, model.codec, core_model(model), ui=ui_text)


class TinyTextEncoder(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniTinyTextEncoder",
            display_name="Tiny Text Encoder (random, offline)",
            category=LOADERS,
            description="A small CLIP text tower (width 256, 4 layers) with random weights drawn from a seed. "
                        "Needs no download; a model trained with it learns only its captions' exact words (for other "
                        "wordings, train with Pretrained Text Encoder (MiniLM)). Use the same seed at training and "
                        "generation.",
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


class OpenCLIPTextEncoder(Node):
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


class TextEncoderFile(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniTextEncoderFile",
            display_name="Load Text Encoder File",
            category=LOADERS,
            description="A CLIP text tower whose weights are a local file in models/text_encoders (.safetensors, "
                        "or a pickle-free .pt/.bin): ComfyUI's clip_l / clip_g (Hugging Face layout, architecture "
                        "read from the file) or open_clip's layout (architecture from an open_clip model name, or "
                        "from text_config when the name is 'custom').",
            inputs=[
                io.Combo.Input("file", options=paths.text_encoder_names(),
                               tooltip="The weights file (a full CLIP state dict or just the text tower)."),
                io.String.Input("model_name", default="auto",
                                tooltip="auto: read the architecture from a Hugging Face-layout file (clip_l, "
                                        "clip_g). For an open_clip-layout file: its open_clip model name (e.g. "
                                        "ViT-L-14), or 'custom' to build the architecture from text_config."),
                io.String.Input("text_config", multiline=True, default=json.dumps(TINY_TEXT_CONFIG),
                                tooltip="For 'custom': open_clip text config as JSON (context_length, vocab_size, "
                                        "width, heads, layers). Ignored otherwise."),
            ],
            outputs=[TextEncoder.Output(display_name="TEXT_ENCODER", tooltip="The frozen text encoder.")],
        )

    @classmethod
    def fingerprint_inputs(cls, file, model_name, text_config):
        try:
            return paths.file_stamp(paths.text_encoder_file(file))
        except FileNotFoundError:
            return f"missing:{file}"

    @classmethod
    def execute(cls, file, model_name, text_config) -> io.NodeOutput:
        path = paths.text_encoder_file(file)
        model_name = model_name.strip() or "auto"
        if model_name != "custom":
            return io.NodeOutput(load_text_encoder_file(path, model_name=model_name))
        try:
            config = json.loads(text_config)
        except json.JSONDecodeError as e:
            raise ValueError(f"text_config is not valid JSON ({e}); give e.g. {json.dumps(TINY_TEXT_CONFIG)}") from None
        if not isinstance(config, dict):
            raise ValueError("text_config must be a JSON object such as " + json.dumps(TINY_TEXT_CONFIG))
        return io.NodeOutput(load_text_encoder_file(path, model_name="custom", text_config=config))


class PretrainedTextEncoder(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniPretrainedTextEncoder",
            display_name="Pretrained Text Encoder (MiniLM)",
            category=LOADERS,
            description="sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, width 384, 22.7M parameters, "
                        f"Apache-2.0), frozen, from the {MINILM_REQUIREMENT} package: an encoder that knows language, "
                        "so a model trained with it also follows prompts worded otherwise than its captions. No "
                        "download. Checkpoints name it and its weight digest; they do not copy it.",
            inputs=[
                io.Combo.Input("folder", options=paths.bert_folder_choices(), default=paths.PACKAGE_TEXT_ENCODER,
                               optional=True,
                               tooltip="The package's all-MiniLM-L6-v2, or another BERT sentence encoder's folder "
                                       "in ComfyUI's models/text_encoders (Hugging Face layout: config.json, "
                                       "model.safetensors or pytorch_model.bin, vocab.txt or tokenizer.json)."),
            ],
            outputs=[TextEncoder.Output(display_name="TEXT_ENCODER", tooltip="The frozen text encoder.")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder=paths.PACKAGE_TEXT_ENCODER):
        try:
            return paths.file_stamp(paths.bert_folder(folder))
        except FileNotFoundError:
            return f"missing:{folder}"

    @classmethod
    def execute(cls, folder=paths.PACKAGE_TEXT_ENCODER) -> io.NodeOutput:
        return io.NodeOutput(load_bert_text_encoder(paths.bert_folder(folder)))


class VAELoader(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniVAELoader",
            display_name="Load VAE (T2I Mini)",
            category=LOADERS,
            description="A VAE from models/vae as a T2I Mini codec (its weights travel inside the checkpoints "
                        "trained on it): a single Stable Diffusion VAE file (vae-ft-mse-840000, sdxl_vae), a "
                        "diffusers folder (config.json + weights, listed as 'name/'), or a .safetensors file with a "
                        "same-name .json config beside it. ComfyUI's own VAELoader works too, where the VAE is "
                        "recorded by name instead.",
            inputs=[
                io.Combo.Input("vae_name", options=paths.vae_choices(),
                               tooltip="A VAE file or diffusers folder (ends in '/') in ComfyUI's models/vae."),
                io.Combo.Input("family", options=list(VAE_FAMILIES), default="auto", optional=True,
                               tooltip="For a single Stable Diffusion VAE file: sd15 (SD 1.x/2.x, latent scale "
                                       "0.18215) or sdxl (0.13025); auto picks sdxl when the name has 'xl'."),
            ],
            outputs=[Codec.Output(display_name="CODEC", tooltip="The VAE codec: images <-> scaled latents.")],
        )

    @classmethod
    def fingerprint_inputs(cls, vae_name, family="auto"):
        try:
            return f"{paths.file_stamp(paths.vae_path(vae_name))}:{family}"
        except FileNotFoundError:
            return f"missing:{vae_name}"

    @classmethod
    def execute(cls, vae_name, family="auto") -> io.NodeOutput:
        return io.NodeOutput(load_vae(paths.vae_path(vae_name), family=family))


class PixelCodecNode(Node):
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


NODES = [CheckpointLoader, TinyTextEncoder, PretrainedTextEncoder, OpenCLIPTextEncoder, TextEncoderFile, VAELoader,
         PixelCodecNode]
