"""Our schedules and steps against diffusers' DDIMScheduler / DDPMScheduler, to float precision."""
import inspect

import diffusers
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from t2i_core.samplers import SAMPLERS
from t2i_core.schedule import NoiseSchedule, ScheduleConfig

CONFIGS = [
    ScheduleConfig(beta_schedule="scaled_linear", prediction_type="epsilon", timestep_spacing="leading", steps_offset=1),
    ScheduleConfig(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="v_prediction",
                   timestep_spacing="trailing"),
    ScheduleConfig(beta_schedule="cosine", prediction_type="epsilon", timestep_spacing="linspace", set_alpha_to_one=False),
    ScheduleConfig(beta_schedule="scaled_linear", prediction_type="v_prediction", timestep_spacing="trailing"),
]


def ids(cfg):
    return f"{cfg.beta_schedule}-{cfg.prediction_type}-{cfg.timestep_spacing}"


def fake_model(x, t):
    # any smooth function of (x, t) will do: both implementations see the same outputs
    return torch.tanh(x * 0.7 + t / 1000.0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_betas_and_timesteps_equal_diffusers(cfg):
    ours, theirs = NoiseSchedule(cfg), DDIMScheduler.from_config(cfg.diffusers_config())
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, atol=1e-7, rtol=1e-6)
    for steps in (1, 7, 25, 50):
        theirs.set_timesteps(steps)
        assert ours.timesteps(steps) == theirs.timesteps.tolist()


@pytest.mark.parametrize("name,eta", [(name, eta) for name, rule in SAMPLERS.items()
                                      for eta in ((0.0, 0.5) if rule.uses_eta else (0.0,))])
@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_every_sampler_equals_its_diffusers_scheduler(cfg, name, eta):
    """Each sampler of the table, step by step, against the diffusers scheduler it names, fed the same noise."""
    rule, ours = SAMPLERS[name], NoiseSchedule(cfg)
    theirs = getattr(diffusers, rule.diffusers_class).from_config(cfg.diffusers_config())
    takes_eta = "eta" in inspect.signature(theirs.step).parameters
    assert takes_eta == rule.uses_eta
    steps = 20
    theirs.set_timesteps(steps)
    assert [t for t, _ in rule.step_pairs(ours, steps)] == theirs.timesteps.tolist()
    x_ours = x_theirs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gen_ours, gen_theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t, t_prev in rule.step_pairs(ours, steps):
        # both draw one standard normal per step that adds noise (DDPM's last, noise-free step draws last)
        noise = torch.randn(2, 3, 8, 8, generator=gen_ours) if rule.adds_noise(eta) else None
        x_ours, _ = rule.step(ours, fake_model(x_ours, t), x_ours, t, t_prev, eta=eta, noise=noise)
        x_theirs = theirs.step(fake_model(x_theirs, t), t, x_theirs, generator=gen_theirs,
                               **({"eta": eta} if takes_eta else {})).prev_sample
        torch.testing.assert_close(x_ours, x_theirs, atol=1e-5, rtol=1e-5)


def test_q_sample_and_targets():
    s = NoiseSchedule(ScheduleConfig(prediction_type="v_prediction"))
    x0, noise = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    t = torch.tensor([0, 10, 500, 999])
    xt = s.q_sample(x0, t, noise)
    # the model output that equals the target must recover x0 and eps exactly
    for i in range(4):
        ti = int(t[i])
        x0_hat, eps_hat = s.predict_x0_eps(s.target(x0, t, noise)[i:i + 1], xt[i:i + 1], ti)
        torch.testing.assert_close(x0_hat, x0[i:i + 1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(eps_hat, noise[i:i + 1], atol=1e-4, rtol=1e-4)
    theirs = DDPMScheduler.from_config(s.cfg.diffusers_config())
    torch.testing.assert_close(xt, theirs.add_noise(x0, noise, t), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s.velocity(x0, t, noise), theirs.get_velocity(x0, noise, t), atol=1e-6, rtol=1e-6)


def test_bad_config_and_steps():
    with pytest.raises(ValueError, match="beta_schedule"):
        ScheduleConfig(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="steps must be"):
        NoiseSchedule().timesteps(0)
