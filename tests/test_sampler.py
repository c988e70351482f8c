import pytest
import torch

from t2i_core.conditioning import Conditioning, match_batch
from t2i_core.sampler import make_noise, rescale_guidance, sample
from t2i_core.samplers import SAMPLERS


def run(model, prompts, seeds, **kw):
    cond = model.encode_prompts(prompts)
    noise = make_noise(seeds, (3, 8, 8))
    return sample(model.unet, model.schedule, noise, cond, model.text_encoder.empty(), steps=kw.pop("steps", 6), **kw)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.7), ("ddpm", 0.0)])
def test_same_seed_same_image_whatever_the_batch(test_model, sampler, eta):
    alone = run(test_model, ["a red square"], [42], sampler=sampler, eta=eta, guidance_scale=3.0)
    batch = run(test_model, ["a blue circle", "a red square", "x", "y"], [1, 42, 2, 3], sampler=sampler, eta=eta,
                guidance_scale=3.0)
    torch.testing.assert_close(batch[1:2], alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


def test_guidance_one_equals_pure_conditional(test_model):
    """w = 1 skips the uncond half; it must equal the guided formula evaluated with both halves."""
    m = test_model
    cond = m.encode_prompts(["a green triangle"])
    noise = make_noise([7], (3, 8, 8))
    fast = sample(m.unet, m.schedule, noise, cond, m.text_encoder.empty(), steps=5, guidance_scale=1.0)
    # the same with CFG's formula written out and both passes computed
    x = noise.clone()
    with torch.inference_mode():
        for t, t_prev in SAMPLERS["ddim"].step_pairs(m.schedule, 5):
            tt = torch.tensor([t])
            e_c = m.unet(x, tt, cond.context, cond.key_mask)
            e_u = m.unet(x, tt, m.text_encoder.empty().context, m.text_encoder.empty().key_mask)
            x, _ = SAMPLERS["ddim"].step(m.schedule, e_u + 1.0 * (e_c - e_u), x, t, t_prev)
    torch.testing.assert_close(fast, x, atol=1e-5, rtol=1e-5)
    # and guidance changes the result once w != 1
    assert not torch.allclose(fast, sample(m.unet, m.schedule, noise, cond, m.text_encoder.empty(), steps=5,
                                           guidance_scale=4.0), atol=1e-3)


def test_batched_cfg_equals_two_passes(test_model):
    m = test_model
    cond, uncond = m.encode_prompts(["one", "two"]), m.encode_prompts(["a negative prompt"])
    noise = make_noise([0, 1], (3, 8, 8))
    w = 5.0
    fast = sample(m.unet, m.schedule, noise, cond, uncond, steps=4, guidance_scale=w)
    x = noise.clone()
    with torch.inference_mode():
        for t, t_prev in SAMPLERS["ddim"].step_pairs(m.schedule, 4):
            tt = torch.tensor([t])
            u = match_batch(uncond, 2)
            e_c, e_u = m.unet(x, tt, cond.context, cond.key_mask), m.unet(x, tt, u.context, u.key_mask)
            x, _ = SAMPLERS["ddim"].step(m.schedule, e_u + w * (e_c - e_u), x, t, t_prev)
    torch.testing.assert_close(fast, x, atol=1e-4, rtol=1e-4)


def test_negative_prompt_replaces_empty(test_model):
    m = test_model
    cond = m.encode_prompts(["a cat"])
    noise = make_noise([3], (3, 8, 8))
    a = sample(m.unet, m.schedule, noise, cond, m.text_encoder.empty(), steps=4, guidance_scale=4.0)
    b = sample(m.unet, m.schedule, noise, cond, m.encode_prompts(["blurry"]), steps=4, guidance_scale=4.0)
    assert not torch.allclose(a, b, atol=1e-4)


def test_guidance_rescale_matches_conditional_std():
    g, c = torch.randn(2, 3, 4, 4) * 3, torch.randn(2, 3, 4, 4)
    full = rescale_guidance(g, c, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), c.std(dim=(1, 2, 3)))
    torch.testing.assert_close(rescale_guidance(g, c, 0.0), g)


