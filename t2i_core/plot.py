"""The training loss as a picture people can read: labelled axes, ticks that don't collide, a log scale when the
loss spans decades, and a smoothed line over the raw one. PIL only, so it works wherever the engine does."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

RAW_COLOR = (195, 195, 195)
SMOOTH_COLOR = (30, 90, 200)
GRID_COLOR = (235, 235, 235)
LOG_SCALE_ABOVE = 30.0  # max / min ratio from which the y axis is logarithmic


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` values (fewer at the start)."""
    sums = np.cumsum([0.0, *values])
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(values))]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) covering lo..hi."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))

    def ticks_with(step):
        return math.floor(hi / step + 1e-9) - math.ceil(lo / step - 1e-9) + 1
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda st: (abs(ticks_with(st) - count), -st))
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def tick_label(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.2g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.4g}"


def loss_curve_image(history: list[dict], width: int = 512, height: int = 256) -> torch.Tensor:
    """The loss history ({"step", "loss"} per step) drawn as an image (3, H, W) in 0..1."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    points = [(h["step"], h["loss"]) for h in history if math.isfinite(h["loss"])]
    left, right, top, bottom = 52, width - 12, 20, height - 34  # the plot area, with room for the ticks
    if not points:
        draw.text((left + 8, (top + bottom) // 2), "no loss history yet", fill="black", font=font)
        return _to_tensor(img)

    steps = [s for s, _ in points]
    losses = [v for _, v in points]
    smooth = moving_average(losses, max(1, len(losses) // 25))
    positive = min(losses) > 0
    log = positive and max(losses) / min(losses) >= LOG_SCALE_ABOVE
    f = math.log10 if log else (lambda v: v)  # noqa: E731
    lo, hi = f(min(losses)), f(max(losses))
    if hi - lo < 1e-12:  # a flat loss: give it a band to sit in
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    first, last = steps[0], steps[-1]
    x_span = last - first

    def x_of(step):
        return left + (right - left) * ((step - first) / x_span if x_span else 0.5)

    def y_of(value):
        return bottom - (bottom - top) * (f(value) - lo) / (hi - lo)

    # y ticks: decades on a log axis, round numbers otherwise
    if log:
        y_ticks = [10.0**e for e in range(math.floor(lo), math.ceil(hi) + 1) if lo - 1e-9 <= e <= hi + 1e-9]
        if len(y_ticks) < 2:
            y_ticks = [10**lo, 10**hi]
    else:
        y_ticks = nice_ticks(lo, hi)
    for value in y_ticks:
        y = y_of(value)
        draw.line([(left, y), (right, y)], fill=GRID_COLOR)
        label = tick_label(value)
        draw.text((left - 6 - draw.textlength(label, font=font), y - 5), label, fill="black", font=font)
    x_ticks = [int(t) for t in nice_ticks(first, last, 6) if float(t).is_integer()] if x_span else [first]
    for step in x_ticks:
        x = x_of(step)
        draw.line([(x, bottom), (x, bottom + 3)], fill="black")
        label = str(step)
        draw.text((x - draw.textlength(label, font=font) / 2, bottom + 5), label, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")

    if len(points) == 1:
        x, y = x_of(steps[0]), y_of(losses[0])
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=SMOOTH_COLOR)
    else:
        draw.line([(x_of(s), y_of(v)) for s, v in points], fill=RAW_COLOR)
        draw.line([(x_of(s), y_of(v)) for s, v in zip(steps, smooth)], fill=SMOOTH_COLOR, width=2)
    draw.text((right - 4 - draw.textlength("step", font=font), height - 14), "step", fill="black", font=font)
    draw.text((4, 4), "loss (log scale)" if log else "loss", fill="black", font=font)  # the y axis' label
    summary = f"smoothed: {smooth[-1]:.4g} at step {steps[-1]}"
    draw.text((right - draw.textlength(summary, font=font), 4), summary, fill=SMOOTH_COLOR, font=font)
    return _to_tensor(img)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
