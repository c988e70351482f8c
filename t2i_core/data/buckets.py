"""Aspect-ratio buckets: image sizes of about equal area, so images that are not square train whole.

As in kohya's trainers (make_bucket_resolutions; ComfyUI 0.3.75 has no bucketing of its own): every bucket
holds about resolution^2 pixels, its sides are multiples of `step` (a multiple of the codec and U-Net factors, so every
bucket is a valid training size: t2i_core.geometry) between resolution / 2 and 2 * resolution, and each image
goes to the bucket nearest its aspect ratio, where it is resized to cover the bucket and centre-cropped (what is
cut is the small difference between the two aspect ratios, unless the image is longer than 4:1). The trainer draws each batch from one bucket (train.bucket_batch_positions).
"""
from __future__ import annotations

import math


def bucket_step(resolution: int, factor: int) -> int:
    """The side increment: a multiple of `factor` (codec x U-Net) near resolution / 8 (64 px at 512, kohya's)."""
    return max(factor, round(resolution / 8 / factor) * factor)


def bucket_sizes(resolution: int, step: int) -> list[tuple[int, int]]:
    """Every (height, width) with sides multiples of `step` in [resolution / 2, 2 * resolution] and the largest
    height (width) whose area does not pass resolution^2, for each width (height); ordered from tall to wide."""
    area = resolution * resolution
    low = max(step, -(-resolution // 2 // step) * step)
    high = max(low, 2 * resolution // step * step)
    sizes = set()
    for width in range(low, high + 1, step):
        height = min(high, area // width // step * step)
        if height >= low:
            sizes.update({(height, width), (width, height)})
    return sorted(sizes, key=lambda hw: (hw[1] / hw[0], hw[0] * hw[1]))


def nearest_bucket(height: int, width: int, sizes: list[tuple[int, int]]) -> int:
    """Index into `sizes` of the bucket whose aspect ratio is nearest the image's (in log ratio; a tie goes to the
    larger area)."""
    ratio = math.log(width / height)
    return min(range(len(sizes)), key=lambda i: (abs(math.log(sizes[i][1] / sizes[i][0]) - ratio),
                                                 -sizes[i][0] * sizes[i][1]))


def bucket_table(sizes: list[tuple[int, int]], counts: list[int]) -> str:
    """The log line: "height x width: images" of each bucket in use."""
    return ", ".join(f"{h}x{w}: {n}" for (h, w), n in zip(sizes, counts))
