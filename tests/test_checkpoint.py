import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import t2i_core.checkpoint as ckpt
from t2i_core import CheckpointError, load_checkpoint, save_checkpoint
from t2i_core.codecs import vae_from_config
from t2i_core.pipeline import T2IModel


def images(model, **kw):
    return model.generate(["a red circle", "a blue square"], seeds=[1, 2], height=8, width=8, steps=4, **kw)


def test_round_trip_gives_bit_identical_samples(test_model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, test_model, training={"steps": 3})
    loaded = load_checkpoint(path)
    assert torch.equal(images(test_model), images(loaded))
    assert loaded.training == {"steps": 3}
    assert loaded.unet.cfg == test_model.unet.cfg and loaded.schedule.cfg == test_model.schedule.cfg


def test_a_patched_unet_round_trips(tmp_path):
    from t2i_test_utils import make_test_model
    model = make_test_model(patch_size=2)
    path = tmp_path / "patched.safetensors"
    save_checkpoint(path, model)
    loaded = load_checkpoint(path)
    assert loaded.unet.cfg.patch_size == 2 and loaded.unet.cfg == model.unet.cfg
    assert torch.equal(images(model), images(loaded))


def test_file_is_plain_safetensors_with_json_metadata(test_model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, test_model)
    with safe_open(str(path), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["format"] == "t2i-mini" and json.loads(meta["unet_config"])["base_channels"] == 16
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    # no pickle: the file is an 8-byte header length, a JSON header, and raw tensor bytes
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    json.loads(raw[8:8 + header_len])


def test_vae_codec_travels_inside_the_checkpoint(test_model, tmp_path):
    from t2i_test_utils import randomize_zero_layers
    from test_codecs import TINY_VAE

    from t2i_core import TextConditionedUNet, UNetConfig
    torch.manual_seed(1)
    unet = randomize_zero_layers(TextConditionedUNet(UNetConfig(in_channels=4, out_channels=4, base_channels=16,
                                                                channel_mult=(1, 2), attention_levels=(1,),
                                                                num_heads=2, context_dim=32)))
    model = T2IModel(unet.eval(), test_model.schedule, test_model.text_encoder, vae_from_config(TINY_VAE))
    path = tmp_path / "vae.safetensors"
    save_checkpoint(path, model)
    a = model.generate("x", seeds=[0], height=16, width=16, steps=3)
    b = load_checkpoint(path).generate("x", seeds=[0], height=16, width=16, steps=3)
    assert a.shape == (1, 3, 16, 16) and torch.equal(a, b)


def test_failed_write_leaves_the_old_checkpoint_intact(test_model, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, test_model)
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")
    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, test_model)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.fixture
def saved(test_model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, test_model)
    tensors, _ = ckpt.read_checkpoint(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return path, tensors, meta


def rewrite(path, tensors, meta):
    save_file(tensors, str(path), metadata=meta)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "none.safetensors")


def test_corrupt_file(saved):
    path = saved[0]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"m\.safetensors is not a readable safetensors file"):
        load_checkpoint(path)


def test_not_our_format(saved):
    path, tensors, _ = saved
    with pytest.raises(CheckpointError, match="not a Text-to-Image Mini checkpoint"):
        load_checkpoint(rewrite(path, tensors, {}))


def test_unknown_version(saved):
    path, tensors, meta = saved
    with pytest.raises(CheckpointError, match="format version 99.*update the pack"):
        load_checkpoint(rewrite(path, tensors, {**meta, "format_version": "99"}))


def test_missing_metadata_key(saved):
    path, tensors, meta = saved
    del meta["codec"]
    with pytest.raises(CheckpointError, match=r"metadata lacks \['codec'\]"):
        load_checkpoint(rewrite(path, tensors, meta))


def test_missing_tensor_key(saved):
    path, tensors, meta = saved
    del tensors["unet.conv_in.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \['unet.conv_in.weight'\]"):
        load_checkpoint(rewrite(path, tensors, meta))


def test_shape_mismatch(saved):
    path, tensors, meta = saved
    cfg = json.loads(meta["unet_config"])
    cfg["base_channels"] = 32
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(rewrite(path, tensors, {**meta, "unet_config": json.dumps(cfg)}))


def test_invalid_config(saved):
    path, tensors, meta = saved
    with pytest.raises(CheckpointError, match="invalid config"):
        load_checkpoint(rewrite(path, tensors, {**meta, "unet_config": json.dumps({"bogus": 1})}))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(rewrite(path, tensors, {**meta, "schedule": "{oops"}))


def test_a_large_text_encoder_is_named_not_copied(test_model, tmp_path, monkeypatch):
    from t2i_core import text_encoder as te_module
    from t2i_core.external import ExternalTextEncoder, MissingPartError
    monkeypatch.setattr(te_module, "EMBED_MAX_PARAMETERS", 0)  # as a CLIP-L is, beyond the embedding limit
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, test_model)
    with safe_open(str(path), framework="pt") as f:
        assert not any(k.startswith("text_encoder.") for k in f.keys())  # noqa: SIM118
    loaded = load_checkpoint(path)
    assert isinstance(loaded.text_encoder, ExternalTextEncoder)
    assert loaded.text_encoder.identity == test_model.text_encoder.identity
    assert loaded.text_encoder.width == test_model.text_encoder.width
    with pytest.raises(MissingPartError, match="Load Text Encoder File"):
        loaded.generate("a red circle", seeds=[0], height=8, width=8, steps=2)
    # given the encoder it was trained with, the checkpoint generates as before
    loaded.text_encoder = test_model.text_encoder
    assert torch.equal(images(loaded), images(test_model))
