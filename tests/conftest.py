"""Shared test fixtures. Tests make their own data; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The public benchmark metadata (VGG-SS boxes and lists, Flickr key frames): beside the checkout,
# or wherever HEARFLOW_REFERENCE_DATA points.
REFERENCE_DATA = Path(os.environ.get("HEARFLOW_REFERENCE_DATA", REPO.parent / "shared" / "reference-data"))


@pytest.fixture(scope="session")
def reference_data() -> Path:
    """The public benchmark metadata beside the checkout; skips the test when absent."""
    if not REFERENCE_DATA.is_dir():
        pytest.skip(f"needs the public benchmark metadata (VGG-SS boxes, Flickr key frames) at {REFERENCE_DATA}, "
                    "or HEARFLOW_REFERENCE_DATA=FOLDER")
    return REFERENCE_DATA


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch intra-op thread for the whole run. The tests' models are small, and on a shared
    2-core machine a second thread spins against the other processes: beside two busy processes,
    tests/test_model.py and tests/test_objective.py took 41 s with torch's 2 threads, 11 s with one."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_network_weights(monkeypatch, tmp_path_factory):
    """Point torch's weight cache at an empty folder so no test can use or fetch real weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
