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
