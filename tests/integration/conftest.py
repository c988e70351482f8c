"""Fixtures for tests that run the pack inside a real ComfyUI server.

Tests get the running server through the session-scoped ``comfy`` fixture (a scripts.comfy_harness.ComfyServer,
which the demo and bench use too).
"""

import os
from pathlib import Path

import pytest

from scripts.comfy_harness import COMFYUI_DIR, ComfyServer, comfyui_is_set_up

HERE = Path(__file__).resolve().parent


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config, items):
    # Every test in this folder starts (or shares) a real server, so mark them
    # all; `-m "not integration"` then gives a fast unit-only run.
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    if not comfyui_is_set_up(COMFYUI_DIR):
        message = f"ComfyUI is not set up at {COMFYUI_DIR}: run `make setup`"
        # In CI a missing ComfyUI is a broken pipeline, not a reason to go green.
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = ComfyServer(base_dir=tmp_path_factory.mktemp("comfy-base"))
    server.start()
    print(f"\nComfyUI {server.url} up in {server.startup_seconds:.1f} s, log: {server.log_path}")
    yield server
    server.stop()
