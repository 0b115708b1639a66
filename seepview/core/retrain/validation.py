"""The gate's validation data: held-out tiles of every scene, or held-out blocks of a large image.

Whole scenes held out (the old rule) never trained on the scenes the analyst worked on, and a one-scene
project could never be gated. Here each reviewed image of ordinary size is a validation tile when a hash of
its id (salted per project) falls below ``fraction``; an image at least two blocks wide and high is cut into
``block``-pixel blocks and each block is held out by the same rule, its neighbourhood (``guard_px``) ignored
in training so a slick that crosses the block edge cannot leak. Membership is a pure function of the image
id, so it never changes as more tiles are reviewed: a validation tile was never trained on by a model this
project made. The user can force an image in or out (``set_validation``); "Choose again" draws a new salt.

Only images marked reviewed are validation: a reviewed image is ground truth everywhere, a half-done one is
not. Known limit: tiles of a scene grid sit next to each other but the grid width is not in the file names,
so neighbouring tiles are not guard-banded (only blocks inside one image are).
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from dataclasses import dataclass, field

import numpy as np

from seepview.core.retrain.gate import MIN_UNITS  # the split tops up to what the gate needs to judge

log = logging.getLogger(__name__)

VALIDATION_KEY = "validation_ids"  # the current validation images (for people reading project.json)
VALIDATION_INFO_KEY = "validation"
BLOCK = 512
GUARD_PX = 32


def _rank(*parts) -> float:
    """A uniform number in [0, 1) from ``parts``: stable across runs, machines and file order."""
    text = "\x1f".join(str(p) for p in parts)
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Unit:
    """One piece of validation evidence: a whole image (``region`` None) or one block of it."""

    image_id: str
    region: tuple[int, int, int, int] | None = None

    @property
    def name(self) -> str:
        if self.region is None:
            return self.image_id
        y0, y1, x0, x1 = self.region
        return f"{self.image_id}[{y0}:{y1}, {x0}:{x1}]"


@dataclass
class ValidationSplit:
    """Which images and blocks are held out for the gate (see the module doc)."""

    whole: set[str] = field(default_factory=set)
    blocks: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    guard_px: int = GUARD_PX
    fraction: float = 0.25
    manual: dict[str, bool] = field(default_factory=dict)

    def units(self, project=None) -> list[Unit]:
        out = [Unit(i) for i in sorted(self.whole)]
        for image_id in sorted(self.blocks):
            out += [Unit(image_id, tuple(r)) for r in self.blocks[image_id]]
        return out

    @property
    def image_ids(self) -> set[str]:
        """Images holding any validation data."""
        return set(self.whole) | {i for i, r in self.blocks.items() if r}

    def training_ignore(self, image_id: str, shape: tuple[int, int]) -> np.ndarray | None:
        """Pixels of ``image_id`` that must not train (its validation blocks and their guard band)."""
        regions = self.blocks.get(image_id)
        if not regions:
            return None
        held = np.zeros(shape, dtype=bool)
        g = max(0, int(self.guard_px))
        for y0, y1, x0, x1 in regions:
            held[max(0, y0 - g):y1 + g, max(0, x0 - g):x1 + g] = True
        return held

    def describe(self) -> str:
        n_blocks = sum(len(r) for r in self.blocks.values())
        parts = []
        if self.whole:
            parts.append(f"{len(self.whole)} tile{'s' if len(self.whole) != 1 else ''}")
        if n_blocks:
            parts.append(f"{n_blocks} block{'s' if n_blocks != 1 else ''} of {len(self.blocks)} large image(s)")
        return " and ".join(parts) or "nothing yet"


def _info(project) -> dict:
    info = project.settings.get(VALIDATION_INFO_KEY)
    return info if isinstance(info, dict) and info.get("version") == 2 else {}


def _blocks(shape, block: int) -> list[tuple[int, int, int, int]]:
    h, w = shape
    ny, nx = math.ceil(h / block), math.ceil(w / block)
    return [(by * block, min(h, (by + 1) * block), bx * block, min(w, (bx + 1) * block))
            for by in range(ny) for bx in range(nx)]


def validation_split(project, fraction: float = 0.25, block: int = BLOCK, guard_px: int = GUARD_PX) -> ValidationSplit:
    """The current split of the project's reviewed images (recorded settings win over the arguments)."""
    info = _info(project)
    salt = info.get("salt", "")
    fraction = float(info.get("fraction", fraction))
    block = int(info.get("block", block))
    guard_px = int(info.get("guard_px", guard_px))
    manual = {str(k): bool(v) for k, v in (info.get("manual") or {}).items()}
    split = ValidationSplit(guard_px=guard_px, fraction=fraction, manual=manual)
    tiles: list[tuple[float, str]] = []
    for entry in project.entries:
        forced = manual.get(entry.id)
        if forced is False or entry.status != "reviewed" or not project.has_labels(entry):
            continue
        try:
            shape = project.image_shape(entry)
        except Exception as exc:  # an unreadable image is no evidence; the retrain reports it elsewhere
            log.warning("validation split: skipping %s: %s", entry.id, exc)
            continue
        if forced or min(shape) < 2 * block:
            rank = _rank(salt, entry.id)
            if forced or rank < fraction:
                split.whole.add(entry.id)
            else:
                tiles.append((rank, entry.id))
            continue
        cells = _blocks(shape, block)
        ranks = [_rank(salt, entry.id, r[0], r[2]) for r in cells]
        held = [c for c, r in zip(cells, ranks) if r < fraction]
        if not held:  # every large reviewed image gives the gate at least one block...
            held = [cells[int(np.argmin(ranks))]]
        if len(held) == len(cells):  # ...and keeps at least one to train on
            held = held[:-1]
        split.blocks[entry.id] = held
    # Top up to MIN_UNITS with the lowest-ranked training tiles (never taking a project's last ones): a new
    # tile with a lower rank later takes a filler's place, so a tile only ever moves from validation to
    # training, never the other way.
    missing = MIN_UNITS - len(split.units())
    tiles.sort()
    while missing > 0 and len(tiles) > 1:
        split.whole.add(tiles.pop(0)[1])
        missing -= 1
    return split


