"""Synthetic geo-referenced scenes for the export tests, and independent geodesy to check them.

The UTM inverse (Snyder 1987, eq. 8-12 ff.) and the ellipsoidal quadrangle area (authalic
latitude) are written out here on purpose: they share no code with GDAL/PROJ, which the export uses.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

A = 6378137.0
F = 1 / 298.257223563
E2 = F * (2 - F)

UTM31_ORIGIN = (499000.0, 5600000.0)  # near zone 31's central meridian (3° E), ~50.5° N
PIXEL = 10.0
# (class id, row0, row1, col0, col1): rectangles of a known size; class 3 gets a hole below.
RECTS = ((1, 10, 40, 50, 120), (3, 100, 200, 200, 300), (2, 250, 260, 0, 100))
HOLE = (120, 140, 220, 240)
SHAPE = (300, 400)
NODATA_COLS = 20  # the image's first columns are no-data (0), like a SAR scene edge


def utm_to_lonlat(easting: float, northing: float, zone: int = 31) -> tuple[float, float]:
    k0, ep2 = 0.9996, E2 / (1 - E2)
    x, m = easting - 500000.0, northing / k0
    mu = m / (A * (1 - E2 / 4 - 3 * E2**2 / 64 - 5 * E2**3 / 256))
    e1 = (1 - math.sqrt(1 - E2)) / (1 + math.sqrt(1 - E2))
    phi1 = (
        mu
        + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
        + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
        + (151 * e1**3 / 96) * math.sin(6 * mu)
        + (1097 * e1**4 / 512) * math.sin(8 * mu)
    )
    s, c, t = math.sin(phi1), math.cos(phi1), math.tan(phi1)
    c1, t1 = ep2 * c * c, t * t
    n1 = A / math.sqrt(1 - E2 * s * s)
    r1 = A * (1 - E2) / (1 - E2 * s * s) ** 1.5
    d = x / (n1 * k0)
    lat = phi1 - (n1 * t / r1) * (
        d**2 / 2
        - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720
    )
    lon = (
        d - (1 + 2 * t1 + c1) * d**3 / 6 + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120
    ) / c
    return math.degrees(lon) + (6 * zone - 183), math.degrees(lat)


def quadrangle_area(lon0: float, lon1: float, lat0: float, lat1: float) -> float:
    """m² of a lon/lat rectangle on the WGS84 ellipsoid."""
    e = math.sqrt(E2)

    def q(lat):
        s = math.sin(math.radians(lat))
        return (1 - E2) * (s / (1 - E2 * s * s) - math.log((1 - e * s) / (1 + e * s)) / (2 * e))

    return abs(A * A / 2 * math.radians(lon1 - lon0) * (q(lat1) - q(lat0)))


def labels() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    for cls, r0, r1, c0, c1 in RECTS:
        mask[r0:r1, c0:c1] = cls
    r0, r1, c0, c1 = HOLE
    mask[r0:r1, c0:c1] = 0
    return mask


def expected_pixels(cls: int) -> int:
    return int(np.count_nonzero(_valid_labels() == cls))


def _valid_labels() -> np.ndarray:
    mask = labels()
    mask[:, :NODATA_COLS] = 255
    return mask


def image() -> np.ndarray:
    img = np.random.default_rng(0).integers(100, 5000, SHAPE).astype(np.uint16)
    img[:, :NODATA_COLS] = 0
    return img


def write_utm_scene(path: Path) -> Path:
    import rasterio
    from affine import Affine

    h, w = SHAPE
    with rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint16", crs="EPSG:32631",
        transform=Affine(PIXEL, 0, UTM31_ORIGIN[0], 0, -PIXEL, UTM31_ORIGIN[1]), tiled=True, blockxsize=256, blockysize=256,
    ) as dst:  # fmt: skip
        dst.write(image(), 1)
    return path


GCP_LON0, GCP_LAT0, GCP_STEP = 3.0, 50.0, 1e-4  # lon = 3 + 1e-4 col, lat = 50 - 1e-4 row


def gcp_lonlat(col: float, row: float) -> tuple[float, float]:
    return GCP_LON0 + GCP_STEP * col, GCP_LAT0 - GCP_STEP * row


def write_gcp_scene(path: Path) -> Path:
    """A Sentinel-1-GRD-like TIFF: no affine transform, a 3 x 3 grid of GCPs in EPSG:4326."""
    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.errors import NotGeoreferencedWarning

    h, w = SHAPE
    gcps = [
        GroundControlPoint(row=r, col=c, x=gcp_lonlat(c, r)[0], y=gcp_lonlat(c, r)[1], z=0.0)
        for r in (0, h // 2, h)
        for c in (0, w // 2, w)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint16") as dst:
            dst.gcps = (gcps, "EPSG:4326")
            dst.write(image(), 1)
    return path


def make_project(tmp_path: Path, scene: Path):
    from seepview.core.project import Project

    project = Project.create(tmp_path / "project", "sar-seep")
    entry = project.add_image(scene)
    project.save_labels(entry, labels())
    return project, entry
