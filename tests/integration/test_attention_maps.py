"""Attention maps at full size: the attention_maps workflow through /prompt in a real ComfyUI (one labelled heat
map per word and image), and the maps of a trained shapes model (the shape's word lands on the shape)."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from integration.prompts import api_workflow, nodes_of, set_inputs, tiny

from t2i_core.attention_maps import LABEL_HEIGHT

PROMPT_WORDS = 7  # "a large red circle on the left"


def test_attention_maps_template_runs(comfy):
    from t2i_test_utils import make_test_model

    from t2i_core import save_checkpoint
    name = f"attention_{uuid.uuid4().hex[:8]}"
    folder = comfy.base_dir / "models" / "t2i_mini"
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / f"{name}.safetensors", make_test_model())
    prompt = tiny(api_workflow("attention_maps"), name)
    set_inputs(prompt, "T2IMiniCheckpointLoader", ckpt_name=f"{name}.safetensors")
    set_inputs(prompt, "T2IMiniAttentionMaps", steps=3, precision="fp32")
    [grid_node] = nodes_of(prompt, "T2IMiniImageGrid")
    assert grid_node["inputs"]["columns"] == PROMPT_WORDS  # one row per image
    save_id = next(k for k, n in prompt.items() if n["class_type"] == "SaveImage")
    [grid] = comfy.images(comfy.run(prompt, timeout=300), save_id)

    tile_w, tile_h, pad, images = 16 * 8, 16 * 8 + LABEL_HEIGHT, 2, 2  # 16 px images enlarged 8x to 128 px
    assert grid.size == (PROMPT_WORDS * tile_w + (PROMPT_WORDS - 1) * pad, images * tile_h + (images - 1) * pad)
    pixels = np.asarray(grid.convert("RGB"), dtype=np.float32) / 255
    tiles = [pixels[r * (tile_h + pad): r * (tile_h + pad) + tile_h, c * (tile_w + pad): c * (tile_w + pad) + tile_w]
             for r in range(images) for c in range(PROMPT_WORDS)]
    for tile in tiles:
        assert (tile[tile_w:] > 0.9).all(axis=-1).sum() > 10  # a white label under each map
    maps = [t[:tile_w] for t in tiles]
    assert all(not np.array_equal(maps[0], m) for m in maps[1:PROMPT_WORDS])  # every word its own map


# ---- the maps of a trained shapes model ----
# A model that draws its shapes, trained once per CI run (in `make test`; the unit tests run twice). What the maps
# of such a model show per word is measured, not asserted: in a short run no word's map sits on the shape reliably
# (docs/QUALITY.md, "Attention maps of a short run"), so the test checks what holds on every CPU: the maps are
# per-word distributions over the image, they differ between words, and the images are drawn shapes: lit pixels
# on a mostly black background, which an untrained model's noise never is.

SHAPES_STEPS = 100  # Muon: the fewest steps whose samples are all shapes on black, with a margin (QUALITY.md)
SAMPLES = 48
DARK_SHARE = 0.4  # of a drawn image's pixels are background; the dataset's images have 75% or more


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory):
    """The micro preset trained on the built-in shapes at 16 px, with the tests' small random text encoder."""
    from t2i_test_utils import TEST_TEXT_CONFIG

    from t2i_core import TextEncoderSpec, build_text_encoder
    from t2i_core.data import make_shapes_dataset
    from t2i_core.training.config import TrainConfig
    from t2i_core.training.trainer import train
    root = tmp_path_factory.mktemp("attention_shapes")
    data = make_shapes_dataset(root / "shapes", count=720, resolution=16, seed=0)
    config = TrainConfig(dataset=str(data), output=str(root / "shapes.safetensors"), preset="micro", resolution=16,
                         steps=SHAPES_STEPS, batch_size=32, lr=2e-3, warmup_steps=20, ema_decay=0.99,
                         optimizer="muon", checkpoint_every=0, precision="fp32", cache_dir=str(root / "cache"))
    t0 = time.monotonic()
    result = train(config, build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=0)), device="cpu")
    print(f"\nshapes model: {result.step} steps in {time.monotonic() - t0:.0f} s")
    return result.model


@pytest.mark.slow
def test_a_trained_models_maps_are_per_word_distributions_over_its_shapes(shapes_model):
    from t2i_core.attention_maps import generate_with_attention
    from t2i_core.data import generate_shapes
    _, captions, attributes = generate_shapes(SAMPLES, resolution=16, seed=5)  # 48 of the 72 combinations
    images, per_image = generate_with_attention(shapes_model, captions, seeds=list(range(SAMPLES)), height=16,
                                                width=16, steps=15, guidance_scale=3.0, precision="fp32",
                                                progress=(0.0, 0.5))  # the first half, where the layout is made
    drawn, lifts = 0, []
    for image, maps, wanted in zip(images, per_image, attributes):
        assert maps.words[:2] == ["a", wanted["size"]] and wanted["shape"] in maps.words
        assert np.isfinite(maps.maps.numpy()).all() and (maps.maps >= 0).all()
        assert not np.allclose(maps.maps[1].numpy(), maps.maps[2].numpy())  # the words get different attention
        brightest = image.max(dim=0).values  # the shapes are pure colours on black
        shape, background = brightest > 0.5, brightest < 0.2
        if shape.any() and background.float().mean() >= DARK_SHARE:
            drawn += 1
            m = maps.maps[maps.words.index(wanted["shape"])]
            lifts.append(float(m[shape].sum() / m.sum() / shape.float().mean()))  # 1 = as a uniform map
    print(f"\na shape was drawn in {drawn} of {SAMPLES} samples; the shape word's attention on the shape's pixels, "
          f"against a uniform map: mean {np.mean(lifts):.2f}x")
    assert drawn >= 0.9 * SAMPLES  # the model is trained: it draws a shape on a black background
