"""Display normalisation: any image -> uint8 for the canvas (pyqtgraph's fast path is uint8 + LUT).

The window is computed once per image (``robust_window``: 1-99 percentiles over valid pixels of a
sample), because a per-view stretch makes the same seep look different in every tile: SAR tile
brightness varies a lot while seeps sit at a fairly constant *relative* darkness. No-data pixels
(exact 0 at scene edges in cgg-seep) are left out of the percentiles and always map to 0.

``to_uint8`` maps 8/16-bit integers through a cached 256/65536-entry lookup table (one gather per
pixel, dB included for free) and floats through a chunked vectorised path.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from seepview.core.imageio import ImageSource

#: Pixels a percentile estimate looks at; 1-99 percentiles of 4M pixels are stable to well under a grey level.
SAMPLE_PIXELS = 2**22
_CHUNK_PIXELS = 2**20  # float path and threaded LUT path work on row bands of about this many pixels
_THREADS = 2  # numpy's gather releases the GIL; more threads do not help a memory-bound copy much


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO = _Auto()
"""``robust_window(nodata=AUTO)``: the source's own no-data value (arrays: 0, the SAR convention)."""


@dataclass(frozen=True)
class DisplayWindow:
    """Values ``lo``..``hi`` map to 0..255 (in dB when ``db``: ``10*log10(value)``, lo/hi in dB too).

    ``nodata`` pixels (and NaN/inf, and values <= 0 in dB) map to 0. A manual window is just
    ``DisplayWindow(lo, hi)``.
    """

    lo: float
    hi: float
    db: bool = False
    nodata: float | None = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.hi <= self.lo:
            raise ValueError(f"a display window needs finite lo < hi, got {self.lo}..{self.hi}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DisplayWindow:
        return cls(float(data["lo"]), float(data["hi"]), bool(data.get("db", False)), data.get("nodata", 0.0))


def _strided(array: np.ndarray, max_pixels: int) -> np.ndarray:
    """A strided view with at most about ``max_pixels`` pixels (no copy of a large array)."""
    h, w = array.shape[:2]
    step = max(1, math.ceil(math.sqrt(h * w / max_pixels)))
    return array[::step, ::step]


def robust_window(
    source_or_array: ImageSource | np.ndarray,
    pmin: float = 1.0,
    pmax: float = 99.0,
    nodata: float | None | _Auto = AUTO,
    db: bool = False,
) -> DisplayWindow:
    """The ``pmin``..``pmax`` percentile window over valid pixels of a sample of the image.

    Sources are sampled by region (``ImageSource.sample``) and arrays by stride, so the cost does
    not grow with image size past ``SAMPLE_PIXELS``. ``nodata=None`` treats every value as valid.
    Multi-channel uint8 (photos) gets the identity window 0..255, i.e. passes through unchanged.
    """
    if isinstance(source_or_array, ImageSource):
        if nodata is AUTO:
            nodata = source_or_array.nodata
        pixels, _ = source_or_array.sample(SAMPLE_PIXELS)
        channels = source_or_array.channels
    else:
        array = np.asarray(source_or_array)
        if nodata is AUTO:
            nodata = 0.0
        channels = array.shape[2] if array.ndim == 3 else 1
        pixels = _strided(array, SAMPLE_PIXELS)
    if pixels.dtype == np.uint8 and channels > 1 and not db:
        return DisplayWindow(0.0, 255.0, False, None)
    values = np.ravel(pixels)
    if values.dtype.kind == "c":
        values = np.abs(values)
    valid = values != nodata if nodata is not None else None
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        valid = finite if valid is None else valid & finite
    if db:
        positive = values > 0
        valid = positive if valid is None else valid & positive
    if valid is not None:
        values = values[valid]
    if values.size == 0:  # all no-data: any window will do, everything maps to 0
        return DisplayWindow(0.0, 1.0, db, nodata)
    if db:
        values = 10.0 * np.log10(values.astype(np.float64))
    lo, hi = _percentiles(values, pmin, pmax)
    if not hi > lo:  # flat image: centre a unit-wide window on the value
        lo, hi = lo - 0.5, lo + 0.5
    return DisplayWindow(float(lo), float(hi), db, None if nodata is None else float(nodata))


def _percentiles(values: np.ndarray, pmin: float, pmax: float) -> tuple[float, float]:
    if values.dtype in (np.uint8, np.uint16):  # exact, O(n): histogram + cumulative sum
        cdf = np.cumsum(np.bincount(values, minlength=1 << (8 * values.dtype.itemsize)))
        n = cdf[-1]
        # Inverted CDF (numpy's method="inverted_cdf"): the smallest value with cdf >= p * n, at least one pixel.
        lo = int(np.searchsorted(cdf, max(pmin / 100.0 * n, 1), side="left"))
        hi = int(np.searchsorted(cdf, max(pmax / 100.0 * n, 1), side="left"))
        return float(lo), float(hi)
    lo, hi = np.percentile(values, [pmin, pmax])
    return float(lo), float(hi)


@lru_cache(maxsize=16)
def _lut(dtype_str: str, window: DisplayWindow) -> np.ndarray:
    """uint8 table indexed by the raw bits of a uint8/uint16/int16 pixel."""
    dtype = np.dtype(dtype_str)
    bits = np.arange(1 << (8 * dtype.itemsize), dtype=np.uint16 if dtype.itemsize == 2 else np.uint8)
    values = bits.view(dtype).astype(np.float64)
    lut = _scale(values.copy(), window)
    if window.nodata is not None:
        lut[values == window.nodata] = 0
    lut.flags.writeable = False
    return lut


def _scale(values: np.ndarray, window: DisplayWindow) -> np.ndarray:
    """float array -> uint8 per the window; NaN/inf (and <= 0 in dB) -> 0. Works in place on floats."""
    if window.db:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = 10.0 * np.log10(values)
    out = values if values.dtype.kind == "f" else values.astype(np.float32)
    bad = ~np.isfinite(out)
    out -= window.lo
    out *= 255.0 / (window.hi - window.lo)
    np.clip(out, 0.0, 255.0, out=out)
    out += 0.5
    out[bad] = 0.0
    return out.astype(np.uint8)


def to_uint8(
    array: np.ndarray, window: DisplayWindow | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Map ``array`` (H, W) or (H, W, C) to uint8 through ``window`` (None: ``robust_window(array)``).

    uint8 with the identity window is returned as is (photos pass through, no copy). No-data stays 0.
    ``out``: a uint8 array of the same shape to fill (the canvas reuses one; saves page faults).
    """
    array = np.asarray(array)
    if window is None:
        window = robust_window(array)
    identity = window.lo == 0.0 and window.hi == 255.0 and not window.db and window.nodata in (None, 0.0)
    if out is not None and (out.shape != array.shape or out.dtype != np.uint8):
        raise ValueError(f"out must be uint8 {array.shape}, got {out.dtype} {out.shape}")
    if array.dtype == np.uint8 and identity:
        if out is None:
            return array
        out[...] = array
        return out
    if array.dtype.kind == "c":
        array = np.abs(array)
    if array.dtype in (np.uint8, np.uint16, np.int16):
        lut = _lut(array.dtype.str, window)
        bits = array.view(np.uint16) if array.dtype.itemsize == 2 else array
        return _banded(bits, lambda src, dst: _gather(lut, src, dst), out)
    return _banded(array, lambda src, dst: _float_band(src, window, dst), out)


def displayable(rendered: np.ndarray) -> np.ndarray:
    """What the canvas can show from a rendering of any channel count the reader accepts.

    (H, W) and (H, W, 3) pass through; one channel is squeezed; two channels (e.g. SAR VV+VH) show
    the first as grey (the status bar still reports both values); four drop the last.
    """
    if rendered.ndim == 2 or rendered.shape[2] == 3:
        return rendered
    if rendered.shape[2] in (1, 2):
        return np.ascontiguousarray(rendered[..., 0])
    return np.ascontiguousarray(rendered[..., :3])


def _gather(lut: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
    dst[...] = lut[src]


def _float_band(src: np.ndarray, window: DisplayWindow, dst: np.ndarray) -> None:
    values = src.astype(np.float32)  # a copy: _scale works in place
    dst[...] = _scale(values, window)
    if window.nodata is not None:
        dst[src == window.nodata] = 0


def _banded(array: np.ndarray, fill, out: np.ndarray | None = None) -> np.ndarray:
    """Run ``fill(src_band, dst_band)`` over row bands, on two threads for large arrays.

    Bands keep the float path's temporaries cache-sized; numpy releases the GIL inside each band.
    """
    if out is None:
        out = np.empty(array.shape, dtype=np.uint8)
    h = array.shape[0]
    row_pixels = max(1, array[:1].size)
    rows = max(1, _CHUNK_PIXELS // row_pixels)
    bands = [(y, min(h, y + rows)) for y in range(0, h, rows)]
    if len(bands) <= 2:
        for y0, y1 in bands:
            fill(array[y0:y1], out[y0:y1])
        return out
    with ThreadPoolExecutor(_THREADS) as pool:
        list(pool.map(lambda b: fill(array[b[0] : b[1]], out[b[0] : b[1]]), bands))
    return out
