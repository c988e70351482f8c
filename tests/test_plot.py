import math

import pytest
import torch

from t2i_core.plot import SMOOTH_COLOR, loss_curve_image, moving_average, nice_ticks, tick_label


def has_color(img: torch.Tensor, rgb) -> bool:
    target = torch.tensor(rgb, dtype=torch.float32)[:, None, None] / 255
    return bool(((img - target).abs().max(dim=0).values < 0.02).any())


@pytest.mark.parametrize("history", [
    [{"step": i + 1, "loss": 0.3 * math.exp(-i / 80) + 0.01} for i in range(489)],  # a decay over a decade
    [{"step": i, "loss": 0.05} for i in range(1, 30)],  # flat
    [{"step": 7, "loss": 0.2}],  # a single step
    [{"step": 1, "loss": float("nan")}, {"step": 2, "loss": 0.4}, {"step": 3, "loss": 0.3}],  # a non-finite value
])
def test_loss_curve_draws_the_smoothed_line(history):
    img = loss_curve_image(history)
    assert img.shape == (3, 256, 512) and img.min() >= 0 and img.max() <= 1
    assert has_color(img, SMOOTH_COLOR)


def test_empty_history_says_so_and_draws_no_line():
    assert not has_color(loss_curve_image([]), SMOOTH_COLOR)


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ticks = nice_ticks(13, 489, 6)
    assert ticks == [100, 200, 300, 400] and all(13 <= t <= 489 for t in ticks)
    assert nice_ticks(5, 5) == [5]
    assert [tick_label(v) for v in (0, 0.05, 1e-4, 25000)] == ["0", "0.05", "0.0001", "2.5e+04"]


def test_moving_average_is_trailing():
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
