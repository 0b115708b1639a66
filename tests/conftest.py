"""Shared test set-up: offscreen Qt, isolated user dirs, and the optional real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SEEPVIEW_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Keep tests away from the real user data/config dirs (demo project, QSettings)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real datasets; tests using this skip when they are absent."""
    if not (SHARED_DATA / "cgg-seep").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SEEPVIEW_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cgg_seep(shared_data) -> Path:
    return shared_data / "cgg-seep"


@pytest.fixture(scope="session")
def corrosion_roboflow(shared_data) -> Path:
    path = shared_data / "corrosion-roboflow"
    if not path.is_dir():
        pytest.skip(f"corrosion data not found at {path}")
    return path


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests skip, with the reason, on machines without CUDA (CI has none)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run on a GPU machine: pytest -m gpu")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)



@pytest.fixture
def tiny_checkpoint():
    """A factory of tiny models: ``tiny_checkpoint(seed=0, name="tiny")`` (see ``tests/tiny.py``)."""
    from tests.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint
