"""The core-MODEL bridge (nodes/comfy_model.py) against t2i_core's NoiseSchedule and sampler, in-process with
ComfyUI's own sampling code: sigma tables, timestep mapping, eps and v conversion, and whole sampling runs."""
import pytest
import torch
from t2i_test_utils import make_test_model

from t2i_core import NoiseSchedule, ScheduleConfig, make_noise, sample

BETA_SCHEDULES = ("scaled_linear", "linear", "cosine")


@pytest.fixture(scope="module")
def bridge(comfy_pack):
    from scripts.comfy_inprocess import pack_module
    return pack_module("nodes.comfy_model")


@pytest.fixture(scope="module")
def fmt(comfy_pack):
    from scripts.comfy_inprocess import pack_module
    return pack_module("nodes.comfy_format")


def model_with(beta_schedule="scaled_linear", prediction_type="epsilon", patch_size=1):
    m = make_test_model(prediction_type=prediction_type, patch_size=patch_size)
    m.schedule = NoiseSchedule(ScheduleConfig(beta_schedule=beta_schedule, prediction_type=prediction_type))
    return m


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_sigma_tables_equal_the_schedule(bridge, beta_schedule):
    import comfy.model_sampling
    m = model_with(beta_schedule)
    abar = m.schedule.alphas_cumprod
    ours = ((1 - abar) / abar).sqrt()
    core = bridge.core_model(m).model.model_sampling
    assert torch.equal(core.sigmas, ours.float())  # the checkpoint's own betas: exact
    # the same schedule by its ComfyUI name (what core nodes such as ModelSamplingDiscrete rebuild from)
    named = comfy.model_sampling.ModelSamplingDiscrete(bridge.T2IMiniModelConfig(m))
    torch.testing.assert_close(named.sigmas, ours.float(), rtol=2e-5, atol=1e-5)  # float64 there, float32 here


def test_timesteps_map_to_their_sigmas_and_back(bridge):
    sampling = bridge.core_model(model_with()).model.model_sampling
    t = torch.tensor([0, 1, 37, 500, 961, 999])
    assert torch.equal(sampling.timestep(sampling.sigma(t)), t)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_model_input_and_output_conversion(bridge, prediction_type):
    m = model_with(prediction_type=prediction_type)
    sampling = bridge.core_model(m).model.model_sampling
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([3, 250, 700, 999])
    sigma = sampling.sigma(t)
    x_comfy = x0 + sigma.view(-1, 1, 1, 1) * eps  # ComfyUI's variable: x0 + sigma * eps
    # what the U-Net is fed is exactly the engine's x_t ...
    torch.testing.assert_close(sampling.calculate_input(sigma, x_comfy), m.schedule.q_sample(x0, t, eps))
    # ... and what it is trained to output (eps or v) gives back x0
    target = m.schedule.target(x0, t, eps)
    torch.testing.assert_close(sampling.calculate_denoised(sigma, target, x_comfy), x0, rtol=1e-4, atol=1e-4)


def conditionings(m, fmt, prompt="a red circle"):
    cond, uncond = m.encode_prompts([prompt]), m.text_encoder.empty()
    return cond, uncond, fmt.to_comfy_conditioning(cond, "cpu"), fmt.to_comfy_conditioning(uncond, "cpu")


def ksample(bridge, m, positive, negative, sampler, scheduler, steps=8, cfg=3.0, seed=5, size=8):
    import comfy.sample
    latent = torch.zeros(1, 3, size, size)
    noise = comfy.sample.prepare_noise(latent, seed)  # for one image: the same numbers as make_noise([seed])
    return comfy.sample.sample(bridge.core_model(m), noise, steps, cfg, sampler, scheduler, positive, negative,
                               latent, denoise=1.0, disable_pbar=True, seed=seed)


