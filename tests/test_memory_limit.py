"""The memory a sample needs, estimated before it runs (TextConditionedUNet.forward_memory_bytes), and the limit
that no setting lifts: a size whose sampling would not fit in the free memory is refused, allow_large_sizes or
not, instead of swapping the machine or having the system kill the server."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from t2i_test_utils import make_test_model

from t2i_core import devices
from t2i_core.unet import ROW_BY_ROW_ABOVE_POSITIONS, TextConditionedUNet, preset_config

ROOT = Path(__file__).resolve().parent.parent
# One forward pass in a fresh process, its peak RSS growth read from the kernel (VmHWM after clear_refs 5).
MEASURE = """
import re, sys, torch
from t2i_core.unet import TextConditionedUNet, preset_config
preset, side, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def status(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
unet = TextConditionedUNet(preset_config(preset)).eval()
x, ctx, t = torch.randn(rows // 2, 3, side, side), torch.randn(rows, 8, 256), torch.full((1,), 500)
with torch.inference_mode():
    unet(torch.randn(1, 3, 16, 16), t, ctx[:2])
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS")
    unet(x, t, ctx)
print(status("VmHWM") - before)
"""


def measured_peak(preset: str, side: int, rows: int) -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE, preset, str(side), str(rows)], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=300)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads the peak RSS from Linux's /proc")
# 272 px is just above ROW_BY_ROW_ABOVE_POSITIONS (256x256): its rows run one at a time
@pytest.mark.parametrize("preset,side,rows", [("micro", 128, 2), ("micro", 256, 2), ("micro", 272, 2), ("tiny", 128, 4)])
def test_the_estimate_bounds_the_measured_peak_without_refusing_what_fits(preset, side, rows):
    unet = TextConditionedUNet(preset_config(preset))
    estimate, peak = unet.forward_memory_bytes(side, side, rows), measured_peak(preset, side, rows)
    print(f"\n{preset} {side} px, {rows} rows: peak growth {peak / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB")
    assert peak <= estimate <= 4 * peak  # an upper estimate, not a wild one


def test_rows_run_one_at_a_time_above_the_row_by_row_size():
    unet = TextConditionedUNet(preset_config("micro"))
    side = int(ROW_BY_ROW_ABOVE_POSITIONS ** 0.5)
    assert unet.forward_memory_bytes(side, side, 8) > 3 * unet.forward_memory_bytes(side, side, 2)  # batched
    big = 2 * side
    one, many = unet.forward_memory_bytes(big, big, 2), unet.forward_memory_bytes(big, big, 64)
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


def test_free_memory_is_known_here():
    free = devices.available_memory_bytes("cpu")
    assert free is None or 0 < free <= 2**50
    if torch.cuda.is_available():
        assert devices.available_memory_bytes("cuda") > 0