def test_callback_sees_every_step_and_can_cancel(test_model):
    seen = []
    run(test_model, ["a"], [0], steps=5, callback=lambda i, n, x0: seen.append((i, n, tuple(x0.shape))))
    assert seen == [(i, 5, (1, 3, 8, 8)) for i in range(1, 6)]

    class Cancelled(Exception):
        pass

    def cancel_at_two(i, n, x0):
        if i == 2:
            raise Cancelled
    with pytest.raises(Cancelled):
        run(test_model, ["a"], [0], steps=5, callback=cancel_at_two)


def test_runs_under_inference_mode(test_model):
    out = run(test_model, ["a"], [0], steps=2)
    assert out.is_inference()


def test_missing_uncond_and_bad_batch_are_clear_errors(test_model):
    m = test_model
    cond = m.encode_prompts(["a", "b"])
    with pytest.raises(ValueError, match="unconditional"):
        sample(m.unet, m.schedule, make_noise([0, 1], (3, 8, 8)), cond, None, steps=2, guidance_scale=3.0)
    with pytest.raises(ValueError, match="one per image"):
        sample(m.unet, m.schedule, make_noise([0, 1, 2], (3, 8, 8)), cond, m.text_encoder.empty(), steps=2)
    with pytest.raises(ValueError, match="sampler must be"):
        sample(m.unet, m.schedule, make_noise([0], (3, 8, 8)), match_batch(cond, 2), None, sampler="euler", steps=2)


def test_conditionings_of_different_lengths_are_padded_and_masked(test_model):
    m = test_model
    cond = m.encode_prompts(["a"])
    short = Conditioning(cond.context[:, :5], cond.key_mask[:, :5])
    noise = make_noise([0], (3, 8, 8))
    a = sample(m.unet, m.schedule, noise, cond, m.text_encoder.empty(), steps=3, guidance_scale=2.0)
    b = sample(m.unet, m.schedule, noise, short, m.text_encoder.empty(), steps=3, guidance_scale=2.0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_runs_on_cpu_and_stays_close(test_model):
    from t2i_core.devices import bf16_supported
    if not bf16_supported("cpu"):
        pytest.skip("this CPU has no native bf16")
    a = run(test_model, ["a"], [0], steps=3)
    b = run(test_model, ["a"], [0], steps=3, precision="bf16")
    # a random model amplifies its inputs, so compare relative to the output scale
    assert (a - b).abs().max() < 0.05 * a.abs().max() and not torch.equal(a, b)


def test_guidance_interval_guides_only_the_steps_inside_it(test_model):
    m = test_model
    cond, uncond = m.encode_prompts(["a small blue square"] * 2), m.text_encoder.empty()
    noise = make_noise([0, 1], (3, 16, 16))
    steps, w, interval = 6, 4.0, (0.4, 1.0)
    # the rule written out: CFG's formula while progress 1 - t/T is in the interval, eps(cond) before it
    x = noise.clone()
    with torch.inference_mode():
        for t, t_prev in SAMPLERS["ddim"].step_pairs(m.schedule, steps):
            tt = torch.tensor([t])
            e_c = m.unet(x, tt, cond.context, cond.key_mask)
            if interval[0] <= 1 - t / m.schedule.cfg.num_train_timesteps <= interval[1]:
                e_u = m.unet(x, tt, uncond.context.expand(2, -1, -1), uncond.key_mask)
                e_c = e_u + w * (e_c - e_u)
            x, _ = SAMPLERS["ddim"].step(m.schedule, e_c, x, t, t_prev)

    widths = []
    hook = m.unet.conv_out.register_forward_hook(lambda mod, inp, out: widths.append(out.shape[0]))
    try:
        limited = sample(m.unet, m.schedule, noise, cond, uncond, steps=steps, guidance_scale=w,
                         guidance_interval=interval)
    finally:
        hook.remove()
    torch.testing.assert_close(limited, x, atol=1e-5, rtol=1e-5)
    assert widths == [2, 2, 2, 4, 4, 4]  # the unguided steps skip the unconditional half
    full = sample(m.unet, m.schedule, noise, cond, uncond, steps=steps, guidance_scale=w)
    assert not torch.allclose(limited, full, atol=1e-3)
    with pytest.raises(ValueError, match="guidance_interval"):
        sample(m.unet, m.schedule, noise, cond, uncond, steps=steps, guidance_interval=(0.6, 0.2))
