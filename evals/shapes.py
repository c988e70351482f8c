"""The shapes judge: an analytic check of the built-in shapes dataset's captions (color, shape, position,
size), no learned model involved."""
import numpy as np
import torch

from t2i_core.data.shapes import (
    SHAPE_RGB,
    SHAPES_BACKGROUND_RGB,
    SHAPES_VOCAB,
    generate_shapes,
    parse_shapes_caption,
)

from .images import numpy_images
from .judgement import Evaluation, Judgement

SHAPE_ATTRIBUTES = ("color", "shape", "position", "size")
# An upright triangle's mass sits low in its bounding box (centroid at 2/3 of
# the height, 0.5 for circle and square); this survives blur, which makes a
# small triangle's fill ratio look like a circle's.
TRIANGLE_ABOVE_CENTROID = 0.575
# Fill ratio of the bounding box: circle pi/4 = 0.785, square 1; threshold between.
CIRCLE_BELOW_FILL = 0.89
# Drawn extents are 0.24-0.28 (small) and 0.42-0.48 (large) of the image side.
LARGE_ABOVE_EXTENT = 0.35


def detect_shape(image) -> dict[str, str] | None:
    """The shape an image [3, H, W] shows as {"color", "shape", "position", "size"}, or None if blank.

    Every pixel is assigned to the nearest of background and the four colors;
    the most common color's largest blob is the shape.
    """
    image = numpy_images(image[None])[0]
    _, height, width = image.shape
    palette = np.array([SHAPES_BACKGROUND_RGB] + [SHAPE_RGB[c] for c in SHAPES_VOCAB["color"]], dtype=np.float64) / 255
    pixels = image.transpose(1, 2, 0)  # [H, W, 3]
    nearest = np.argmin(((pixels[:, :, None, :] - palette) ** 2).sum(-1), axis=-1)  # 0 = background
    counts = np.bincount(nearest.ravel(), minlength=len(palette))[1:]
    if counts.max() == 0:
        return None
    color_index = int(np.argmax(counts))
    mask = _largest_blob(nearest == color_index + 1)

    ys, xs = np.nonzero(mask)
    box_height, box_width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(ys) / (box_height * box_width)
    centroid_y = (ys.mean() + 0.5 - ys.min()) / box_height  # 0 = top of the box, 1 = bottom
    center_x = (xs.mean() + 0.5) / width
    extent = max(box_height / height, box_width / width)
    return {
        "color": SHAPES_VOCAB["color"][color_index],
        "shape": _outline(fill, centroid_y),
        "position": "left" if center_x < 1 / 3 else "right" if center_x > 2 / 3 else "center",
        "size": "large" if extent > LARGE_ABOVE_EXTENT else "small",
    }


def _outline(fill: float, centroid_y: float) -> str:
    if centroid_y > TRIANGLE_ABOVE_CENTROID:
        return "triangle"
    return "circle" if fill < CIRCLE_BELOW_FILL else "square"


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of `mask`: stray pixels elsewhere must not stretch the bounding box."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best_label, best_size, next_label = 0, 0, 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        next_label += 1
        labels[start] = next_label
        stack, size = [start], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = next_label
                    stack.append((ny, nx))
        if size > best_size:
            best_label, best_size = next_label, size
    return labels == best_label


def judge_shapes(images, captions: list[str]) -> list[dict]:
    """Per image: {"color", "shape", "position", "size", "all": bool, "detected": dict | None}.

    Each attribute is True when what the image shows matches its caption.
    """
    images = numpy_images(images)
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions; give one caption per image")
    judgements = []
    for image, caption in zip(images, captions):
        wanted = parse_shapes_caption(caption)
        detected = detect_shape(image)
        verdict = {a: detected is not None and detected[a] == wanted[a] for a in SHAPE_ATTRIBUTES}
        verdict["all"] = all(verdict.values())
        verdict["detected"] = detected
        judgements.append(verdict)
    return judgements


def summarize_judgements(judgements: list[dict]) -> dict[str, float]:
    """Fraction of images right on each attribute and on all of them."""
    keys = [k for k in judgements[0] if k != "detected"] if judgements else list(SHAPE_ATTRIBUTES) + ["all"]
    return {k: float(np.mean([j[k] for j in judgements])) if judgements else 0.0 for k in keys}


class ShapesJudge:
    """judge_shapes as a Judge: adherence is the share with all four attributes right."""

    attributes = SHAPE_ATTRIBUTES

    def judge(self, images, captions: list[str]) -> Judgement:
        s = summarize_judgements(judge_shapes(images, captions))
        return Judgement(s["all"], {a: s[a] for a in SHAPE_ATTRIBUTES})

    def matches(self, images, captions: list[str]) -> np.ndarray:
        return np.array([j["all"] for j in judge_shapes(images, captions)], dtype=bool)


TRAIN_SEED, HELDOUT_SEED = 0, 1  # the training images are the shapes dataset's default seed, 0
CAPTIONS_PER_CYCLE = len(SHAPES_VOCAB["color"]) * len(SHAPES_VOCAB["shape"]) * len(SHAPES_VOCAB["position"]) * len(
    SHAPES_VOCAB["size"])


def shapes_evaluation(resolution: int, train_count: int = 1000, heldout_count: int = 720) -> Evaluation:
    """Prompts: held-out captions (seed 1), every combination once per 72; real images: the training set
    (seed 0) and as many held-out shapes."""
    def as_tensor(a):
        return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255

    def prompts(n: int) -> list[str]:
        return generate_shapes(max(n, CAPTIONS_PER_CYCLE), resolution, seed=HELDOUT_SEED)[1][:n]
    held_images, held_captions, _ = generate_shapes(heldout_count, resolution, seed=HELDOUT_SEED)
    return Evaluation(ShapesJudge(), prompts, as_tensor(generate_shapes(train_count, resolution, seed=TRAIN_SEED)[0]),
                      as_tensor(held_images), held_captions,
                      "judge_shapes reads colour, shape, position and size from the pixels (no learned model)")
