import math

import pytest
import torch
from t2i_test_utils import randomize_zero_layers

from t2i_core.unet import CrossAttention, TextConditionedUNet, UNetConfig, group_norm, preset_config


def tiny_unet(**kw):
    torch.manual_seed(0)
    cfg = UNetConfig(**{**dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                               num_heads=2, context_dim=8), **kw})
    # zero-initialised output layers would make every test below trivially pass; give them weights
    return randomize_zero_layers(TextConditionedUNet(cfg))


def test_output_shape_matches_input():
    unet = tiny_unet(in_channels=4, out_channels=4)
    x = torch.randn(3, 4, 16, 8)
    out = unet(x, torch.tensor([10, 500, 999]), torch.randn(3, 7, 8))
    assert out.shape == x.shape


@pytest.mark.parametrize("name", ["micro", "tiny", "tiny-patch2", "small"])
def test_presets_build_and_run(name):
    unet = TextConditionedUNet(preset_config(name, context_dim=32))
    x = torch.randn(1, 3, 32, 32)
    assert unet(x, torch.tensor([3]), torch.randn(1, 5, 32)).shape == x.shape


def test_patch_size_is_pixel_unshuffle_in_and_pixel_shuffle_out():
    """A patch-2 U-Net is the patch-1 U-Net with the same weights run on the (4C, H/2, W/2) unshuffled image,
    its output shuffled back: each 2x2 block of pixels is one cell, its channels in pixel_unshuffle's order."""
    patched = tiny_unet(patch_size=2).eval()
    plain = TextConditionedUNet(UNetConfig(**{**patched.cfg.to_dict(), "patch_size": 1, "in_channels": 12,
                                              "out_channels": 12}))
    plain.load_state_dict(patched.state_dict())
    plain.eval()
    x, t, ctx = torch.randn(2, 3, 16, 12), torch.tensor([40, 900]), torch.randn(2, 5, 8)
    out = patched(x, t, ctx)
    assert out.shape == x.shape
    expected = torch.nn.functional.pixel_shuffle(plain(torch.nn.functional.pixel_unshuffle(x, 2), t, ctx), 2)
    torch.testing.assert_close(out, expected)
    assert patched.cfg.downsample_factor == 4  # 2 per patch side x 2 for the one level below the first
    with pytest.raises(ValueError, match="multiples of 4"):
        patched(torch.randn(1, 3, 18, 16), torch.tensor([1]), ctx[:1])


def test_group_norm_divides_any_width():
    for ch in (24, 40, 48, 96, 100, 320):
        gn = group_norm(ch)
        assert ch % gn.num_groups == 0 and gn.num_groups <= 32


def test_cross_attention_equals_softmax_qkt_v_by_hand():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=12, context_dim=6, heads=3)
    x, ctx = torch.randn(2, 5, 12), torch.randn(2, 4, 6)
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    heads = []
    for h in range(3):
        sl = slice(4 * h, 4 * h + 4)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(w @ v[..., sl])
    expected = attn.to_out(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x, ctx), expected, atol=1e-5, rtol=1e-5)


def test_masked_padding_tokens_change_nothing():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=8, context_dim=8, heads=2)
    x, ctx = torch.randn(1, 6, 8), torch.randn(1, 5, 8)
    mask = torch.tensor([[True, True, True, False, False]])
    garbage = ctx.clone()
    garbage[:, 3:] = torch.randn(1, 2, 8) * 100
    torch.testing.assert_close(attn(x, ctx, mask), attn(x, garbage, mask))
    torch.testing.assert_close(attn(x, ctx, mask), attn(x, ctx[:, :3]), atol=1e-6, rtol=1e-5)


def test_unet_masked_tokens_change_nothing_and_prepared_context_matches():
    unet = tiny_unet().eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([100, 700])
    ctx = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    garbage = ctx.clone()
    garbage[~mask] = 50.0
    ref = unet(x, t, ctx, mask)
    torch.testing.assert_close(unet(x, t, garbage, mask), ref)
    # precomputed K/V, cut to the longest real prompt, must give the same output
    torch.testing.assert_close(unet(x, t, unet.prepare_context(garbage, mask)), ref, atol=1e-5, rtol=1e-5)


def test_context_changes_output_and_gradient_reaches_it():
    unet = tiny_unet()
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([300])
    ctx = torch.randn(1, 4, 8, requires_grad=True)
    out = unet(x, t, ctx)
    assert not torch.allclose(out, unet(x, t, torch.randn(1, 4, 8)))
    out.square().mean().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_wrong_context_width_names_the_problem():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="8-wide"):
        unet(torch.randn(1, 3, 8, 8), torch.tensor([1]), torch.randn(1, 4, 16))


def test_size_not_multiple_of_factor_is_an_error():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="multiples of 2"):
        unet(torch.randn(1, 3, 9, 8), torch.tensor([1]), torch.randn(1, 4, 8))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="attention level"):
        UNetConfig(channel_mult=(1, 2), attention_levels=(2,))
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        preset_config("huge")
    with pytest.raises(ValueError, match="patch_size"):
        UNetConfig(patch_size=0)

