"""Class tables: id, name, colour and shortcut key of each segmentation class.

Id 0 is background and 255 is reserved for "unlabeled / ignore". Default colours are the Okabe-Ito
palette (colour-blind safe); all are saturated, so they stay visible over grey SAR backscatter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from seepview.core.errors import ClassTableError, MaskError

IGNORE = 255
MAX_CLASSES = 255  # ids 0..254; 255 is IGNORE

# Okabe & Ito (2008), minus black, then a few extra distinct hues for user-added classes.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
    (255, 255, 255),
    (136, 34, 85),
    (68, 170, 153),
    (153, 153, 51),
    (221, 204, 119),
)
BACKGROUND_RGBA = (0, 0, 0, 0)


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    rgba: tuple[int, int, int, int]
    key: str = ""


def _default_rgba(index: int) -> tuple[int, int, int, int]:
    r, g, b = PALETTE[(index - 1) % len(PALETTE)]
    return (r, g, b, 255)


def _default_key(class_id: int) -> str:
    return str(class_id) if 1 <= class_id <= 9 else ""


class ClassTable:
    """An ordered, editable table of classes. Ids are contiguous from 0 (background)."""

    def __init__(self, classes: Iterable[ClassInfo]):
        items = sorted(classes, key=lambda c: c.id)
        if not items:
            raise ClassTableError(None, "a class table needs at least the background class")
        if [c.id for c in items] != list(range(len(items))):
            raise ClassTableError(None, f"class ids must be 0..N-1 without gaps, got {[c.id for c in items]}")
        if len(items) > MAX_CLASSES:
            raise ClassTableError(None, f"at most {MAX_CLASSES} classes are supported (255 means unlabeled)")
        self._classes = list(items)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_names(cls, names: Iterable[str]) -> ClassTable:
        names = list(names)
        return cls(
            ClassInfo(i, n, BACKGROUND_RGBA if i == 0 else _default_rgba(i), _default_key(i))
            for i, n in enumerate(names)
        )

    @classmethod
    def preset(cls, name: str) -> ClassTable:
        if name == "sar-seep":
            return cls.from_names(["background"] + [f"seep {i}" for i in range(1, 8)])
        if name == "corrosion":
            table = cls.from_names(["background", "corrosion"])
            return table.recolor(1, (213, 94, 0, 255))  # vermillion reads as "rust"
        raise ClassTableError(None, f"unknown class preset {name!r} (choose from: {', '.join(PRESETS)})")

    @classmethod
    def from_spec(cls, spec: str | os.PathLike) -> ClassTable:
        """A preset name, or a JSON file (``{"classes": [...]}`` or a list of names)."""
        if isinstance(spec, str) and spec in PRESETS:
            return cls.preset(spec)
        path = Path(spec)
        if not path.is_file():
            raise ClassTableError(path, f"not a class preset ({', '.join(PRESETS)}) and no such file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ClassTableError(path, f"cannot read class table JSON: {exc}") from None
        if isinstance(data, list) and all(isinstance(n, str) for n in data):
            return cls.from_names(data)
        return cls.from_dict(data, path=path)

    @classmethod
    def from_dict(cls, data: dict, path: str | os.PathLike | None = None) -> ClassTable:
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise ClassTableError(path, 'a class table is a JSON object with a "classes" list (each with "id" and '
                                        '"name"), or a JSON list of class names')
        try:
            items = [
                ClassInfo(
                    int(c["id"]),
                    str(c["name"]),
                    tuple(int(v) for v in c.get("rgba", _default_rgba(int(c["id"])))),  # type: ignore[arg-type]
                    str(c.get("key", _default_key(int(c["id"])))),
                )
                for c in data["classes"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else "a value of the wrong kind"
            raise ClassTableError(path, f'malformed class table: every class needs a whole-number "id" and a '
                                        f'"name" ({what})') from None
        for c in items:
            if len(c.rgba) != 4 or not all(0 <= v <= 255 for v in c.rgba):
                raise ClassTableError(path, f"class {c.id} has an invalid RGBA colour {c.rgba}")
        try:
            return cls(items)
        except ClassTableError as exc:
            raise ClassTableError(path, exc.reason) from None

    def to_dict(self) -> dict:
        return {"classes": [{"id": c.id, "name": c.name, "rgba": list(c.rgba), "key": c.key} for c in self]}

    # --- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._classes)

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self._classes)

    def __getitem__(self, class_id: int) -> ClassInfo:
        try:
            return self._classes[class_id]
        except IndexError:
            raise ClassTableError(None, f"unknown class id {class_id}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassTable) and self._classes == other._classes

    def __repr__(self) -> str:
        return f"ClassTable({[c.name for c in self]})"

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self]

    # --- edits (return a new table: tables are shared by widgets, masks and checkpoints) -----
    def rename(self, class_id: int, name: str) -> ClassTable:
        name = name.strip()
        if not name:
            raise ClassTableError(None, "a class name cannot be empty")
        return self._replace(class_id, name=name)

    def recolor(self, class_id: int, rgba: tuple[int, int, int, int]) -> ClassTable:
        rgba = tuple(int(v) for v in rgba)  # type: ignore[assignment]
        if len(rgba) != 4 or not all(0 <= v <= 255 for v in rgba):
            raise ClassTableError(None, f"invalid RGBA colour {rgba}")
        return self._replace(class_id, rgba=rgba)

    def add(self, name: str, rgba: tuple[int, int, int, int] | None = None) -> ClassTable:
        new_id = len(self)
        info = ClassInfo(new_id, name.strip() or f"class {new_id}", rgba or _default_rgba(new_id), _default_key(new_id))
        return ClassTable([*self._classes, info])

    def _replace(self, class_id: int, **changes) -> ClassTable:
        old = self[class_id]
        return ClassTable([replace(old, **changes) if c.id == class_id else c for c in self])

    # --- colour lookup + validation ------------------------------------------------------------
    def lut(self, opacity: float = 1.0, visible: Iterable[bool] | None = None) -> np.ndarray:
        """A (256, 4) uint8 RGBA lookup table for a uint8 label map (pyqtgraph's fast path).

        Background (0) and unlabeled (255) are transparent; hidden classes too.
        """
        lut = np.zeros((256, 4), dtype=np.uint8)
        vis = list(visible) if visible is not None else [True] * len(self)
        alpha = float(np.clip(opacity, 0.0, 1.0))
        for c in self:
            if c.id == 0 or not vis[c.id]:
                continue
            r, g, b, a = c.rgba
            lut[c.id] = (r, g, b, round(a * alpha))
        return lut

    def validate_mask(self, mask: np.ndarray, path: str | os.PathLike | None = None) -> None:
        """Raise MaskError unless ``mask`` is 2-D uint8 holding only known ids or 255."""
        if mask.ndim != 2:
            raise MaskError(path, f"a mask must be single-channel 2-D, got shape {mask.shape}")
        if mask.dtype != np.uint8:
            raise MaskError(path, f"a mask must be uint8 class ids, got {mask.dtype}")
        counts = np.bincount(mask.ravel(), minlength=256)
        bad = [v for v in np.flatnonzero(counts) if v >= len(self) and v != IGNORE]
        if bad:
            raise MaskError(
                path,
                f"unknown class id(s) {', '.join(map(str, bad))}; the class table has ids 0..{len(self) - 1}"
                f" (255 = unlabeled)",
            )


PRESETS = ("sar-seep", "corrosion")
