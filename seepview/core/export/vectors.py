"""One polygon per connected region, with holes, measured and written to GeoPackage or GeoJSON.

Polygons come from GDAL's polygoniser (``rasterio.features.shapes``) reading the scratch class
raster band directly: it works scan line by scan line, so memory follows the number of regions,
not the scene size. Regions are 4-connected (8-connected regions could touch themselves at a
corner, which is not a valid polygon). Coordinates are traced in pixels, then moved to the image's
CRS (affine, or GDAL's GCP transformer) and, for GeoJSON, to WGS84 longitude/latitude (RFC 7946).
Measures (area, perimeter of the pixel outline, major axis = long side of the minimum rotated
rectangle) are taken in the equal-area CRS of ``Georef.metric_crs``; in pixels for plain images.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from seepview.core.errors import Cancelled, SeepviewError
from seepview.core.export.georef import Georef
from seepview.core.export.masks import GDAL_CACHE_MB, MaskPass

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json")
BATCH = 4096  # regions measured and written together (bounded memory, few GDAL calls)
FIELDS = (
    "image_id", "class_id", "class_name", "pixels", "area", "perimeter", "major_axis", "unit",
    "mean_confidence", "model_version", "review_status",
)  # fmt: skip


def iter_regions(
    scratch: MaskPass, batch: int = BATCH, cancel: Callable[[], bool] = lambda: False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(pixel-space polygons, class ids) in batches, for every foreground region of the scratch mask."""
    import rasterio
    import shapely.geometry
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import shapes

    geoms: list = []
    ids: list[int] = []
    with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        # GEOREF_SOURCES=NONE: trace in pixels whatever georeferencing the scratch file carries.
        with rasterio.open(scratch.class_path, GEOREF_SOURCES="NONE") as src, rasterio.open(
            scratch.foreground_path
        ) as fg:
            for geom, value in shapes(rasterio.band(src, 1), mask=rasterio.band(fg, 1), connectivity=4):
                geoms.append(shapely.geometry.shape(geom))
                ids.append(int(value))
                if len(geoms) >= batch:
                    if cancel():
                        raise Cancelled(scratch.class_path)
                    yield np.array(geoms, dtype=object), np.array(ids, np.int32)
                    geoms, ids = [], []
    if geoms:
        yield np.array(geoms, dtype=object), np.array(ids, np.int32)


def major_axis(geoms: np.ndarray) -> np.ndarray:
    """Length of the long side of each geometry's minimum rotated rectangle."""
    import shapely

    rects = shapely.oriented_envelope(geoms)
    out = np.zeros(len(geoms))
    poly = shapely.get_type_id(rects) == 3
    if poly.any():
        ring = shapely.get_coordinates(shapely.get_exterior_ring(rects[poly])).reshape(-1, 5, 2)
        sides = np.hypot(*(ring[:, 1:3] - ring[:, 0:2]).transpose(2, 0, 1))
        out[poly] = sides.max(axis=1)
    if (~poly).any():  # a degenerate envelope is a line: its length is the axis
        out[~poly] = shapely.length(rects[~poly])
    return out


def mean_confidence(geoms: np.ndarray, confidence) -> np.ndarray:
    """Mean of the uint8 confidence raster (0-255 -> 0-1) inside each pixel-space polygon."""
    from affine import Affine
    from rasterio.features import geometry_mask

    out = np.full(len(geoms), np.nan)
    if confidence is None:
        return out
    h, w = confidence.shape
    for k, geom in enumerate(geoms):
        x0, y0, x1, y1 = (int(round(v)) for v in geom.bounds)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        window = confidence.read(y0, y1, x0, x1)
        inside = geometry_mask([geom], (y1 - y0, x1 - x0), Affine.translation(x0, y0), invert=True)
        if inside.any():
            out[k] = float(window[inside].mean()) / 255.0
    return out


def measure(geoms_px: np.ndarray, georef: Georef) -> dict[str, np.ndarray]:
    """pixels, area, perimeter, major_axis and the CRS geometry of each region."""
    import shapely

    pixels = np.rint(shapely.area(geoms_px)).astype(np.int64)
    if georef.located:
        in_crs = georef.to_crs(geoms_px)
        metric = georef.to_metric(in_crs)
        return dict(
            geometry=in_crs, pixels=pixels, area=shapely.area(metric), perimeter=shapely.length(metric),
            major_axis=major_axis(metric), unit="m",
        )  # fmt: skip
    return dict(
        geometry=geoms_px, pixels=pixels, area=pixels.astype(np.float64),
        perimeter=shapely.length(geoms_px), major_axis=major_axis(geoms_px), unit="px",
    )  # fmt: skip


