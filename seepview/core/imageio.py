"""Reading images and reading/writing class masks: the one home for pixel file formats.

Images: TIFF through tifffile (any of uint8/uint16/int16/float32, 1-4 channels, striped or tiled,
compressed, BigTIFF). Large TIFFs are read by region through tifffile's zarr store, so a 20000²
scene is never decoded whole to show one view or predict one tile. JPEG/PNG photos go through
Pillow (they are small and have no random access anyway). Complex SAR (SLC) becomes amplitude.

Masks: 2-D uint8 class ids. TIFF masks are written in exactly the seed layout of
``cgg-seep/masks`` (little-endian classic TIFF, uncompressed, min-is-black, the same nine tags,
data after the IFD) by a tiny writer here, because tifffile always adds resolution and sample
tags; GeoTIFF tags of the image can be carried over. PNG masks are grayscale, or palette PNGs
whose palette index is the class id (read through Pillow so indices are not turned into colours).

Every failure becomes ``ImageReadError`` / ``MaskError`` naming the file.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seepview.core.atomic import atomic_path
from seepview.core.errors import ImageReadError, MaskError, path_problem

if TYPE_CHECKING:
    from seepview.core.classes import ClassTable

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PHOTO_SUFFIXES
MASK_SUFFIXES = TIFF_SUFFIXES + (".png",)

#: dtypes returned by ``ImageSource.read``; float64 is narrowed to float32 and complex to amplitude.
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")
_NARROWED = {"float64": np.float32, "complex64": np.float32, "complex128": np.float32}
MAX_CHANNELS = 4

#: Files whose decoded size is at most this are read once and kept; larger ones are read by region.
WHOLE_READ_BYTES = 64 * 2**20
#: Pixels looked at by ``ImageSource.sample`` (value range, no-data fraction, display window).
SAMPLE_PIXELS = 2**22

GDAL_NODATA = 42113
# GeoTIFF tags kept on read and written back with masks (code -> name).
GEO_TAGS = {
    33550: "ModelPixelScaleTag",
    33922: "ModelTiepointTag",
    34264: "ModelTransformationTag",
    34735: "GeoKeyDirectoryTag",
    34736: "GeoDoubleParamsTag",
    34737: "GeoAsciiParamsTag",
    42113: "GDAL_NODATA",
}


def as_path(path: str | bytes | os.PathLike) -> Path:
    """A ``Path`` for str, bytes or PathLike; non-UTF8 bytes survive via surrogateescape."""
    return Path(os.fsdecode(path))


def available_memory() -> int | None:
    """Bytes of memory the system can still hand out (Linux MemAvailable, else physical; None if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _decode_reason(exc: BaseException, compression: str) -> str:
    """A decoder's exception as one sentence without Python or codec internals (ImcdError, error codes)."""
    if isinstance(exc, MemoryError):
        return "not enough memory to decode its pixels"
    name = type(exc).__name__
    if name.endswith(("ImcdError", "Error")) and ("imagecodecs" in type(exc).__module__ or name == "error"):
        return f"cannot decode pixels: the {compression} compressed data is corrupt"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    return f"cannot decode pixels: {text[:160]}"


def _short(exc: BaseException) -> str:
    """The first line of an exception's message, bounded (library messages can run for paragraphs)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def printable(path: str | os.PathLike) -> str:
    """``path`` as text that can always be printed or logged (non-UTF8 bytes become escapes)."""
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


# --------------------------------------------------------------------------------------------------
# GeoTIFF
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeoInfo:
    """Geo-referencing of a TIFF: the raw tags (to write back) and the pixel -> map affine.

    ``tags`` are ``(code, tiff_dtype, count, value)`` tuples as tifffile reads them and as
    ``write_mask`` writes them. ``affine`` is ``(a, b, c, d, e, f)`` with ``X = a*x + b*y + c`` and
    ``Y = d*x + e*y + f`` for raster coordinates (x = column, y = row) in the file's own raster
    space convention (PixelIsArea: (0, 0) is the outer corner of the first pixel).
    """

    tags: tuple[tuple[int, int, int, Any], ...]
    affine: tuple[float, float, float, float, float, float] | None = None
    nodata: float | None = None
    epsg: int | None = None
    #: Ground control points ``(x, y, X, Y, Z)`` (raster column, row -> map), as Sentinel-1 GRD
    #: measurement TIFFs locate pixels: several tiepoints and no pixel scale. Empty when affine.
    gcps: tuple[tuple[float, float, float, float, float], ...] = ()

    @property
    def locatable(self) -> bool:
        """True when pixels can be mapped to the CRS (an affine transform, or at least 3 GCPs)."""
        return self.affine is not None or len(self.gcps) >= 3

    def pixel_to_map(self, x: float, y: float) -> tuple[float, float]:
        """Map coordinates of raster point (x, y); GCPs are interpolated by GDAL's GCP transformer."""
        if self.affine is None:
            if len(self.gcps) >= 3:
                xs, ys = _gcp_transformer(self.gcps).xy([y], [x], offset="ul")
                return (float(xs[0]), float(ys[0]))
            raise ValueError(
                "this GeoTIFF has no pixel-to-map transform (no tiepoint+scale, transformation or GCPs)"
            )
        a, b, c, d, e, f = self.affine
        return (a * x + b * y + c, d * x + e * y + f)

    def extratags(self) -> list[tuple[int, int, int, Any, bool]]:
        """The tags in tifffile's ``extratags`` form, for writers other than ``write_mask``."""
        return [(code, dtype, count, value, True) for code, dtype, count, value in self.tags]

    def to_dict(self) -> dict:
        return {
            "tags": [GEO_TAGS.get(code, str(code)) for code, *_ in self.tags],
            "affine": list(self.affine) if self.affine else None,
            "gcps": len(self.gcps),
            "epsg": self.epsg,
            "nodata": self.nodata,
        }


def _affine_from_tags(values: dict[int, Any]) -> tuple[float, ...] | None:
    if 34264 in values:
        m = [float(v) for v in values[34264]]
        if len(m) >= 8:
            return (m[0], m[1], m[3], m[4], m[5], m[7])
    if 33922 in values and 33550 in values:
        tie = [float(v) for v in values[33922]]
        scale = [float(v) for v in values[33550]]
        if len(tie) >= 6 and len(scale) >= 2:
            i, j, _k, x0, y0, _z = tie[:6]
            sx, sy = scale[0], scale[1]
            return (sx, 0.0, x0 - i * sx, 0.0, -sy, y0 + j * sy)
    return None


def _gcps_from_tags(values: dict[int, Any]) -> tuple[tuple[float, float, float, float, float], ...]:
    """Several tiepoints without a pixel scale or transformation are ground control points."""
    if 33922 not in values or 33550 in values or 34264 in values:
        return ()
    tie = [float(v) for v in np.ravel(values[33922])]
    if len(tie) < 18:  # fewer than 3 points locate nothing
        return ()
    return tuple((i, j, x, y, z) for i, j, _k, x, y, z in zip(*[iter(tie)] * 6))


@functools.lru_cache(maxsize=8)
def _gcp_transformer(gcps: tuple[tuple[float, float, float, float, float], ...]):
    """GDAL's GCP transformer (polynomial fit) for these points; built once per scene."""
    from rasterio.control import GroundControlPoint
    from rasterio.transform import GCPTransformer

    return GCPTransformer([GroundControlPoint(row=j, col=i, x=x, y=y, z=z) for i, j, x, y, z in gcps])


atexit.register(_gcp_transformer.cache_clear)  # free GDAL transformers before GDAL itself goes at exit


def _epsg_from_geokeys(keys: Any) -> int | None:
    try:
        keys = [int(v) for v in keys]
        for n in range(keys[3]):
            key_id, location, _count, value = keys[4 + 4 * n : 8 + 4 * n]
            if key_id in (3072, 2048) and location == 0 and 0 < value < 32767:  # Projected / Geographic CRS
                return value
    except (IndexError, ValueError, TypeError):
        return None
    return None


def _parse_nodata(text: Any) -> float | None:
    try:
        value = float(str(text).strip().strip("\x00"))
    except ValueError:
        return None
    return value


def geo_from_page(page) -> GeoInfo | None:
    """GeoInfo from a tifffile page, or None when it carries no geo tags."""
    tags = []
    values: dict[int, Any] = {}
    for code in sorted(GEO_TAGS):
        tag = page.tags.get(code)
        if tag is None:
            continue
        value = tag.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, np.ndarray):
            value = tuple(value.tolist())
        values[code] = value
        tags.append((code, int(tag.dtype), int(tag.count), value))
    if not tags:
        return None
    return GeoInfo(
        tags=tuple(tags),
        affine=_affine_from_tags(values),  # type: ignore[arg-type]
        nodata=_parse_nodata(values[42113]) if 42113 in values else None,
        epsg=_epsg_from_geokeys(values[34735]) if 34735 in values else None,
        gcps=_gcps_from_tags(values),
    )


