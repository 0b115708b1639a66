"""Removing a class from a project: its pixels become another class (or unlabeled), later ids move down.

Class ids are positions (0..N-1), so removing class k rewrites every label file: k becomes the
chosen class, ids above k shift down by one, 255 stays. Before anything is rewritten the label files
that change are copied to ``undo/class-removal/`` with the old class table, so the removal can be
undone (one level) until the next removal replaces that backup.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from seepview.core.atomic import atomic_write_text
from seepview.core.classes import IGNORE, ClassTable, _default_key
from seepview.core.errors import ClassTableError

UNDO_DIR = Path("undo") / "class-removal"


def removal_lut(num_classes: int, class_id: int, becomes: int) -> np.ndarray:
    """(256,) uint8 mapping old ids to new ones: ``class_id`` -> ``becomes`` (an old id, or 255)."""
    if not 0 < class_id < num_classes:
        raise ClassTableError(None, f"class {class_id} cannot be removed (background and unknown ids stay)")
    if becomes != IGNORE and not (0 <= becomes < num_classes and becomes != class_id):
        raise ClassTableError(None, f"pixels of the removed class cannot become {becomes}")
    lut = np.arange(256, dtype=np.int64)
    lut[class_id + 1 : num_classes] -= 1
    lut[class_id] = becomes if becomes == IGNORE or becomes < class_id else becomes - 1
    return lut.astype(np.uint8)


def remap_labels(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Apply a (256,) uint8 id mapping (one table lookup per pixel)."""
    return lut[labels]


def table_without(table: ClassTable, class_id: int) -> ClassTable:
    """The class table with ``class_id`` gone and later classes renumbered (keys follow the ids)."""
    kept = [c for c in table if c.id != class_id]
    return ClassTable(
        replace(c, id=i, key=_default_key(i) if c.key == _default_key(c.id) else c.key) for i, c in enumerate(kept)
    )


def class_usage(project, class_id: int, live: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """{image id: pixels of ``class_id``} over the saved labels (``live`` masks override the files)."""
    live = live or {}
    used = {}
    for entry in project.entries:
        mask = live.get(entry.id)
        if mask is None:
            if not project.has_labels(entry):
                continue
            mask = project.load_labels(entry)
        count = int(np.count_nonzero(mask == class_id))
        if count:
            used[entry.id] = count
    return used


@dataclass
class ClassRemoval:
    """What ``undo_removal`` needs: the table before and the backed-up label files."""

    table_before: ClassTable
    class_id: int
    becomes: int
    changed: list[str] = field(default_factory=list)  # image ids whose label file was rewritten
    backup: Path | None = None


def remove_class(project, class_id: int, becomes: int) -> ClassRemoval:
    """Remove ``class_id`` from the project: table and every label file (backed up first)."""
    before = project.classes
    lut = removal_lut(len(before), class_id, becomes)
    new_table = table_without(before, class_id)
    backup = project.root / UNDO_DIR
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir(parents=True)
    todo = []
    for entry in project.entries:
        if not project.has_labels(entry):
            continue
        mask = project.load_labels(entry)
        if np.any((mask >= class_id) & (mask != IGNORE)):
            shutil.copy2(project.labels_path(entry), backup / f"{entry.id}.tif")
            todo.append((entry, mask))
    atomic_write_text(
        backup / "removal.json",
        json.dumps({"table_before": before.to_dict(), "class_id": class_id, "becomes": becomes,
                    "changed": [e.id for e, _ in todo]}),
    )
    for entry, mask in todo:  # remapped ids are valid in the old table too, so each write validates
        project.save_labels(entry, remap_labels(mask, lut))
    project.replace_classes(new_table)
    return ClassRemoval(before, class_id, becomes, [e.id for e, _ in todo], backup)


def undo_removal(project, removal: ClassRemoval) -> None:
    """Put the class table and the rewritten label files back as they were before ``remove_class``."""
    if removal.backup is None or not (removal.backup / "removal.json").is_file():
        raise ClassTableError(removal.backup, "the backup of this class removal is gone; it cannot be undone")
    project.replace_classes(removal.table_before)
    for image_id in removal.changed:
        source = removal.backup / f"{image_id}.tif"
        mask_path = project.labels_path(image_id)
        tmp = mask_path.with_name(mask_path.name + ".undo.tmp")
        shutil.copy2(source, tmp)
        tmp.replace(mask_path)  # atomic on one file system
    shutil.rmtree(removal.backup, ignore_errors=True)


def default_becomes(table: ClassTable, class_id: int) -> list[tuple[int, str]]:
    """Choices for "its pixels become": unlabeled first (nothing is claimed), then the other classes."""
    choices: list[tuple[int, str]] = [(IGNORE, "unlabeled (decide later)")]
    choices += [(c.id, c.name) for c in table if c.id != class_id]
    return choices

