"""Starting noise, the guided sampler and decoding: the generation half of the pack."""
from __future__ import annotations

import math

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from ..t2i_core import SAMPLERS, PixelCodec, VAECodec, cancel, latent_shape, make_noise, match_batch, sample
from ..t2i_core.codecs import decode_in_pieces
from ..t2i_core.devices import PRECISIONS, check_memory, release_freed_memory
from ..t2i_core.external import check_same_part
from ..t2i_core.geometry import image_size
from .comfy_format import (
    CODEC_KEY,
    from_comfy_conditioning,
    images_to_comfy,
    part_stamp,
    preview,
    text_encoder_stamp,
)
from .comfy_parts import as_codec
from .types import CATEGORY, Node, T2IModel, codec_input

SAMPLING = f"{CATEGORY}/sampling"
MAX_SIZE = 8192
SEED_SPACE = 2**64
VAE_PREVIEW_MAX_CELLS = 32 * 32  # decode VAE previews only for latents this small (a full SD decode costs seconds)
# A preview (grid, upscale to 512 px, JPEG) costs a few ms in the server, so about eight per run, which still show
# the image forming (docs/PERFORMANCE.md, "ComfyUI overhead").
PREVIEWS_PER_RUN = 8


class NoiseLatent(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniNoiseLatent",
            display_name="Noise Latent (T2I Mini)",
            category=SAMPLING,
            description="The sampler's starting noise, in the codec's latent space. Image i of the batch uses seed "
                        "+ i, so an image does not depend on the batch size; the same noise can feed several "
                        "samplers (e.g. to compare guidance scales).",
            inputs=[
                codec_input(tooltip="The codec the model denoises in: the checkpoint loader's CODEC, or the VAE "
                                    "a latent model was trained on."),
                io.Int.Input("seed", default=0, min=0, max=SEED_SPACE - 1, control_after_generate=True,
                             tooltip="Seed of the first image; image i uses seed + i."),
                io.Int.Input("width", default=32, min=4, max=MAX_SIZE, step=4,
                             tooltip="Image width in pixels: a multiple of the codec's factor times the U-Net's "
                                     "downsampling factor (4 for a tiny pixel model; connect the model to check)."),
                io.Int.Input("height", default=32, min=4, max=MAX_SIZE, step=4,
                             tooltip="Image height in pixels, the same multiple as width."),
                io.Int.Input("batch_size", default=4, min=1, max=4096, tooltip="Number of images."),
                T2IModel.Input("model", optional=True,
                               tooltip="Optional: the model, so the size is checked against its U-Net as well."),
            ],
            outputs=[io.Latent.Output(tooltip="Unit Gaussian noise (in ComfyUI's unscaled latent convention).")],
        )

    @classmethod
    def execute(cls, codec, seed, width, height, batch_size, model=None) -> io.NodeOutput:
        codec, shape = latent_for(codec, model, width, height, batch_size, copies=2)  # the noise, then unscaled
        noise = make_noise([(seed + i) % SEED_SPACE for i in range(batch_size)], shape)
        return io.NodeOutput({"samples": codec.unscale(noise).to(mm.intermediate_device())})


def latent_for(codec, model, width: int, height: int, batch: int, copies: int = 1):
    """(the engine's codec, latent shape) for `batch` width x height images: a core VAE takes the model's latent
    scaling where a model is given; the size is checked against the codec and, with a model, its U-Net, and
    `copies` such latents against the free memory."""
    latent_model = model is not None and not isinstance(model.codec, PixelCodec)
    codec = as_codec(codec, scaling=(model.codec.scaling_factor, model.codec.shift_factor) if latent_model else None)
    if model is not None and (model.codec.channels, model.codec.factor) != (codec.channels, codec.factor):
        raise ValueError(f"the codec ({codec.channels} channels, factor {codec.factor}) is not the model's "
                         f"({model.codec.channels} channels, factor {model.codec.factor}); use the CODEC output "
                         "of the same checkpoint, or the VAE it was trained on")
    shape = latent_shape(height, width, channels=codec.channels, codec_factor=codec.factor,
                         unet_factor=model.unet.cfg.downsample_factor if model is not None else 1,
                         what="width and height")
    check_memory(copies * batch * math.prod(shape) * 4, f"a latent of {batch} images of {width}x{height} px",
                 mm.intermediate_device(), "Use a smaller size or batch_size")
    return codec, shape


