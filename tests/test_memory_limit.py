"""The memory a sample or a training step needs, estimated before it runs (t2i_core.unet.forward_memory_bytes,
train_memory_bytes), and the limit that no setting lifts: a size that would not fit in the free memory is
refused, allow_large_sizes or not, instead of swapping the machine or having the system kill the server."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from t2i_test_utils import make_test_model

from t2i_core import devices
from t2i_core.data import make_shapes_dataset
from t2i_core.training.config import TrainConfig
from t2i_core.training.state import TrainingError
from t2i_core.training.trainer import train
from t2i_core.unet import ROW_BY_ROW_ABOVE_POSITIONS, forward_memory_bytes, preset_config, train_memory_bytes

ROOT = Path(__file__).resolve().parent.parent
# One forward pass in a fresh process, its peak RSS growth read from the kernel (VmHWM after clear_refs 5).
MEASURE = """
import re, sys, torch
from t2i_core.unet import TextConditionedUNet, preset_config
preset, side, rows, training = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "train"
def status(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
unet = TextConditionedUNet(preset_config(preset)).train(training)
if training:  # rows images, each its own text, forward and backward
    x, ctx, t = torch.randn(rows, 3, side, side), torch.randn(rows, 8, 256), torch.randint(0, 1000, (rows,))
    unet(torch.randn(2, 3, 16, 16), t[:2], ctx[:2]).square().mean().backward()
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS")
    unet(x, t, ctx).square().mean().backward()
else:  # rows // 2 images, each read by two texts (CFG)
    x, ctx, t = torch.randn(rows // 2, 3, side, side), torch.randn(rows, 8, 256), torch.full((1,), 500)
    with torch.inference_mode():
        unet(torch.randn(1, 3, 16, 16), t, ctx[:2])
        open("/proc/self/clear_refs", "w").write("5")
        before = status("VmRSS")
        unet(x, t, ctx)
print(status("VmHWM") - before)
"""


def measured_peak(preset: str, side: int, rows: int, mode: str = "sample") -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE, preset, str(side), str(rows), mode], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=300)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads the peak RSS from Linux's /proc")
# 272 px is just above ROW_BY_ROW_ABOVE_POSITIONS (256x256): its rows run one at a time
@pytest.mark.parametrize("preset,side,rows", [("micro", 128, 2), ("micro", 256, 2), ("micro", 272, 2), ("tiny", 128, 4)])
def test_the_estimate_bounds_the_measured_peak_without_refusing_what_fits(preset, side, rows):
    estimate, peak = forward_memory_bytes(preset_config(preset), side, side, rows), measured_peak(preset, side, rows)
    print(f"\n{preset} {side} px, {rows} rows: peak growth {peak / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB")
    assert peak <= estimate <= 4 * peak  # an upper estimate, not a wild one


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads the peak RSS from Linux's /proc")
@pytest.mark.parametrize("preset,side,batch", [("micro", 64, 8), ("tiny", 64, 4)])
def test_the_training_estimate_bounds_a_training_steps_peak(preset, side, batch):
    estimate = train_memory_bytes(preset_config(preset), side, side, batch)
    peak = measured_peak(preset, side, batch, "train")
    print(f"\ntraining {preset} {side} px, batch {batch}: peak growth {peak / 2**20:.0f} MiB, estimate "
          f"{estimate / 2**20:.0f} MiB")
    assert peak <= estimate <= 4 * peak


def test_rows_run_one_at_a_time_above_the_row_by_row_size():
    micro = preset_config("micro")
    side = int(ROW_BY_ROW_ABOVE_POSITIONS ** 0.5)
    assert forward_memory_bytes(micro, side, side, 8) > 3 * forward_memory_bytes(micro, side, side, 2)  # batched
    big = 2 * side
    one, many = forward_memory_bytes(micro, big, big, 2), forward_memory_bytes(micro, big, big, 64)
    assert many - one == 4 * 2 * (64 - 2) * 3 * big * big  # above it only the outputs grow with the rows


def test_a_sample_that_would_not_fit_is_refused_even_with_large_sizes_allowed(monkeypatch):
    model = make_test_model()
    model.training = {"config": {"resolution": 16}}
    monkeypatch.setattr(devices, "available_memory_bytes", lambda device: 64 * 2**20)  # 64 MiB free
    model.check_size(16, 16, batch=2)  # small: fits
    with pytest.raises(ValueError) as error:
        model.generate("x", seeds=[0, 1], height=512, width=512, steps=1, allow_large_sizes=True)
    message = str(error.value)
    assert "sampling 512x512 px (width x height) at batch 2 needs about" in message and "0.1 GiB free" in message
    assert "no setting lifts this limit" in message and "smaller size or batch" in message


def test_training_that_would_not_fit_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    from t2i_test_utils import TEST_TEXT_CONFIG

    from t2i_core import TextEncoderSpec, build_text_encoder
    monkeypatch.setattr(devices, "available_memory_bytes", lambda device: 256 * 2**20)  # 256 MiB free
    data = make_shapes_dataset(tmp_path / "shapes", count=8, resolution=16, seed=0)
    config = TrainConfig(dataset=str(data), output=str(tmp_path / "m.safetensors"), resolution=256, steps=1,
                         batch_size=64, allow_large_sizes=True, precision="fp32", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(TrainingError, match="training at 256 px with 64 images a step needs about") as error:
        train(config, build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG)), device="cpu")
    assert "smaller resolution or batch_size" in str(error.value) and not (tmp_path / "m.safetensors").exists()


def test_free_memory_is_known_here():
    free = devices.available_memory_bytes("cpu")
    assert free is None or 0 < free <= 2**50
    if torch.cuda.is_available():
        assert devices.available_memory_bytes("cuda") > 0
