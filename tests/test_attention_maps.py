"""Attention maps (t2i_core/attention_maps.py): recording changes nothing, the maps are the attention
probabilities of the conditional prompt, tokens group into words, and the picture shows them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2i_core import make_noise, sample
from t2i_core.attention_maps import (
    HEAT_ANCHORS,
    LABEL_HEIGHT,
    WordMaps,
    generate_with_attention,
    prompt_words,
    record_attention,
    render_word_maps,
    tokens_per_image,
    word_maps,
)
from t2i_core.samplers import SAMPLERS
from t2i_core.unet import CrossAttention, attention

PROMPT = "a large red circle on the left"


def original_cross_attention_forward(self, x, context=None, key_mask=None, kv=None):
    """CrossAttention.forward as it was before the recording hook was added."""
    q = self.split_heads(self.to_q(x))
    k, v = kv if kv is not None else self.project_context(x if context is None else context)
    mask = key_mask if key_mask is None or key_mask.dim() == 4 else key_mask[:, None, None, :]
    out = attention(q, k, v, mask)
    b, h, n, d = out.shape
    return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))


def run(model, prompts=PROMPT, seeds=(0, 1), cfg=3.0, steps=4, precision="fp32", size=16):
    cond = model.encode_prompts([prompts] if isinstance(prompts, str) else prompts)
    noise = make_noise(list(seeds), model.latent_shape(size, size))
    return sample(model.unet, model.schedule, noise, cond, model.text_encoder.empty(), steps=steps,
                  guidance_scale=cfg, precision=precision)


def hooks_left(model):
    layers = [m for m in model.unet.modules() if isinstance(m, CrossAttention)]
    return bool(model.unet._forward_pre_hooks) or any("attention_probs_hook" in m.__dict__ for m in layers)


@pytest.mark.parametrize("precision", ["fp32", "auto"])  # auto: bf16 where the CPU has it
def test_sampling_is_bit_identical_with_the_recorder_off_and_on(test_model, monkeypatch, precision):
    with monkeypatch.context() as m:
        m.setattr(CrossAttention, "forward", original_cross_attention_forward)
        before = run(test_model, precision=precision)
    off = run(test_model, precision=precision)
    with record_attention(test_model.unet, 1000) as recorder:
        on = run(test_model, precision=precision)
    after = run(test_model, precision=precision)
    assert recorder.layer_maps > 0
    assert torch.equal(before, off) and torch.equal(off, on) and torch.equal(on, after)
    assert not hooks_left(test_model)


def test_maps_are_the_attention_probabilities(test_model):
    steps = 4
    with record_attention(test_model.unet, 1000) as recorder:
        run(test_model, steps=steps)
    layers = len(recorder.layers)
    assert layers == 4 and recorder.steps == steps and recorder.layer_maps == layers * steps
    maps = recorder.maps()
    words = prompt_words(test_model.text_encoder.encode([PROMPT]).tokens[0])
    real = 2 + sum(len(w.positions) for w in words)  # start and end of text around the words
    assert maps.shape == (2, real, 16, 16)  # the context is cut after the longest real prompt
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, 16, 16), atol=1e-5, rtol=0)
    assert not torch.allclose(maps[:, 1], maps[:, 2])  # the words get different attention


def attention_by_hand(model, prompt, size=16):
    """The first step's cross-attention of the cond prompt, computed directly from the layers' inputs."""
    seen = []
    for layer in [b.attn2 for s in model.unet.stages() if s.attn is not None for b in s.attn.blocks]:
        layer.register_forward_hook(lambda mod, args, out: seen.append((mod, args)))
    cond = model.encode_prompts([prompt])
    noise = make_noise([0], model.latent_shape(size, size))
    with torch.inference_mode():
        t = torch.tensor([SAMPLERS["ddim"].step_pairs(model.schedule, 4)[0][0]])
        model.unet(noise, t, cond.context, cond.key_mask)
        maps = []
        for mod, (x, context, key_mask, _) in seen:  # key_mask: the U-Net's additive (B, 1, 1, L) mask
            q, k = mod.split_heads(mod.to_q(x)), mod.split_heads(mod.to_k(context))
            scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + key_mask.float()
            p = scores.softmax(-1).mean(1)  # (1, N, L)
            side = int(p.shape[1] ** 0.5)
            m = p.transpose(1, 2).reshape(1, -1, side, side)
            maps.append(F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False))
    for layer in [b.attn2 for s in model.unet.stages() if s.attn is not None for b in s.attn.blocks]:
        layer._forward_hooks.clear()
    return torch.stack(maps).mean(0)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_the_conditional_half_is_recorded(test_model, cfg):
    # only the first step (t = 999, progress 1 - t/T = 0.001; the next is at 0.251): the conditional prompt's maps,
    # with or without the unconditional half in the batch
    with record_attention(test_model.unet, 1000, (0.0, 0.1)) as recorder:
        run(test_model, seeds=[0], cfg=cfg)
    assert recorder.steps == 1
    expected = attention_by_hand(test_model, PROMPT)
    torch.testing.assert_close(recorder.maps()[..., : expected.shape[1], :, :], expected, atol=1e-5, rtol=1e-4)


def test_steps_are_chosen_by_progress(test_model):
    pairs = SAMPLERS["ddim"].step_pairs(test_model.schedule, 10)
    wanted = sum(0.5 <= 1 - t / 1000 <= 1.0 for t, _ in pairs)
    with record_attention(test_model.unet, 1000, (0.5, 1.0)) as recorder:
        run(test_model, steps=10)
    assert 0 < recorder.steps == wanted < 10
    with record_attention(test_model.unet, 1000, (0.6, 0.7)) as recorder:  # 2 steps: at 0.001 and 0.501
        run(test_model, steps=2)
    with pytest.raises(ValueError, match="widen it"):
        recorder.maps()
    with pytest.raises(ValueError, match="0 <= start <= end <= 1"):
        record_attention(test_model.unet, 1000, (0.8, 0.2)).__enter__()


def test_tokens_group_into_words(test_model):
    tokens = test_model.text_encoder.encode(["a large Triangles, on the left!"]).tokens[0]
    words = prompt_words(tokens)
    assert [w.text for w in words] == ["a", "large", "triangles", ",", "on", "the", "left", "!"]
    assert len(words[2].positions) == 2  # "tri" + "angles"
    assert words[0].positions == (1,)  # after start of text
    assert prompt_words(test_model.text_encoder.encode([""]).tokens[0]) == []


def test_word_maps_sum_their_tokens():
    token_maps = torch.rand(2, 6, 4, 4)
    sot, eot = 49406, 49407
    # "tri" "angles</w>" then "red</w>": ids from CLIP's vocabulary
    from t2i_core.attention_maps import clip_tokenizer
    enc = clip_tokenizer().encoder
    tokens = torch.tensor([[sot, enc["tri"], enc["angles</w>"], enc["red</w>"], eot, 0, 0, 0]] * 2)
    out = word_maps(token_maps, tokens, size=(8, 8))
    assert out[0].words == ["triangles", "red"]
    up = F.interpolate(token_maps, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[1].maps[0], up[1, 1] + up[1, 2])
    torch.testing.assert_close(out[1].shares[1], up[1, 3].mean())


def test_tokens_follow_the_samplers_prompt_to_image_rule():
    tokens = torch.tensor([[1, 2], [3, 4]])
    assert tokens_per_image(tokens, 4).tolist() == [[1, 2], [1, 2], [3, 4], [3, 4]]
    assert tokens_per_image(tokens[:1], 3).tolist() == [[1, 2]] * 3
    with pytest.raises(ValueError, match="multiple of the prompt count"):
        tokens_per_image(tokens, 3)


def test_render_lays_each_map_over_the_image_with_its_label():
    image = torch.zeros(3, 16, 16)
    image[0, 4:8, 4:8] = 1.0  # a red square
    m = torch.zeros(2, 16, 16)
    m[0, 4:8, 4:8] = 0.5  # word 0 looks at the square
    m[1, 12:, 12:] = 0.2  # word 1 at the corner
    tiles = render_word_maps(image, WordMaps(["square", "corner"], m), tile=64, opacity=0.6)
    assert tiles.shape == (2, 3, 64 + LABEL_HEIGHT, 64)
    assert tiles.min() >= 0 and tiles.max() <= 1
    hottest = torch.tensor(HEAT_ANCHORS[-1], dtype=torch.float32)
    # the square's pixels: 0.4 of the image (red) plus 0.6 of the brightest heat colour
    torch.testing.assert_close(tiles[0, :, 24, 24], 0.4 * torch.tensor([1.0, 0, 0]) + 0.6 * hottest, atol=2e-3, rtol=0)
    torch.testing.assert_close(tiles[1, :, 60, 60], 0.6 * hottest, atol=2e-3, rtol=0)
    assert tiles[1, :, 24, 24].max() < 0.45  # not where word 1 looks
    label = tiles[:, :, 64:, :]
    assert (label > 0.9).any(dim=1).sum() > 20  # white text in the band
    assert not torch.equal(label[0], label[1])  # a different label on each


def test_generate_with_attention_gives_the_plain_images(test_model):
    prompts = [PROMPT, "a small blue square in the center"]
    plain = test_model.generate(prompts, seeds=[0, 1, 2, 3], height=16, width=16, steps=3, precision="fp32")
    images, per_image = generate_with_attention(test_model, prompts, seeds=[0, 1, 2, 3], height=16, width=16,
                                                steps=3, precision="fp32")
    assert torch.equal(images, plain)
    assert [w.words for w in per_image] == [PROMPT.split()] * 2 + [prompts[1].split()] * 2
    assert all(w.maps.shape == (7, 16, 16) for w in per_image)
    assert np.allclose([float(w.shares.sum()) for w in per_image], [float(w.shares.sum()) for w in per_image][0],
                       atol=0.5)
