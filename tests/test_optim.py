import pytest
import torch

from t2i_core.training.optim import MUON_LR_RATIO, MuonAdamW, newton_schulz, uses_muon
from t2i_core.unet import TextConditionedUNet, preset_config


def small_unet():
    torch.manual_seed(0)
    return TextConditionedUNet(preset_config("micro", context_dim=8))


def loss_of(unet, seed):
    gen = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 3, 8, generator=gen)
    return unet(x, torch.tensor([10, 500]), ctx).square().mean() + sum(p.square().sum() for p in unet.parameters()) * 1e-3


def test_the_adamw_choice_is_torchs_adamw_to_float_rounding():
    ours, reference = small_unet(), small_unet()
    opt = MuonAdamW(ours.named_parameters(), 3e-3, "adamw", weight_decay=0.05)
    ref = torch.optim.AdamW(reference.parameters(), lr=3e-3, weight_decay=0.05)
    assert len(opt.param_groups) == 1
    for step in range(5):
        for model, o in ((ours, opt), (reference, ref)):
            o.param_groups[0]["lr"] = 3e-3 * (1 - step / 10)  # as a schedule sets it
            o.zero_grad()
            loss_of(model, step).backward()
            o.step()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# rectangular, as a convolution's (out, in x 9) matrix is: a random square matrix has singular values near 0, which
# five iterations leave small (an update needs no exactness there)
@pytest.mark.parametrize("shape", [(16, 144), (144, 16), (4, 32, 96), (3, 64, 9)])
def test_newton_schulz_brings_every_singular_value_near_one_and_keeps_the_singular_vectors(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    g[..., 0, :] *= 100  # one dominant direction, as a small model's gradients have
    o = newton_schulz(g)
    assert o.shape == g.shape
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.3, s
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    # U V^T is the nearest semi-orthogonal matrix; the iteration lands close to it
    cosine = (o * (u @ vh)).sum(dim=(-2, -1)) / (o.norm(dim=(-2, -1)) * (u @ vh).norm(dim=(-2, -1)))
    assert cosine.min() > 0.95


def test_muon_takes_the_hidden_matrices_and_leaves_the_ends_and_vectors_to_adamw():
    unet = small_unet()
    opt = MuonAdamW(unet.named_parameters(), 2e-3, "muon")
    adamw, muon = opt.param_groups
    assert (adamw["muon"], muon["muon"]) == (False, True)
    assert muon["initial_lr"] == pytest.approx(2e-3 * MUON_LR_RATIO) and adamw["initial_lr"] == 2e-3
    names = {id(p): n for n, p in unet.named_parameters()}
    in_muon = {names[id(p)] for p in muon["params"]}
    assert "down.0.res.conv1.weight" in in_muon and "down.2.attn.blocks.0.attn2.to_k.weight" in in_muon
    assert not any(n.startswith(("conv_in", "conv_out", "time_embed")) or n.endswith("bias") for n in in_muon)
    assert all(uses_muon(names[id(p)], p) for p in muon["params"])
    assert not any(uses_muon(names[id(p)], p) for p in adamw["params"])


def test_a_muon_step_moves_each_matrix_by_its_orthogonalised_momentum():
    unet = small_unet()
    opt = MuonAdamW(unet.named_parameters(), 1e-3, "muon")
    muon = opt.param_groups[1]
    before = [p.detach().clone() for p in muon["params"]]
    loss_of(unet, 0).backward()
    grads = [p.grad.clone() for p in muon["params"]]
    opt.step()
    lr = muon["lr"]
    for p, b, g in zip(muon["params"], before, grads):
        m = g.reshape(g.shape[0], -1)
        # first step: the buffer is the gradient, the Nesterov update (1 + mu) g, whose direction NS keeps
        expected = newton_schulz(m) * max(1.0, m.shape[0] / m.shape[1]) ** 0.5
        torch.testing.assert_close((b - p.detach()).reshape(m.shape) / lr, expected, rtol=1e-4, atol=1e-4)


def test_an_unknown_optimizer_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="optimizer must be one of muon, adamw, got 'sgd'"):
        MuonAdamW(small_unet().named_parameters(), 1e-3, "sgd")