def ensure_validation_split(project, fraction: float = 0.25, salt: str | None = None) -> ValidationSplit:
    """The split, recording its salt and parameters in ``project.json`` the first time (so it stays fixed).

    ``salt`` (first time only; default random) makes a throw-away project's split reproducible: the folder
    form of ``seepview finetune`` derives it from ``--seed``."""
    from seepview.core.project import utc_now

    with project.lock:
        fresh = not _info(project)
        if fresh:
            project.settings[VALIDATION_INFO_KEY] = {
                "version": 2, "salt": secrets.token_hex(4) if salt is None else salt, "fraction": fraction,
                "block": BLOCK, "guard_px": GUARD_PX, "created": utc_now(), "manual": {},
            }
        split = validation_split(project, fraction)
        ids = sorted(split.image_ids)
        if fresh or project.settings.get(VALIDATION_KEY) != ids:
            project.settings[VALIDATION_KEY] = ids
            project.save()
    return split


def set_validation(project, image_id: str, held_out: bool | None) -> None:
    """Force an image into (True) or out of (False) the validation set, or back to the rule (None)."""
    project.entry(image_id)  # raises for an unknown id
    with project.lock:
        ensure_validation_split(project)
        info = dict(_info(project))
        manual = dict(info.get("manual") or {})
        if held_out is None:
            manual.pop(image_id, None)
        else:
            manual[image_id] = bool(held_out)
        info["manual"] = manual
        project.settings[VALIDATION_INFO_KEY] = info
        project.settings[VALIDATION_KEY] = sorted(validation_split(project).image_ids)
        project.save()


def reset_validation(project) -> None:
    """Draw a new split at the next retrain (a new salt; manual choices are dropped)."""
    with project.lock:
        project.settings.pop(VALIDATION_INFO_KEY, None)
        project.settings.pop(VALIDATION_KEY, None)
        project.save()


def validation_ids(project) -> set[str]:
    """Images that hold validation data under the current split."""
    return validation_split(project).image_ids
