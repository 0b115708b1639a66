"""Brush latency: one dab through ToolController -> LabelDocument -> canvas, until the frame is repainted.

For each image size the same stroke is painted twice in one run:
- ``dirty_rect``: the canvas as shipped (zero-copy overlay, only the dab's rectangle invalidated);
- ``naive``: the baseline that calls ``ImageItem.setImage`` on the whole overlay for every dab.
Both are timed at 1:1 zoom (one screen pixel per image pixel, where people paint) and at "fit" zoom
(whole image in view). A dab's time runs from the mouse-move handler to the end of the paint event
of the view (offscreen Qt platform: raster painting into the backing store, no compositor).

Also measured: time from an 8192² uint16 TIFF on disk to the first painted frame
(open_image -> read_all -> robust_window -> to_uint8 -> Canvas.set_image -> paint).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_SIZES = (2048, 8192, 16384)
VIEW_W, VIEW_H = 1280, 800


def add_arguments(parser) -> None:
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="square image sizes"
    )
    parser.add_argument("--dabs", type=int, default=150, help="dabs timed per case")
    parser.add_argument("--radius", type=int, default=12, help="brush radius in pixels")
    parser.add_argument("--no-open", action="store_true", help="skip the time-to-first-display measurement")


def _percentiles(times_s: list[float]) -> dict:
    ms = np.asarray(times_s) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "max_ms": round(float(ms.max()), 3),
        "n": int(ms.size),
    }


class _PaintCounter:
    """Counts paint events of a widget. Paint events are handled synchronously right after the
    filter sees them, so once ``processEvents()`` returns with a new count, the frame is painted."""

    def __init__(self, widget):
        from PySide6 import QtCore

        class Filter(QtCore.QObject):
            count = 0

            def eventFilter(self, obj, event):  # noqa: N802 (Qt API)
                if event.type() == QtCore.QEvent.Type.Paint:
                    self.count += 1
                return False

        self.filter = Filter()
        widget.installEventFilter(self.filter)

    @property
    def count(self) -> int:
        return self.filter.count

    def wait_frame(self, app, before: int, timeout_s: float = 5.0) -> bool:
        deadline = time.perf_counter() + timeout_s
        while self.count == before:
            app.processEvents()
            if time.perf_counter() > deadline:
                return False
        return True


def _synthetic(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured uint8 image and a label map with a few blobs (cheap to make at 16384²)."""
    ramp = np.arange(n, dtype=np.uint16)
    image = ((ramp[:, None] * 3 + ramp[None, :] * 5) % 251).astype(np.uint8)
    labels = np.zeros((n, n), np.uint8)
    for k in range(1, 6):
        y, x = (k * n) // 7, (k * n * 3 // 7) % n
        labels[y : y + n // 20, x : x + n // 16] = k
    return image, labels


def _stroke_points(n: int, count: int, step: int = 6) -> list[tuple[float, float]]:
    """Image (x, y) positions of a wavy horizontal stroke around the centre, ``step`` px apart."""
    cx, cy = n / 2, n / 2
    xs = cx - step * count / 2 + step * np.arange(count + 1)
    ys = cy + 40 * np.sin(np.arange(count + 1) / 15.0)
    return list(zip(xs.tolist(), ys.tolist()))


def _time_stroke(app, canvas, tools, counter, points) -> tuple[list[float], list[float], int]:
    """Time each dab from the move handler to the end of its repaint: wall and CPU time of this thread.

    On a shared machine the wall-clock tail is mostly waiting for a core (other processes); the CPU
    time says what the dab itself costs.
    """
    wall, cpu, missed = [], [], 0
    tools.press(*points[0])
    app.processEvents()
    for x, y in points[1:]:
        before = counter.count
        t0, c0 = time.perf_counter(), time.thread_time()
        tools.move(x, y)
        if not counter.wait_frame(app, before):
            missed += 1
            continue
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    tools.release()
    app.processEvents()
    return wall, cpu, missed


def _time_pan(app, canvas, counter, frames: int = 40) -> dict:
    """Full-viewport repaints: pan by a few pixels per frame (what dragging the view costs)."""
    wall = []
    for i in range(frames):
        before = counter.count
        t0 = time.perf_counter()
        canvas.view_box.translateBy(x=(-1) ** (i // 10) * 7.0, y=0.0)
        if counter.wait_frame(app, before):
            wall.append(time.perf_counter() - t0)
    return _percentiles(wall)


def _set_zoom(app, canvas, zoom: str, n: int) -> None:
    if zoom == "fit":
        canvas.fit()
    else:  # 1:1 around the stroke
        vw = canvas.viewport().width()
        vh = canvas.viewport().height()
        canvas.view_box.setRange(
            xRange=(n / 2 - vw / 2, n / 2 + vw / 2), yRange=(n / 2 - vh / 2, n / 2 + vh / 2), padding=0
        )
    for _ in range(3):
        app.processEvents()


def _bench_size(app, n: int, dabs: int, radius: int) -> dict:
    import pyqtgraph as pg

    from seepview.core.classes import ClassTable
    from seepview.core.history import LabelDocument
    from seepview.qt.canvas import Canvas
    from seepview.qt.tools import ToolController

    image, labels = _synthetic(n)
    lut = ClassTable.preset("sar-seep").lut()
    result: dict = {"size": n}
    for method in ("dirty_rect", "naive"):
        canvas = Canvas()
        canvas.resize(VIEW_W, VIEW_H)
        canvas.show()
        canvas.set_image(image)
        canvas.set_lut(lut)
        canvas.set_opacity(0.6)
        doc = LabelDocument(labels.copy())
        if method == "dirty_rect":
            canvas.set_document(doc)
        else:
            overlay = pg.ImageItem(axisOrder="row-major")
            overlay.setZValue(10)
            overlay.setOpacity(0.6)
            canvas.add_item(overlay)
            overlay.setImage(doc.labels, autoLevels=False, levels=None, lut=lut)
            doc.subscribe(
                lambda _bbox, o=overlay, d=doc: o.setImage(d.labels, autoLevels=False, levels=None, lut=lut)
            )
        tools = ToolController(canvas)
        tools.set_context(doc)
        tools.set_brush_radius(radius)
        counter = _PaintCounter(canvas.viewport())
        for zoom, cls in (("1:1", 2), ("fit", 3)):  # another class each pass, so every dab changes pixels
            tools.set_active_class(cls)
            _set_zoom(app, canvas, zoom, n)
            wall, cpu, missed = _time_stroke(app, canvas, tools, counter, _stroke_points(n, dabs))
            cpu_ms = np.asarray(cpu) * 1000.0
            if method == "dirty_rect":
                result[f"pan_frame_{zoom}"] = _time_pan(app, canvas, counter)
            result[f"{method}_{zoom}"] = {
                **_percentiles(wall),
                "cpu_p50_ms": round(float(np.percentile(cpu_ms, 50)), 3),
                "cpu_p95_ms": round(float(np.percentile(cpu_ms, 95)), 3),
                "missed_frames": missed,
            }
        # Sanity: the strokes really changed the document.
        result[f"{method}_changed_px"] = int(np.count_nonzero(doc.labels != labels))
        canvas.close()
        canvas.deleteLater()
        app.processEvents()
        del canvas, tools, doc
    for zoom in ("1:1", "fit"):
        for key in ("p50_ms", "p95_ms", "cpu_p95_ms"):
            naive, ours = result[f"naive_{zoom}"][key], result[f"dirty_rect_{zoom}"][key]
            result[f"speedup_{key.removesuffix('_ms')}_{zoom}"] = round(naive / max(ours, 1e-6), 1)
    return result


def _bench_open(app, n: int = 8192) -> dict:
    import tifffile

    from seepview.core.display import robust_window, to_uint8
    from seepview.core.imageio import open_image
    from seepview.qt.canvas import Canvas

    rng = np.random.default_rng(0)
    data = (rng.gamma(2.0, 400.0, size=(n // 8, n // 8)).astype(np.uint16)).repeat(8, 0).repeat(8, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.tif"
        tifffile.imwrite(path, data, tile=(512, 512), compression="zlib")
        del data
        canvas = Canvas()
        canvas.resize(VIEW_W, VIEW_H)
        canvas.show()
        app.processEvents()
        counter = _PaintCounter(canvas.viewport())
        t0 = time.perf_counter()
        source = open_image(path)
        raw = source.read_all()
        t_read = time.perf_counter()
        window = robust_window(source)
        u8 = to_uint8(raw, window)
        t_u8 = time.perf_counter()
        before = counter.count
        canvas.set_image(u8)
        counter.wait_frame(app, before)
        t_shown = time.perf_counter()
        canvas.close()
        canvas.deleteLater()
        app.processEvents()
    return {
        "size": n,
        "read_ms": round((t_read - t0) * 1000, 1),
        "to_uint8_ms": round((t_u8 - t_read) * 1000, 1),
        "set_image_and_first_paint_ms": round((t_shown - t_u8) * 1000, 1),
        "total_ms": round((t_shown - t0) * 1000, 1),
        "file": "uint16, 512² tiles, zlib",
    }


def run(args) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    load = os.getloadavg()
    out = {
        "viewport": [VIEW_W, VIEW_H],
        "radius": args.radius,
        "qt_platform": os.environ.get("QT_QPA_PLATFORM"),
        "loadavg_before": [round(v, 2) for v in load],
        "cases": [_bench_size(app, n, args.dabs, args.radius) for n in args.sizes],
    }
    if not args.no_open:
        out["open_to_first_display"] = _bench_open(app)
    out["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    return out
