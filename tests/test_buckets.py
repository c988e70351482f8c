"""Aspect-ratio buckets: the bucket table, loading into buckets, one-bucket batches, exact resume with
mixed aspect ratios, and generation at non-square sizes."""

import numpy as np
import pytest
import torch
from PIL import Image
from t2i_test_utils import TEST_TEXT_CONFIG

from t2i_core import TextEncoderSpec, build_text_encoder, load_checkpoint
from t2i_core.data import DatasetError, load_dataset
from t2i_core.data.buckets import bucket_sizes, bucket_step, nearest_bucket
from t2i_core.data.order import bucket_batch_positions
from t2i_core.training.config import TrainCallbacks, TrainConfig
from t2i_core.training.trainer import Trainer, train

# (width, height) of the images of the mixed folder: wide, tall, square, very wide
MIXED_SIZES = [(48, 24), (24, 48), (32, 32), (60, 20)] * 6


def write_folder(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[:, : w // 2] = rng.integers(0, 256, 3)  # left half one colour, the rest black: cropping shows
        pixels += rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:02d}.png")
        (folder / f"img_{i:02d}.txt").write_text(f"a {'wide' if w > h else 'tall' if h > w else 'square'} image {i % 3}")
    return folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data") / "mixed", MIXED_SIZES)


@pytest.fixture(scope="module")
def encoder():
    return build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=0))


def config(dataset, tmp_path, **kw):
    base = dict(dataset=str(dataset), output=str(tmp_path / "out" / "m.safetensors"), resolution=16, steps=8,
                batch_size=4, lr=2e-3, warmup_steps=2, checkpoint_every=0, precision="fp32",
                cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**{**base, **kw})


def test_bucket_sizes_have_about_equal_area_and_whole_steps():
    for resolution, factor in ((16, 4), (32, 4), (64, 8), (512, 8)):
        step = bucket_step(resolution, factor)
        assert step % factor == 0
        sizes = bucket_sizes(resolution, step)
        assert (resolution, resolution) in sizes
        assert all(h % step == 0 and w % step == 0 for h, w in sizes)
        assert all(0.6 * resolution ** 2 <= h * w <= resolution ** 2 for h, w in sizes), sizes
        assert all((w, h) in sizes for h, w in sizes)  # tall and wide alike
        ratios = [w / h for h, w in sizes]
        assert ratios == sorted(ratios) and max(ratios) >= 2.5
    assert bucket_step(512, 8) == 64  # kohya's default step at SD's 512 px
    sizes = bucket_sizes(32, 4)
    h, w = sizes[nearest_bucket(50, 100, sizes)]  # a 2:1 image
    assert (h, w) == (20, 44) and min(abs(np.log(bw / bh) - np.log(2)) for bh, bw in sizes) == abs(np.log(w / h) - np.log(2))
    assert sizes[nearest_bucket(300, 300, sizes)] == (32, 32)


def test_mixed_folder_loads_into_buckets_and_logs_the_table(mixed):
    messages = []
    data = load_dataset(mixed, 16, size_factor=4, log=messages.append)
    assert data.bucket_sizes is not None and len(data.bucket_sizes) == 4
    assert "aspect-ratio buckets" in messages[0] and "16x16: 6" in messages[0]
    for image, bucket, path in zip(data.images, data.item_bucket, data.paths):
        h, w = data.bucket_sizes[bucket]
        assert image.shape == (3, h, w) and h % 4 == 0 and w % 4 == 0
        source = Image.open(path).size
        assert (w > h) == (source[0] > source[1]) and (h > w) == (source[1] > source[0])
        assert abs(np.log(w / h) - np.log(source[0] / source[1])) < 0.35
    one = [p for p, b in enumerate(data.position_buckets) if b == 0]
    assert data.batch(one, None).shape[0] == len(one)
    with pytest.raises(ValueError, match="one aspect-ratio bucket"):
        data.batch([one[0], data.position_buckets.index(1)], None)

    # the same images square: buckets off on request, and with random_crop (which crops squares)
    square = load_dataset(mixed, 16, buckets=False)
    assert square.bucket_sizes is None and square.images.shape == (len(MIXED_SIZES), 3, 16, 16)
    assert load_dataset(mixed, 16, random_crop=True).bucket_sizes is None
    with pytest.raises(DatasetError, match="turn random_crop off"):
        load_dataset(mixed, 16, random_crop=True, buckets=True)


def test_same_shape_folder_keeps_the_centre_crop(tmp_path):
    folder = write_folder(tmp_path / "same", [(40, 20), (80, 40), (20, 10)])  # one aspect ratio, three sizes
    messages = []
    data = load_dataset(folder, 16, log=messages.append)
    assert data.bucket_sizes is None and isinstance(data.images, torch.Tensor)
    assert data.images.shape == (3, 3, 16, 16) and "bucket" not in messages[0]
    forced = load_dataset(folder, 16, buckets=True, size_factor=4)
    assert forced.bucket_sizes == [(12, 20)]  # nearest 2:1 with sides of 4: 12x20 (240 of 256 pixels)


