"""Class masks out of a project, in row strips: a 16k x 12k scene never sits in memory whole.

One pass over an image reads its mask (labels or a cached prediction) and its pixels strip by strip,
turns image no-data into 255, counts pixels per class, and writes two scratch GeoTIFFs
(uncompressed strips, which GDAL's polygoniser reads fast): the class ids (georeferenced like the image) and a 0/1 foreground band that the polygoniser uses as its mask.
The delivered mask is a Cloud-Optimized GeoTIFF copied from the scratch file by GDAL (deflate,
512² tiles, nearest-neighbour overviews, colour table, class names in the metadata, 255 = no-data);
photos get a palette PNG instead, which is what photo tools read.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seepview.core.atomic import atomic_path, atomic_write_bytes
from seepview.core.classes import IGNORE, ClassTable
from seepview.core.errors import Cancelled, MaskError
from seepview.core.export.georef import Georef
from seepview.core.imageio import ImageSource, write_mask

STRIP_PIXELS = 2**22  # pixels per strip: memory stays flat however wide or tall the scene is
TILE = 512
SCRATCH_ROWS = 64
GDAL_CACHE_MB = 48  # GDAL's block cache while copying and polygonising (its default is 5 % of RAM)


@dataclass
class MaskPass:
    """What one pass over an image found, and where its scratch rasters are."""

    counts: np.ndarray  # int64 pixels per class id, valid (non-no-data) pixels only
    valid: int  # image pixels that are not no-data
    total: int
    class_path: Path
    foreground_path: Path


def strip_rows(width: int) -> int:
    """Rows per strip: about ``STRIP_PIXELS`` pixels, a multiple of 16 (tile heights; GDAL's cache
    keeps the image's tile row between strips)."""
    return max(16, (STRIP_PIXELS // max(1, width)) // 16 * 16)


def colormap(classes: ClassTable) -> dict[int, tuple[int, int, int, int]]:
    """Class colours for the GeoTIFF colour table; background and 255 are transparent."""
    cmap = {c.id: tuple(int(v) for v in c.rgba) for c in classes}
    cmap[0] = (0, 0, 0, 0)
    cmap[IGNORE] = (0, 0, 0, 0)
    return cmap


def class_tags(classes: ClassTable, source: str, model_version: str | None) -> dict[str, str]:
    tags = {f"CLASS_{c.id}": c.name for c in classes}
    tags.update(
        SEEPVIEW_CLASSES=json.dumps(classes.names),
        SEEPVIEW_SOURCE=source,
        SEEPVIEW_NODATA="255 = unlabeled or image no-data",
    )
    if model_version:
        tags["SEEPVIEW_MODEL"] = model_version
    return tags


def _profile(shape: tuple[int, int], georef: Georef | None) -> dict:
    """Scratch rasters: uncompressed strips. GDAL's polygoniser reads scan lines, and from tiled
    deflate files that is ~100x slower (each line decodes a row of tiles again); 2 x H x W bytes of
    temporary disk are the price."""
    h, w = shape
    profile = dict(
        driver="GTiff", width=w, height=h, count=1, dtype="uint8", nodata=IGNORE,
        blockysize=SCRATCH_ROWS, bigtiff="if_safer",
    )  # fmt: skip
    if georef is not None and georef.located and not georef.gcps:
        profile.update(crs=georef.crs, transform=georef.transform)
    return profile


def stream_mask(
    mask_path: Path,
    image: ImageSource,
    classes: ClassTable,
    georef: Georef,
    workdir: Path,
    tags: dict[str, str],
    step: Callable[[], None] = lambda: None,
    cancel: Callable[[], bool] = lambda: False,
) -> MaskPass:
    """Read ``mask_path`` against ``image`` in strips; write the scratch rasters into ``workdir``."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    h, w = image.shape
    n = len(classes)
    nodata = image.nodata if image.channels == 1 else None
    counts = np.zeros(256, np.int64)
    valid = 0
    class_path = workdir / f"{mask_path.stem}.classes.tif"
    fg_path = workdir / f"{mask_path.stem}.foreground.tif"
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        read_labels = _label_rows(stack, mask_path, (h, w))
        read_pixels = _image_rows(stack, image) if nodata is not None else None
        dst = stack.enter_context(rasterio.open(class_path, "w", **_profile((h, w), georef)))
        fg = stack.enter_context(rasterio.open(fg_path, "w", **{**_profile((h, w), None), "nodata": None}))
        if georef.gcps:
            dst.gcps = (georef.gcps, georef.crs)
        dst.update_tags(**tags)
        dst.write_colormap(1, colormap(classes))
        rows = strip_rows(w)
        # One set of strip buffers, reused: no per-strip allocations for the allocator to scatter.
        labels_buf = np.empty((rows, w), np.uint8)
        invalid_buf = np.empty((rows, w), bool)
        fg_buf, other_buf = np.empty((rows, w), bool), np.empty((rows, w), bool)
        for y0 in range(0, h, rows):
            if cancel():
                raise Cancelled(mask_path)
            y1 = min(h, y0 + rows)
            k = y1 - y0
            strip = read_labels(y0, y1, labels_buf[:k])
            if read_pixels is not None:
                pixels = read_pixels(y0, y1)
                invalid = np.equal(pixels, nodata, out=invalid_buf[:k])
                if pixels.dtype.kind == "f":
                    invalid |= ~np.isfinite(pixels)
                np.putmask(strip, invalid, IGNORE)
                valid += int(invalid.size - np.count_nonzero(invalid))
            else:
                valid += strip.size
            strip_counts = _bincount(strip)
            bad = np.flatnonzero(strip_counts[n:IGNORE])
            if bad.size:
                raise MaskError(
                    mask_path, f"holds class id {int(bad[0]) + n}, but the project has {n} classes (0-{n - 1})"
                )
            counts += strip_counts
            window = Window(0, y0, w, k)
            dst.write(strip, 1, window=window)
            foreground = np.not_equal(strip, 0, out=fg_buf[:k])
            foreground &= np.not_equal(strip, IGNORE, out=other_buf[:k])
            fg.write(foreground.view(np.uint8), 1, window=window)
            step()
    return MaskPass(counts[:n].copy(), valid, h * w, class_path, fg_path)


def _bincount(strip: np.ndarray, chunk: int = 2**18) -> np.ndarray:
    """Counts of 0..255 in a uint8 array; in chunks, as np.bincount copies its input to int64 first."""
    flat = strip.reshape(-1)
    out = np.zeros(256, np.int64)
    for i in range(0, flat.size, chunk):
        out += np.bincount(flat[i : i + chunk], minlength=256)
    return out


def _label_rows(stack, path: Path, shape: tuple[int, int]) -> Callable[..., np.ndarray]:
    """Rows of a mask file through GDAL windowed reads. Not a memory map: every page of a mapped
    192 MB mask would count toward the process's resident memory once read."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    try:
        src = stack.enter_context(rasterio.open(path))
    except RasterioIOError as exc:
        raise MaskError(path, f"not a readable mask ({exc})") from None
    if src.count != 1 or src.dtypes[0] != "uint8":
        raise MaskError(path, f"a mask must be one band of uint8 class ids, got {src.count} x {src.dtypes[0]}")
    if (src.height, src.width) != shape:
        raise MaskError(path, f"mask is {src.height}x{src.width} but its image is {shape[0]}x{shape[1]}")
    return lambda y0, y1, out: src.read(1, window=Window(0, y0, src.width, y1 - y0), out=out)


def _image_rows(stack, image: ImageSource) -> Callable[[int, int], np.ndarray]:
    """Rows of a single-channel image: GDAL windowed reads where GDAL sees the same raster,
    else seepview's reader (complex data, layouts GDAL does not read)."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    h, w = image.shape
    fallback = lambda y0, y1: image.read(y0, y1, 0, w)  # noqa: E731
    if image.path.suffix.lower() not in (".tif", ".tiff") or np.dtype(image.dtype).kind not in "uif":
        return fallback
    try:
        src = stack.enter_context(rasterio.open(image.path))
    except RasterioIOError:
        return fallback
    if src.count != 1 or (src.height, src.width) != (h, w) or np.dtype(src.dtypes[0]).kind == "c":
        return fallback
    buf = np.empty((strip_rows(w), w), src.dtypes[0])  # reused: one strip's pixels at a time
    return lambda y0, y1: src.read(1, window=Window(0, y0, w, y1 - y0), out=buf[: y1 - y0])


def qgis_style(classes: ClassTable) -> str:
    """A QGIS layer style (``.qml``) for a class mask: QGIS loads ``<mask>.qml`` beside ``<mask>.tif`` by itself,
    so the classes show with their names and colours and background stays transparent (a TIFF colour table has
    no alpha, so without it QGIS paints background black)."""
    from xml.sax.saxutils import quoteattr

    entries = []
    for c in classes:
        r, g, b, a = (int(v) for v in c.rgba)
        alpha = 0 if c.id == 0 else a
        entries.append(f'        <paletteEntry value="{c.id}" color="#{r:02x}{g:02x}{b:02x}" alpha="{alpha}" '
                       f"label={quoteattr(c.name)}/>")
    entries.append(f'        <paletteEntry value="{IGNORE}" color="#000000" alpha="0" label="unlabeled / no data"/>')
    return "\n".join([
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>",
        '<qgis version="3.28" styleCategories="Symbology">',
        "  <pipe>",
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">',
        "      <rasterTransparency/>",
        "      <colorPalette>",
        *entries,
        "      </colorPalette>",
        "    </rasterrenderer>",
        "  </pipe>",
        "</qgis>",
        "",
    ])


def deliver_mask(scratch: MaskPass, dest: Path, classes: ClassTable, as_png: bool) -> Path:
    """Write the delivered mask: a COG for TIFF images, a palette PNG for photos (atomically)."""
    import rasterio
    import rasterio.shutil
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB) as env:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if as_png:
            with rasterio.open(scratch.class_path) as src:
                write_mask(dest, src.read(1), classes=classes)  # palette index = class id, 255 included
            return dest
        with atomic_path(dest) as tmp:
            driver = "COG" if "COG" in env.drivers() else "GTiff"
            options = (
                dict(COMPRESS="DEFLATE", BLOCKSIZE=TILE, OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER")
                if driver == "COG"
                else dict(COMPRESS="DEFLATE", TILED="YES", BLOCKXSIZE=TILE, BLOCKYSIZE=TILE)
            )
            rasterio.shutil.copy(scratch.class_path, tmp, driver=driver, **options)
        atomic_write_bytes(dest.with_suffix(".qml"), qgis_style(classes).encode("utf-8"))
    return dest

