"""Shared test setup: make `t2i_core` and `bench` importable from the repo root.

With --import-mode=importlib pytest does not put the repo root on sys.path.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # for the shared helpers in t2i_test_utils.py
    sys.path.insert(0, str(TESTS_DIR))

import pytest  # noqa: E402
from t2i_test_utils import make_test_model  # noqa: E402


@pytest.fixture
def test_model():
    return make_test_model()
