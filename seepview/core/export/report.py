"""Inspection reports: a CSV of per-image, per-class figures and a self-contained HTML page.

CSV: one row per image and class (background included, so shares add up): pixels, m², % of the
valid (non-no-data) image area and number of regions. HTML: the same table per image under a
thumbnail with the overlay (PNG embedded as base64, so the page is one file that can be mailed),
the model version, and the image's severity band: the share of valid area covered by any
foreground class, cut at the project's thresholds (``settings["export"]["severity_bands"]``,
percent, default 1 and 5 -> "< 1 %", "1–5 %", "> 5 %").
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seepview.core.atomic import atomic_write_text
from seepview.core.classes import IGNORE, ClassTable
from seepview.core.errors import ProjectError

REPORT_SUFFIXES = (".csv", ".html", ".htm")
DEFAULT_BANDS = (1.0, 5.0)
SETTINGS_KEY = "export"
THUMB_SIDE = 360
CSV_COLUMNS = (
    "image_id", "class_id", "class_name", "pixels", "area_m2", "percent_of_valid", "regions",
    "review_status", "model_version", "severity",
)  # fmt: skip


@dataclass
class ImageSummary:
    """What the report says about one exported image."""

    image_id: str
    status: str
    shape: tuple[int, int]
    crs: str
    valid: int
    counts: np.ndarray  # pixels per class (valid pixels)
    regions: np.ndarray  # regions per class (polygonised)
    area_m2: np.ndarray | None  # per class, summed over regions; None for plain images
    pixel_area_m2: float | None = None
    thumbnail_png: bytes | None = None
    files: list[str] = field(default_factory=list)

    def percent(self, class_id: int) -> float | None:
        return 100.0 * float(self.counts[class_id]) / self.valid if self.valid else None

    def coverage(self) -> float | None:
        """% of valid area labelled with any non-background class."""
        return 100.0 * float(self.counts[1:].sum()) / self.valid if self.valid else None


# --- severity bands --------------------------------------------------------------------------------
def severity_bands(settings: dict) -> tuple[float, ...]:
    """The thresholds (percent, ascending) from project settings; ProjectError when malformed."""
    raw = (settings.get(SETTINGS_KEY) or {}).get("severity_bands", DEFAULT_BANDS)
    return check_bands(raw)


def check_bands(raw) -> tuple[float, ...]:
    try:
        bands = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
        raise ProjectError(None, f"severity bands must be numbers (percent), got {raw!r}") from None
    if not bands or any(not (0 < b < 100) or not math.isfinite(b) for b in bands) or list(bands) != sorted(
        set(bands)
    ):
        raise ProjectError(None, f"severity bands must be ascending percentages between 0 and 100, got {raw!r}")
    return bands


def parse_bands(text: str) -> tuple[float, ...]:
    """``"1,5"`` -> (1.0, 5.0), for the CLI and the dialog."""
    parts = [p.strip().rstrip("%").strip() for p in str(text).split(",") if p.strip()]
    return check_bands(parts)


def band_index(percent: float | None, bands: tuple[float, ...]) -> int:
    """0 below the first threshold, i for bands[i-1] <= percent < bands[i], len(bands) at or above the last."""
    if percent is None:
        return 0
    return int(np.searchsorted(np.asarray(bands), percent, side="right"))


def band_label(percent: float | None, bands: tuple[float, ...]) -> str:
    if percent is None:
        return "n/a"
    return band_names(bands)[band_index(percent, bands)]


def band_names(bands: tuple[float, ...]) -> list[str]:
    """``(1, 5)`` -> ``["< 1 %", "1–5 %", "≥ 5 %"]``."""
    edges = [f"{b:g}" for b in bands]
    return [f"< {edges[0]} %", *[f"{a}–{b} %" for a, b in zip(edges, edges[1:])], f"≥ {edges[-1]} %"]


# --- CSV -----------------------------------------------------------------------------------------
def csv_rows(summaries: list[ImageSummary], classes: ClassTable, model: str | None, bands) -> list[dict]:
    rows = []
    for s in summaries:
        severity = band_label(s.coverage(), bands)
        for c in classes:
            pct = s.percent(c.id)
            rows.append(
                {
                    "image_id": s.image_id,
                    "class_id": c.id,
                    "class_name": c.name,
                    "pixels": int(s.counts[c.id]),
                    "area_m2": "" if s.area_m2 is None else _m2(s, c.id),
                    "percent_of_valid": "" if pct is None else f"{pct:.4f}",
                    "regions": "" if c.id == 0 else int(s.regions[c.id]),
                    "review_status": s.status,
                    "model_version": model or "",
                    "severity": severity,
                }
            )
    return rows


def _m2(s: ImageSummary, class_id: int) -> str:
    """Regions' m² where polygonised (foreground); pixels x centre-pixel area for background."""
    if class_id == 0 or s.area_m2 is None:
        return "" if s.pixel_area_m2 is None else f"{s.counts[0] * s.pixel_area_m2:.2f}"
    return f"{float(s.area_m2[class_id]):.2f}"


def write_csv(path: Path, summaries, classes, model, bands) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(summaries, classes, model, bands))
    atomic_write_text(path, buf.getvalue())
    return path


