"""``seepview info FILE [--json]``: what the image reader sees in a file."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="show what seepview reads from an image: shape, dtype, value range, tiling, no-data, geo",
        description="Show what seepview reads from an image file. Value range and no-data fraction come "
        "from a regular grid of regions on large files (marked 'sampled').",
    )
    p.add_argument("file", help="a TIFF, PNG or JPEG image")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(func=run_info)


def run_info(args) -> int:
    from seepview.core.imageio import open_image

    with open_image(args.file) as source:
        info = source.info()
    if args.json:
        print(json.dumps(info))
    else:
        _print_table(info)
    return 0


def _fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_table(info: dict) -> str:
    """The human-readable form of ``ImageSource.info()``."""
    rows = [
        ("file", info["path"]),
        ("format", info["format"] + (" (BigTIFF)" if info.get("bigtiff") else "")),
        ("shape", f"{info['shape'][0]} x {info['shape'][1]} (H x W)"),
        ("channels", str(info["channels"])),
        ("dtype", info["dtype"]),
    ]
    vr = info.get("value_range")
    sampled = " (sampled: {:,} pixels)".format(info["stats_pixels"]) if info.get("stats_sampled") else ""
    rows.append(
        (
            "value range",
            (f"{_fmt_value(vr[0])} .. {_fmt_value(vr[1])}" if vr else "(no finite values)") + sampled,
        )
    )
    if info.get("tiled"):
        ts = info.get("tile_shape")
        rows.append(("layout", f"tiled {ts[0]} x {ts[1]}" if ts else "tiled"))
    else:
        rows.append(("layout", "striped" if info["format"] == "tiff" else "whole image"))
    rows.append(("compression", info.get("compression") or "none"))
    if info.get("nodata") is None:
        rows.append(("no-data", "none"))
    else:
        frac = info.get("nodata_fraction")
        share = f", {100.0 * frac:.2f}% of pixels{sampled}" if frac is not None else ""
        rows.append(("no-data", f"value {_fmt_value(info['nodata'])}{share}"))
    geo = info.get("geo")
    if geo:
        crs = f"EPSG:{geo['epsg']}" if geo.get("epsg") else "CRS unknown"
        affine = geo.get("affine")
        origin = (
            f", origin {affine[2]:.6g}, {affine[5]:.6g}, pixel {affine[0]:.6g} x {affine[4]:.6g}"
            if affine
            else (f", {geo['gcps']} ground control points" if geo.get("gcps") else "")
        )
        rows.append(("geo", f"{crs}{origin}; tags: {', '.join(geo['tags'])}"))
    else:
        rows.append(("geo", "none"))
    rows.append(("file size", f"{info['file_bytes']:,} bytes"))
    if info.get("note"):
        rows.append(("note", info["note"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _print_table(info: dict) -> None:
    text = format_table(info)
    # Paths are already escaped; guard against terminals with a narrow encoding anyway.
    sys.stdout.write(
        text.encode(sys.stdout.encoding or "utf-8", "backslashreplace").decode(sys.stdout.encoding or "utf-8")
        + "\n"
    )
