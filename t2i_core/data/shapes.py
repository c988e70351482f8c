"""The built-in shapes dataset: one coloured shape on a black background, captioned
"a large red circle on the left". The vocabulary is small, the attributes independent and the colours pure, so a
tiny model can learn it at 16 px and an analytic judge (evals/shapes.py) can check every attribute of a sample."""

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .builtin_folder import write_captioned_images

SHAPES_VOCAB = {
    "color": ("red", "green", "blue", "yellow"),
    "shape": ("circle", "square", "triangle"),
    "position": ("left", "center", "right"),
    "size": ("small", "large"),
}
SHAPE_RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
SHAPES_BACKGROUND_RGB = (0, 0, 0)
# Geometry as fractions of the image side. The gaps between the ranges are
# what lets the judge tell the classes apart with a wide margin.
SHAPE_EXTENT = {"small": (0.24, 0.28), "large": (0.42, 0.48)}  # bounding-box side
SHAPE_CENTER_X = {"left": 0.25, "center": 0.5, "right": 0.75}
SHAPE_CENTER_X_JITTER = 0.03
SHAPE_CENTER_Y = (0.3, 0.7)  # vertical position is free: variety the caption does not mention
SUPERSAMPLE = 4  # draw at 4x then box-downsample: smooth edges, true area at small sizes
SHAPES_VERSION = 1  # bump when the drawing changes, so old folders are regenerated

SHAPES_CAPTION = re.compile(
    r"^a (?P<size>small|large) (?P<color>red|green|blue|yellow) (?P<shape>circle|square|triangle) "
    r"(?:on the (?P<side>left|right)|in the (?P<center>center))$"
)


def shapes_caption(color: str, shape: str, position: str, size: str) -> str:
    """"a large red circle on the left" / "a small blue square in the center"."""
    for name, value in (("color", color), ("shape", shape), ("position", position), ("size", size)):
        if value not in SHAPES_VOCAB[name]:
            raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(SHAPES_VOCAB[name])}")
    where = "in the center" if position == "center" else f"on the {position}"
    return f"a {size} {color} {shape} {where}"


def parse_shapes_caption(caption: str) -> dict[str, str]:
    """Inverse of shapes_caption: {"color", "shape", "position", "size"}."""
    match = SHAPES_CAPTION.match(caption.strip().lower())
    if not match:
        raise ValueError(f"not a shapes caption: {caption!r}; expected e.g. \"a large red circle on the left\" "
                         f"or \"a small blue square in the center\"")
    return {
        "color": match["color"], "shape": match["shape"],
        "position": match["side"] or match["center"], "size": match["size"],
    }


def draw_shape(color: str, shape: str, position: str, size: str, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """One shapes image, uint8 [R, R, 3]; `rng` draws the size and placement jitter."""
    r = resolution
    low, high = SHAPE_EXTENT[size]
    extent = max(3, round(rng.uniform(low, high) * r))
    center_x = (SHAPE_CENTER_X[position] + rng.uniform(-SHAPE_CENTER_X_JITTER, SHAPE_CENTER_X_JITTER)) * r
    center_y = rng.uniform(*SHAPE_CENTER_Y) * r
    # whole-pixel corners keep squares crisp and the shape fully inside the image
    left = int(np.clip(round(center_x - extent / 2), 0, r - extent))
    top = int(np.clip(round(center_y - extent / 2), 0, r - extent))

    s = SUPERSAMPLE
    canvas = Image.new("RGB", (r * s, r * s), SHAPES_BACKGROUND_RGB)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = left * s, top * s, (left + extent) * s - 1, (top + extent) * s - 1
    fill = SHAPE_RGB[color]
    if shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    else:  # upright isosceles triangle filling half its bounding box
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    return np.asarray(canvas.reduce(s), dtype=np.uint8)


def generate_shapes(count: int, resolution: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """`count` shapes images as uint8 [N, R, R, 3], their captions and attributes.

    Deterministic for (resolution, seed). Every run of 72 consecutive images
    holds each color x shape x position x size combination once (shuffled), so
    small datasets stay balanced; a larger count extends a smaller one.
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if not isinstance(resolution, int) or resolution < 16:
        raise ValueError(f"shapes resolution must be an integer >= 16 pixels, got {resolution!r}")
    combinations = [
        (color, shape, position, size)
        for color in SHAPES_VOCAB["color"] for shape in SHAPES_VOCAB["shape"]
        for position in SHAPES_VOCAB["position"] for size in SHAPES_VOCAB["size"]
    ]
    images, captions, attributes = [], [], []
    for i in range(count):
        cycle, slot = divmod(i, len(combinations))
        order = np.random.default_rng([seed, 0, cycle]).permutation(len(combinations))
        color, shape, position, size = combinations[order[slot]]
        images.append(draw_shape(color, shape, position, size, resolution, np.random.default_rng([seed, 1, i])))
        captions.append(shapes_caption(color, shape, position, size))
        attributes.append({"color": color, "shape": shape, "position": position, "size": size})
    return np.stack(images), captions, attributes


def make_shapes_dataset(folder: str | Path, count: int = 1000, resolution: int = 32, seed: int = 0) -> Path:
    """Write the shapes dataset as shape_00000.png + shape_00000.txt files; returns the folder."""
    settings = {"count": count, "resolution": resolution, "seed": seed, "version": SHAPES_VERSION}
    folder = Path(folder).expanduser()
    images, captions, _ = generate_shapes(count, resolution, seed)  # validates arguments before touching the folder
    return write_captioned_images(folder, "shapes", settings, [f"shape_{i:05d}" for i in range(count)], images,
                                  captions)
