"""Model version registry: lineage, atomic files, promote, rollback, and what the session loads."""

from __future__ import annotations

import dataclasses

import pytest

from seepview.core.errors import ModelError
from seepview.core.model.checkpoint import Checkpoint
from seepview.core.project import Project
from seepview.core.retrain import TrainingSetStats
from seepview.core.session import ReviewSession
from seepview.core.versions import ModelRegistry, ModelVersion, weights_key
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
    assert weights_key(loaded) == base.weights_key  # the very weights of v0
    reopened.rollback(1)
    assert weights_key(reopened.active_checkpoint()) == v1.weights_key


def test_session_loads_the_active_version(project):
    reg = ModelRegistry(project)
    base = reg.ensure_base(tiny(0))
    v1 = reg.add(child_of(base, 1), promote=True)
    session = ReviewSession(Project.open(project.root))
    assert session.weights_key == v1.weights_key
    reg.rollback(base)
    assert ReviewSession(Project.open(project.root)).weights_key == base.weights_key


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


def test_a_version_written_with_the_old_cache_key_field_still_opens(project):
    """Projects written before the rename store the weights digest as ``cache_key``: it is read as
    ``weights_key``, new entries write ``weights_key``, and the prediction cache it names is still found."""
    reg = ModelRegistry(project)
    base = reg.ensure_base(tiny(0))
    raw = project.settings["model_versions"][0]
    assert raw["weights_key"] == base.weights_key and "cache_key" not in raw
    raw["cache_key"] = raw.pop("weights_key")  # as an earlier seepview wrote it
    project.save()
    reopened = ModelRegistry(Project.open(project.root))
    assert reopened.versions()[0].weights_key == base.weights_key != ""
    assert reopened.ensure_base(tiny(0)).key == base.key  # recognised by its digest: not registered twice
    assert len(reopened.versions()) == 1
    assert ReviewSession(Project.open(project.root)).weights_key == base.weights_key
    new = {**raw, "weights_key": "new-v0-0123456789"}  # both present: the new name wins
    assert ModelVersion.from_dict(new).weights_key == "new-v0-0123456789"


def test_active_model_is_resolved_once_for_every_reader(project, tmp_path):
    """A version key, its ``models/<file>`` path, the old ``{"path": ...}`` form and a file outside the
    registry all name the same model for the registry, the session, ``adapt`` and the commands."""
    from seepview.core.model.checkpoint import save_checkpoint
    from seepview.core.session import load_active_model
    from seepview.core.versions import active_model_path

    reg = ModelRegistry(project)
    base = reg.ensure_base(tiny(0))
    v1 = reg.add(child_of(base, 1), promote=False)
    for setting in (v1.key, f"models/{v1.file}", {"path": f"models/{v1.file}"}):
        project.settings["active_model"] = setting
        assert reg.active == v1
        assert active_model_path(project) == project.models_dir / v1.file
        assert weights_key(load_active_model(project)[0]) == v1.weights_key
    outside = tiny(7)
    save_checkpoint(tmp_path / "outside.safetensors", outside.model, outside.meta)
    project.settings["active_model"] = str(tmp_path / "outside.safetensors")
    assert reg.active is None and reg.active_checkpoint() is None  # not a registered version...
    assert weights_key(load_active_model(project)[0]) == weights_key(outside)  # ...but still the active model


def test_learned_from_is_words_or_nothing():
    base = {"key": "m-v1", "name": "m", "version": 1, "file": "m-v1.safetensors", "created": "2026-12-03"}
    assert ModelVersion.from_dict(base).learned_from == ""  # written before the field existed
    assert ModelVersion.from_dict(base | {"learned_from": "3 tiles reviewed"}).learned_from == "3 tiles reviewed"
    assert ModelVersion.from_dict(base | {"learned_from": 7}).learned_from == ""  # a hand-edited file
    assert "learned_from" not in ModelVersion.from_dict(base).to_dict()
