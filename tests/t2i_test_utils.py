"""Helpers shared by the tests."""
import os

import pytest
import torch

from evals.models import randomize_zero_layers

# A text tower small enough that tests build it in milliseconds; CLIP's real tokenizer and context length.
TEST_TEXT_CONFIG = dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)


def make_test_model(channel_mult=(1, 2), seed: int = 0, prediction_type: str = "epsilon", patch_size: int = 1):
    from t2i_core import (
        NoiseSchedule,
        PixelCodec,
        ScheduleConfig,
        T2IModel,
        TextConditionedUNet,
        TextEncoderSpec,
        UNetConfig,
        build_text_encoder,
    )
    text_encoder = build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=seed))
    torch.manual_seed(seed)
    unet = TextConditionedUNet(UNetConfig(base_channels=16, channel_mult=channel_mult, num_res_blocks=1,
                                          attention_levels=(1,), num_heads=2, context_dim=32, patch_size=patch_size))
    randomize_zero_layers(unet, seed)
    return T2IModel(unet.eval(), NoiseSchedule(ScheduleConfig(prediction_type=prediction_type)), text_encoder, PixelCodec())



def _sprites_fetched() -> bool:
    from t2i_core.data import DatasetError
    from t2i_core.data.sprites import SPRITES_PACKAGES, npm_tarball
    try:
        for name in SPRITES_PACKAGES:
            npm_tarball(name)
    except DatasetError:
        return False
    return True


# the sprites dataset's npm tarballs, fetched by `make setup` into .cache/npm
needs_sprites = pytest.mark.skipif(not _sprites_fetched(), reason="the sprites dataset's npm tarballs are not in "
                                   ".cache/npm; run make setup (needs npm)")


def require_comfyui() -> None:
    """Skip the test when ComfyUI is not set up (`make setup`), or fail it in CI."""
    from scripts.comfy_harness import COMFYUI_DIR, comfyui_is_set_up
    if not comfyui_is_set_up(COMFYUI_DIR):
        message = f"ComfyUI is not set up at {COMFYUI_DIR}: run `make setup`"
        # In CI a missing ComfyUI is a broken pipeline, not a reason to go green.
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def cancel_checks_per_forward(unet) -> int:
    """How often an unchunked forward pass calls the cancel hook: after every block of the down, middle and up
    paths, before each attention layer of a stage, and between the parts of each transformer block."""
    blocks = len(unet.down) + len(unet.mid) + len(unet.up)
    return blocks + sum(1 + 2 * len(stage.attn.blocks) for stage in unet.stages() if stage.attn is not None)
