"""Shared set-up of the retrain tests: a small demo project labelled with its truth, quick configs."""

from __future__ import annotations

import pytest

from seepview.core.demo import make_demo_project, truth_path
from seepview.core.imageio import read_mask
from seepview.core.jobs import drive as run_to_end
from seepview.core.project import Project
from seepview.core.retrain import RetrainConfig


@pytest.fixture
def demo(tmp_path):
    # 128² tiles: three held-out tiles hold enough seep pixels for the gate to judge
    return make_demo_project(tmp_path / "demo", n_images=10, size=128)


def _label_with_truth(project: Project, ids=None, status="reviewed") -> None:
    for entry in project.entries:
        if ids is not None and entry.id not in ids:
            continue
        project.save_labels(entry, read_mask(truth_path(project, entry)))
        project.set_status(entry, status)


def _quick(**kw) -> RetrainConfig:
    base = dict(budget="quick", seconds=4.0, patch=64, batch_size=4, threads=1, replay=0, lr=3e-3)
    base.update(kw)
    return RetrainConfig(**base)


def _drive(gen, on_event=None):
    """(return value, every yielded event)."""
    events = []

    def seen(ev):
        events.append(ev)
        if on_event is not None:
            on_event(ev)

    return run_to_end(gen, seen), events


@pytest.fixture
def labelled(demo):
    _label_with_truth(demo)
    return demo


@pytest.fixture
def label_with_truth():
    return _label_with_truth


@pytest.fixture
def quick():
    """Config factory of a 4-second CPU fine-tune of the tiny model."""
    return _quick


@pytest.fixture
def drive():
    return _drive
