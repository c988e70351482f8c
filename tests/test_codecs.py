import json

import pytest
import torch
from safetensors.torch import save_file

from t2i_core import cancel
from t2i_core.codecs import CodecError, PixelCodec, load_vae, vae_from_config

TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.5)


def test_pixel_codec_round_trip():
    img = torch.rand(2, 3, 8, 8)
    c = PixelCodec()
    z = c.encode(img)
    assert z.min() >= -1 and z.max() <= 1
    torch.testing.assert_close(c.decode(z), img)
    assert torch.equal(c.scale(c.unscale(z)), z)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return vae_from_config(TINY_VAE)


def test_vae_codec_shapes_and_scaling(vae):
    assert vae.factor == 2 and vae.channels == 4 and vae.scaling_factor == 0.5
    img = torch.rand(2, 3, 16, 16)
    z = vae.encode(img)
    assert z.shape == (2, 4, 8, 8)
    raw = vae.vae.encode(img * 2 - 1).latent_dist.mean
    torch.testing.assert_close(z, raw * 0.5)  # model space = scaled
    torch.testing.assert_close(vae.unscale(z), raw)  # the raw latent, what ComfyUI's LATENT holds
    torch.testing.assert_close(vae.scale(vae.unscale(z)), z)
    out = vae.decode(z)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1


def test_load_vae_from_diffusers_folder_and_single_file(vae, tmp_path):
    vae.vae.save_pretrained(tmp_path / "folder")
    z = torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(load_vae(tmp_path / "folder").decode(z), vae.decode(z))
    save_file({k: v.contiguous() for k, v in vae.vae.state_dict().items()}, str(tmp_path / "my_vae.safetensors"))
    (tmp_path / "my_vae.json").write_text(json.dumps(dict(vae.vae.config)))
    torch.testing.assert_close(load_vae(tmp_path / "my_vae.safetensors").decode(z), vae.decode(z))


def test_load_vae_errors_name_the_file(tmp_path):
    with pytest.raises(CodecError, match="does not exist"):
        load_vae(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CodecError, match="bad.safetensors"):
        load_vae(bad)


# ---- Cancel at large sizes ----

class Stop(Exception):
    pass


def test_large_latents_decode_one_image_at_a_time_with_the_same_images(monkeypatch):
    from t2i_core import codecs
    codec = vae_from_config(TINY_VAE)
    latent = torch.randn(3, 4, 8, 8)
    batched = codec.decode_raw(latent)
    assert torch.equal(codecs.decode_in_pieces(codec, latent), batched)  # at or below the threshold: one call
    monkeypatch.setattr(codecs, "DECODE_ONE_BY_ONE_ABOVE_POSITIONS", 16)
    calls = []
    with cancel.calling(lambda: calls.append(1)):
        pieces = codecs.decode_in_pieces(codec, latent)
    torch.testing.assert_close(pieces, batched, rtol=1e-5, atol=1e-6)
    blocks = sum(type(m).__name__ in codecs.DECODER_BLOCKS for m in codec.vae.decoder.modules())
    assert blocks > 0 and len(calls) == 3 * blocks + 3  # before every decoder block, and after every image


def test_raising_from_the_check_stops_a_decode_inside_the_vae():
    codec = vae_from_config(TINY_VAE)
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:
            raise Stop

    with cancel.calling(check), pytest.raises(Stop):
        codec.decode_raw(torch.randn(1, 4, 8, 8))
    assert cancel.current_check() is None


class Upscaling:
    """A codec whose decode is local (each latent cell becomes factor x factor pixels), so a tiled decode of it
    must equal the whole one exactly wherever the tiles' weights overlap."""
    channels, factor = 4, 4

    def __init__(self):
        self.calls = []

    def decode_raw(self, latent):
        self.calls.append(tuple(latent.shape[-2:]))
        return torch.nn.functional.interpolate(latent[:, :3], scale_factor=self.factor, mode="nearest")


def test_tiles_cover_every_position_and_blend_back_to_the_whole_decode():
    from t2i_core import codecs
    for size in (64, 65, 100, 112, 113, 128, 200, 1000):
        spans = codecs.tile_spans(size, 64, 16)
        assert spans[0][0] == 0 and sum(spans[-1]) == size and all(length <= 64 for _, length in spans)
        assert all(a + length - b >= 16 for (a, length), (b, _) in zip(spans, spans[1:]))  # overlaps of at least 16
        assert len(spans) == (1 if size <= 64 else -(-(size - 16) // 48))  # as few as can cover it
    codec = Upscaling()
    latent = torch.randn(2, 4, 150, 97)
    checks = []
    with cancel.calling(lambda: checks.append(1)):
        tiled = codecs.decode_in_tiles(codec, latent)
    torch.testing.assert_close(tiled, codec.decode_raw(latent), rtol=1e-6, atol=1e-6)
    assert codec.calls[:-1] == [(61, 57)] * 6 and len(checks) == 6  # 3 x 2 tiles of at most 64, overlapping by 16


def test_a_vae_decode_runs_its_large_convolutions_in_bands_with_cancel_between(monkeypatch):
    from t2i_core import pieces
    torch.manual_seed(0)
    codec = vae_from_config(TINY_VAE)
    latent = torch.randn(1, 4, 12, 12)
    checks = []
    with cancel.calling(lambda: checks.append(1)):
        whole = codec.decode_raw(latent)
    unbanded = len(checks)
    monkeypatch.setattr(pieces, "VAE_BAND_MAX_MACS", 1 << 16)  # every convolution of this small VAE in bands
    checks.clear()
    with cancel.calling(lambda: checks.append(1)):
        banded = codec.decode_raw(latent)
    assert len(checks) > 2 * unbanded
    torch.testing.assert_close(banded, whole, rtol=1e-4, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in codec.vae.modules())  # its own forwards again


def test_a_large_vae_latent_decodes_in_tiles_with_cancel_between_and_a_small_one_in_one_call(monkeypatch):
    from t2i_core import codecs
    torch.manual_seed(0)
    codec = vae_from_config(TINY_VAE)
    latent = torch.randn(1, 4, 24, 24)
    assert torch.equal(codecs.decode_in_pieces(codec, latent), codec.decode_raw(latent))  # below: one call
    monkeypatch.setattr(codecs, "DECODE_TILE", 16)
    monkeypatch.setattr(codecs, "DECODE_TILE_OVERLAP", 4)
    checks = []
    with cancel.calling(lambda: checks.append(1)):
        tiled = codecs.decode_in_pieces(codec, latent)
    blocks = sum(type(m).__name__ in codecs.DECODER_BLOCKS for m in codec.vae.decoder.modules())
    assert len(checks) == 4 * (blocks + 1)  # 2 x 2 tiles of 14 (starts 0 and 10): inside each, and after each
    whole = codec.decode_raw(latent)
    assert tiled.shape == whole.shape and tiled.min() >= 0 and tiled.max() <= 1
    # the same picture: each tile normalises over itself, so values shift a little, but the image follows
    other = codec.decode_raw(torch.randn(1, 4, 24, 24))
    assert (tiled - whole).abs().mean() < 0.25 * (other - whole).abs().mean()

    def stop_in_the_third_tile():
        checks.append(1)
        if len(checks) > 2 * (blocks + 1):
            raise Stop

    checks.clear()
    with cancel.calling(stop_in_the_third_tile), pytest.raises(Stop):
        codecs.decode_in_pieces(codec, latent)
