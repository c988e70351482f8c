"""Every fast path in t2i_core's U-Net and sampler gives the plain computation's numbers.

The plain computation is evals/seed_reference.py: the U-Net written out op by op from its weights with
manual attention, and the seed's sampler (two forward passes per guided step, the text's keys and values
projected in every block, the whole padded context). Fast paths checked here:
- batched classifier-free guidance, with x shared by [uncond; cond] (work before the first cross-attention
  is done once), and the text's K/V projected once per run (PreparedContext);
- padding cut from a masked context (trim_padding), in prepare_context and in a plain forward on the CPU;
- the additive attention mask built once per forward;
- bf16 attention on the CPU as two matmuls and a softmax (small score matrices) instead of
  scaled_dot_product_attention, and the switch between the two;
- ResBlocks reading one shared SiLU(temb), dropout skipped in eval mode.
No timings here: speed lives in bench/ (python -m bench).
"""
import pytest
import torch
from t2i_test_utils import randomize_zero_layers

from evals.seed_reference import prepare_kv, reference_forward, reference_sample
from t2i_core import unet as unet_module
from t2i_core.conditioning import Conditioning, concat_conditionings
from t2i_core.devices import bf16_supported
from t2i_core.sampler import make_noise, sample
from t2i_core.schedule import NoiseSchedule
from t2i_core.unet import TextConditionedUNet, UNetConfig, attention, trim_padding, use_matmul_attention

needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")


def small_unet(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
               context_dim=32)
    return randomize_zero_layers(TextConditionedUNet(UNetConfig(**{**cfg, **kw})), seed).eval()


def masked_context(batch=2, length=10, real=(3, 7), seed=0):
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.randn(batch, length, 32, generator=gen)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for i, n in enumerate(real[:batch]):
        mask[i, :n] = True
    return ctx, mask


def close(a, b, tol=1e-5):
    scale = b.abs().max().clamp_min(1e-6)
    assert (a - b).abs().max() <= tol * scale, f"max |a-b| = {(a - b).abs().max():.3g}, scale {scale:.3g}"


# ---------------------------------------------------------------- the U-Net's forward pass

def test_forward_equals_plain_ops_with_mask_and_prepared_context():
    unet = small_unet()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 600])
    ctx, mask = masked_context()
    with torch.no_grad():
        ref = reference_forward(unet, x, t, ctx, mask, mode="manual")
        close(unet(x, t, ctx, mask), ref)  # trims padding, builds the additive mask once
        close(unet(x, t, unet.prepare_context(ctx, mask)), ref)  # K/V projected once
        close(unet(x, t, ctx), reference_forward(unet, x, t, ctx, None))  # no mask at all


def test_shared_x_equals_duplicated_x():
    """CFG: x (B rows) under k*B conditionings equals cat([x]*k) under them, with one or per-row timesteps."""
    unet = small_unet()
    x = torch.randn(2, 3, 8, 8)
    ctx, mask = masked_context(batch=4, real=(2, 2, 5, 9))
    prepared = unet.prepare_context(ctx, mask)
    with torch.no_grad():
        for t in (torch.tensor([500]), torch.tensor([100, 900])):
            t_wide = t if t.numel() == 1 else t.repeat(2)
            ref = reference_forward(unet, torch.cat([x, x]), t_wide, ctx, mask)
            close(unet(x, t, prepared), ref)
            close(unet(x, t, ctx, mask), ref)
            close(unet(torch.cat([x, x]), t_wide, prepared), ref)


def test_batch_mismatches_are_clear_errors():
    unet = small_unet()
    ctx, _ = masked_context(batch=3)
    with pytest.raises(ValueError, match="conditionings for 2 images"):
        unet(torch.randn(2, 3, 8, 8), torch.tensor([1]), ctx)
    with pytest.raises(ValueError, match="timesteps for 2 images"):
        unet(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]), ctx[:2])
    # one context broadcast over several images still works, as before
    out = unet(torch.randn(2, 3, 8, 8), torch.tensor([1]), ctx[:1])
    assert out.shape == (2, 3, 8, 8)


def test_gradients_equal_plain_ops():
    """Training through the fast paths (padding cut, mask built once) gives the plain computation's gradients,
    for the weights and for the text context."""
    fast, plain = small_unet(), small_unet()
    fast.train(), plain.train()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([30, 700])
    ctx, mask = masked_context()
    target = torch.randn(2, 3, 8, 8)
    ctx_f, ctx_p = ctx.clone().requires_grad_(), ctx.clone().requires_grad_()
    torch.nn.functional.mse_loss(fast(x, t, ctx_f, mask), target).backward()
    torch.nn.functional.mse_loss(reference_forward(plain, x, t, ctx_p, mask), target).backward()
    scale = max(p.grad.abs().max() for p in plain.parameters())
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
    close(ctx_f.grad, ctx_p.grad, 1e-4)
    assert ctx_f.grad[~mask].abs().max() == 0  # padding gets no gradient either way


