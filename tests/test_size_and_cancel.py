"""Sizes far beyond the trained one are refused with their cost before anything runs (t2i_core.geometry), and
the U-Net's between_blocks hook lets a caller stop a forward pass between blocks (ComfyUI's Cancel)."""
import pytest
import torch
from t2i_test_utils import TEST_TEXT_CONFIG, cancel_checks_per_forward, make_test_model

from t2i_core import TextEncoderSpec, build_text_encoder
from t2i_core.data import make_shapes_dataset
from t2i_core.geometry import (
    MAX_ATTENTION_TOKENS,
    MAX_SIZE_FACTOR,
    attention_tokens,
    check_sample_size,
    check_train_size,
)
from t2i_core.training.config import TrainConfig
from t2i_core.training.state import TrainingError
from t2i_core.training.trainer import Trainer
from t2i_core.unet import preset_config


class Stop(Exception):
    pass


# ---- the hook ----

def test_hook_runs_between_every_block_and_not_after_the_context():
    model = make_test_model()
    unet = model.unet
    calls = []
    x, t, context = torch.randn(2, 3, 8, 8), torch.tensor([5]), torch.randn(2, 4, 32)
    with torch.no_grad():
        plain = unet(x, t, context)
        with unet.calling_between_blocks(lambda: calls.append(1)):
            hooked = unet(x, t, context)
        after = unet(x, t, context)
    # every module of the down, middle and up paths, downsample and upsample included, and inside the stages
    # that attend
    assert len(calls) == cancel_checks_per_forward(unet)
    assert torch.equal(plain, hooked) and torch.equal(plain, after)
    assert unet.between_blocks is None


def test_raising_from_the_hook_stops_forward_at_that_block():
    unet = make_test_model().unet
    ran = []
    for stage in unet.stages():
        stage.register_forward_hook(lambda *_: ran.append(1))

    def cancel_after_first():
        if ran:
            raise Stop()
    with pytest.raises(Stop), unet.calling_between_blocks(cancel_after_first):
        unet(torch.randn(1, 3, 8, 8), torch.tensor([5]), torch.randn(1, 4, 32))
    assert len(ran) == 1 < len(unet.stages())  # nothing ran after the block that saw the cancel
    assert unet.between_blocks is None  # the with-block put it back, even on the exception


# ---- the size estimate ----

def test_attention_tokens_follow_the_finest_attention_level():
    tiny = preset_config("tiny")  # attention at levels 1 and 2: the first halves the sides once
    assert attention_tokens(16, 16, codec_factor=1, attention_level=1) == 64
    assert check_sample_size(16, 16, codec_factor=1, unet_cfg=tiny, trained_resolution=16) == 64
    assert check_sample_size(1024, 1024, codec_factor=1, unet_cfg=tiny, trained_resolution=16,
                             allow_large=True) == 512 * 512
    patched = preset_config("tiny-patch2")  # 2x2 pixels a cell, so its level 1 is an eighth of the image's side
    assert check_sample_size(32, 32, codec_factor=1, unet_cfg=patched, trained_resolution=32) == 64
    assert check_train_size(32, codec_factor=1, unet_cfg=patched) == 64


def test_sampling_far_beyond_the_trained_size_is_refused_with_the_estimate():
    tiny = preset_config("tiny")
    check_sample_size(64, 64, codec_factor=1, unet_cfg=tiny, trained_resolution=16)  # 16x the positions: allowed
    with pytest.raises(ValueError) as error:
        check_sample_size(1024, 1024, codec_factor=1, unet_cfg=tiny, trained_resolution=16, batch=2,
                          override="turn on allow_large_sizes")
    message = str(error.value)
    assert "1024x1024" in message and "262,144 positions" in message and "4,096x the 64" in message, message
    assert "16 px it was trained at" in message and "16,777,216x as much" in message and "batch 2" in message
    assert f"{MAX_SIZE_FACTOR}x the trained size" in message and "turn on allow_large_sizes" in message


def test_unknown_training_size_uses_the_absolute_limit():
    tiny = preset_config("tiny")
    check_sample_size(128, 128, codec_factor=1, unet_cfg=tiny, trained_resolution=None)  # 64x64 positions
    with pytest.raises(ValueError, match=f"{MAX_ATTENTION_TOKENS:,} positions"):
        check_sample_size(136, 136, codec_factor=1, unet_cfg=tiny, trained_resolution=None)


def test_generate_checks_the_size_before_any_work():
    model = make_test_model()
    model.training = {"config": {"resolution": 8}}
    assert model.trained_resolution == 8
    with pytest.raises(ValueError, match="allow_large_sizes=True"):
        model.generate("x", seeds=[0], height=64, width=64, steps=1)
    assert model.generate("x", seeds=[0], height=64, width=64, steps=1, allow_large_sizes=True).shape == (1, 3, 64, 64)


def test_training_resolution_is_checked_before_the_data_is_read(tmp_path):
    encoder = build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=0))
    tiny = preset_config("tiny")
    assert check_train_size(128, codec_factor=1, unet_cfg=tiny) == MAX_ATTENTION_TOKENS
    config = TrainConfig(dataset=str(tmp_path / "no_such_folder"), output=str(tmp_path / "m.safetensors"),
                         resolution=1024, steps=1)
    with pytest.raises(TrainingError) as error:
        Trainer(config, encoder, device="cpu")
    message = str(error.value)
    assert "262,144 positions" in message and "allow_large_sizes" in message and "128 px" in message, message
    # opted in, the same kind of size trains
    data = make_shapes_dataset(tmp_path / "shapes", count=4, resolution=16, seed=0)
    allowed = TrainConfig(dataset=str(data), output=str(tmp_path / "m.safetensors"), resolution=136, steps=1,
                          allow_large_sizes=True, batch_size=8, cache_dir=str(tmp_path / "cache"))
    assert Trainer(allowed, encoder, device="cpu").latent_shape == (3, 136, 136)