class EmptyLatent(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniEmptyLatent",
            display_name="Empty Latent (T2I Mini)",
            category=SAMPLING,
            description="An all-zero latent in the codec's shape, for ComfyUI's KSampler, which adds its own noise "
                        "from its seed (core Empty Latent Image is 4-channel at 1/8 size, for VAE models only).",
            inputs=[
                codec_input(tooltip="The codec the model denoises in: the checkpoint loader's CODEC, or the VAE "
                                    "a latent model was trained on."),
                io.Int.Input("width", default=32, min=4, max=MAX_SIZE, step=4,
                             tooltip="Image width in pixels: a multiple of the codec's factor times the U-Net's."),
                io.Int.Input("height", default=32, min=4, max=MAX_SIZE, step=4, tooltip="Image height in pixels."),
                io.Int.Input("batch_size", default=4, min=1, max=4096, tooltip="Number of images."),
                T2IModel.Input("model", optional=True,
                               tooltip="Optional: the model, so the size is checked against its U-Net as well."),
            ],
            outputs=[io.Latent.Output(tooltip="Zeros: the starting latent for KSampler.")],
        )

    @classmethod
    def execute(cls, codec, width, height, batch_size, model=None) -> io.NodeOutput:
        _, shape = latent_for(codec, model, width, height, batch_size)
        return io.NodeOutput({"samples": torch.zeros(batch_size, *shape, device=mm.intermediate_device())})