# --------------------------------------------------------------------------------------------------
# Image sources
# --------------------------------------------------------------------------------------------------


class ImageSource:
    """An opened image: metadata now, pixels on demand (``read`` a region, ``read_all``).

    Sources hold no open file until the first pixel read; ``close()`` (or ``with``) releases it.
    ``.dtype`` is the dtype ``read`` returns (complex files report float32 amplitude).
    ``.nodata``: the GDAL_NODATA tag when present; else 0 for single-channel uint16 (the SAR
    convention of cgg-seep: exact 0 marks no-data wedges at scene edges); else None.
    Reads are thread-safe (the canvas and a prediction worker may share a source).
    """

    path: Path
    shape: tuple[int, int]
    channels: int
    dtype: np.dtype
    tiled: bool = False
    geo: GeoInfo | None = None
    nodata: float | None = None
    note: str = ""

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels of rows y0:y1, columns x0:x1 (clipped to the image) as (h, w) or (h, w, C)."""
        h, w = self.shape
        y0, y1 = max(0, int(y0)), min(h, int(y1))
        x0, x1 = max(0, int(x0)), min(w, int(x1))
        if y1 <= y0 or x1 <= x0:
            shape = (max(0, y1 - y0), max(0, x1 - x0)) + ((self.channels,) if self.channels > 1 else ())
            return np.zeros(shape, dtype=self.dtype)
        return self._read(y0, y1, x0, x1)

    def read_all(self) -> np.ndarray:
        return self.read(0, self.shape[0], 0, self.shape[1])

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.channels * np.dtype(self.dtype).itemsize

    def sample(self, max_pixels: int | None = None) -> tuple[np.ndarray, bool]:
        """Pixels to estimate statistics from, and whether they are a sample rather than the whole image.

        Small images are read whole. Larger ones are read as an evenly spread grid of windows with
        about ``max_pixels`` in all. When reads go through a chunked store the windows are whole
        chunks (tiles, or full-width strips) snapped to the chunk grid and subsampled by stride, so
        each costs exactly one decode; a plain strided read would decode every chunk of the file.
        """
        max_pixels = SAMPLE_PIXELS if max_pixels is None else max_pixels
        h, w = self.shape
        if h * w <= max_pixels:
            return self.read_all(), False
        ch, cw = self._sample_chunk() or (256, 256)
        win_h, win_w = min(ch, h), min(cw, w)
        n_windows = min(1024, max(64, max_pixels // (win_h * win_w)))
        ny_max, nx_max = -(-h // win_h), -(-w // win_w)
        ny = min(ny_max, max(1, round(math.sqrt(n_windows * h / w))))
        nx = min(nx_max, max(1, n_windows // ny))
        ny = min(ny_max, max(ny, n_windows // nx))  # full-width strips: all windows go to rows

        def starts(n: int, size: int, win: int) -> list[int]:
            # Window centres evenly spread (one window sits in the middle), snapped to the chunk grid.
            last = (-(-size // win) - 1) * win
            return sorted({min(last, (int((i + 0.5) * size / n) // win) * win) for i in range(n)})

        ys, xs = starts(ny, h, win_h), starts(nx, w, win_w)
        step = max(1, round(math.sqrt(win_h * win_w * len(ys) * len(xs) / max_pixels)))
        parts = [self.read(y, y + win_h, x, x + win_w)[::step, ::step] for y in ys for x in xs]
        c = self.channels
        return np.concatenate([p.reshape(-1, c) if c > 1 else p.ravel() for p in parts]), True

    def info(self) -> dict:
        """What the reader sees; ``seepview info`` prints this. Statistics may come from a sample."""
        pixels, sampled = self.sample()
        values = pixels.astype(np.float64, copy=False) if pixels.dtype.kind == "f" else pixels
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if self.nodata is not None and self.channels == 1 and pixels.size:
            nodata_fraction = float(np.count_nonzero(pixels == self.nodata) / pixels.size)
        else:
            nodata_fraction = None
        info = {
            "path": printable(self.path),
            "format": self.format,
            "shape": list(self.shape),
            "channels": self.channels,
            "dtype": str(np.dtype(self.dtype)),
            "value_range": [finite.min().item(), finite.max().item()] if finite.size else None,
            "stats_sampled": sampled,
            "stats_pixels": int(pixels.shape[0] if self.channels > 1 else pixels.size),
            "tiled": self.tiled,
            "tile_shape": list(self.tile_shape) if self.tile_shape else None,
            "compression": self.compression,
            "bigtiff": self.bigtiff,
            "nodata": self.nodata,
            "nodata_fraction": nodata_fraction,
            "geo": self.geo.to_dict() if self.geo else None,
            "file_bytes": self.path.stat().st_size,
        }
        if self.note:
            info["note"] = self.note
        return info

    format = "?"
    tile_shape: tuple[int, int] | None = None
    compression = "none"
    bigtiff = False

    def _sample_chunk(self) -> tuple[int, int] | None:
        """(rows, cols) of one decode unit when region reads go through a chunked store, else None."""
        return None

    def close(self) -> None:
        """Release open files and cached pixels (safe to call twice; reads reopen)."""

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing useful to do
            self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({printable(self.path)!r}, shape={self.shape}, channels={self.channels}, "
            f"dtype={np.dtype(self.dtype)})"
        )


class TiffImage(ImageSource):
    """A TIFF read with tifffile; whole when small, else by region through its zarr store."""

    format = "tiff"

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._tif = None
        self._store = None
        self._zarr = None
        self._cache: np.ndarray | None = None
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                self._inspect(tif)
        except ImageReadError:
            raise
        except Exception as exc:  # tifffile raises many types on garbage: all mean "not a readable TIFF"
            # tifffile's own errors say what is wrong; struct/index errors from a cut-off file say nothing useful
            said = _short(exc) if isinstance(exc, tifffile.TiffFileError) else "the file is truncated or damaged"
            raise ImageReadError(path, f"not a readable TIFF ({said})") from None

    def _inspect(self, tif) -> None:
        if not tif.series:
            raise ImageReadError(self.path, "TIFF holds no image")
        series = tif.series[0]
        page = series.pages[0] if series.pages else tif.pages[0]
        if page is None:
            raise ImageReadError(self.path, "TIFF holds no image")
        page = page.keyframe if hasattr(page, "keyframe") else page
        axes, shape = series.axes, tuple(series.shape)
        # Squeeze length-1 axes other than Y/X (e.g. a single-page "Q" or "I" axis).
        kept = [(a, n) for a, n in zip(axes, shape) if a in "YX" or n != 1]
        axes = "".join(a for a, _ in kept)
        shape = tuple(n for _, n in kept)
        if axes not in ("YX", "YXS", "SYX"):
            raise ImageReadError(
                self.path,
                f"unsupported layout: {len(shape)}-D data with axes {axes} and shape {shape}; "
                "expected one 2-D image with 1-4 channels",
            )
        self._axes = axes
        self._series_axes = series.axes
        h, w = (shape[0], shape[1]) if axes[0] == "Y" else (shape[1], shape[2])
        channels = 1 if axes == "YX" else (shape[2] if axes == "YXS" else shape[0])
        if h == 0 or w == 0:
            raise ImageReadError(self.path, f"empty image ({h}x{w})")
        if channels > MAX_CHANNELS:
            raise ImageReadError(self.path, f"{channels} channels; at most {MAX_CHANNELS} are supported")
        self._file_channels = channels
        photometric = getattr(page.photometric, "name", str(page.photometric))
        self._drop_alpha = channels == 4 and photometric == "RGB"
        if self._drop_alpha:
            log.info("%s: RGBA image, alpha channel dropped", printable(self.path))
            channels = 3
        self.shape, self.channels = (int(h), int(w)), int(channels)
        file_dtype = np.dtype(series.dtype)
        self._file_dtype = file_dtype
        if file_dtype.kind == "c":
            self.note = "complex (SLC) data: shown and processed as amplitude |z|"
            log.info("%s: %s", printable(self.path), self.note)
        if file_dtype.name in SUPPORTED_DTYPES:
            self.dtype = file_dtype
        elif file_dtype.name in _NARROWED:
            self.dtype = np.dtype(_NARROWED[file_dtype.name])
        else:
            raise ImageReadError(
                self.path,
                f"unsupported pixel type {file_dtype} (supported: {', '.join(SUPPORTED_DTYPES)}, "
                "float64, complex)",
            )
        self.tiled = bool(page.is_tiled)
        self._rowsperstrip = int(getattr(page, "rowsperstrip", 0) or self.shape[0])
        self._memmappable = bool(page.is_memmappable) and getattr(series, "dataoffset", None) is not None
        self.tile_shape = (int(page.tilelength), int(page.tilewidth)) if self.tiled else None
        self.compression = getattr(page.compression, "name", str(page.compression)).lower()
        self.bigtiff = bool(tif.is_bigtiff)
        self.geo = geo_from_page(page)
        if self.geo is not None and self.geo.nodata is not None:
            self.nodata = self.geo.nodata
        elif self.dtype == np.uint16 and self.channels == 1:
            # SAR convention (cgg-seep): exact 0 marks no-data wedges at scene edges.
            self.nodata = 0.0
        else:
            self.nodata = None
        self._check_complete(tif, series)

    def _check_complete(self, tif, series) -> None:
        """Truncated files: every strip/tile must lie inside the file (tifffile would read zeros)."""
        size = tif.filehandle.size
        for page in series.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if offsets.size == 0 or not counts.any():
                raise ImageReadError(self.path, "TIFF page has no pixel data")
            end = int((offsets + counts).max())
            if end > size:
                raise ImageReadError(
                    self.path,
                    f"file is truncated: pixel data ends at byte {end} but the file has {size} bytes",
                )
            expected = int(np.prod(page.shaped, dtype=np.int64)) * np.dtype(page.dtype).itemsize
            if int(page.compression) == 1 and int(counts.sum()) < expected:  # uncompressed: sizes must agree
                raise ImageReadError(
                    self.path,
                    f"file is truncated: its header claims {page.imagewidth}x{page.imagelength} pixels "
                    f"({expected} bytes) but it holds {int(counts.sum())} bytes of pixel data",
                )

    # --- pixel access ---------------------------------------------------------------------------
    def _open(self):
        """The lazily opened pixel store: a read-only memmap for uncompressed contiguous data (any
        region costs only its bytes, even in a single-strip file), else tifffile's zarr store
        (decodes only the strips/tiles under a region)."""
        import tifffile

        if self._zarr is None:
            if self._memmappable:
                self._zarr = tifffile.memmap(self.path, mode="r")
            else:
                import zarr

                self._tif = tifffile.TiffFile(self.path)
                self._store = self._tif.series[0].aszarr(level=0)
                self._zarr = zarr.open(self._store, mode="r")
        return self._zarr

    def _sample_chunk(self) -> tuple[int, int] | None:
        if self._memmappable or self.nbytes <= WHOLE_READ_BYTES:
            return None
        return self.tile_shape or (self._rowsperstrip, self.shape[1])

    def _indexer(self, y0: int, y1: int, x0: int, x1: int) -> tuple:
        """Index into the file's series: the region on Y/X, all samples, 0 on squeezed length-1 axes."""
        pick = {"Y": slice(y0, y1), "X": slice(x0, x1), "S": slice(None) if self._file_channels > 1 else 0}
        return tuple(pick.get(a, 0) for a in self._series_axes)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        """File layout (YX / YXS / SYX, file dtype) -> (h, w[, C]) in ``self.dtype``."""
        if self._axes == "SYX":
            raw = np.moveaxis(raw, 0, -1)
        if self._drop_alpha:
            raw = raw[..., :3]
        if raw.dtype.kind == "c":
            raw = np.abs(raw)
        # Always a private, writable, plain ndarray (never a view into a read-only memmap).
        if isinstance(raw, np.memmap) or not raw.flags.owndata:
            return np.array(raw, dtype=self.dtype, order="C")  # np.array copies by default
        return np.ascontiguousarray(raw, dtype=self.dtype)

    def _read(self, y0, y1, x0, x1):
        try:
            with self._lock:
                if self._cache is None and self.nbytes <= WHOLE_READ_BYTES:
                    import tifffile

                    with tifffile.TiffFile(self.path) as tif:
                        raw = tif.series[0].asarray()
                    self._cache = self._decode(raw[self._indexer(0, self.shape[0], 0, self.shape[1])])
                if self._cache is not None:
                    return self._cache[y0:y1, x0:x1].copy()
                return self._decode(np.asarray(self._open()[self._indexer(y0, y1, x0, x1)]))
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(self.path, _decode_reason(exc, self.compression)) from None

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            self._cache = None
            self._zarr = None
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._tif is not None:
                self._tif.close()
                self._tif = None


