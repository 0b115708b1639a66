"""Input normalisation, stored in each checkpoint so inference always matches training.

Two kinds of spec (plain JSON dicts, they travel in the checkpoint metadata):

* ``{"kind": "percentile", "pmin": 1, "pmax": 99, "nodata": 0}`` for SAR. Tile brightness varies a lot
  inside one scene while seeps stay *relatively* dark, so each image is stretched by its own 1-99
  percentile over valid (non-no-data) pixels; no-data stays 0. For a scene the constants are fitted once
  (``fit_normalization``) so every tile of that scene sees the same stretch — no seams between tiles.
* ``{"kind": "scale", "scale": 1/255}`` for 8-bit photos.

A *fitted* spec is the same dict plus the concrete constants (``lo``/``hi`` for percentile).
``normalize`` accepts either: an unfitted percentile spec is fitted on the array it is given.
The percentile itself is computed by ``seepview.core.display.robust_window`` (one home for it).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from seepview.core.display import DisplayWindow, robust_window
from seepview.core.errors import ModelError

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, int, int]] = set()  # (image, its channels, model's): each conversion is told once

SAR_NORMALIZATION: dict = {"kind": "percentile", "pmin": 1, "pmax": 99, "nodata": 0}
PHOTO_NORMALIZATION: dict = {"kind": "scale", "scale": 1 / 255}
KINDS = ("percentile", "scale")


def validate_spec(spec: Any, path: str | os.PathLike | None = None) -> dict:
    """Return ``spec`` as a dict if it is a usable normalisation spec, else raise ModelError."""
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise ModelError(path, f"unknown input normalisation {spec!r} (kind must be one of {KINDS})")
    try:
        if spec["kind"] == "percentile":
            pmin, pmax = float(spec.get("pmin", 1)), float(spec.get("pmax", 99))
            if not 0 <= pmin < pmax <= 100:
                raise ValueError(f"need 0 <= pmin < pmax <= 100, got {pmin}, {pmax}")
            if is_fitted(spec):
                float(spec["lo"]), float(spec["hi"])
        else:
            float(spec["scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(path, f"malformed input normalisation {spec!r}: {exc}") from None
    return dict(spec)


def is_fitted(spec: dict) -> bool:
    """True when ``spec`` already carries its per-image constants."""
    return spec["kind"] != "percentile" or ("lo" in spec and "hi" in spec)


def fit_normalization(source_or_array, spec: dict) -> dict:
    """Fix the per-image constants of ``spec`` once for a whole image or scene.

    ``source_or_array`` is an ``ImageSource`` (sampled, never fully loaded) or an array (H, W[, C]).
    Returns a new dict; ``scale`` specs are returned unchanged (they have no per-image constants).
    """
    spec = validate_spec(spec)
    if spec["kind"] != "percentile":
        return spec
    nodata = spec.get("nodata", 0)
    window = robust_window(
        source_or_array, pmin=float(spec.get("pmin", 1)), pmax=float(spec.get("pmax", 99)), nodata=nodata
    )
    return {**spec, "lo": float(window.lo), "hi": float(window.hi)}


def normalize(array: np.ndarray, spec: dict, window: DisplayWindow | None = None) -> np.ndarray:
    """Turn an image region (H, W) or (H, W, C), as ``ImageSource.read`` returns it, into float32 (C, H, W).

    ``spec`` is fitted or not (see module doc); ``window`` overrides a percentile spec's constants.
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an image (H, W) or (H, W, C), got shape {arr.shape}")
    chw = np.moveaxis(arr, -1, 0)
    kind = spec["kind"]
    if kind == "scale":
        return np.multiply(chw, np.float32(spec["scale"]), dtype=np.float32)
    if kind != "percentile":
        raise ModelError(None, f"unknown input normalisation kind {kind!r}")
    if window is not None:
        lo, hi = float(window.lo), float(window.hi)
    else:
        fitted = spec if is_fitted(spec) else fit_normalization(array, spec)
        lo, hi = float(fitted["lo"]), float(fitted["hi"])
    span = np.float32(max(hi - lo, 1e-6))
    out = np.subtract(chw, np.float32(lo), dtype=np.float32)
    out /= span
    np.clip(out, 0.0, 1.0, out=out)
    nodata = spec.get("nodata")
    if nodata is not None:
        out[chw == nodata] = 0.0
    return out


def _warn_once(path, have: int, channels: int, text: str) -> None:
    key = (str(path), have, channels)
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning("%s: %s", "image" if path is None else os.fsdecode(path), text)


def match_channels(array: np.ndarray, channels: int, path: str | os.PathLike | None = None) -> np.ndarray:
    """Adapt an image's channels to what a model expects, where that is unambiguous.

    Grey → RGB repeats the channel and RGBA → RGB drops alpha; anything else (e.g. an RGB photo into a
    1-channel SAR model) is a user error, reported as ModelError naming the image.
    """
    have = 1 if array.ndim == 2 else array.shape[-1]
    if have == channels:
        return array
    if array.ndim == 2 and channels > 1:
        _warn_once(path, have, channels, f"the model expects {channels}-channel images; this 1-channel image "
                   "is repeated into every channel (is this the right model?)")
        return np.repeat(array[:, :, None], channels, axis=2)
    if have == 4 and channels == 3:
        _warn_once(path, have, channels, "the model expects RGB; the 4th channel of this image is dropped")
        return array[..., :3]
    if array.ndim == 3 and have == 1 and channels == 1:
        return array[..., 0]
    raise ModelError(path, f"the model expects {channels}-channel images, this image has {have} channel(s)")
