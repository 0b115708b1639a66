"""No-data pixels: where an image has no measurement (SAR: exact 0 in wedges at scene edges).

They are never a seep. Predictions write background there with confidence 0 (``Predictor``), brush and
fill never paint a class into them (``editing``), and metrics ignore them like unlabeled 255
(``ConfusionMatrix.update(..., ignore=...)``). Training sets mask them with ``ignore_nodata``. One
helper decides which pixels they are, so every consumer agrees.

Which value marks no-data: the image's own (``ImageSource.nodata``: the GDAL_NODATA tag, else 0 for
single-channel uint16 SAR), else the model's normalisation spec (``{"nodata": 0}`` for SAR), which is
what the network was shown there anyway (``normalize`` zeroes those pixels).
"""

from __future__ import annotations

import math

import numpy as np

from seepview.core.classes import IGNORE


def nodata_value(source=None, spec: dict | None = None) -> float | None:
    """The no-data value for an image: ``source.nodata`` when it has one, else ``spec["nodata"]``."""
    value = getattr(source, "nodata", None)
    if value is None and spec is not None:
        value = spec.get("nodata")
    return None if value is None else float(value)


def nodata_mask(array, nodata: float | None) -> np.ndarray | None:
    """(H, W) bool, True where every channel of ``array`` (H, W[, C]) equals ``nodata`` (NaN matches NaN).

    None when there is no no-data value, so callers can skip the work.
    """
    if nodata is None:
        return None
    arr = np.asarray(array)
    hit = np.isnan(arr) if math.isnan(nodata) and arr.dtype.kind in "fc" else arr == nodata
    if hit.ndim == 3:
        hit = hit.all(axis=2)
    return hit


def ignore_nodata(mask: np.ndarray, nodata: np.ndarray | None) -> np.ndarray:
    """``mask`` with no-data pixels set to 255 (ignored by loss and metrics); a copy only when needed."""
    if nodata is None or not nodata.any():
        return mask
    out = np.array(mask, copy=True)
    out[nodata] = IGNORE
    return out
