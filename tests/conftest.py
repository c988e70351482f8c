"""Shared test setup. The repo root and tests/ are on sys.path through pytest's `pythonpath` setting
(pyproject.toml), so tests import t2i_core, evals, bench, scripts and t2i_test_utils by name."""

import pytest
from t2i_test_utils import make_test_model

MEASURED: list[str] = []  # lines the `measured` fixture collects, printed at the end of every run


@pytest.fixture
def measured():
    """measured(line): a figure a test measured, shown in the run's summary even when output is captured (CI)."""
    return MEASURED.append


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured by the tests")
        for line in MEASURED:
            terminalreporter.write_line(line)


@pytest.fixture
def test_model():
    return make_test_model()


@pytest.fixture(scope="session")
def comfy_pack():
    """The pack imported inside this process with ComfyUI's modules (scripts/comfy_inprocess.py). Skips where
    ComfyUI is not set up, except in CI, where that is a broken pipeline."""
    import os

    from scripts.comfy_inprocess import import_pack
    try:
        return import_pack()
    except RuntimeError as e:
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))
