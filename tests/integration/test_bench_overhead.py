"""bench.comfy_overhead runs end to end against its own real ComfyUI (no timing is checked)."""
import math

import pytest

from bench import comfy_overhead


@pytest.mark.slow  # starts a second ComfyUI of its own
def test_overhead_benchmark_measures_both_sides():
    section = comfy_overhead.run(quick=True)
    assert section.skipped is None, section.skipped
    (table,) = section.tables
    assert [row[0] for row in table.rows] == ["1", "4"]
    for key in ("client_overhead_b1", "server_overhead_b1", "client_overhead_b4", "server_overhead_b4"):
        assert math.isfinite(section.summary[key]) and section.summary[key] > -1
