"""Text-to-Image Mini's engine: plain PyTorch, usable without ComfyUI.

    from t2i_core import load_checkpoint
    model = load_checkpoint("my_model.safetensors")
    images = model.generate("a large red circle on the left", seeds=[0, 1, 2, 3], guidance_scale=3.0)
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .codecs import CodecError, PixelCodec, VAECodec, codec_from_spec, load_vae
from .conditioning import Codec, Conditioning, EncodedText, TextEncoder, match_batch
from .devices import autocast, default_device, resolve_precision
from .geometry import latent_shape
from .pipeline import T2IModel
from .sampler import make_noise, sample
from .samplers import SAMPLERS
from .schedule import NoiseSchedule, ScheduleConfig
from .text_encoder import (
    TINY_TEXT_CONFIG,
    FrozenBertTextEncoder,
    FrozenCLIPTextEncoder,
    TextEncoderError,
    TextEncoderSpec,
    build_text_encoder,
    load_bert_text_encoder,
    load_pretrained_text_encoder,
    load_text_encoder_file,
    minilm_text_encoder,
    tiny_text_encoder,
)
from .unet import PRESETS, TextConditionedUNet, UNetConfig, preset_config

__all__ = [
    "CheckpointError", "load_checkpoint", "save_checkpoint", "CodecError", "PixelCodec", "VAECodec",
    "codec_from_spec", "load_vae", "Codec", "Conditioning", "EncodedText", "TextEncoder", "match_batch", "autocast",
    "default_device", "resolve_precision", "latent_shape", "T2IModel", "SAMPLERS", "make_noise", "sample", "NoiseSchedule", "ScheduleConfig", "TINY_TEXT_CONFIG",
    "FrozenCLIPTextEncoder", "FrozenBertTextEncoder", "TextEncoderError", "TextEncoderSpec", "build_text_encoder",
    "load_bert_text_encoder", "load_pretrained_text_encoder", "load_text_encoder_file", "minilm_text_encoder",
    "tiny_text_encoder", "PRESETS",
    "TextConditionedUNet", "UNetConfig", "preset_config",
]