class PhotoImage(ImageSource):
    """A JPEG/PNG photo read whole with Pillow: RGB(A) -> RGB, grayscale stays one channel."""

    format = "photo"

    def __init__(self, path: Path):
        self.path = path
        self._cache: np.ndarray | None = None
        try:
            from PIL import Image

            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    self.format = (img.format or "photo").lower()
                    self.compression = {"jpeg": "jpeg", "png": "deflate"}.get(self.format, "unknown")
                    self._mode = img.mode
                    w, h = img.size
        except Exception as exc:
            if "truncated" in str(exc):
                raise ImageReadError(path, "file is truncated") from None
            raise ImageReadError(path, f"not a readable image ({_short(exc)})") from None
        self.shape = (int(h), int(w))
        if self._mode in ("L", "1", "LA"):
            self.channels, self.dtype = 1, np.dtype(np.uint8)
        elif self._mode in ("I;16", "I;16B", "I;16L"):
            self.channels, self.dtype = 1, np.dtype(np.uint16)
        elif self._mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
            self.channels, self.dtype = 3, np.dtype(np.uint8)
        else:
            raise ImageReadError(path, f"unsupported image mode {self._mode!r}")
        self.nodata = 0.0 if self.dtype == np.uint16 else None

    def _load(self) -> np.ndarray:
        if self._cache is None:
            from PIL import Image

            try:
                with Image.open(self.path) as img:
                    img.load()
                    if self.channels == 3:
                        img = img.convert("RGB")
                    elif self._mode in ("1", "LA"):
                        img = img.convert("L")
                    arr = np.asarray(img)
            except Exception as exc:
                if "truncated" in str(exc):
                    raise ImageReadError(self.path, "file is truncated: it holds fewer pixels than its header claims") from None
                raise ImageReadError(self.path, _decode_reason(exc, self.compression)) from None
            self._cache = np.ascontiguousarray(arr, dtype=self.dtype)
        return self._cache

    def _read(self, y0, y1, x0, x1):
        return self._load()[y0:y1, x0:x1].copy()

    def close(self) -> None:
        self._cache = None


