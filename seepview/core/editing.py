"""Label editing operations: each returns the ``Atom`` it would apply (or None), never mutating.

Coordinates are pixel indices ``(row, col)``; floats are rounded to the nearest pixel. All work is
confined to the bounding box of the edit, so a brush dab costs the same on 512² and on 16384².

"Preserve labels" follows napari's labels layer:
- painting a class (any value except background 0 and unlabeled 255) only changes pixels that are
  background or unlabeled, so other classes are never painted over;
- erasing (value 0 or 255) only changes pixels of the *active* class (``active``), so erasing
  around one class never eats its neighbours. With no active class, erasing changes nothing.

The eraser paints 0 (background), like napari's eraser: an erased pixel is an explicit "no seep"
label that fine-tuning learns from. 255 ("unlabeled") is for regions that should be ignored.

No-data pixels (``nodata``: a bool mask of the whole image, ``seepview.core.nodata.nodata_mask``) are
never a seep: no class is ever painted, filled or accepted into them (background and unlabeled may be,
so an old wrong label there can be erased), and a flood fill never crosses between data and no-data,
so filling the sea does not flood the no-data wedge beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.draw import polygon as draw_polygon
from skimage.segmentation import flood

from seepview.core.classes import IGNORE
from seepview.core.history import Atom, LabelDocument

BACKGROUND = 0
ERASE = BACKGROUND


def _round(p: Sequence[float]) -> tuple[int, int]:
    return int(np.floor(float(p[0]) + 0.5)), int(np.floor(float(p[1]) + 0.5))


def _keep_mask(region: np.ndarray, value: int, preserve: bool, active: int | None) -> np.ndarray | None:
    """Pixels of ``region`` that the edit may change under the preserve rule (None = all)."""
    if not preserve:
        return None
    if value in (BACKGROUND, IGNORE):
        if active is None or active in (BACKGROUND, IGNORE):
            return np.zeros(region.shape, dtype=bool)
        return region == active
    return (region == BACKGROUND) | (region == IGNORE)


def _atom(
    labels: np.ndarray,
    bbox: tuple[int, int, int, int],
    mask: np.ndarray,
    value: int,
    preserve: bool = False,
    active: int | None = None,
    nodata: np.ndarray | None = None,
) -> Atom | None:
    """Atom writing ``value`` where ``mask`` (box-shaped) allows; None if nothing would change."""
    y0, y1, x0, x1 = bbox
    old = labels[y0:y1, x0:x1]
    keep = _keep_mask(old, value, preserve, active)
    if keep is not None:
        mask = mask & keep
    if nodata is not None and value not in (BACKGROUND, IGNORE):
        mask = mask & ~_box(nodata, labels, bbox)
    mask = mask & (old != value)
    if not mask.any():
        return None
    new = old.copy()
    new[mask] = value
    return Atom(y0, y1, x0, x1, old.copy(), new)


def _box(nodata: np.ndarray, labels: np.ndarray, bbox: tuple[int, int, int, int]) -> np.ndarray:
    if nodata.shape != labels.shape[:2]:
        raise ValueError(f"no-data mask {nodata.shape} and labels {labels.shape} differ in size")
    y0, y1, x0, x1 = bbox
    return nodata[y0:y1, x0:x1]


def _check_value(value: int) -> int:
    value = int(value)
    if not 0 <= value <= 255:
        raise ValueError(f"label value {value} is not in 0..255")
    return value


def _mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# --- brush ---------------------------------------------------------------------------------------
def capsule_mask(p0, p1, radius: float, shape: tuple[int, int]):
    """Pixels within ``radius + 0.5`` of the segment p0–p1, as (bbox, box-shaped bool mask).

    The +0.5 makes radius r a disk of diameter 2r+1 pixels (r = 0: one pixel). Returns None when
    the capsule misses the array.
    """
    (ya, xa), (yb, xb) = _round(p0), _round(p1)
    r = max(float(radius), 0.0)
    ri = int(np.ceil(r))
    y0, y1 = max(min(ya, yb) - ri, 0), min(max(ya, yb) + ri + 1, shape[0])
    x0, x1 = max(min(xa, xb) - ri, 0), min(max(xa, xb) + ri + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - ya
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - xa
    dy, dx = float(yb - ya), float(xb - xa)
    seg2 = dy * dy + dx * dx
    if seg2 > 0:
        t = np.clip((yy * dy + xx * dx) / seg2, 0.0, 1.0)
        yy = yy - t * dy
        xx = xx - t * dx
    mask = yy * yy + xx * xx <= (r + 0.5) ** 2
    return (y0, y1, x0, x1), mask


def paint_disk(
    labels: np.ndarray,
    p0: Sequence[float],
    p1: Sequence[float] | None,
    radius: float,
    value: int,
    preserve: bool = False,
    active: int | None = None,
    nodata: np.ndarray | None = None,
) -> Atom | None:
    """A round brush dragged from ``p0`` to ``p1`` (a capsule), so fast strokes leave no gaps.

    ``p1=None`` is a single dab at ``p0``. Erase by painting ``ERASE`` (0).
    """
    value = _check_value(value)
    found = capsule_mask(p0, p0 if p1 is None else p1, radius, labels.shape[:2])
    if found is None:
        return None
    bbox, mask = found
    return _atom(labels, bbox, mask, value, preserve, active, nodata)


# --- fills ---------------------------------------------------------------------------------------
def _inside(labels: np.ndarray, yx) -> tuple[int, int] | None:
    y, x = _round(yx)
    if 0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]:
        return y, x
    return None


def flood_fill(
    labels: np.ndarray,
    yx: Sequence[float],
    value: int,
    image: np.ndarray | None = None,
    tolerance: float | None = None,
    preserve: bool = False,
    active: int | None = None,
    nodata: np.ndarray | None = None,
) -> Atom | None:
    """Fill the 4-connected region of equal label around ``yx`` with ``value``.

    With ``image`` and ``tolerance``, the region is further limited to pixels whose intensity is
    within ``tolerance`` of the clicked pixel (per channel, raw image values), and still connected
    to the click.
    """
    value = _check_value(value)
    seed = _inside(labels, yx)
    if seed is None:
        return None
    seed_label = labels[seed]
    if image is not None and tolerance is not None:
        if image.shape[:2] != labels.shape:
            raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
        seed_value = image[seed].astype(np.float32)
        tol = float(tolerance)

        def by_label(y0, y1, x0, x1):
            diff = np.abs(image[y0:y1, x0:x1].astype(np.float32) - seed_value)
            if diff.ndim == 3:
                diff = diff.max(axis=2)
            return (labels[y0:y1, x0:x1] == seed_label) & (diff <= tol)

    else:
        if seed_label == value:
            return None

        def by_label(y0, y1, x0, x1):
            return labels[y0:y1, x0:x1] == seed_label

    allowed = by_label
    if nodata is not None:
        seed_nodata = bool(nodata[seed])

        def allowed(y0, y1, x0, x1):  # the region stays on the seed's side of the data/no-data border
            return by_label(y0, y1, x0, x1) & (_box(nodata, labels, (y0, y1, x0, x1)) == seed_nodata)

    bbox, region = _grow_flood(allowed, seed, labels.shape, connectivity=1)
    return _atom(labels, bbox, region, value, preserve, active, nodata)


def _grow_flood(allowed, seed: tuple[int, int], shape, connectivity: int, window: int = 512):
    """Flood ``allowed`` (a function of a window box -> bool mask) from ``seed``.

    The window doubles until the region no longer touches an inner window edge, so a click costs
    the size of the region, not of the 8192² image. Returns (bbox, box-shaped mask).
    """
    h, w = shape
    half = max(int(window) // 2, 8)
    while True:
        y0, y1 = max(seed[0] - half, 0), min(seed[0] + half, h)
        x0, x1 = max(seed[1] - half, 0), min(seed[1] + half, w)
        sub = allowed(y0, y1, x0, x1)
        region = flood(sub.view(np.uint8), (seed[0] - y0, seed[1] - x0), connectivity=connectivity)
        touches = (
            (y0 > 0 and region[0].any())
            or (y1 < h and region[-1].any())
            or (x0 > 0 and region[:, 0].any())
            or (x1 < w and region[:, -1].any())
        )
        if not touches:
            break
        half *= 2
    by0, by1, bx0, bx1 = _mask_bbox(region)  # type: ignore[misc]  # the seed is always inside
    return (y0 + by0, y0 + by1, x0 + bx0, x0 + bx1), region[by0:by1, bx0:bx1]


def fill_polygon(
    labels: np.ndarray,
    poly_yx: Sequence[Sequence[float]] | np.ndarray,
    value: int,
    preserve: bool = False,
    active: int | None = None,
    nodata: np.ndarray | None = None,
) -> Atom | None:
    """Fill the polygon with vertices ``poly_yx`` ((row, col) pairs; pixel centres inside)."""
    value = _check_value(value)
    poly = np.asarray(poly_yx, dtype=np.float64).reshape(-1, 2)
    if len(poly) < 3:
        return None
    h, w = labels.shape
    y0 = max(int(np.floor(poly[:, 0].min())), 0)
    y1 = min(int(np.ceil(poly[:, 0].max())) + 1, h)
    x0 = max(int(np.floor(poly[:, 1].min())), 0)
    x1 = min(int(np.ceil(poly[:, 1].max())) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return None
    rr, cc = draw_polygon(poly[:, 0] - y0, poly[:, 1] - x0, shape=(y1 - y0, x1 - x0))
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    mask[rr, cc] = True
    return _atom(labels, (y0, y1, x0, x1), mask, value, preserve, active, nodata)


def pick(labels: np.ndarray, yx: Sequence[float]) -> int | None:
    """The label under ``yx``, or None outside the array (the eyedropper)."""
    seed = _inside(labels, yx)
    return None if seed is None else int(labels[seed])


# --- predictions ---------------------------------------------------------------------------------
def accept_prediction(
    labels: np.ndarray,
    prediction: np.ndarray,
    preserve: bool = False,
    nodata: np.ndarray | None = None,
) -> Atom | None:
    """Take the whole prediction as labels (where it is not 255 = no prediction).

    With ``preserve``, only background/unlabeled pixels take the prediction. No-data pixels take
    background whatever the prediction says (a cache from an older model may call them a seep).
    """
    if prediction.shape != labels.shape:
        raise ValueError(f"prediction {prediction.shape} and labels {labels.shape} differ in size")
    if nodata is not None and nodata.any():
        prediction = np.where(nodata & (prediction != IGNORE), np.uint8(BACKGROUND), prediction)
    change = (prediction != IGNORE) & (prediction != labels)
    if preserve:
        change &= (labels == BACKGROUND) | (labels == IGNORE)
    bbox = _mask_bbox(change)
    if bbox is None:
        return None
    y0, y1, x0, x1 = bbox
    old = labels[y0:y1, x0:x1]
    new = np.where(change[y0:y1, x0:x1], prediction[y0:y1, x0:x1], old)
    return Atom(y0, y1, x0, x1, old.copy(), new)


def predicted_component(
    prediction: np.ndarray, yx: Sequence[float], window: int = 512
) -> tuple[tuple[int, int, int, int], np.ndarray, int] | None:
    """The 8-connected predicted blob of one class under ``yx``: (bbox, box mask, class) or None.

    Floods a window around the click that doubles until the blob no longer touches an inner window
    edge, so a click costs the size of the blob, not of the 8192² image.
    """
    seed = _inside(prediction, yx)
    if seed is None:
        return None
    cls = int(prediction[seed])
    if cls in (BACKGROUND, IGNORE):
        return None

    def allowed(y0, y1, x0, x1):
        return prediction[y0:y1, x0:x1] == cls

    bbox, mask = _grow_flood(allowed, seed, prediction.shape, connectivity=2, window=window)
    return bbox, mask, cls


def accept_component(
    labels: np.ndarray,
    prediction: np.ndarray,
    yx: Sequence[float],
    preserve: bool = False,
    nodata: np.ndarray | None = None,
) -> Atom | None:
    """Take the predicted blob under the click as labels (its class), like accepting one detection."""
    if prediction.shape != labels.shape:
        raise ValueError(f"prediction {prediction.shape} and labels {labels.shape} differ in size")
    found = predicted_component(prediction, yx)
    if found is None:
        return None
    bbox, mask, cls = found
    return _atom(labels, bbox, mask, cls, preserve, None, nodata)


def reject_component(labels: np.ndarray, prediction: np.ndarray, yx: Sequence[float]) -> Atom | None:
    """Clear the predicted blob under the click from the labels: set it to background (0).

    Only pixels labelled with the blob's class or unlabeled (255) change; another class the user
    painted inside the blob is kept. Background written here is an explicit "false positive" label.
    """
    if prediction.shape != labels.shape:
        raise ValueError(f"prediction {prediction.shape} and labels {labels.shape} differ in size")
    found = predicted_component(prediction, yx)
    if found is None:
        return None
    (y0, y1, x0, x1), mask, cls = found
    old = labels[y0:y1, x0:x1]
    mask = mask & ((old == cls) | (old == IGNORE))
    return _atom(labels, (y0, y1, x0, x1), mask, BACKGROUND)


def apply(document: LabelDocument, atom: Atom | None) -> bool:
    """Apply ``atom`` to ``document`` as its own undo step unless a stroke is open; True if it changed."""
    if atom is None:
        return False
    document.apply(atom)
    return True