# --- thumbnails ----------------------------------------------------------------------------------
def thumbnail(image, class_path: Path, classes: ClassTable, window, side: int = THUMB_SIDE) -> bytes:
    """PNG of the image (display window ``window``) with the class overlay, longest side ``side``.

    Read in strips, every ``step``-th row and column, so a whole scene never sits in memory; the
    mask comes through GDAL's decimated read (nearest neighbour).
    """
    import rasterio
    from PIL import Image
    from rasterio.errors import NotGeoreferencedWarning

    from seepview.core.display import to_uint8

    h, w = image.shape
    step = max(1, max(h, w) // side)  # at least ``side`` pixels: the page scales it to fit
    rows = []
    for y0 in range(0, h, 512 * step):
        strip = image.read(y0, min(h, y0 + 512 * step), 0, w)[::step, ::step]
        rows.append(strip)
    small = np.concatenate(rows, axis=0)
    grey = to_uint8(small, window)
    rgb = np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey[..., :3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(class_path, GEOREF_SOURCES="NONE") as src:
            mask = src.read(1, out_shape=(rgb.shape[0], rgb.shape[1]))
    lut = np.zeros((256, 4), np.uint8)
    for c in classes:
        if c.id:
            lut[c.id] = c.rgba
    lut[IGNORE] = 0
    colour = lut[mask]
    alpha = (colour[..., 3:4].astype(np.float32) / 255.0) * 0.6
    out = (rgb * (1 - alpha) + colour[..., :3] * alpha).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out, "RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --- HTML ----------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} .meta{color:#555;font-size:13px;margin-bottom:18px}
.image{display:flex;gap:18px;border-top:1px solid #ddd;padding:14px 0;break-inside:avoid}
.image img{border:1px solid #ccc;width:360px;height:auto;flex:none}
h2{font-size:16px;margin:0 0 6px} table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:right} th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left} .sw{display:inline-block;width:10px;height:10px;
margin-right:6px;border:1px solid #888;vertical-align:middle}
.band{display:inline-block;padding:2px 8px;border-radius:10px;font-weight:600;font-size:13px}
.b0{background:#d8f0d8}.b1{background:#fbe7b5}.b2{background:#f6c3b7}.b3{background:#e79a8f}
.small{color:#666;font-size:12px} .summary{margin-bottom:18px}
"""


def write_html(path: Path, summaries, classes: ClassTable, model, bands, title: str, source: str) -> Path:
    from datetime import UTC, datetime

    esc = html.escape
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)} — seepview report</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1><div class='meta'>{len(summaries)} image(s) · masks from "
        f"<b>{esc(source)}</b> · model <b>{esc(model or 'none')}</b> · severity bands (coverage of valid "
        f"area): {esc(', '.join(band_names(bands)))} · {now}</div>",
    ]
    parts.append(_summary_table(summaries, bands))
    for s in summaries:
        coverage = s.coverage()
        label = band_label(coverage, bands)
        index = min(3, band_index(coverage, bands))
        img = (
            f"<img alt='{esc(s.image_id)}' src='data:image/png;base64,"
            f"{base64.b64encode(s.thumbnail_png).decode('ascii')}'>"
            if s.thumbnail_png
            else ""
        )
        cov = "n/a" if coverage is None else f"{coverage:.2f} %"
        rows = []
        geo = s.area_m2 is not None
        for c in classes:
            if c.id == 0 or not s.counts[c.id]:
                continue
            pct = s.percent(c.id)
            m2 = f"<td>{float(s.area_m2[c.id]):,.0f}</td>" if geo else ""
            r, g, b, _a = c.rgba
            rows.append(
                f"<tr><td><span class='sw' style='background:rgb({r},{g},{b})'></span>{esc(c.name)}</td>"
                f"<td>{int(s.counts[c.id]):,}</td>{m2}"
                f"<td>{'' if pct is None else f'{pct:.2f}'}</td><td>{int(s.regions[c.id])}</td></tr>"
            )
        if not rows:
            rows.append(f"<tr><td colspan='{5 if geo else 4}'>no labelled regions</td></tr>")
        h, w = s.shape
        parts.append(
            f"<div class='image'>{img}<div><h2>{esc(s.image_id)}</h2>"
            f"<div>Severity: <span class='band b{index}'>{esc(label)}</span> "
            f"<span class='small'>coverage {cov} of valid area</span></div>"
            f"<div class='small'>{w}×{h} px · {esc(s.crs)} · review: {esc(s.status)} · valid "
            f"{100.0 * s.valid / max(1, h * w):.1f} % of pixels</div>"
            f"<table><tr><th>Class</th><th>Pixels</th>{'<th>m²</th>' if geo else ''}<th>% of valid</th>"
            "<th>Regions</th></tr>"
            + "".join(rows)
            + "</table></div></div>"
        )
    parts.append("<p class='small'>Written by seepview.</p></body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path



def _summary_table(summaries, bands) -> str:
    """One line per image: review status, coverage and band, so a long report reads at a glance."""
    esc = html.escape
    counts = [0] * (len(bands) + 1)
    rows = []
    for s in summaries:
        coverage = s.coverage()
        index = band_index(coverage, bands)
        counts[index] += coverage is not None
        cov = "n/a" if coverage is None else f"{coverage:.2f}"
        rows.append(
            f"<tr><td>{esc(s.image_id)}</td><td>{esc(s.status)}</td><td>{cov}</td>"
            f"<td><span class='band b{min(3, index)}'>{esc(band_label(coverage, bands))}</span></td></tr>"
        )
    tally = " · ".join(f"{name}: {n}" for name, n in zip(band_names(bands), counts))
    return (
        f"<div class='summary'><div class='small'>Images per band — {esc(tally)}</div>"
        "<table><tr><th>Image</th><th>Review</th><th>Coverage %</th><th>Severity</th></tr>"
        + "".join(rows)
        + "</table></div>"
    )