@pytest.mark.parametrize("prediction_type,patch_size", [("epsilon", 1), ("v_prediction", 1), ("v_prediction", 2)])
def test_core_ddim_with_the_simple_scheduler_equals_our_ddim(bridge, fmt, prediction_type, patch_size):
    # Our DDIM visits the "trailing" timesteps 999, 999 - T/steps, ...: ComfyUI's "simple" scheduler's set. Core
    # "ddim" is Euler in ComfyUI's variable, which is DDIM (eta 0) exactly; CFG in x0 or in eps is the same
    # affine combination. Starting at sigma_max, ComfyUI scales the noise to x_T = eps, as our sampler starts.
    # A patched U-Net (tiny-patch2's kind) takes and returns whole images, so KSampler sees no difference.
    m = model_with(prediction_type=prediction_type, patch_size=patch_size)
    cond, uncond, pos, neg = conditionings(m, fmt)
    core = ksample(bridge, m, pos, neg, "ddim", "simple")
    ours = sample(m.unet, m.schedule, make_noise([5], (3, 8, 8)), cond, uncond, steps=8, guidance_scale=3.0)
    torch.testing.assert_close(core, ours, rtol=1e-5, atol=1e-5 * ours.abs().max().item())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_core_ddim_uniform_equals_our_ddim_on_its_step_set(bridge, fmt, prediction_type):
    # "ddim_uniform" visits 1, 1 + T/steps, ..., diffusers' "leading" spacing with steps_offset 1, which differs
    # from our default by construction; compared against our DDIM on that schedule. ComfyUI starts below
    # sigma_max there, from x = sigma * eps (x_T = sqrt(1 - abar) eps in the engine's variable), so our sampler
    # is given that same starting point.
    m = model_with(prediction_type=prediction_type)
    cond, uncond, pos, neg = conditionings(m, fmt)
    core = ksample(bridge, m, pos, neg, "ddim", "ddim_uniform")
    leading = NoiseSchedule(ScheduleConfig(**{**m.schedule.cfg.to_dict(), "timestep_spacing": "leading", "steps_offset": 1}))
    start = leading.timesteps(8)[0]
    x_T = make_noise([5], (3, 8, 8)) * (1 - leading.alphas_cumprod[start]).sqrt()
    ours = sample(m.unet, leading, x_T, cond, uncond, steps=8, guidance_scale=3.0)
    torch.testing.assert_close(core, ours, rtol=1e-5, atol=1e-5 * ours.abs().max().item())


def test_the_attention_mask_reaches_the_unet(bridge, fmt):
    m = model_with()
    cond, uncond, pos, neg = conditionings(m, fmt)
    masked = ksample(bridge, m, pos, neg, "euler", "karras")
    unmasked = ksample(bridge, m, [[pos[0][0], {}]], [[neg[0][0], {}]], "euler", "karras")
    assert (masked - unmasked).abs().max() > 1e-3  # the padding after end-of-text is hidden only with the mask


def test_latent_format_scales_like_the_codec(bridge):
    from test_codecs import TINY_VAE

    from t2i_core.codecs import vae_from_config
    pixel = bridge.T2IMiniLatentFormat(model_with().codec)
    z = torch.randn(1, 3, 4, 4)
    assert torch.equal(pixel.process_in(z), z) and pixel.latent_rgb_factors is not None
    vae = vae_from_config(TINY_VAE)
    fmt = bridge.T2IMiniLatentFormat(vae)
    raw = torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(fmt.process_in(raw), vae.scale(raw))
    torch.testing.assert_close(fmt.process_out(vae.scale(raw)), raw)


def test_core_model_refuses_far_larger_sizes_and_checks_cancel_between_blocks(bridge, monkeypatch):
    import comfy.model_management as mm
    m = make_test_model()
    m.training = {"config": {"resolution": 8}}
    diffusion = bridge.core_model(m).model.diffusion_model
    context = torch.randn(2, 4, 32)
    with pytest.raises(ValueError, match="T2I_MINI_ALLOW_LARGE_SIZES=1"):
        diffusion(torch.randn(2, 3, 64, 64), torch.tensor([500.0, 500.0]), context=context)
    monkeypatch.setenv(bridge.ALLOW_LARGE_SIZES_ENV, "1")
    assert diffusion(torch.randn(2, 3, 64, 64), torch.tensor([500.0, 500.0]), context=context).shape == (2, 3, 64, 64)
    # ComfyUI's Cancel, seen between the U-Net's blocks of one forward pass
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            diffusion(torch.randn(2, 3, 8, 8), torch.tensor([500.0, 500.0]), context=context)
    finally:
        mm.interrupt_current_processing(False)
    assert m.unet.between_blocks is None
