import json
import time

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from t2i_test_utils import TEST_TEXT_CONFIG

from t2i_core.text_encoder import (
    TextEncoderError,
    TextEncoderSpec,
    build_text_encoder,
    load_pretrained_text_encoder,
    load_text_encoder_file,
)

TINY_NAMED = "T2I-Test-Tiny"


@pytest.fixture(scope="module")
def encoder():
    return build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=3))


@pytest.fixture
def named_model_config(tmp_path):
    """Registers a tiny open_clip model name, so the by-name paths run without 60M-parameter towers."""
    cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16},
           "text_cfg": dict(TEST_TEXT_CONFIG)}
    (tmp_path / f"{TINY_NAMED}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{TINY_NAMED}.json")
    return TINY_NAMED


def test_per_token_states_pooled_and_mask(encoder):
    enc = encoder.encode(["a red circle", ""])
    c = enc.conditioning
    assert c.context.shape == (2, 77, 32) and c.pooled.shape == (2, 32)
    # "a red circle" = SOT + 3 words + EOT; "" = SOT + EOT
    assert c.key_mask.sum(1).tolist() == [5, 2]
    assert enc.truncated == [False, False]


def test_frozen_and_always_eval(encoder):
    encoder.train()
    assert not encoder.training and not encoder.tower.training
    assert all(not p.requires_grad for p in encoder.parameters())


def test_empty_prompt_is_cached(encoder):
    assert encoder.empty() is encoder.empty()
    torch.testing.assert_close(encoder.empty().context, encoder.encode([""]).conditioning.context)


def test_long_prompt_is_truncated_and_reported(encoder):
    enc = encoder.encode(["word " * 100, "short"])
    assert enc.truncated == [True, False]
    assert enc.conditioning.key_mask[0].all()


def test_seeded_random_weights_are_reproducible():
    a = build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=5)).encode("x").conditioning.context
    b = build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=5)).encode("x").conditioning.context
    c = build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=6)).encode("x").conditioning.context
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_local_file_in_full_clip_layout(encoder, tmp_path, fmt):
    # a full CLIP state dict: text keys at top level, a vision tower we must ignore
    sd = {k: v.clone() for k, v in encoder.tower.state_dict().items()}
    sd["visual.conv1.weight"] = torch.zeros(4, 3, 2, 2)
    path = tmp_path / f"clip.{fmt}"
    save_file(sd, str(path)) if fmt == "safetensors" else torch.save(sd, path)
    loaded = load_text_encoder_file(path, text_config=TEST_TEXT_CONFIG)
    torch.testing.assert_close(loaded.encode("hello").conditioning.context, encoder.encode("hello").conditioning.context)
    assert loaded.spec.source == path.name


def test_local_file_by_model_name_in_custom_text_layout(named_model_config, tmp_path):
    reference = build_text_encoder(TextEncoderSpec(model_name=named_model_config, seed=9))
    path = tmp_path / "text.safetensors"
    save_file({f"text.{k}": v.clone() for k, v in reference.tower.state_dict().items()}, str(path))
    loaded = load_text_encoder_file(path, model_name=named_model_config)
    torch.testing.assert_close(loaded.encode("x").conditioning.pooled, reference.encode("x").conditioning.pooled)
    assert loaded.encode("x").conditioning.pooled.shape == (1, 24)


def test_file_that_does_not_fit_names_the_problem(encoder, tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file({k: v.clone() for k, v in encoder.tower.state_dict().items()}, str(path))
    with pytest.raises(TextEncoderError, match="shape mismatch"):
        load_text_encoder_file(path, text_config={**TEST_TEXT_CONFIG, "width": 64, "heads": 4})
    with pytest.raises(TextEncoderError, match="does not exist"):
        load_text_encoder_file(tmp_path / "nope.safetensors", text_config=TEST_TEXT_CONFIG)


def test_pretrained_tag_offline_fails_fast_with_advice(tmp_path):
    start = time.monotonic()
    with pytest.raises(TextEncoderError, match="local folder"):
        load_pretrained_text_encoder("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path), network_timeout=3)
    assert time.monotonic() - start < 20  # open_clip alone hangs ~46 s here before failing


def test_unknown_pretrained_tag_lists_known_ones(tmp_path):
    with pytest.raises(TextEncoderError, match="known tags"):
        load_pretrained_text_encoder("ViT-B-32", "no-such-tag", cache_dir=str(tmp_path))


def test_pretrained_tag_already_in_cache_loads_offline(named_model_config, tmp_path, monkeypatch):
    reference = build_text_encoder(TextEncoderSpec(model_name=named_model_config, seed=4))
    save_file({k: v.clone() for k, v in reference.tower.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda name, tag: {"url": "https://weights.invalid/tiny.safetensors"} if tag == "test" else {})
    loaded = load_pretrained_text_encoder(named_model_config, "test", cache_dir=str(tmp_path))
    assert loaded.spec.pretrained == "test"
    torch.testing.assert_close(loaded.encode("y").conditioning.context, reference.encode("y").conditioning.context)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    """A small CLIP text model in Hugging Face transformers' layout (ComfyUI's clip_l layout), and the model."""
    transformers = pytest.importorskip("transformers")  # installed with ComfyUI's requirements
    cfg = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=77, projection_dim=64,
                                      hidden_act="gelu")
    torch.manual_seed(0)
    model = transformers.CLIPTextModelWithProjection(cfg).eval()
    path = tmp_path_factory.mktemp("hf") / "clip_small.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def test_hugging_face_layout_reads_its_architecture_and_matches_transformers(hf_clip):
    path, model = hf_clip
    encoder = load_text_encoder_file(path)  # model_name "auto": the file says width, layers, projection
    assert encoder.spec.text_config["width"] == 128 and encoder.spec.text_config["layers"] == 2
    assert encoder.spec.embed_dim == 64 and not encoder.spec.quick_gelu and encoder.spec.source == path.name
    prompts = ["a large red circle on the left", "a dog"]
    out = encoder.encode(prompts).conditioning
    tokens, _ = encoder.tokenize(prompts)
    with torch.no_grad():
        ref = model(input_ids=tokens)
    for row, real in enumerate(out.key_mask.sum(dim=1).tolist()):
        # causal attention: the states up to end-of-text are the same whatever the padding
        torch.testing.assert_close(out.context[row, :real], ref.last_hidden_state[row, :real], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.pooled, ref.text_embeds, rtol=1e-4, atol=1e-5)


def test_open_clip_layout_without_an_architecture_is_refused_with_the_fix(encoder, tmp_path):
    path = tmp_path / "oc.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.tower.state_dict().items()}, str(path))
    with pytest.raises(TextEncoderError, match="give its open_clip model name .* or 'custom' with a text_config"):
        load_text_encoder_file(path)


def test_identity_is_the_weights_not_the_file_name(hf_clip, tmp_path):
    path, _ = hf_clip
    copy = tmp_path / "renamed.safetensors"
    copy.write_bytes(path.read_bytes())
    a, b = load_text_encoder_file(path), load_text_encoder_file(copy)
    assert a.identity == b.identity and a.record()["name"] != b.record()["name"]