class GuidedSampler(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniGuidedSampler",
            display_name="Guided DDIM Sampler",
            category=SAMPLING,
            description="Denoises the starting noise with classifier-free guidance: eps = eps(uncond) + cfg * "
                        "(eps(cond) - eps(uncond)), conditional and unconditional in one batched pass.",
            inputs=[
                T2IModel.Input("model", tooltip="The T2I Mini model."),
                io.Conditioning.Input("positive", tooltip="The prompt, encoded with the model's text encoder. Several "
                                                          "prompts (one per line) give each its share of the batch."),
                io.Conditioning.Input("negative", tooltip="The unconditional input: Empty Conditioning, or a "
                                                          "negative prompt."),
                io.Latent.Input("latent", tooltip="The starting noise (Noise Latent)."),
                io.Int.Input("steps", default=25, min=1, max=1000, tooltip="Denoising steps."),
                io.Float.Input("cfg", default=3.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Guidance scale w. 1 = conditional only (no unconditional pass); higher "
                                       "follows the prompt more closely, at some cost in diversity."),
                io.Combo.Input("sampler_name", options=list(SAMPLERS), default="ddim",
                               tooltip=" ".join(s.description for s in SAMPLERS.values())),
                io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="DDIM's noise: 0 is deterministic, 1 matches DDPM's variance."),
                io.Float.Input("guidance_rescale", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Rescale the guided prediction's spread toward the conditional one (Lin et "
                                       "al. 2023); 0.7 tames over-saturation at high cfg."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="auto: bf16 where the device runs it natively, else fp32."),
                io.Float.Input("guidance_start", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Guide only from this point of the run on (0 = pure noise, 1 = clean, as "
                                       "ComfyUI's start_percent). Guidance at the noisiest steps mostly costs "
                                       "variety (Kynkaanniemi et al. 2024): 0.4 keeps it; unguided steps cost half."),
                io.Float.Input("guidance_end", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Guide only up to this point of the run (1 = to the end)."),
                io.Boolean.Input("check_text_encoder", default=True, optional=True,
                                 tooltip="Refuse conditioning from another text encoder than the one the model was "
                                         "trained with (compared by weights). Off: use it anyway, on purpose."),
                io.Boolean.Input("allow_large_sizes", default=False, optional=True,
                                 tooltip="Off: refuse an image whose largest attention layer has over 16x the "
                                         "positions of the size the model was trained at (4x each side), with the "
                                         "cost estimate; attention costs grow with the square of that. On: run "
                                         "it anyway (Cancel still stops it between U-Net blocks)."),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent; decode it with the model's codec.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, cfg, sampler_name, eta, guidance_rescale,
                precision, guidance_start=0.0, guidance_end=1.0, check_text_encoder=True,
                allow_large_sizes=False) -> io.NodeOutput:
        unet_cfg = model.unet.cfg
        codec = model.codec
        z = codec.scale(latent["samples"].float())
        if z.dim() != 4 or z.shape[1] != unet_cfg.in_channels:
            raise ValueError(f"the latent has shape {tuple(z.shape)} but the model denoises {unet_cfg.in_channels}-"
                             "channel latents; make the noise with the model's codec")
        height, width = image_size(z.shape[2], z.shape[3], codec.factor)
        model.latent_shape(height, width)  # checks the size
        model.check_size(height, width, z.shape[0], allow_large=allow_large_sizes, override="turn on allow_large_sizes")
        if guidance_start > guidance_end:
            raise ValueError(f"guidance_start ({guidance_start}) is after guidance_end ({guidance_end}): set start "
                             "<= end (0 = the start of sampling, 1 = its end)")
        batch = z.shape[0]
        cond = match_batch(from_comfy_conditioning(positive, "positive", unet_cfg.context_dim), batch, "positive")
        uncond = match_batch(from_comfy_conditioning(negative, "negative", unet_cfg.context_dim), batch, "negative")
        if check_text_encoder:
            trained_with = model.text_encoder.record()
            for name, conditioning in (("positive", positive), ("negative", negative)):
                check_same_part("text encoder", trained_with, text_encoder_stamp(conditioning),
                                override=f"check_text_encoder off (the {name} conditioning differs)")

        device = mm.get_torch_device()
        model.to(device)
        pbar = comfy.utils.ProgressBar(steps)
        can_preview = isinstance(codec, PixelCodec) or (isinstance(codec, VAECodec) and
                                                        z.shape[2] * z.shape[3] <= VAE_PREVIEW_MAX_CELLS)
        preview_every = max(1, round(steps / PREVIEWS_PER_RUN))

        def callback(step: int, total: int, x0: torch.Tensor):
            mm.throw_exception_if_processing_interrupted()  # cancel within one step
            image = None
            if can_preview and (step % preview_every == 0 or step == total):
                with torch.inference_mode():
                    image = preview(codec.decode(x0[:4] if not isinstance(codec, PixelCodec) else x0))
            pbar.update_absolute(step, total, image)

        try:
            # Cancel is also checked between the U-Net's blocks: one step of a large image can take minutes
            with model.unet.calling_between_blocks(mm.throw_exception_if_processing_interrupted):
                out = sample(model.unet, model.schedule, z.to(device), cond, uncond, steps=steps, guidance_scale=cfg,
                             sampler=sampler_name, eta=eta, guidance_rescale=guidance_rescale, precision=precision,
                             guidance_interval=(guidance_start, guidance_end), callback=callback)
        except BaseException:
            release_freed_memory()  # a cancelled large sample leaves gigabytes freed but held
            raise
        finally:
            if device.type != "cpu":
                model.to(mm.unet_offload_device())
        return io.NodeOutput({"samples": codec.unscale(out).to(mm.intermediate_device()),
                              CODEC_KEY: {**part_stamp(codec), "scaling_factor": getattr(codec, "scaling_factor", 1.0),
                                          "shift_factor": getattr(codec, "shift_factor", 0.0)}})


class Decode(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniDecode",
            display_name="Decode (T2I Mini)",
            category=SAMPLING,
            description="Turns a latent into images with the model's codec (for pixel models, just a rescale), or "
                        "with a ComfyUI VAE, exactly as core VAE Decode does.",
            inputs=[
                codec_input(tooltip="The codec the model denoises in (from the checkpoint loader), or the VAE a "
                                    "latent model was trained on."),
                io.Latent.Input("samples", tooltip="The sampler's output."),
                io.Boolean.Input("check_codec", default=True, optional=True,
                                 tooltip="Refuse a latent the pack's sampler made with another codec or VAE than "
                                         "this one (compared by weights). Off: decode it anyway, on purpose."),
            ],
            outputs=[io.Image.Output(tooltip="The images, (batch, height, width, 3) in 0..1.")],
        )

    @classmethod
    def execute(cls, codec, samples, check_codec=True) -> io.NodeOutput:
        made_with = samples.get(CODEC_KEY) or {}
        scaling = (made_with["scaling_factor"], made_with["shift_factor"]) if "scaling_factor" in made_with else None
        codec = as_codec(codec, scaling=scaling)
        if check_codec:
            check_same_part("codec", made_with, part_stamp(codec), override="check_codec off")
        latent = samples["samples"].float()
        if latent.dim() != 4 or latent.shape[1] != codec.channels:
            raise ValueError(f"the latent has shape {tuple(latent.shape)} but this codec decodes "
                             f"{codec.channels}-channel latents; use the codec of the model that sampled it")
        own_vae = isinstance(codec, VAECodec)  # ComfyUI moves its own VAEs; the pack's are moved here
        device = mm.get_torch_device() if own_vae else torch.device("cpu")
        codec.to(device)
        try:
            # Cancel holds between images, between a large image's tiles, and inside the decoder
            with torch.inference_mode(), cancel.calling(mm.throw_exception_if_processing_interrupted):
                images = decode_in_pieces(codec, latent.to(device))
        finally:
            if own_vae and device.type != "cpu":
                codec.to(mm.vae_offload_device())
        return io.NodeOutput(images_to_comfy(images).to(mm.intermediate_device()))


NODES = [NoiseLatent, EmptyLatent, GuidedSampler, Decode]
