"""A T2I Mini model as a core ComfyUI MODEL, so KSampler, SamplerCustomAdvanced, the guiders and every core sampler
and scheduler drive it.

ComfyUI samples in its k-diffusion ("VE") convention: x = x0 + sigma * eps, sigma_t = sqrt((1 - abar_t) / abar_t).
The model receives x / sqrt(sigma^2 + 1), which is our x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, at the
timestep whose sigma it is, and predicts eps or v as it was trained to; ComfyUI's EPS / V_PREDICTION classes turn
that into x0. So the schedule bridge is the sigma table alone: `model_sampling` is registered with the
checkpoint's own betas, making it equal to the engine's NoiseSchedule, and `sampling_settings` names the same
schedule in ComfyUI's words for core nodes that rebuild it (ModelSamplingDiscrete): diffusers' (and our)
"scaled_linear" is ComfyUI's "linear", our "linear" its "sqrt_linear", our "cosine" (Nichol & Dhariwal's, s = 0.008) its "cosine".

The latent format scales as the model's codec does, and for previews maps latents to RGB: the identity for
pixel models, Stable Diffusion's factors for its VAE.
"""
from __future__ import annotations

import os

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models_base
import torch

from ..t2i_core import PixelCodec, T2IModel
from ..t2i_core.devices import autocast, release_freed_memory
from ..t2i_core.geometry import image_size

COMFY_BETA_SCHEDULES = {"scaled_linear": "linear", "linear": "sqrt_linear", "cosine": "cosine"}
PIXEL_RGB_FACTORS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


class T2IMiniLatentFormat(comfy.latent_formats.LatentFormat):
    def __init__(self, codec):
        self.latent_channels = codec.channels
        self.scale_factor = float(getattr(codec, "scaling_factor", 1.0))
        self.shift_factor = float(getattr(codec, "shift_factor", 0.0))
        if isinstance(codec, PixelCodec):
            self.latent_rgb_factors = PIXEL_RGB_FACTORS
        elif codec.channels == 4:
            self.latent_rgb_factors = comfy.latent_formats.SD15().latent_rgb_factors

    def process_in(self, latent):
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor + self.shift_factor


def sampling_settings(schedule) -> dict:
    cfg = schedule.cfg
    return {"beta_schedule": COMFY_BETA_SCHEDULES[cfg.beta_schedule], "linear_start": cfg.beta_start,
            "linear_end": cfg.beta_end, "timesteps": cfg.num_train_timesteps}


class T2IMiniModelConfig(comfy.supported_models_base.BASE):
    """The model config ComfyUI's BaseModel is built from; the U-Net itself is ours, not one ComfyUI builds."""
    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    memory_usage_factor = 1.0

    def __init__(self, model: T2IModel):
        super().__init__(dict(self.unet_config))
        self.latent_format = T2IMiniLatentFormat(model.codec)
        self.sampling_settings = sampling_settings(model.schedule)
        self.unet_config["in_channels"] = model.unet.cfg.in_channels
        self.supported_inference_dtypes = [torch.float32]


# KSampler and the other core samplers have no input of ours, so sizes beyond the limit (t2i_core.geometry) are
# refused on this path unless the server's operator sets this environment variable to 1.
ALLOW_LARGE_SIZES_ENV = "T2I_MINI_ALLOW_LARGE_SIZES"


class DiffusionModel(torch.nn.Module):
    """Our U-Net under the call ComfyUI makes of a diffusion model: (x, t, context=..., attention_mask=...).

    Each call first checks the size against what the model was trained at, and runs with ComfyUI's interrupt
    checked between the U-Net's blocks, so Cancel stops even a large image within about one block."""

    def __init__(self, model: T2IModel):
        super().__init__()
        self.unet = model.unet
        self.check_size = model.check_size
        self.codec_factor = model.codec.factor

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, attention_mask=None,
                **kwargs):
        key_mask = None if attention_mask is None else attention_mask.reshape(attention_mask.shape[0], -1) > 0.5
        # fp32 on the CPU, as ComfyUI runs its own models there; bf16 autocast on a GPU that has it
        precision = "fp32" if x.device.type == "cpu" else "auto"
        self.check_size(*image_size(x.shape[-2], x.shape[-1], self.codec_factor), batch=x.shape[0], rows=x.shape[0],
                        allow_large=os.environ.get(ALLOW_LARGE_SIZES_ENV) == "1",
                        override=f"sample with the Guided DDIM Sampler and allow_large_sizes on (for KSampler, the "
                                 f"server's operator can set {ALLOW_LARGE_SIZES_ENV}=1)")
        check_cancel = self.unet.calling_between_blocks(mm.throw_exception_if_processing_interrupted)
        try:
            with autocast(x.device, precision), check_cancel:
                return self.unet(x, timesteps, context, key_mask).float()
        except BaseException:
            release_freed_memory()  # a cancelled large sample leaves gigabytes freed but held
            raise


class T2IMiniBaseModel(comfy.model_base.BaseModel):
    def __init__(self, model: T2IModel, device=None):
        config = T2IMiniModelConfig(model)
        model_type = (comfy.model_base.ModelType.V_PREDICTION if model.schedule.cfg.prediction_type == "v_prediction"
                      else comfy.model_base.ModelType.EPS)
        super().__init__(config, model_type=model_type, device=device)
        self.diffusion_model = DiffusionModel(model)
        # the checkpoint's own betas: the sigma table then equals the engine's schedule to the last bit
        self.model_sampling._register_schedule(given_betas=model.schedule.betas.clone())

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        mask = kwargs.get("attention_mask")
        if mask is not None:  # which tokens are real, as the pack's Text Encode gives it
            out["attention_mask"] = comfy.conds.CONDRegular(mask.reshape(mask.shape[0], -1).long())
        return out


def core_model(model: T2IModel) -> comfy.model_patcher.ModelPatcher:
    """The model as a core MODEL: a ModelPatcher, so ComfyUI's model management loads and offloads it."""
    base = T2IMiniBaseModel(model, device=mm.unet_offload_device())
    size = sum(p.numel() * p.element_size() for p in model.unet.parameters())
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device(), size=size)
