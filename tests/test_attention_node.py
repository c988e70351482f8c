"""The Attention Maps node in-process with ComfyUI's modules: the Guided Sampler's images, one labelled map per
word, and clear errors for conditioning without tokens."""
import pytest
import torch

from scripts.comfy_inprocess import pack_module
from t2i_core.attention_maps import LABEL_HEIGHT

PROMPT = "a large red circle on the left"


@pytest.fixture(scope="module")
def nodes(comfy_pack):
    return (pack_module("nodes.attention"), pack_module("nodes.sampling"), pack_module("nodes.conditioning"),
            pack_module("nodes.comfy_format"))


def sampler_args(model, positive, negative, latent):
    return dict(model=model, positive=positive, negative=negative, latent=latent, steps=3, cfg=3.0,
                sampler_name="ddim", eta=0.0, guidance_rescale=0.0, precision="fp32")


def test_the_node_samples_like_the_guided_sampler_and_maps_each_word(nodes, test_model):
    attention, sampling, conditioning, _ = nodes
    positive = conditioning.TextEncode.execute(test_model.text_encoder, f"{PROMPT}\na small blue square in the center",
                                               one_prompt_per_line=True).args[0]
    negative = conditioning.EmptyConditioning.execute(test_model.text_encoder).args[0]
    latent = sampling.NoiseLatent.execute(test_model.codec, 0, 16, 16, 4, test_model).args[0]
    args = sampler_args(test_model, positive, negative, latent)
    maps, images = attention.AttentionMaps.execute(**args, average_start=0.0, average_end=1.0, tile_size=64,
                                                   opacity=0.6).args
    plain = sampling.GuidedSampler.execute(**args).args[0]
    decoded = sampling.Decode.execute(test_model.codec, plain).args[0]
    assert torch.equal(images, decoded)
    assert maps.shape == (4 * 7, 64 + LABEL_HEIGHT, 64, 3)  # 2 images per prompt, 7 words each
    assert maps.min() >= 0 and maps.max() <= 1
    assert not torch.equal(maps[0], maps[1])


def test_the_node_names_what_is_missing(nodes, test_model):
    attention, sampling, conditioning, fmt = nodes
    encoded = test_model.text_encoder.encode([PROMPT]).conditioning
    no_tokens = fmt.to_comfy_conditioning(encoded, "cpu", test_model.text_encoder)  # as core CLIP Text Encode's
    negative = conditioning.EmptyConditioning.execute(test_model.text_encoder).args[0]
    latent = sampling.NoiseLatent.execute(test_model.codec, 0, 16, 16, 1, test_model).args[0]
    args = sampler_args(test_model, no_tokens, negative, latent)
    with pytest.raises(ValueError, match="Text Encode \\(T2I Mini\\)"):
        attention.AttentionMaps.execute(**args, average_start=0.0, average_end=1.0, tile_size=64, opacity=0.6)
    positive = conditioning.TextEncode.execute(test_model.text_encoder, PROMPT).args[0]
    args = sampler_args(test_model, positive, negative, latent)
    with pytest.raises(ValueError, match="0 <= start <= end <= 1"):
        attention.AttentionMaps.execute(**args, average_start=0.9, average_end=0.1, tile_size=64, opacity=0.6)
    with pytest.raises(ValueError, match="widen it"):
        attention.AttentionMaps.execute(**args, average_start=0.9, average_end=0.95, tile_size=64, opacity=0.6)
