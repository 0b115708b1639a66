"""Export a large labelled scene: seconds and peak memory (RSS) of ``seepview.core.export``.

A synthetic uint16 scene (default 16000 x 12000, UTM 31N, 10 m pixels, a no-data wedge) with
labels of a few hundred slick-like ellipses is written into a temporary project. Each measurement
runs in a fresh child process, so its peak RSS (``ru_maxrss``) is its own:

- ``imports``: the child imports numpy, rasterio, shapely, pyogrio and seepview.core.export and
  exits (the floor every child pays);
- ``export``: ``export_project`` with masks (COG) + GeoPackage + CSV report, strip-streamed;
- ``baseline``: the usual in-memory way, measured in the same run: read the whole label mask,
  ``rasterio.features.shapes`` over the whole array, write the GeoTIFF in one call. Its memory
  grows with the scene; the export's should not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def add_arguments(parser) -> None:
    parser.add_argument("--height", type=int, default=12000)
    parser.add_argument("--width", type=int, default=16000)
    parser.add_argument("--slicks", type=int, default=300, help="labelled ellipses")
    parser.add_argument("--no-baseline", action="store_true", help="skip the in-memory baseline")
    parser.add_argument("--repeat", type=int, default=3, help="children per measurement (median s, max RSS)")
    parser.add_argument("--keep", type=Path, default=None, help="make the project in this folder and keep it")


def _make_project(root: Path, h: int, w: int, slicks: int) -> None:
    import tifffile

    from seepview.core.project import Project

    rng = np.random.default_rng(0)
    scene = root / "scene.tif"
    geokeys = (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32631)
    tags = [
        (33550, 12, 3, (10.0, 10.0, 0.0), True),
        (33922, 12, 6, (0, 0, 0, 400000.0, 5600000.0, 0), True),
        (34735, 3, len(geokeys), geokeys, True),
    ]
    rows = 512

    def strips():
        for y0 in range(0, h, rows):
            n = min(rows, h - y0)
            strip = rng.gamma(4.0, 5000.0, (n, w)).clip(1, 65535).astype(np.uint16)
            cols = np.arange(w)[None, :]
            strip[cols < (np.arange(y0, y0 + n)[:, None] * 0.1)] = 0  # the no-data wedge of a scene edge
            yield strip

    tifffile.imwrite(scene, strips(), shape=(h, w), dtype=np.uint16, rowsperstrip=rows, extratags=tags)
    labels = np.zeros((h, w), np.uint8)
    yy, xx = np.ogrid[:h, :w]
    for _ in range(slicks):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(10, 150), rng.integers(30, 600)
        y0, y1, x0, x1 = max(0, cy - ry), min(h, cy + ry), max(0, cx - rx), min(w, cx + rx)
        inside = ((yy[y0:y1] - cy) / ry) ** 2 + ((xx[:, x0:x1] - cx) / rx) ** 2 <= 1
        labels[y0:y1, x0:x1][inside] = rng.integers(1, 8)
    project = Project.create(root / "project", "sar-seep")
    entry = project.add_image(scene)
    project.save_labels(entry, labels)


def _child(kind: str, root: Path) -> dict:
    """Runs in the child process: one measurement."""
    import pyogrio  # noqa: F401
    import rasterio
    import shapely  # noqa: F401

    import seepview.core.export  # noqa: F401

    start = time.perf_counter()
    out: dict = {}
    if kind == "export":
        from seepview.core.export import ExportOptions, export_project
        from seepview.core.project import Project

        result = export_project(
            Project.open(root / "project"),
            ExportOptions(
                vector=root / "regions.gpkg", masks=root / "masks", report=root / "report.csv",
                weights_key="bench-v0-0000000000", model_version="bench-v0",
            ),
        )  # fmt: skip
        out = {"regions": result.regions, "mask_bytes": (root / "masks" / "scene.tif").stat().st_size}
    elif kind == "baseline":
        import shapely.geometry
        from rasterio.features import shapes

        from seepview.core.imageio import read_mask

        with rasterio.open(root / "scene.tif") as src:
            crs, transform = src.crs, src.transform
        labels = read_mask(root / "project" / "labels" / "scene.tif")
        geoms = [
            shapely.geometry.shape(g)
            for g, v in shapes(labels, mask=labels > 0, transform=transform, connectivity=4)
        ]
        with rasterio.open(
            root / "baseline.tif", "w", driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1,
            dtype="uint8", crs=crs, transform=transform, compress="deflate", tiled=True,
        ) as dst:  # fmt: skip
            dst.write(labels, 1)
        out = {"regions": len(geoms)}
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it is not inherited from the parent across exec)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    return round(kb / 1024, 1)


def _measure(kind: str, root: Path, repeat: int = 1) -> dict:
    """``repeat`` fresh children: median seconds, and the largest peak RSS (allocator and GDAL cache
    timing make it vary by a few tens of MB from run to run)."""
    runs = [_measure_once(kind, root) for _ in range(max(1, repeat))]
    out = dict(runs[-1])
    out["seconds"] = float(np.median([r["seconds"] for r in runs]))
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    if repeat > 1:
        out["peak_rss_mb_runs"] = [r["peak_rss_mb"] for r in runs]
        out["seconds_runs"] = [r["seconds"] for r in runs]
    return out


def _measure_once(kind: str, root: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", kind, str(root)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="seepview-bench-export-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if not (root / "project" / "project.json").is_file():
            _make_project(root, args.height, args.width, args.slicks)
        setup = time.perf_counter() - start
        result = {
            "scene": f"{args.width} x {args.height} uint16 ({args.width * args.height * 2 / 2**20:.0f} MiB), "
            f"labels {args.width * args.height / 2**20:.0f} MiB, {args.slicks} ellipses",
            "setup_seconds": round(setup, 1),
            "imports": _measure("imports", root),
            "export": _measure("export", root, args.repeat),
        }
        if not args.no_baseline:
            result["baseline"] = _measure("baseline", root, args.repeat)
            floor = result["imports"]["peak_rss_mb"]
            e, b = result["export"]["peak_rss_mb"] - floor, result["baseline"]["peak_rss_mb"] - floor
            result["rss_above_imports_mb"] = {"export": round(e, 1), "baseline": round(b, 1)}
            result["baseline_over_export_rss"] = round(b / max(e, 1.0), 2)
            result["export_over_baseline_seconds"] = round(
                result["export"]["seconds"] / max(result["baseline"]["seconds"], 0.01), 2
            )
    return result


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--child":
    print(json.dumps(_child(sys.argv[2], Path(sys.argv[3]))))
