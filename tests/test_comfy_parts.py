"""A ComfyUI user's own CLIP and VAE files, read by ComfyUI's loaders and by the engine's, in-process: real-size
random-weight files in the real layouts (scripts/model_files.py), compared with ComfyUI's core nodes."""
import pytest
import torch

from t2i_core import load_checkpoint, load_text_encoder_file, load_vae
from t2i_core.data import make_shapes_dataset
from t2i_core.external import (
    ExternalCodec,
    ExternalTextEncoder,
    MissingPartError,
    PartMismatchError,
    check_same_part,
)
from t2i_core.training.config import TrainConfig
from t2i_core.training.trainer import train

PROMPT = "a large red circle on the left"


@pytest.fixture(scope="module")
def core(comfy_pack):
    from scripts.comfy_inprocess import core_nodes
    return core_nodes()


@pytest.fixture(scope="module")
def parts(comfy_pack):
    from scripts.comfy_inprocess import pack_module
    return pack_module("nodes.comfy_parts")


@pytest.fixture(scope="module")
def files(comfy_pack):
    from scripts.model_files import clip_l_file, sd_vae_file
    return clip_l_file(), sd_vae_file()


def _load_clip(path):
    """What core CLIPLoader does for type stable_diffusion."""
    import comfy.sd
    return comfy.sd.load_clip(ckpt_paths=[str(path)], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)


@pytest.fixture(scope="module")
def clip(files):
    return _load_clip(files[0])


@pytest.fixture(scope="module")
def vae(files):
    import comfy.sd
    import comfy.utils
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(files[1])))


def test_our_text_encode_on_a_core_clip_equals_core_clip_text_encode(core, clip, comfy_pack):
    from scripts.comfy_inprocess import pack_module
    text_encode = pack_module("nodes.conditioning").TextEncode
    [[ours, our_extra]] = text_encode.execute(clip, PROMPT).args[0]
    [[theirs, their_extra]] = core.CLIPTextEncode().encode(clip, PROMPT)[0]
    assert ours.shape == theirs.shape == (1, 77, 768)
    assert torch.equal(ours, theirs) and torch.equal(our_extra["pooled_output"], their_extra["pooled_output"])
    assert "attention_mask" not in our_extra  # core CLIP gives no mask for clip_l, so neither do we


def test_hf_layout_clip_l_file_loads_into_the_engine_with_the_states_core_gives(core, clip, files):
    ours = load_text_encoder_file(files[0])  # architecture read from the file: width 768, 12 layers, QuickGELU
    assert ours.width == 768 and ours.spec.quick_gelu and ours.spec.text_config["layers"] == 12
    mine = ours.encode([PROMPT]).conditioning
    [[theirs, _]] = core.CLIPTextEncode().encode(clip, PROMPT)[0]
    real = int(mine.key_mask.sum())  # causal attention: the states up to end-of-text don't see the padding
    torch.testing.assert_close(mine.context[0, :real], theirs[0, :real], rtol=1e-4, atol=1e-4)
    assert not ours.embeds_weights()  # 123M parameters: a checkpoint names the file instead of copying it


def test_ldm_layout_vae_file_decodes_like_core_vae_decode(core, vae, files):
    ours = load_vae(files[1])  # no network, no .json: the shipped SD 1.x config
    assert (ours.channels, ours.factor, ours.scaling_factor) == (4, 8, 0.18215)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    [theirs] = core.VAEDecode().decode(vae, {"samples": latent})
    mine = ours.decode_raw(latent).movedim(1, -1)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=2e-3)  # fp16 weights, two implementations


def test_core_vae_codec_encodes_and_decodes_as_core_nodes_do(parts, core, vae):
    codec = parts.as_codec(vae)
    assert (codec.channels, codec.factor, codec.scaling_factor) == (4, 8, 0.18215)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    raw = core.VAEEncode().encode(vae, images.movedim(1, -1))[0]["samples"]
    torch.testing.assert_close(codec.encode(images), raw * 0.18215)
    [decoded] = core.VAEDecode().decode(vae, {"samples": raw})
    assert torch.equal(codec.decode_raw(raw), decoded.movedim(-1, 1))


def test_cancel_stops_a_core_vae_decode_inside_the_decoder_and_leaves_the_vae_unhooked(parts, core, vae):
    from t2i_core import cancel

    class Stop(Exception):
        pass

    codec = parts.as_codec(vae)
    decoder_parts = codec.decoder_parts()
    assert sum(type(m).__name__ == "Conv2d" for m in decoder_parts) > 10  # every convolution, not only the blocks
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 5:
            raise Stop

    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with cancel.calling(check), pytest.raises(Stop):
        codec.decode_raw(latent)
    assert len(calls) == 5  # stopped inside the decoder, at the fifth part
    # ComfyUI's VAE as it was: no hooks left, every convolution's own forward again
    assert not any(m._forward_pre_hooks or "forward" in m.__dict__ for m in vae.first_stage_model.modules())
    with cancel.calling(lambda: calls.append(1)):
        decoded = codec.decode_raw(latent)
    assert len(calls) == 5 + len(decoder_parts)
    [theirs] = core.VAEDecode().decode(vae, {"samples": latent})
    assert torch.equal(decoded, theirs.movedim(-1, 1))


