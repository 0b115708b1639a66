"""Undo history of label edits, and the label document that widgets, tools and the journal share.

An edit is recorded as *atoms*: the touched bounding box with its old and new values, never a
full-array snapshot (napari's labels layer does the same). One user gesture (a brush stroke, a fill,
"accept prediction") is one *step* = a list of atoms, so it is undone in one go. Two deques hold the
undo and redo steps; the oldest steps are dropped beyond ``max_steps`` or ``max_bytes``.

``LabelDocument`` owns the uint8 class map *in place*: its ``labels`` array is never rebound, so a
view that aliases it (the canvas' zero-copy QImage) stays valid and only needs to be told which
rectangle changed.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

BBox = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, in pixel rows/columns

DEFAULT_MAX_STEPS = 100
DEFAULT_MAX_BYTES = 256 * 2**20
SPLIT_TILE = 256  # large atoms are split into tiles of this size and unchanged tiles dropped


@dataclass(frozen=True, eq=False)
class Atom:
    """Old and new values of the rectangle ``[y0:y1, x0:x1]`` (both arrays have that shape)."""

    y0: int
    y1: int
    x0: int
    x1: int
    old: np.ndarray
    new: np.ndarray

    def __post_init__(self):
        shape = (self.y1 - self.y0, self.x1 - self.x0)
        if self.old.shape != shape or self.new.shape != shape:
            raise ValueError(f"atom arrays {self.old.shape}/{self.new.shape} do not match its box {shape}")

    @property
    def bbox(self) -> BBox:
        return (self.y0, self.y1, self.x0, self.x1)

    @property
    def slices(self) -> tuple[slice, slice]:
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    @property
    def nbytes(self) -> int:
        return self.old.nbytes + self.new.nbytes

    @classmethod
    def from_region(cls, labels: np.ndarray, bbox: BBox, new: np.ndarray) -> Atom:
        """The atom that writes ``new`` into ``labels[bbox]`` (old values copied from ``labels``)."""
        y0, y1, x0, x1 = bbox
        return cls(y0, y1, x0, x1, labels[y0:y1, x0:x1].copy(), new)

    def changed(self) -> bool:
        return not np.array_equal(self.old, self.new)


def union_bbox(boxes: Iterable[BBox]) -> BBox | None:
    boxes = list(boxes)
    if not boxes:
        return None
    return (
        min(b[0] for b in boxes),
        max(b[1] for b in boxes),
        min(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def split_atom(atom: Atom, tile: int = SPLIT_TILE) -> list[Atom]:
    """Split an atom into tight per-tile atoms that own their arrays, dropping unchanged tiles.

    "Accept prediction" on an 8192² image would otherwise keep 2 × 64 MiB per step in the history,
    although predictions are usually sparse blobs.
    """
    h, w = atom.old.shape
    if h * w <= tile * tile:  # copies: the caller may pass views of the live labels (replace_all)
        return [Atom(*atom.bbox, atom.old.copy(), atom.new.copy())] if atom.changed() else []
    out = []
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            old = atom.old[ty : ty + tile, tx : tx + tile]
            new = atom.new[ty : ty + tile, tx : tx + tile]
            diff = old != new
            rows = np.flatnonzero(diff.any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(diff.any(axis=0))
            r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            out.append(
                Atom(
                    atom.y0 + ty + int(r0),
                    atom.y0 + ty + int(r1),
                    atom.x0 + tx + int(c0),
                    atom.x0 + tx + int(c1),
                    old[r0:r1, c0:c1].copy(),
                    new[r0:r1, c0:c1].copy(),
                )
            )
    return out


class _Step:
    __slots__ = ("atoms", "id", "nbytes")

    def __init__(self, atoms: list[Atom], step_id: int):
        self.atoms = atoms
        self.id = step_id
        self.nbytes = sum(a.nbytes for a in atoms)

    def bbox(self) -> BBox | None:
        return union_bbox(a.bbox for a in self.atoms)


class History:
    """Undo/redo deques of steps (lists of atoms) with a step-count and a memory cap.

    The cap counts both deques. The oldest undo steps go first; the newest step is always kept even
    when it alone exceeds ``max_bytes`` (losing the edit just made would be worse).
    """

    def __init__(self, max_steps: int = DEFAULT_MAX_STEPS, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        self.max_steps = max_steps
        self.max_bytes = max_bytes
        self._undo: deque[_Step] = deque()
        self._redo: deque[_Step] = deque()
        self._pending: list[Atom] | None = None
        self._ids = itertools.count(1)
        self._base_id = 0  # id of the newest step dropped from the bottom of the undo deque

    # --- recording -----------------------------------------------------------------------------
    @property
    def in_step(self) -> bool:
        return self._pending is not None

    def begin_step(self) -> None:
        if self._pending is not None:
            raise RuntimeError("a history step is already open")
        self._pending = []

    def add(self, atom: Atom) -> None:
        if self._pending is None:
            raise RuntimeError("add() outside begin_step()/commit_step()")
        self._pending.append(atom)

    def commit_step(self) -> list[Atom]:
        """Close the open step; an empty step is discarded. Returns its atoms."""
        if self._pending is None:
            raise RuntimeError("commit_step() without begin_step()")
        atoms, self._pending = self._pending, None
        if atoms:
            self._undo.append(_Step(atoms, next(self._ids)))
            self._redo.clear()
            self._enforce_caps()
        return atoms

    def abort_step(self, array: np.ndarray) -> BBox | None:
        """Restore ``array`` to its state before the open step; returns the restored box."""
        if self._pending is None:
            return None
        atoms, self._pending = self._pending, None
        _apply_old(array, atoms)
        return union_bbox(a.bbox for a in atoms)

    # --- undo/redo ------------------------------------------------------------------------------
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def undo_steps(self) -> int:
        return len(self._undo)

    @property
    def redo_steps(self) -> int:
        return len(self._redo)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._undo) + sum(s.nbytes for s in self._redo)

    @property
    def state_id(self) -> int:
        """Identifies the array state reached by the history (used for the "unsaved" flag)."""
        return self._undo[-1].id if self._undo else self._base_id

    def undo(self, array: np.ndarray) -> BBox | None:
        if self._pending is not None:
            raise RuntimeError("undo during an open step")
        if not self._undo:
            return None
        step = self._undo.pop()
        _apply_old(array, step.atoms)
        self._redo.append(step)
        return step.bbox()

    def redo(self, array: np.ndarray) -> BBox | None:
        if self._pending is not None:
            raise RuntimeError("redo during an open step")
        if not self._redo:
            return None
        step = self._redo.pop()
        for a in step.atoms:
            array[a.slices] = a.new
        self._undo.append(step)
        return step.bbox()

    def clear(self) -> None:
        self._base_id = self.state_id
        self._undo.clear()
        self._redo.clear()
        self._pending = None

    def _enforce_caps(self) -> None:
        while len(self._undo) > self.max_steps:
            self._base_id = self._undo.popleft().id
        total = self.nbytes
        while total > self.max_bytes and len(self._undo) > 1:
            step = self._undo.popleft()
            self._base_id = step.id
            total -= step.nbytes


def _apply_old(array: np.ndarray, atoms: list[Atom]) -> None:
    for a in reversed(atoms):  # reverse order: overlapping atoms restore the earliest old values last
        array[a.slices] = a.old


ChangeCallback = Callable[[BBox], None]
CommitCallback = Callable[[BBox, np.ndarray], None]


class LabelDocument:
    """A uint8 class map being edited, with its undo history and change notifications.

    ``subscribe(cb)``: ``cb(bbox)`` after every change of ``labels`` (each dab, undo, redo, abort),
    for views. ``subscribe_commit(cb)``: ``cb(bbox, values)`` after every *finished* change (stroke
    end, undo, redo, replace_all) with a copy of the labels inside the merged box, for the autosave
    journal; replaying these in order reproduces the current labels.
    Both return a function that unsubscribes.
    """

    def __init__(
        self,
        labels: np.ndarray,
        max_steps: int = DEFAULT_MAX_STEPS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.dtype != np.uint8:
            raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} {labels.shape}")
        # Contiguous so that views (the canvas' QImage) can alias it without a copy.
        self._labels = np.ascontiguousarray(labels)
        self.history = History(max_steps, max_bytes)
        self._saved_state = self.history.state_id
        self._listeners: list[ChangeCallback] = []
        self._commit_listeners: list[CommitCallback] = []
        self._begin_listeners: list[Callable[[], None]] = []
        self._stroke: list[BBox] | None = None

    # --- state ----------------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def shape(self) -> tuple[int, int]:
        return self._labels.shape  # type: ignore[return-value]

    @property
    def dirty(self) -> bool:
        """True when the labels differ from the last ``mark_saved()`` (undo back to it clears it)."""
        return self.history.state_id != self._saved_state or self._stroke is not None

    def mark_saved(self) -> None:
        self._saved_state = self.history.state_id

    @property
    def in_stroke(self) -> bool:
        return self._stroke is not None

    # --- subscriptions --------------------------------------------------------------------------
    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        self._listeners.append(callback)
        return lambda: self._remove(self._listeners, callback)

    def subscribe_commit(self, callback: CommitCallback) -> Callable[[], None]:
        self._commit_listeners.append(callback)
        return lambda: self._remove(self._commit_listeners, callback)

    def subscribe_begin(self, callback: Callable[[], None]) -> Callable[[], None]:
        """``cb()`` before a change starts (stroke press, fill, undo): the autosave journal uses it to
        make the previous change durable first."""
        self._begin_listeners.append(callback)
        return lambda: self._remove(self._begin_listeners, callback)

    @staticmethod
    def _remove(listeners: list, callback) -> None:
        if callback in listeners:
            listeners.remove(callback)

    def _notify(self, bbox: BBox | None) -> None:
        if bbox is None:
            return
        for cb in list(self._listeners):
            cb(bbox)

    def _notify_commit(self, bbox: BBox | None) -> None:
        if bbox is None or not self._commit_listeners:
            return
        y0, y1, x0, x1 = bbox
        values = self._labels[y0:y1, x0:x1].copy()
        for cb in list(self._commit_listeners):
            cb(bbox, values)

    # --- editing --------------------------------------------------------------------------------
    def begin_stroke(self) -> None:
        if self._stroke is not None:
            raise RuntimeError("a stroke is already in progress")
        for cb in list(self._begin_listeners):
            cb()
        self.history.begin_step()
        self._stroke = []

    def apply(self, atom: Atom | None) -> None:
        """Write ``atom.new`` into the labels, record it and notify. ``None`` (no-op edit) is ignored.

        Outside a stroke the atom is its own undo step.
        """
        if atom is None:
            return
        if self._stroke is None:
            self.begin_stroke()
            self.apply(atom)
            self.end_stroke()
            return
        if atom.y0 < 0 or atom.x0 < 0 or atom.y1 > self.shape[0] or atom.x1 > self.shape[1]:
            raise ValueError(f"atom box {atom.bbox} lies outside the labels {self.shape}")
        self._labels[atom.slices] = atom.new
        parts = split_atom(atom) if atom.old.size > 4 * SPLIT_TILE * SPLIT_TILE else [atom]
        for part in parts:
            self.history.add(part)
        self._stroke.append(atom.bbox)
        self._notify(atom.bbox)

    def end_stroke(self) -> BBox | None:
        """Commit the stroke as one undo step; returns the merged box of what it touched."""
        if self._stroke is None:
            return None
        boxes, self._stroke = self._stroke, None
        self.history.commit_step()
        bbox = union_bbox(boxes)
        self._notify_commit(bbox)
        return bbox

    def abort_stroke(self) -> BBox | None:
        """Undo what the stroke in progress painted, leaving no history step."""
        if self._stroke is None:
            return None
        self._stroke = None
        bbox = self.history.abort_step(self._labels)
        self._notify(bbox)
        return bbox

    def undo(self) -> BBox | None:
        if self._stroke is not None:
            self.end_stroke()
        bbox = self.history.undo(self._labels)
        self._notify(bbox)
        self._notify_commit(bbox)
        return bbox

    def redo(self) -> BBox | None:
        if self._stroke is not None:
            self.end_stroke()
        bbox = self.history.redo(self._labels)
        self._notify(bbox)
        self._notify_commit(bbox)
        return bbox

    def replace_all(self, new_labels: np.ndarray) -> BBox | None:
        """Replace the whole class map as one undoable step (e.g. accept the whole prediction)."""
        new_labels = np.asarray(new_labels)
        if new_labels.shape != self.shape or new_labels.dtype != np.uint8:
            raise ValueError(
                f"replacement must be uint8 {self.shape}, got {new_labels.dtype} {new_labels.shape}"
            )
        h, w = self.shape
        atom = Atom(0, h, 0, w, self._labels, new_labels)  # old is the live array: split before writing
        parts = split_atom(atom)
        if not parts:
            return None
        self.begin_stroke()
        for part in parts:
            self.apply(part)
        return self.end_stroke()