def open_image(path: str | bytes | os.PathLike) -> ImageSource:
    """Open an image for reading; raises ImageReadError naming the file for anything unreadable."""
    path = as_path(path)
    problem = path_problem(path)
    if problem is not None:
        raise ImageReadError(path, f"not a file: it {problem}" if problem.startswith("is ") else f"cannot open: {problem}")
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}") from None
    is_tiff = magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    suffix = path.suffix.lower()
    if is_tiff:
        return TiffImage(path)
    if suffix in TIFF_SUFFIXES:
        raise ImageReadError(path, "not a TIFF file (no TIFF header; wrong extension or not an image)")
    if suffix in PHOTO_SUFFIXES or magic[:8] == b"\x89PNG\r\n\x1a\n" or magic[:3] == b"\xff\xd8\xff":
        return PhotoImage(path)
    raise ImageReadError(
        path, f"unsupported image type {suffix or '(no extension)'}; use {', '.join(IMAGE_SUFFIXES)}"
    )


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------


def _to_mask_array(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise MaskError(path, f"a mask must be single-channel 2-D class ids, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind in "iu" and arr.size and int(arr.min()) >= 0 and int(arr.max()) <= 255:
        return arr.astype(np.uint8)
    if arr.dtype.kind in "iu" and arr.size == 0:
        return arr.astype(np.uint8)
    raise MaskError(path, f"a mask must hold uint8 class ids 0-255, got {arr.dtype}")


def read_mask(
    path: str | bytes | os.PathLike,
    classes: ClassTable | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read a mask (TIFF or PNG, palette index = class id) as uint8 (H, W); validate when asked."""
    path = as_path(path)
    suffix = path.suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise MaskError(
            path, f"masks must be {', '.join(MASK_SUFFIXES)} (lossless), not {suffix or 'no extension'}"
        )
    problem = path_problem(path)
    if problem is not None:
        raise MaskError(path, f"not a file: it {problem}" if problem.startswith("is ") else f"cannot open: {problem}")
    if path.stat().st_size == 0:
        raise MaskError(path, "empty file (0 bytes)")
    if suffix in TIFF_SUFFIXES:
        try:
            source = TiffImage(path)
        except ImageReadError as exc:
            raise MaskError(path, exc.reason) from None
        try:
            if source._file_channels != 1:
                raise MaskError(
                    path, f"a mask must be single-channel, this TIFF has {source._file_channels} channels"
                )
            if source._file_dtype.kind not in "iub":
                raise MaskError(path, f"a mask must hold integer class ids, got {source._file_dtype}")
            mask = _to_mask_array(source.read_all(), path)
        except ImageReadError as exc:
            raise MaskError(path, exc.reason) from None
        finally:
            source.close()
    else:
        from PIL import Image

        try:
            with Image.open(path) as img:
                img.load()
                if img.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                    raise MaskError(
                        path, f"a mask must be single-channel (grayscale or palette), got {img.mode}"
                    )
                arr = np.array(img)  # mode P keeps palette indices
        except MaskError:
            raise
        except Exception as exc:
            raise MaskError(path, f"not a readable PNG ({_short(exc)})") from None
        mask = _to_mask_array(arr, path)
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise MaskError(
            path, f"mask is {mask.shape[0]}x{mask.shape[1]} but its image is {shape[0]}x{shape[1]}"
        )
    if classes is not None:
        classes.validate_mask(mask, path)
    return mask


_TIFF_TYPES = {
    1: "B",
    2: "s",
    3: "H",
    4: "I",
    5: "II",
    6: "b",
    8: "h",
    9: "i",
    10: "ii",
    11: "f",
    12: "d",
    16: "Q",
}


def _tag_bytes(dtype: int, value: Any) -> tuple[int, bytes]:
    """(count, little-endian bytes) of one TIFF tag value."""
    if dtype == 2:
        raw = (value if isinstance(value, bytes) else str(value).encode("latin-1", "replace")).rstrip(
            b"\0"
        ) + b"\0"
        return len(raw), raw
    fmt = _TIFF_TYPES.get(dtype)
    if fmt is None:
        raise ValueError(f"TIFF tag type {dtype} is not supported by the mask writer")
    values = list(np.ravel(value)) if not isinstance(value, int | float) else [value]
    if len(fmt) == 2:  # rationals: pairs
        flat = [int(v) for v in values]
        return len(flat) // 2, struct.pack("<" + fmt[0] * len(flat), *flat)
    cast = float if fmt in "fd" else int
    return len(values), struct.pack("<" + fmt * len(values), *(cast(v) for v in values))


def encode_mask_tiff(mask: np.ndarray, geo: GeoInfo | None = None) -> bytes:
    """The bytes of a mask TIFF in the seed layout (see module doc); geo tags are appended.

    The image's GDAL_NODATA is not copied: GIS tools would hide class 0 (background) as no-data.

    One strip when the mask is at most 1 MiB (the seed's layout), else strips of about 256 KiB so
    region reads of a large mask stay cheap.
    """
    h, w = mask.shape
    if h * w > 2**32 - 2**20:
        raise ValueError("mask too large for a classic TIFF")
    rows = h if h * w <= 2**20 else max(1, 2**18 // w)
    nstrips = -(-h // rows)
    counts = [min(rows, h - i * rows) * w for i in range(nstrips)]
    # (code, type, count-or-None, value); offsets filled in below.
    entries: list[tuple[int, int, Any]] = [
        (256, 4, w),
        (257, 4, h),
        (258, 3, 8),
        (259, 3, 1),  # no compression
        (262, 3, 1),  # min-is-black
        (273, 4, None),  # strip offsets
        (278, 4, rows),
        (279, 4, counts),
        (284, 3, 1),  # chunky
    ]
    for code, dtype, _count, value in geo.tags if geo else ():
        if code != GDAL_NODATA:  # the image's no-data value means nothing for class ids (0 = background)
            entries.append((code, dtype, value))
    entries.sort(key=lambda e: e[0])
    n = len(entries)
    ifd_size = 2 + 12 * n + 4
    extra_at = 8 + ifd_size
    # Lay out out-of-line values; strip offsets are known once everything before the data is placed.
    encoded: dict[int, tuple[int, bytes]] = {}
    for code, dtype, value in entries:
        if code == 273:
            encoded[code] = (nstrips, b"\0" * 4 * nstrips)
        else:
            encoded[code] = _tag_bytes(dtype, value)
    extra = bytearray()
    where: dict[int, int] = {}
    for code, _dtype, _value in entries:
        data = encoded[code][1]
        if len(data) > 4:
            where[code] = extra_at + len(extra)
            extra += data
            if len(extra) % 2:
                extra += b"\0"
    data_at = extra_at + len(extra)
    offsets = [data_at + sum(counts[:i]) for i in range(nstrips)]
    encoded[273] = (nstrips, struct.pack("<" + "I" * nstrips, *offsets))
    if 273 in where:
        extra[where[273] - extra_at : where[273] - extra_at + 4 * nstrips] = encoded[273][1]
    ifd = bytearray(struct.pack("<H", n))
    for code, dtype, _value in entries:
        count, data = encoded[code]
        field_value = struct.pack("<I", where[code]) if code in where else data.ljust(4, b"\0")
        ifd += struct.pack("<HHI", code, dtype, count) + field_value
    ifd += struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + bytes(ifd) + bytes(extra) + np.ascontiguousarray(mask).tobytes()


def write_mask(
    path: str | bytes | os.PathLike,
    mask: np.ndarray,
    geo: GeoInfo | None = None,
    classes: ClassTable | None = None,
) -> None:
    """Write a uint8 (H, W) mask atomically: TIFF (seed layout, optional GeoTIFF tags) or PNG by suffix.

    ``geo`` (the image's ``GeoInfo``) is written into TIFF masks only; PNG has no place for it.
    With ``classes`` a PNG is written as a palette PNG in the class colours (index = class id), which
    other tools show in colour; otherwise as 8-bit grayscale.
    """
    path = as_path(path)
    suffix = path.suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise MaskError(
            path, f"masks are written as {', '.join(MASK_SUFFIXES)}, not {suffix or 'no extension'}"
        )
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise MaskError(path, f"a mask must be 2-D uint8, got {mask.dtype} {mask.shape}")
    if mask.size == 0:
        raise MaskError(path, "cannot write an empty mask")
    if classes is not None:
        classes.validate_mask(mask, path)
    try:
        if suffix in TIFF_SUFFIXES:
            data = encode_mask_tiff(mask, geo)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                fh.write(data)
        else:
            from PIL import Image

            img = Image.fromarray(np.ascontiguousarray(mask), mode="L")
            if classes is not None:
                img = Image.frombytes("P", img.size, img.tobytes())
                palette = np.zeros((256, 3), np.uint8)
                for c in classes:
                    palette[c.id] = c.rgba[:3]
                img.putpalette(palette.ravel().tolist())
            with atomic_path(path) as tmp:
                img.save(tmp, format="PNG")
    except OSError as exc:
        raise MaskError(path, f"cannot write: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a geo tag type the writer cannot encode, a mask too big for TIFF
        raise MaskError(path, f"cannot write: {exc}") from None
