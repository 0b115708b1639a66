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


def make_tiny_checkpoint(seed: int = 0, name: str = "tiny", preset: str = "sar-seep", in_channels: int = 1):
    """The one tiny test model (a width-4, depth-2 U-Net: milliseconds per step on a CPU)."""
    import torch

    from seepview.core.classes import ClassTable
    from seepview.core.model.checkpoint import Checkpoint, make_meta
    from seepview.core.model.normalize import SAR_NORMALIZATION
    from seepview.core.model.unet import UNet

    classes = ClassTable.preset(preset)
    torch.manual_seed(seed)
    model = UNet(in_channels, len(classes), base_width=4, depth=2).eval()
    return Checkpoint(model, make_meta(model, classes, SAR_NORMALIZATION, name=name))


@pytest.fixture
def tiny_checkpoint():
    """A factory of tiny models: ``tiny_checkpoint(seed=0, name="tiny")``."""
    return make_tiny_checkpoint
