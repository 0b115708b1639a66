"""Where an image's pixels are on Earth, for export: CRS plus an affine transform or GCPs.

Read with rasterio (GDAL knows every GeoTIFF CRS flavour), so exports agree with what QGIS shows.
Pixel coordinates here are continuous raster coordinates: x = column, y = row, (0, 0) the outer
corner of the first pixel. Geometry is moved between coordinate systems with ``shapely.transform``
over all vertices of a batch at once (one GDAL call), never vertex by vertex in Python.

Areas, perimeters and axis lengths are measured in a Lambert azimuthal equal-area projection
centred on the image: equal-area on the WGS84 ellipsoid, so m² are right in any source CRS (UTM,
lon/lat, Web Mercator), and lengths are off by far less than 0.1 % within a scene.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Georef:
    """``crs`` is None for plain images (then every coordinate stays in pixels)."""

    crs: Any = None  # rasterio.crs.CRS
    transform: Any = None  # affine.Affine, when not GCP-located
    gcps: list | None = None  # rasterio GroundControlPoints, in ``crs``
    shape: tuple[int, int] = (0, 0)
    _gcp_transformer: Any = None
    _metric_crs: Any = None

    @property
    def located(self) -> bool:
        return self.crs is not None

    @property
    def kind(self) -> str:
        return "gcps" if self.gcps else ("affine" if self.located else "none")

    # --- pixel -> CRS -----------------------------------------------------------------------------
    def pixel_xy_to_crs(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) raster (x, y) -> (N, 2) coordinates in ``crs``."""
        xy = np.asarray(xy, dtype=np.float64)
        if self.gcps:
            if self._gcp_transformer is None:
                from rasterio.transform import GCPTransformer

                self._gcp_transformer = GCPTransformer(self.gcps)
            xs, ys = self._gcp_transformer.xy(xy[:, 1], xy[:, 0], offset="ul")
            return np.column_stack([np.asarray(xs, np.float64), np.asarray(ys, np.float64)])
        t = self.transform
        return np.column_stack(
            [t.a * xy[:, 0] + t.b * xy[:, 1] + t.c, t.d * xy[:, 0] + t.e * xy[:, 1] + t.f]
        )

    def to_crs(self, geoms: np.ndarray) -> np.ndarray:
        """Pixel-space shapely geometries -> geometries in the image's CRS."""
        import shapely

        return shapely.transform(geoms, self.pixel_xy_to_crs)

    # --- CRS -> other CRSs ------------------------------------------------------------------------
    def reproject(self, geoms: np.ndarray, dst_crs) -> np.ndarray:
        """Geometries in ``crs`` -> ``dst_crs`` (vectorised over all vertices)."""
        import shapely
        from rasterio.warp import transform

        def move(xy: np.ndarray) -> np.ndarray:
            if len(xy) == 0:
                return xy
            xs, ys = transform(self.crs, dst_crs, xy[:, 0].tolist(), xy[:, 1].tolist())
            return np.column_stack([xs, ys])

        return shapely.transform(geoms, move)

    def to_wgs84(self, geoms: np.ndarray) -> np.ndarray:
        """For RFC 7946 GeoJSON: longitude, latitude on WGS84."""
        from rasterio.crs import CRS

        return self.reproject(geoms, CRS.from_epsg(4326))

    def centre_lonlat(self) -> tuple[float, float]:
        from rasterio.crs import CRS
        from rasterio.warp import transform

        h, w = self.shape
        x, y = self.pixel_xy_to_crs(np.array([[w / 2.0, h / 2.0]]))[0]
        lon, lat = transform(self.crs, CRS.from_epsg(4326), [x], [y])
        return float(lon[0]), float(lat[0])

    @property
    def metric_crs(self):
        """Equal-area CRS centred on the image, where m² and metres are measured."""
        if self._metric_crs is None:
            from rasterio.crs import CRS

            lon, lat = self.centre_lonlat()
            self._metric_crs = CRS.from_proj4(
                f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +ellps=WGS84 +units=m +no_defs"
            )
        return self._metric_crs

    def to_metric(self, geoms_crs: np.ndarray) -> np.ndarray:
        return self.reproject(geoms_crs, self.metric_crs)

    def pixel_area_m2(self) -> float | None:
        """Area of the centre pixel in m² (the CSV's m² for pixel counts); None for plain images."""
        if not self.located:
            return None
        import shapely

        h, w = self.shape
        cy, cx = h // 2, w // 2
        pixel = shapely.box(cx, cy, cx + 1, cy + 1)
        return float(shapely.area(self.to_metric(self.to_crs(np.array([pixel])))[0]))

    def crs_text(self) -> str:
        if self.crs is None:
            return "pixels"
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.crs.to_string()


def read_georef(path: str | Path, shape: tuple[int, int]) -> Georef:
    """The georeferencing of an image file; a plain ``Georef`` for photos and un-tagged TIFFs."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return Georef(shape=shape)
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                gcps, gcp_crs = src.gcps
                if src.crs is not None and not src.transform.is_identity:
                    return Georef(crs=src.crs, transform=src.transform, shape=shape)
                if gcps and gcp_crs is not None and len(gcps) >= 3:
                    return Georef(crs=gcp_crs, gcps=list(gcps), shape=shape)
    except RasterioIOError:
        pass  # GDAL cannot read some TIFFs tifffile can (exotic layouts): export them as plain images
    return Georef(shape=shape)
