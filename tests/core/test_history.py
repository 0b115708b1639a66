"""Undo history and LabelDocument: random edit sequences undo back to the original exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seepview.core import editing
from seepview.core.history import Atom, History, LabelDocument, split_atom

SHAPE = (48, 64)

point = st.tuples(st.integers(-5, SHAPE[0] + 5), st.integers(-5, SHAPE[1] + 5))
op = st.one_of(
    st.tuples(st.just("brush"), point, point, st.integers(0, 6), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("fill"), point, st.integers(0, 5)),
    st.tuples(st.just("poly"), st.lists(point, min_size=3, max_size=6), st.integers(0, 5)),
    st.tuples(st.just("undo")),
    st.tuples(st.just("redo")),
)


def _start(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, SHAPE, dtype=np.uint8)


def _run(doc: LabelDocument, ops) -> None:
    for o in ops:
        if o[0] == "brush":
            _, p0, p1, r, v, preserve = o
            doc.begin_stroke()
            doc.apply(editing.paint_disk(doc.labels, p0, None, r, v, preserve, active=1))
            doc.apply(editing.paint_disk(doc.labels, p0, p1, r, v, preserve, active=1))
            doc.end_stroke()
        elif o[0] == "fill":
            doc.apply(editing.flood_fill(doc.labels, o[1], o[2]))
        elif o[0] == "poly":
            doc.apply(editing.fill_polygon(doc.labels, o[1], o[2]))
        elif o[0] == "undo":
            doc.undo()
        else:
            doc.redo()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.lists(op, max_size=25))
def test_random_ops_undo_all_restores_original_and_redo_all_restores_final(seed, ops):
    original = _start(seed)
    doc = LabelDocument(original.copy())
    _run(doc, ops)
    final = doc.labels.copy()
    undone = 0
    while doc.history.can_undo:
        doc.undo()
        undone += 1
    np.testing.assert_array_equal(doc.labels, original)
    assert not doc.dirty
    for _ in range(undone):
        doc.redo()
    np.testing.assert_array_equal(doc.labels, final)


def test_one_undo_step_per_stroke_and_notifications():
    doc = LabelDocument(np.zeros(SHAPE, np.uint8))
    changes, commits = [], []
    doc.subscribe(changes.append)
    doc.subscribe_commit(lambda bbox, values: commits.append((bbox, values.copy())))
    doc.begin_stroke()
    for x in range(5, 40, 3):
        doc.apply(editing.paint_disk(doc.labels, (20, x - 3), (20, x), 2, 3))
    assert doc.dirty and doc.in_stroke
    bbox = doc.end_stroke()
    assert doc.history.undo_steps == 1
    assert len(changes) == len(range(5, 40, 3))
    assert len(commits) == 1 and commits[0][0] == bbox
    y0, y1, x0, x1 = bbox
    np.testing.assert_array_equal(commits[0][1], doc.labels[y0:y1, x0:x1])
    painted = doc.labels.copy()
    assert doc.undo() == bbox
    assert not doc.labels.any()
    assert doc.redo() == bbox
    np.testing.assert_array_equal(doc.labels, painted)
    doc.mark_saved()
    assert not doc.dirty
    doc.undo()
    assert doc.dirty


def test_commit_journal_replay_reproduces_labels():
    """What the autosave journal receives is enough to rebuild the labels, undo included."""
    start = _start(3)
    doc = LabelDocument(start.copy())
    replay = start.copy()

    def write(bbox, values):
        y0, y1, x0, x1 = bbox
        replay[y0:y1, x0:x1] = values

    doc.subscribe_commit(write)
    _run(
        doc, [("brush", (3, 3), (40, 60), 3, 2, False), ("fill", (0, 0), 5), ("undo",), ("redo",), ("undo",)]
    )
    doc.replace_all(np.full(SHAPE, 1, np.uint8))
    doc.undo()
    np.testing.assert_array_equal(replay, doc.labels)


def test_abort_stroke_restores_and_records_nothing():
    doc = LabelDocument(_start(1))
    before = doc.labels.copy()
    seen = []
    doc.subscribe(seen.append)
    doc.begin_stroke()
    doc.apply(editing.paint_disk(doc.labels, (10, 10), (30, 50), 4, 5))
    doc.apply(editing.paint_disk(doc.labels, (30, 50), (5, 5), 4, 0))
    assert not np.array_equal(doc.labels, before)
    bbox = doc.abort_stroke()
    np.testing.assert_array_equal(doc.labels, before)
    assert seen[-1] == bbox
    assert not doc.history.can_undo and not doc.dirty


def test_step_cap_keeps_newest_100_steps():
    doc = LabelDocument(np.zeros((8, 200), np.uint8))
    for i in range(150):
        doc.apply(editing.paint_disk(doc.labels, (4, i), None, 0, 1 + i % 7))
    assert doc.history.undo_steps == 100
    for _ in range(100):
        assert doc.undo() is not None
    assert doc.undo() is None
    # The first 50 steps are gone for good; their pixels keep their painted values.
    assert (doc.labels[4, :50] > 0).all() and not doc.labels[4, 50:150].any()


def test_memory_cap_drops_oldest_steps_but_keeps_the_newest():
    h = History(max_steps=1000, max_bytes=10_000)
    arr = np.zeros((100, 100), np.uint8)
    for i in range(20):
        region = np.full((30, 30), i + 1, np.uint8)
        atom = Atom.from_region(arr, (0, 30, 0, 30), region)  # 1800 bytes each
        h.begin_step()
        h.add(atom)
        arr[atom.slices] = atom.new
        h.commit_step()
        assert h.nbytes <= 10_000
    assert h.undo_steps == 10_000 // 1800
    big = Atom.from_region(arr, (0, 100, 0, 100), np.full((100, 100), 99, np.uint8))
    h.begin_step()
    h.add(big)
    h.commit_step()
    assert h.undo_steps == 1  # over the cap alone, but the newest edit is never dropped
    assert h.undo(arr) == (0, 100, 0, 100)


def test_redo_cleared_by_new_edit():
    doc = LabelDocument(np.zeros(SHAPE, np.uint8))
    doc.apply(editing.paint_disk(doc.labels, (5, 5), None, 2, 1))
    doc.undo()
    assert doc.history.can_redo
    doc.apply(editing.paint_disk(doc.labels, (9, 9), None, 2, 2))
    assert not doc.history.can_redo


def test_replace_all_is_one_compact_undo_step():
    labels = np.zeros((1024, 1024), np.uint8)
    doc = LabelDocument(labels)
    new = labels.copy()
    new[100:120, 200:260] = 3
    new[900:910, 10:20] = 1
    doc.replace_all(new)
    np.testing.assert_array_equal(doc.labels, new)
    assert doc.labels is labels or np.shares_memory(doc.labels, labels)  # edited in place
    assert doc.history.undo_steps == 1
    assert doc.history.nbytes <= 2 * (20 * 60 + 10 * 10)
    doc.undo()
    assert not doc.labels.any()
    assert doc.replace_all(doc.labels.copy()) is None


def test_replace_all_on_a_small_image_undoes():
    """The one-tile case must not keep a view of the live labels as its "old" values."""
    doc = LabelDocument(np.zeros((64, 64), np.uint8))
    doc.replace_all(np.full((64, 64), 2, np.uint8))
    assert (doc.labels == 2).all()
    doc.undo()
    assert not doc.labels.any()
    doc.redo()
    assert (doc.labels == 2).all()


def test_split_atom_is_exact():
    rng = np.random.default_rng(0)
    old = np.zeros((700, 600), np.uint8)
    new = old.copy()
    new[rng.integers(0, 700, 50), rng.integers(0, 600, 50)] = 7
    arr = old.copy()
    for part in split_atom(Atom(0, 700, 0, 600, old, new), tile=128):
        arr[part.slices] = part.new
    np.testing.assert_array_equal(arr, new)


def test_bad_input():
    with pytest.raises(ValueError):
        LabelDocument(np.zeros((4, 4), np.uint16))
    doc = LabelDocument(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        doc.apply(Atom(0, 5, 0, 1, np.zeros((5, 1), np.uint8), np.ones((5, 1), np.uint8)))
    with pytest.raises(ValueError):
        doc.replace_all(np.zeros((3, 3), np.uint8))
