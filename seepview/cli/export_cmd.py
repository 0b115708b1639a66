"""``seepview export PROJECT``: GeoTIFF masks, region vectors and reports; the work is in
``seepview.core.export``."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export masks (GeoTIFF), regions (GeoPackage/GeoJSON) and reports (CSV/HTML) for GIS and inspection",
        description="Export a project's results. Masks are Cloud-Optimized GeoTIFFs that keep the image's "
        "geo-referencing (affine or GCPs), with a colour table, class names and 255 = no-data (photos: palette "
        "PNG). Vectors hold one polygon per connected region with area, perimeter, major axis, mean confidence, "
        "model version and review status: GeoPackage in the image's CRS, GeoJSON in WGS84 lon/lat (RFC 7946). "
        "Reports: CSV (one row per image and class) or a self-contained HTML page. Give any subset of "
        "--vector, --masks and --report.",
    )
    p.add_argument("project", help="project folder")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--images", nargs="+", metavar="ID", help="only these image ids (default: all)")
    which.add_argument("--reviewed", action="store_true", help="only images marked reviewed")
    p.add_argument(
        "--source",
        choices=("labels", "predictions"),
        default="labels",
        help="export the saved labels (default) or the active model's cached predictions",
    )
    p.add_argument("--vector", type=Path, metavar="FILE", help="regions as FILE.gpkg or FILE.geojson")
    p.add_argument("--masks", type=Path, metavar="DIR", help="folder for the class masks")
    p.add_argument("--report", type=Path, metavar="FILE", help="report as FILE.csv or FILE.html")
    p.add_argument(
        "--severity-bands",
        metavar="PCT,PCT",
        help="coverage thresholds in percent for the report's severity bands, e.g. 1,5 "
        "(default: the project's settings, else 1,5)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from seepview.cli.model_cmds import Progress
    from seepview.core.export import ExportOptions, export_project
    from seepview.core.export.report import parse_bands
    from seepview.core.project import Project

    project = Project.open(args.project)
    options = ExportOptions(
        vector=args.vector,
        masks=args.masks,
        report=args.report,
        images=args.images,
        reviewed_only=args.reviewed,
        source=args.source,
        severity_bands=parse_bands(args.severity_bands) if args.severity_bands else None,
    )
    bar = Progress("export")
    try:
        result = export_project(project, options, progress=bar)
    finally:
        bar.close()
    if args.json:
        print(
            json.dumps(
                {
                    "images": result.images,
                    "skipped": [{"image": i, "reason": r} for i, r in result.skipped],
                    "regions": result.regions,
                    "files": [str(f) for f in result.files],
                    "model_version": options.model_version,
                    "seconds": round(result.seconds, 2),
                }
            )
        )
    else:
        print(result.message())
        for path in result.files:
            print(f"  {path}")
    return 0
