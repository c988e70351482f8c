"""The attention_maps workflow through /prompt in a real ComfyUI: one labelled heat map per word and image."""
from __future__ import annotations

import uuid

import numpy as np
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
