"""Removing a class: id remapping, label files rewritten with a backup, undo, open documents, the model."""

from __future__ import annotations

import numpy as np
import pytest

from seepview.core.class_edit import class_usage, removal_lut, remove_class, table_without, undo_removal
from seepview.core.classes import IGNORE, ClassTable
from seepview.core.demo import make_demo_project
from seepview.core.errors import ClassTableError
from seepview.core.session import ReviewSession
from tests.core.test_session import paint
from tests.tiny import save_tiny_checkpoint


def test_removal_lut_shifts_later_ids_and_maps_the_removed_one():
    lut = removal_lut(5, 2, IGNORE)
    assert lut[[0, 1, 2, 3, 4, 255]].tolist() == [0, 1, 255, 2, 3, 255]
    assert removal_lut(5, 2, 4)[2] == 3  # "becomes class 4" is id 3 after the shift
    assert removal_lut(5, 2, 1)[2] == 1
    with pytest.raises(ClassTableError):
        removal_lut(5, 0, 1)  # background stays
    with pytest.raises(ClassTableError):
        removal_lut(5, 2, 2)


def test_table_without_renumbers_and_keys_follow():
    table = ClassTable.from_names(["bg", "a", "b", "c"])
    new = table_without(table, 1)
    assert new.names == ["bg", "b", "c"] and [c.key for c in new] == ["", "1", "2"]
    assert new[1].rgba == table[2].rgba


@pytest.fixture
def project(tmp_path):
    return make_demo_project(tmp_path / "demo", n_images=3, size=32)


def test_remove_and_undo_on_disk(project):
    e0, e1, _ = project.entries
    m0 = np.full((32, 32), 255, np.uint8)
    m0[:8] = 2
    m0[8:16] = 3
    project.save_labels(e0, m0)
    m1 = np.zeros((32, 32), np.uint8)
    project.save_labels(e1, m1)
    assert class_usage(project, 2) == {e0.id: 8 * 32}
    before = project.classes
    removal = remove_class(project, 2, 0)
    assert len(project.classes) == len(before) - 1 and removal.changed == [e0.id]
    got = project.load_labels(e0)
    assert (got[:8] == 0).all() and (got[8:16] == 2).all() and (got[16:] == 255).all()
    assert (project.load_labels(e1) == 0).all()
    undo_removal(project, removal)
    assert project.classes == before
    np.testing.assert_array_equal(project.load_labels(e0), m0)


def test_session_remaps_open_documents_drops_and_restores_the_model(project, tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "t.safetensors")
    session = ReviewSession(project, ckpt)
    first = project.entries[0].id
    opened = session.open(first)
    paint(opened.document, 0, 4, 0, 4, 5)
    paint(opened.document, 4, 8, 0, 4, 6)
    assert session.class_usage(5) == {first: 16}
    changed = []
    session.classes_changed.connect(changed.append)
    session.remove_class(5, IGNORE)
    labels = opened.document.labels
    assert (labels[:4, :4] == 255).all() and (labels[4:8, :4] == 5).all()
    assert not opened.document.history.can_undo and not session.is_dirty(first)
    assert session.checkpoint is None and "7" in session.model_problem
    assert changed and len(session.classes) == 7
    session.undo_remove_class()
    assert (opened.document.labels[:4, :4] == 5).all() and (opened.document.labels[4:8, :4] == 6).all()
    assert session.checkpoint is ckpt and len(session.classes) == 8
    with pytest.raises(Exception, match="no class removal"):
        session.undo_remove_class()
