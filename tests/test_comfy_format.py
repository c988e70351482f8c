"""nodes/comfy_format.py: t2i_core's objects <-> ComfyUI's CONDITIONING, IMAGE and previews, in-process."""
import logging

import pytest
import torch

from t2i_core import Conditioning


@pytest.fixture(scope="module")
def fmt(comfy_pack):
    from scripts.comfy_inprocess import pack_module
    return pack_module("nodes.comfy_format")


def cond(batch=2, length=5, width=8, real=(3, 5)):
    mask = torch.arange(length)[None] < torch.tensor(real)[:, None]
    return Conditioning(torch.randn(batch, length, width), mask, torch.randn(batch, 4))


def test_round_trip_keeps_states_mask_and_pooled(fmt):
    c = cond()
    comfy = fmt.to_comfy_conditioning(c, "cpu")
    assert torch.equal(comfy[0][0], c.context) and set(comfy[0][1]) == {"pooled_output", "attention_mask"}
    back = fmt.from_comfy_conditioning(comfy, "positive", context_dim=8)
    assert torch.equal(back.context, c.context) and torch.equal(back.key_mask, c.key_mask)
    assert torch.equal(back.pooled, c.pooled)


def test_a_mask_shorter_than_the_tokens_is_extended_with_real_tokens(fmt):
    # ConditioningConcat appends the second prompt's tokens to the first's but keeps only the first mask
    c = cond(batch=1, length=5, real=(2,))
    concat = [[torch.cat([c.context, torch.randn(1, 4, 8)], dim=1), {"attention_mask": c.key_mask}]]
    mask = fmt.from_comfy_conditioning(concat, "positive", 8).key_mask
    assert mask.tolist() == [[True, True, False, False, False, True, True, True, True]]


def test_a_batch_one_mask_is_broadcast_and_a_foreign_one_dropped(fmt):
    c = cond(batch=3, real=(3, 3, 3))
    one = [[c.context, {"attention_mask": c.key_mask[:1].reshape(1, 1, -1).float()}]]  # another node's (1, 1, L) float
    assert fmt.from_comfy_conditioning(one, "x", 8).key_mask.tolist() == c.key_mask.tolist()
    two = [[c.context, {"attention_mask": c.key_mask[:2]}]]  # neither one row nor one per prompt: unusable
    assert fmt.from_comfy_conditioning(two, "x", 8).key_mask is None
    longer = [[c.context[:, :4], {"attention_mask": c.key_mask}]]  # a cut context keeps the mask's start
    assert fmt.from_comfy_conditioning(longer, "x", 8).key_mask.tolist() == c.key_mask[:, :4].tolist()


def test_core_conditioning_without_extras_reads_as_all_tokens_real(fmt):
    states = torch.randn(1, 77, 8)
    back = fmt.from_comfy_conditioning([[states, {}]], "negative", 8)
    assert back.key_mask is None and back.pooled is None and torch.equal(back.context, states)


def test_width_and_shape_errors_name_the_input_and_the_fix(fmt):
    with pytest.raises(ValueError, match="positive conditioning is 8 wide but the model reads 16-wide.*text encoder"):
        fmt.from_comfy_conditioning(fmt.to_comfy_conditioning(cond(), "cpu"), "positive", 16)
    with pytest.raises(ValueError, match="negative: expected a CONDITIONING"):
        fmt.from_comfy_conditioning([], "negative", 8)
    with pytest.raises(ValueError, match=r"shape \(batch, tokens, width\)"):
        fmt.from_comfy_conditioning([[torch.randn(2, 8), {}]], "positive", 8)


def test_several_entries_use_the_first_and_say_so(fmt, caplog):
    a, b = cond(), cond()
    with caplog.at_level(logging.WARNING, logger="t2i_mini"):
        back = fmt.from_comfy_conditioning(fmt.to_comfy_conditioning(a, "cpu") + fmt.to_comfy_conditioning(b, "cpu"),
                                           "positive", 8)
    assert torch.equal(back.context, a.context)
    assert "holds 2 conditionings" in caplog.text


def test_images_grid_and_preview(fmt):
    images = torch.rand(5, 3, 4, 6)
    comfy = fmt.images_to_comfy(images)
    assert comfy.shape == (5, 4, 6, 3) and torch.equal(comfy[1, 2, 3], images[1, :, 2, 3])
    g = fmt.grid(comfy, columns=2, padding=1, pad_value=1.0)
    assert g.shape == (1, 3 * 4 + 2, 2 * 6 + 1, 3)
    assert torch.equal(g[0, 5:9, 7:13], comfy[3]) and (g[0, 4] == 1).all()  # row 1, column 1; padding between
    kind, pil, size = fmt.preview(images)
    assert kind == "JPEG" and max(pil.size) <= size and pil.size[0] >= 2 * 6
