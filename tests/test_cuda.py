"""The CUDA path: the same results as the CPU, bf16 where the card has it, training and checkpoints.

Skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/test_cuda.py`.
TF32 is switched off so fp32 comparisons against the CPU hold to float tolerance.
"""
import pytest
import torch
from t2i_test_utils import TEST_TEXT_CONFIG, make_test_model

from t2i_core import load_checkpoint, make_noise, resolve_precision, sample
from t2i_core.data import make_shapes_dataset
from t2i_core.training.config import TrainConfig
from t2i_core.training.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_auto_precision_is_bf16_on_cuda():
    assert resolve_precision("auto", "cuda") == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


def test_unet_and_text_encoder_match_cpu():
    model = make_test_model()
    cond = model.encode_prompts(["a large red circle on the left", "a small blue square"])
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.inference_mode():
        ref = model.unet(x, t, cond.context, cond.key_mask)
        model.to("cuda")
        cond_gpu = model.encode_prompts(["a large red circle on the left", "a small blue square"])
        out = model.unet(x.cuda(), t.cuda(), cond_gpu.context, cond_gpu.key_mask)
    torch.testing.assert_close(cond_gpu.context.cpu(), cond.context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.7), ("ddpm", 0.0)])
def test_sampling_on_cuda_matches_cpu(sampler, eta):
    """Seeds give the same noise on every device (drawn on the CPU), so a seed means one image everywhere."""
    model = make_test_model()
    kw = dict(seeds=[3, 4], height=16, width=16, steps=6, guidance_scale=3.0, sampler=sampler, eta=eta)
    ref = model.generate("a large red circle on the left", **kw)
    out = model.to("cuda").generate("a large red circle on the left", **kw)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, atol=2e-4, rtol=0)


@pytest.mark.skipif(torch.cuda.is_available() and not torch.cuda.is_bf16_supported(), reason="no bf16 on this card")
def test_bf16_sampling_is_close_to_fp32():
    model = make_test_model().to("cuda")
    cond, uncond = model.encode_prompts(["a small blue square"] * 4), model.text_encoder.empty()
    noise = make_noise(range(4), (3, 16, 16), device="cuda")
    fp32 = sample(model.unet, model.schedule, noise, cond, uncond, steps=10, precision="fp32")
    bf16 = sample(model.unet, model.schedule, noise, cond, uncond, steps=10, precision="bf16")
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert (bf16 - fp32).abs().mean() < 0.05 * fp32.abs().mean()


def test_training_on_cuda_saves_a_checkpoint_the_cpu_loads(tmp_path):
    from t2i_core import TextEncoderSpec, build_text_encoder
    data = make_shapes_dataset(tmp_path / "shapes", count=48, resolution=16, seed=0)
    encoder = build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=0))
    cfg = TrainConfig(dataset=str(data), output=str(tmp_path / "m.safetensors"), resolution=16, steps=60,
                      batch_size=16, lr=3e-3, warmup_steps=5, checkpoint_every=30, precision="auto",
                      cache_dir=str(tmp_path / "cache"))
    result = train(cfg, encoder, device="cuda")
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 60 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    model = load_checkpoint(result.checkpoint)  # saved from the GPU, loaded on the CPU
    assert model.device.type == "cpu" and model.training["step"] == 60
    images = model.generate("a large red circle on the left", seeds=[0], height=16, width=16, steps=3)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    on_gpu = load_checkpoint(result.checkpoint, device="cuda")
    assert on_gpu.device.type == "cuda"


def test_vae_codec_on_cuda_matches_cpu():
    from test_codecs import TINY_VAE

    from t2i_core.codecs import vae_from_config
    codec = vae_from_config(TINY_VAE)
    image = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        z = codec.encode(image)
        back = codec.decode(z)
        codec.to("cuda")
        z_gpu = codec.encode(image.cuda())
        back_gpu = codec.decode(z_gpu)
    torch.testing.assert_close(z_gpu.cpu(), z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(back_gpu.cpu(), back, atol=1e-4, rtol=1e-4)
