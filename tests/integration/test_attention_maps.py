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
# Training long enough for the maps to mean something takes minutes on a 2-core CPU, too long for the unit tests
# (which CI also runs a second time with T2I_NO_CPU_BF16=1); here it runs once per CI run, in `make test`.

SHAPES_STEPS = 1200
# Two runs of this same fixture, both fp32: on a Zen 3 (AVX2) the shape's word was on the shape in 92% of the
# samples (71% at 700 steps); on a Zen 4 (AVX-512), whose kernels round differently, in 42% (per word: square
# 78%, triangle 43%, circle 0%; averaging other parts of the run gave 42-46%). The property depends on the
# training trajectory: the test asserts that the trained model draws its shapes, and reports a fraction under
# 80% as an expected failure, with the fraction, rather than as a pass. Both runs used Min-SNR-5, the default
# then, which the fixture keeps so that it trains the model those figures describe. A copy of the fixture with
# the plain loss (min_snr_gamma 0, today's default), on the Zen 4: 79% (square and triangle 100%, circle 38%).
SAMPLES = 48


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory):
    """The tiny preset trained on the built-in shapes at 16 px, with the tests' small random text encoder."""
    from t2i_test_utils import TEST_TEXT_CONFIG

    from t2i_core import TextEncoderSpec, build_text_encoder
    from t2i_core.data import make_shapes_dataset
    from t2i_core.train import TrainConfig, train
    root = tmp_path_factory.mktemp("attention_shapes")
    data = make_shapes_dataset(root / "shapes", count=720, resolution=16, seed=0)
    config = TrainConfig(dataset=str(data), output=str(root / "shapes.safetensors"), resolution=16,
                         steps=SHAPES_STEPS, batch_size=32, lr=2e-3, warmup_steps=20, ema_decay=0.99,
                         min_snr_gamma=5.0, checkpoint_every=0, precision="fp32", cache_dir=str(root / "cache"))
    t0 = time.monotonic()
    result = train(config, build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=0)), device="cpu")
    print(f"\nshapes model: {result.step} steps in {time.monotonic() - t0:.0f} s")
    return result.model


def test_the_shape_word_lands_on_the_shape(shapes_model):
    from t2i_core.attention_maps import generate_with_attention
    from t2i_core.data import generate_shapes
    _, captions, attributes = generate_shapes(SAMPLES, resolution=16, seed=5)  # 48 of the 72 combinations
    images, per_image = generate_with_attention(shapes_model, captions, seeds=list(range(SAMPLES)), height=16,
                                                width=16, steps=15, guidance_scale=3.0, precision="fp32",
                                                progress=(0.0, 0.5))  # the first half, where the layout is made
    on_shape, drawn = [], 0
    for image, maps, wanted in zip(images, per_image, attributes):
        shape = image.max(dim=0).values > 0.5  # the shapes are pure colours on black
        if not shape.any() or shape.all():
            on_shape.append(False)  # no shape drawn: counts against
            continue
        drawn += 1
        m = maps.maps[maps.words.index(wanted["shape"])]
        on_shape.append(bool(m[shape].mean() > m[~shape].mean()))  # more attention per pixel on the shape
    fraction = sum(on_shape) / len(on_shape)
    print(f"\nthe shape's word puts more attention per pixel on the shape than on the background in "
          f"{fraction:.0%} of {len(on_shape)} samples; a shape was drawn in {drawn}")
    assert drawn >= 0.9 * SAMPLES  # the model is trained: 48 of 48 on the Zen 4 run, at least 44 on the Zen 3 one
    if fraction < 0.8:
        pytest.xfail(f"the shape's word was on the shape in {fraction:.0%} of the samples, under the 80% claim, "
                     "which depends on the training trajectory (see SHAPES_STEPS)")