def test_bucket_batches_come_from_one_bucket_and_cover_each_epoch():
    position_buckets = [0] * 70 + [1] * 9 + [2] * 1 + [0] * 5 + [3] * 20
    batch = 16
    per_epoch = sum(-(-position_buckets.count(b) // batch) for b in range(4))  # 5 + 1 + 1 + 2
    for epoch in range(2):
        seen = []
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            positions = bucket_batch_positions(position_buckets, batch, seed=3, step=step)
            assert 1 <= len(positions) <= batch
            assert len({position_buckets[p] for p in positions.tolist()}) == 1
            seen.extend(positions.tolist())
        assert sorted(seen) == list(range(len(position_buckets)))  # every image once per epoch
    sizes = sorted(len(bucket_batch_positions(position_buckets, batch, 3, s)) for s in range(per_epoch))
    assert sizes == [1, 9, 10, 10, 15, 15, 15, 15, 15]  # 75 -> 5 batches of 15, 20 -> 10 + 10
    again = [bucket_batch_positions(position_buckets, batch, 3, s).tolist() for s in range(per_epoch)]
    assert again == [bucket_batch_positions(position_buckets, batch, 3, s).tolist() for s in range(per_epoch)]
    other_seed = [bucket_batch_positions(position_buckets, batch, 4, s).tolist() for s in range(per_epoch)]
    assert other_seed != again


progress: list = []


def test_resume_with_mixed_aspect_ratios_equals_the_uninterrupted_run(mixed, encoder, tmp_path):
    whole = train(config(mixed, tmp_path / "a", steps=10), encoder, device="cpu")
    progress.clear()
    first = train(config(mixed, tmp_path / "b", steps=10), encoder, device="cpu",
                  callbacks=TrainCallbacks(should_stop=lambda: len(progress) >= 4,
                                           on_progress=lambda p: progress.append(p.step)))
    assert first.stopped and first.step == 4
    resumed = train(config(mixed, tmp_path / "b", steps=10), encoder, device="cpu")
    assert resumed.step == 10
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for (name, x), (_, y) in zip(whole.model.unet.state_dict().items(), resumed.model.unet.state_dict().items()):
        assert torch.equal(x, y), name
    for (name, x), (_, y) in zip(whole.model.unet.state_dict().items(),
                                 load_checkpoint(resumed.checkpoint).unet.state_dict().items()):
        assert torch.equal(x, y), name

    trained = load_checkpoint(whole.checkpoint).training
    assert trained["config"]["buckets"] == "auto"
    assert sorted(tuple(b) for b in trained["buckets"]) == [(8, 24, 6), (12, 20, 6), (16, 16, 6), (20, 12, 6)]


def test_trainer_batches_are_one_bucket_each_with_pixels_and_latents(mixed, encoder, tmp_path):
    from test_codecs import TINY_VAE

    from t2i_core.codecs import vae_from_config
    trainer = Trainer(config(mixed, tmp_path / "px", steps=2, random_flip=True), encoder, device="cpu")
    shapes = {tuple(trainer.batch(k, 0)[0].shape[-2:]) for k in range(12)}
    assert len(shapes) > 1 and shapes <= set(trainer.data.bucket_sizes)
    torch.manual_seed(0)
    vae = vae_from_config(TINY_VAE)  # factor 2: latents are half the bucket's sides
    latent = Trainer(config(mixed, tmp_path / "vae", steps=2), encoder, vae, device="cpu")
    assert isinstance(latent.latents, list)
    for k in range(6):
        x0 = latent.batch(k, 0)[0]
        assert (x0.shape[-2] * 2, x0.shape[-1] * 2) in latent.data.bucket_sizes
    assert latent.run().step == 2
    with pytest.raises(ValueError, match="buckets must be"):
        config(mixed, tmp_path, buckets="yes")


def test_generation_at_non_square_sizes(mixed, encoder, tmp_path):
    result = train(config(mixed, tmp_path, steps=2), encoder, device="cpu")
    model = load_checkpoint(result.checkpoint)
    wide = model.generate("a wide image 0", seeds=[0, 1], height=12, width=20, steps=2)
    tall = model.generate("a tall image 0", seeds=[0], height=28, width=8, steps=2)
    assert wide.shape == (2, 3, 12, 20) and tall.shape == (1, 3, 28, 8)
    assert torch.isfinite(wide).all() and not torch.equal(wide[0], wide[1])
    with pytest.raises(ValueError, match="multiples of 4"):
        model.generate("a wide image 0", height=12, width=18, steps=2)