def _layer_name(text: str) -> str:
    return "regions_" + re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


class VectorWriter:
    """Appends region batches to a GeoPackage (one layer per CRS, in that CRS) or to RFC 7946 GeoJSON.

    Everything goes to a hidden temporary file beside the target, renamed onto it by ``finish``:
    a failed or cancelled export leaves no half-written vector file.
    """

    def __init__(self, path: Path, georefs: list[Georef], metadata: dict[str, str]):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VECTOR_SUFFIXES:
            raise SeepviewError(self.path, f"vector output must be .gpkg or .geojson, not {suffix or 'no suffix'}")
        self.driver = "GPKG" if suffix == ".gpkg" else "GeoJSON"
        located = [g.located for g in georefs]
        if self.driver == "GeoJSON" and any(located) and not all(located):
            raise SeepviewError(
                self.path,
                "GeoJSON holds one coordinate system (WGS84) but some images are not georeferenced; "
                "write a .gpkg (one layer per coordinate system) or export them separately",
            )
        self.wgs84 = self.driver == "GeoJSON" and all(located)
        crs_texts = sorted({g.crs_text() for g in georefs})
        self._single = len(crs_texts) == 1
        self.metadata = metadata
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{suffix}")
        self._started: set[str] = set()
        self.layers: dict[str, int] = {}
        self.count = 0

    def layer_for(self, georef: Georef) -> str:
        if self.driver == "GeoJSON" or self._single:
            return "regions"
        return _layer_name(georef.crs_text())

    def write(self, georef: Georef, geometry: np.ndarray, fields: dict[str, np.ndarray]) -> None:
        import shapely

        if len(geometry) == 0:
            return
        layer = self.layer_for(georef)
        crs = None
        if self.wgs84:
            geometry, crs = georef.to_wgs84(geometry), "EPSG:4326"
        elif georef.located and self.driver == "GPKG":
            crs = georef.crs.to_wkt()
        first = layer not in self._started
        options = None
        if first and self.driver == "GeoJSON":
            options = {"RFC7946": "YES"} if self.wgs84 else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*'crs' was not provided")  # pixel layers: no CRS
            self._write(layer, shapely.to_wkb(geometry), fields, crs, first, options)
        self._started.add(layer)
        self.layers[layer] = self.layers.get(layer, 0) + len(geometry)
        self.count += len(geometry)

    def _write(self, layer, wkb, fields, crs, first, options) -> None:
        import pyogrio.raw

        with _writing(self.path):
            pyogrio.raw.write(
                str(self.tmp),
                wkb,
                [fields[name] for name in FIELDS],
                fields=list(FIELDS),
                layer=layer,
                driver=self.driver,
                geometry_type="Polygon",
                crs=crs,
                append=not first,
                layer_options=options,
                layer_metadata=self.metadata if first and self.driver == "GPKG" else None,
            )

    def finish(self, empty_georef: Georef | None = None) -> Path:
        """Rename the finished file onto the target (an export without regions still gets a file)."""
        import os

        if not self._started:
            self._write_empty(empty_georef)
        with _writing(self.path):
            os.replace(self.tmp, self.path)
        return self.path

    def _write_empty(self, georef: Georef | None) -> None:
        import pyogrio.raw

        fields = empty_fields()
        crs = "EPSG:4326" if self.wgs84 else (georef.crs.to_wkt() if georef and georef.located else None)
        with _writing(self.path):
            pyogrio.raw.write(
                str(self.tmp), np.array([], dtype=object), [fields[n] for n in FIELDS], fields=list(FIELDS),
                layer="regions", driver=self.driver, geometry_type="Polygon", crs=crs,
            )  # fmt: skip
        self._started.add("regions")

    def abort(self) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            self.tmp.unlink()


@contextlib.contextmanager
def _writing(path: Path):
    """GDAL's and the OS's write failures (a full disk, a folder that takes no files) as one SeepviewError
    naming the output, not a pyogrio traceback."""
    try:
        yield
    except SeepviewError:
        raise
    except Exception as exc:  # pyogrio.errors.DataSourceError and friends, OSError
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0][:160]
        raise SeepviewError(path, f"cannot write the vector file: {reason}") from None


def empty_fields() -> dict[str, np.ndarray]:
    kinds = {"class_id": np.int32, "pixels": np.int64}
    floats = ("area", "perimeter", "major_axis", "mean_confidence")
    return {n: np.array([], dtype=kinds.get(n, np.float64 if n in floats else object)) for n in FIELDS}
