"""Model version registry: lineage, atomic files, promote, rollback, and what the session loads."""

from __future__ import annotations

import dataclasses

import pytest

from seepview.core.errors import ModelError
from seepview.core.model.checkpoint import Checkpoint
from seepview.core.project import Project
from seepview.core.retrain import TrainingSetStats
from seepview.core.session import ReviewSession
from seepview.core.versions import ModelRegistry, weights_key
from tests.tiny import make_tiny_checkpoint


def tiny(seed: int, name: str = "sar-seep"):
    return make_tiny_checkpoint(seed, name=name)


@pytest.fixture
def project(tmp_path):
    return Project.create(tmp_path / "p", "sar-seep")


def child_of(parent_version, seed: int) -> Checkpoint:
    ckpt = tiny(seed)
    ckpt.meta = dataclasses.replace(
        ckpt.meta, parent=parent_version.key, fingerprint=f"fp{seed}",
        metrics={"miou": 0.1 * seed, "per_class_iou": {"background": 0.9, "seep 1": float("nan")}},
    )
    return ckpt


def test_versions_lineage_promote_and_rollback(project):
    reg = ModelRegistry(project)
    base = reg.ensure_base(tiny(0))
    assert reg.ensure_base(tiny(0)) == base  # same weights: registered once
    assert reg.active == base and base.note == "base model"
    stats = TrainingSetStats(images=5, corrected_images=3, corrected_pixels=1234)
    v1 = reg.add(child_of(base, 1), promote=True, stats=stats)
    v2 = reg.add(child_of(v1, 2), promote=False)
    assert (v1.version, v2.version) == (1, 2)
    assert (project.models_dir / "sar-seep-v1.safetensors").is_file()
    assert v1.parent == base.key and v1.corrected_images == 3 and v1.corrected_pixels == 1234
    assert v1.fingerprint == "fp1" and v1.metrics["per_class_iou"]["seep 1"] is None  # NaN stored as null
    assert reg.active == v1 and not v2.promoted  # a rejected candidate is kept but not active
    assert [v.key for v in reg.lineage(v2)] == [v2.key, v1.key, base.key]

    # reopen: everything was persisted in project.json
    reopened = ModelRegistry(Project.open(project.root))
    assert [v.key for v in reopened.versions()] == [base.key, v1.key, v2.key]
    assert reopened.active.key == v1.key

    reopened.promote(v2)  # "promote anyway"
    assert reopened.active.key == v2.key
    reopened.rollback(base.key)
    assert reopened.active.key == base.key
    loaded = reopened.active_checkpoint()
    assert weights_key(loaded) == base.cache_key  # the very weights of v0
    reopened.rollback(1)
    assert weights_key(reopened.active_checkpoint()) == v1.cache_key


def test_session_loads_the_active_version(project):
    reg = ModelRegistry(project)
    base = reg.ensure_base(tiny(0))
    v1 = reg.add(child_of(base, 1), promote=True)
    session = ReviewSession(Project.open(project.root))
    assert session.model_key == v1.cache_key
    reg.rollback(base)
    assert ReviewSession(Project.open(project.root)).model_key == base.cache_key


def test_unknown_version_and_missing_file_are_model_errors(project):
    reg = ModelRegistry(project)
    base = reg.ensure_base(tiny(0))
    with pytest.raises(ModelError, match="no model version"):
        reg.promote("sar-seep-v9")
    (project.models_dir / base.file).unlink()
    with pytest.raises(ModelError, match="missing"):
        reg.rollback(base)


def test_a_version_file_is_never_overwritten(project):
    reg = ModelRegistry(project)
    reg.ensure_base(tiny(0))
    (project.models_dir / "sar-seep-v1.safetensors").write_bytes(b"someone else's")
    with pytest.raises(ModelError, match="never overwritten"):
        reg.add(tiny(1), promote=True)
    assert (project.models_dir / "sar-seep-v1.safetensors").read_bytes() == b"someone else's"
    assert len(reg.versions()) == 1