def test_a_core_vae_decode_runs_its_large_convolutions_in_bands_with_cancel_between(parts, core, vae, monkeypatch):
    from t2i_core import cancel, pieces
    codec = parts.as_codec(vae)
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    [theirs] = core.VAEDecode().decode(vae, {"samples": latent})
    calls = []
    with cancel.calling(lambda: calls.append(1)):
        codec.decode_raw(latent)
    unbanded = len(calls)
    monkeypatch.setattr(pieces, "VAE_BAND_MAX_MACS", 1 << 20)  # every convolution of this small VAE in bands
    calls.clear()
    with cancel.calling(lambda: calls.append(1)):
        banded = codec.decode_raw(latent)
    assert len(calls) > 2 * unbanded  # a check after each band too
    torch.testing.assert_close(banded, theirs.movedim(-1, 1), rtol=1e-4, atol=1e-5)


def test_a_large_latent_decodes_through_a_core_vae_in_tiles_with_cancel_between(parts, vae, monkeypatch):
    from t2i_core import cancel, codecs
    codec = parts.as_codec(vae)
    monkeypatch.setattr(codecs, "DECODE_TILE", 8)
    monkeypatch.setattr(codecs, "DECODE_TILE_OVERLAP", 2)
    latent = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(3))
    checks = []
    with cancel.calling(lambda: checks.append(1)):
        tiled = codecs.decode_in_pieces(codec, latent)
    assert tiled.shape == (1, 3, 96, 96) and tiled.min() >= 0 and tiled.max() <= 1
    assert len(checks) == 4 * (len(codec.decoder_parts()) + 1)  # 2 x 2 tiles: inside each, and after each
    assert not any(m._forward_pre_hooks for m in vae.first_stage_model.modules())


def test_identities_tell_files_apart_and_mismatches_are_refused(parts, clip, files, tmp_path):
    from safetensors.torch import load_file, save_file
    other_file = tmp_path / "other_clip_l.safetensors"
    sd = load_file(str(files[0]))
    sd["text_model.final_layer_norm.weight"] = sd["text_model.final_layer_norm.weight"] * 1.5
    save_file(sd, str(other_file))
    a = parts.as_text_encoder(clip, {"node": "CLIPLoader", "clip_name": "clip_l.safetensors"})
    b = parts.as_text_encoder(_load_clip(other_file), {"node": "CLIPLoader", "clip_name": "other_clip_l.safetensors"})
    assert a.identity != b.identity
    assert parts.as_text_encoder(_load_clip(files[0])).identity == a.identity  # same file, same identity
    with pytest.raises(PartMismatchError, match="clip_l.safetensors.*other_clip_l.safetensors.*check_text_encoder off"):
        check_same_part("text encoder", a.record(), b.record(), override="check_text_encoder off")
    check_same_part("text encoder", a.record(), a.record(), override="-")


def test_a_model_trained_on_core_clip_and_vae_names_them_in_its_checkpoint(parts, clip, vae, tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=8, resolution=64)
    encoder = parts.as_text_encoder(clip, {"node": "CLIPLoader", "clip_name": "clip_l.safetensors",
                                           "type": "stable_diffusion"})
    codec = parts.as_codec(vae, {"node": "VAELoader", "vae_name": "vae-ft-mse.safetensors"})
    result = train(TrainConfig(dataset=str(data), output=str(tmp_path / "m.safetensors"), resolution=64, steps=2,
                               batch_size=4, checkpoint_every=0, precision="fp32", cache_dir=str(tmp_path / "cache")),
                   encoder, codec, device="cpu")
    assert result.model.unet.cfg.context_dim == 768 and result.model.unet.cfg.in_channels == 4
    loaded = load_checkpoint(result.checkpoint)
    assert isinstance(loaded.text_encoder, ExternalTextEncoder) and isinstance(loaded.codec, ExternalCodec)
    assert loaded.text_encoder.identity == encoder.identity and loaded.codec.identity == codec.identity
    assert loaded.latent_shape(64, 64) == (4, 8, 8)  # shapes and scaling are known without the VAE
    with pytest.raises(MissingPartError, match="clip_l.safetensors with CLIPLoader \\(type stable_diffusion\\)"):
        loaded.text_encoder.encode([PROMPT])
    with pytest.raises(MissingPartError, match="vae-ft-mse.safetensors with VAELoader"):
        loaded.codec.decode(torch.zeros(1, 4, 8, 8))
    # the checkpoint holds the U-Net alone: no CLIP or VAE weights copied into it
    from safetensors import safe_open
    with safe_open(str(result.checkpoint), "pt") as f:
        assert all(k.startswith("unet.") for k in f.keys())  # noqa: SIM118