def test_trim_padding_keeps_every_attended_column():
    ctx = torch.randn(3, 8, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    c, m = trim_padding(ctx, mask)
    assert c.shape[1] == 4 and torch.equal(m, mask[:, :4])  # the hole in row 1 is kept, not cut at sum() = 3
    c, m = trim_padding(ctx, torch.ones(3, 8, dtype=torch.bool))
    assert m is None and c is ctx
    # a mask with a hole gives the same U-Net output trimmed or not
    unet = small_unet(context_dim=4)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        close(unet(x, torch.tensor([5]), ctx, mask), reference_forward(unet, x, torch.tensor([5]), ctx, mask))


def test_dropout_still_applies_in_training_mode():
    unet = small_unet(dropout=0.5)
    x, t, ctx = torch.randn(1, 3, 8, 8), torch.tensor([5]), torch.randn(1, 4, 32)
    unet.train()
    assert not torch.allclose(unet(x, t, ctx), unet(x, t, ctx))
    unet.eval()
    torch.testing.assert_close(unet(x, t, ctx), unet(x, t, ctx))


# ---------------------------------------------------------------- attention kernels

@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)])
@pytest.mark.parametrize("keys", [7, 300])
def test_attention_kernels_equal_softmax_by_hand(dtype, keys):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 20, 16), torch.randn(2, 3, keys, 16), torch.randn(2, 3, keys, 16)
    keep = torch.ones(2, 1, 1, keys, dtype=torch.bool)
    keep[0, ..., 5:] = False
    additive = torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, float("-inf"))
    expected = torch.softmax((q @ k.transpose(-2, -1) / 4.0).masked_fill(~keep, float("-inf")), dim=-1) @ v
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
    assert use_matmul_attention(qd, kd) == (dtype == torch.bfloat16 and keys <= unet_module.MATMUL_ATTENTION_MAX_KEYS)
    close(attention(qd, kd, vd, keep).float(), expected, tol)
    close(attention(qd, kd, vd, additive).float(), expected, tol)


@needs_bf16
def test_matmul_attention_respects_the_score_budget(monkeypatch):
    q, k = torch.randn(2, 2, 16, 8, dtype=torch.bfloat16), torch.randn(2, 2, 16, 8, dtype=torch.bfloat16)
    assert use_matmul_attention(q, k)
    monkeypatch.setattr(unet_module, "CPU_MATMUL_ATTENTION_MAX_SCORES", 2 * 2 * 16 * 16 - 1)
    assert not use_matmul_attention(q, k)
    assert not use_matmul_attention(q.float(), k.float())


@needs_bf16
def test_bf16_forward_matmul_attention_equals_sdpa_path(monkeypatch):
    """The whole U-Net under bf16 autocast: matmul attention and the SDPA kernel agree to bf16 rounding, and
    both stay near the fp32 plain computation."""
    unet = small_unet()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([300])
    ctx, mask = masked_context()
    with torch.no_grad():
        ref = reference_forward(unet, x, t, ctx, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = unet(x, t, ctx, mask).float()
            monkeypatch.setattr(unet_module, "CPU_MATMUL_ATTENTION_MAX_SCORES", 0)
            kernel = unet(x, t, ctx, mask).float()
    close(fast, kernel, 3e-2)
    close(fast, ref, 5e-2)


@needs_bf16
def test_bf16_training_gradients_match_sdpa_path(monkeypatch):
    def grads():
        unet = small_unet().train()
        x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([30, 700])
        ctx, mask = masked_context()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = unet(x, t, ctx, mask)
        out.float().square().mean().backward()
        return torch.cat([p.grad.flatten() for p in unet.parameters()])
    fast = grads()
    monkeypatch.setattr(unet_module, "CPU_MATMUL_ATTENTION_MAX_SCORES", 0)
    close(fast, grads(), 5e-2)


# ---------------------------------------------------------------- the sampler

def test_sampler_equals_seed_style_two_passes():
    """t2i_core.sample (one batched pass, x shared, K/V once, padding cut, SDPA) against the seed's loop
    (two passes per step, manual attention, K/V every block, 77-token contexts) on the same weights."""
    unet, schedule = small_unet(), NoiseSchedule()
    ctx, mask = masked_context(batch=2, length=77, real=(4, 9))
    cond = Conditioning(ctx, mask)
    uctx, umask = masked_context(batch=1, length=77, real=(2,), seed=1)
    uncond = Conditioning(uctx, umask)
    noise = make_noise([3, 4], (3, 8, 8))
    fast = sample(unet, schedule, noise, cond, uncond, steps=4, guidance_scale=4.0)
    seed_style = reference_sample(unet, schedule, noise, cond, uncond, steps=4, guidance_scale=4.0)
    close(fast, seed_style, 1e-4)
    for opts in (dict(batched_cfg=True), dict(batched_cfg=True, mode="sdpa", cache_kv=True)):
        close(reference_sample(unet, schedule, noise, cond, uncond, steps=4, guidance_scale=4.0, **opts), seed_style, 1e-4)


def test_reference_kv_cache_equals_prepare_context():
    unet = small_unet()
    both = concat_conditionings(Conditioning(*masked_context(batch=1, real=(3,))),
                                Conditioning(*masked_context(batch=1, real=(6,), seed=2)))
    ctx, mask = both.context, both.key_mask
    c_ref, m_ref, kvs_ref = prepare_kv(unet, ctx, mask)
    prepared = unet.prepare_context(ctx, mask)
    torch.testing.assert_close(prepared.context, c_ref)
    torch.testing.assert_close(prepared.key_mask, m_ref)
    for blocks_a, blocks_b in zip(prepared.kvs, kvs_ref):
        for (ka, va), (kb, vb) in zip(blocks_a, blocks_b):
            torch.testing.assert_close(ka, kb)
            torch.testing.assert_close(va, vb)
