"""Brush latency: press, move (one dab) and release, each timed until the frame is repainted.

For each image size the same strokes are painted, in one run, three ways:

- ``incremental``: the app as shipped: the canvas's zero-copy overlay with only the dab's rectangle
  invalidated, and a ``ReviewSession`` whose autosave journal is written by its background writer (the
  next press waits for it, so a kill still loses only the stroke in progress);
- ``sync_journal``: the same, but the journal entry is compressed and fsynced on the GUI thread at release
  (the behaviour before issue 14): the baseline for the release time;
- ``naive``: what a naive implementation does per dab: render the whole label map to RGBA through the
  class LUT and upload it (``ImageItem.setImage`` of the RGBA array): the baseline for the move time.

Moves are timed at 1:1 zoom (one screen pixel per image pixel, where people paint) and at "fit" zoom
(whole image in view); presses and releases at 1:1. Each time runs from the mouse handler to the end of the
view's paint event (offscreen Qt platform: raster painting into the backing store, no compositor).
Strokes are long (``--dabs`` dabs ``--step`` px apart), so releases journal large boxes, and ``--gap-ms``
apart (a hand lifting the pen; the press after it waits for the previous stroke's journal write, which a gap
of a few milliseconds already covers). A release changes no pixel, so no repaint follows: it is timed to the
end of the events it posts, i.e. until the GUI thread is free for the next frame.

Also measured: time from an 8192² uint16 TIFF on disk to the first painted frame
(open_image -> read_all -> robust_window -> to_uint8 -> Canvas.set_image -> paint).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_SIZES = (2048, 8192)
VIEW_W, VIEW_H = 1280, 800


def add_arguments(parser) -> None:
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="square image sizes"
    )
    parser.add_argument("--strokes", type=int, default=16, help="strokes per case (press/release samples)")
    parser.add_argument("--dabs", type=int, default=40, help="dabs (mouse moves) per stroke")
    parser.add_argument("--step", type=int, default=12, help="pixels between dabs (a long, fast stroke)")
    parser.add_argument("--naive-strokes", type=int, default=1,
                        help="strokes of the naive baseline (each dab renders the whole image: slow)")
    parser.add_argument("--naive-dabs", type=int, default=12, help="dabs per naive stroke")
    parser.add_argument("--gap-ms", type=int, default=150,
                        help="idle time between a release and the next press (a hand lifting the pen)")
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


def _stroke_points(n: int, count: int, step: int, row: int) -> list[tuple[float, float]]:
    """Image (x, y) positions of a wavy horizontal stroke near the centre, ``step`` px apart; ``row``
    shifts each stroke down so every dab changes pixels."""
    cx, cy = n / 2, n / 2 - 200 + 26 * row
    xs = cx - step * count / 2 + step * np.arange(count + 1)
    ys = cy + 12 * np.sin(np.arange(count + 1) / 6.0)
    return list(zip(xs.tolist(), ys.tolist()))


def _timed(app, counter, action, frame: bool = True) -> tuple[float, float] | None:
    """(wall, thread CPU) seconds of ``action()`` up to the end of the repaint it causes (None if no frame
    came); with ``frame=False`` (a release changes no pixel, so no repaint follows) up to the end of the
    events it posted, i.e. until the GUI thread is free for the next frame."""
    before = counter.count
    t0, c0 = time.perf_counter(), time.thread_time()
    action()
    if not frame:
        app.processEvents()
    elif not counter.wait_frame(app, before):
        return None
    return time.perf_counter() - t0, time.thread_time() - c0


def _idle(app, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)


def _stats(samples: list[tuple[float, float]]) -> dict:
    if not samples:
        return {"n": 0}
    out = _percentiles([w for w, _ in samples])
    cpu = np.asarray([c for _, c in samples]) * 1000.0
    out["cpu_p95_ms"] = round(float(np.percentile(cpu, 95)), 3)
    return out


def _paint(app, canvas, tools, counter, n, strokes, dabs, step, zoom, row0=0, gap_s=0.15) -> dict:
    """Paint ``strokes`` strokes; time every press, move and release separately."""
    press, move, release, missed = [], [], [], 0
    _set_zoom(app, canvas, zoom, n)
    for k in range(strokes):
        pts = _stroke_points(n, dabs, step, row0 + k)
        tools.set_active_class(2 + (row0 + k) % 5)
        _idle(app, gap_s)
        t = _timed(app, counter, lambda p=pts[0]: tools.press(*p))
        press += [t] if t else []
        for x, y in pts[1:]:
            t = _timed(app, counter, lambda x=x, y=y: tools.move(x, y))
            if t is None:
                missed += 1
            else:
                move.append(t)
        t = _timed(app, counter, tools.release, frame=False)
        release += [t] if t else []
    return {"press": _stats(press), "move": _stats(move), "release": _stats(release), "missed_frames": missed}


def _set_zoom(app, canvas, zoom: str, n: int) -> None:
    if zoom == "fit":
        canvas.fit()
    else:  # 1:1 around the strokes
        vw = canvas.viewport().width()
        vh = canvas.viewport().height()
        canvas.view_box.setRange(
            xRange=(n / 2 - vw / 2, n / 2 + vw / 2), yRange=(n / 2 - vh / 2, n / 2 + vh / 2), padding=0
        )
    for _ in range(3):
        app.processEvents()


def _session(folder: Path, image: np.ndarray):
    """A real project and review session on ``image`` (journal in ``folder``), as the app has them."""
    import tifffile

    from seepview.core.project import Project
    from seepview.core.session import ReviewSession

    tifffile.imwrite(folder / "scene.tif", image)
    project = Project.create(folder / "project", "sar-seep")
    project.add_image(folder / "scene.tif")
    session = ReviewSession(project, load_model=False)
    return session, session.open(project.entries[0].id)


def _bench_size(app, n: int, args) -> dict:
    import pyqtgraph as pg

    from seepview.core.classes import ClassTable
    from seepview.qt.canvas import Canvas
    from seepview.qt.tools import ToolController

    image, labels = _synthetic(n)
    lut = ClassTable.preset("sar-seep").lut()
    result: dict = {"size": n, "dabs_per_stroke": args.dabs, "step_px": args.step, "gap_ms": args.gap_ms}
    for method in ("incremental", "sync_journal", "naive"):
        with tempfile.TemporaryDirectory(dir=os.environ.get("SEEPVIEW_BENCH_TMP")) as tmp:
            session, opened = _session(Path(tmp), image)
            doc = opened.document
            doc.replace_all(labels.copy())
            session.flush_journal()
            if method == "sync_journal":  # the pre-issue-14 path: compress + fsync on the GUI thread
                slot = session._docs[opened.entry.id]
                slot.journal.submit = slot.journal.append
            canvas = Canvas()
            canvas.resize(VIEW_W, VIEW_H)
            canvas.show()
            canvas.set_image(opened.display_u8)
            canvas.set_lut(lut)
            canvas.set_opacity(0.6)
            if method == "naive":
                overlay = pg.ImageItem(axisOrder="row-major")
                overlay.setZValue(10)
                overlay.setOpacity(0.6)
                canvas.add_item(overlay)
                overlay.setImage(lut[doc.labels], autoLevels=False)
                # Per dab: the whole label map through the LUT to RGBA, then uploaded.
                doc.subscribe(lambda _bbox, o=overlay, d=doc: o.setImage(lut[d.labels], autoLevels=False))
            else:
                canvas.set_document(doc)
            tools = ToolController(canvas)
            tools.set_context(doc)
            tools.set_brush_radius(args.radius)
            counter = _PaintCounter(canvas.viewport())
            strokes = args.naive_strokes if method == "naive" else args.strokes
            dabs = args.naive_dabs if method == "naive" else args.dabs
            gap = args.gap_ms / 1000.0
            case = {"1:1": _paint(app, canvas, tools, counter, n, strokes, dabs, args.step, "1:1", gap_s=gap)}
            if method != "sync_journal":
                case["fit"] = _paint(app, canvas, tools, counter, n, max(1, strokes // 4), dabs, args.step,
                                     "fit", row0=strokes, gap_s=gap)
            session.flush_journal()
            case["changed_px"] = int(np.count_nonzero(doc.labels != labels))  # the strokes really painted
            case["journal_entries"] = len(session._docs[opened.entry.id].journal)
            result[method] = case
            canvas.close()
            canvas.deleteLater()
            app.processEvents()
            del canvas, tools, doc, session, opened
    inc, sync, naive = result["incremental"]["1:1"], result["sync_journal"]["1:1"], result["naive"]["1:1"]
    for key in ("p50_ms", "p95_ms"):
        result[f"move_speedup_vs_naive_{key.removesuffix('_ms')}_1:1"] = round(
            naive["move"][key] / max(inc["move"][key], 1e-6), 1)
        result[f"move_speedup_vs_naive_{key.removesuffix('_ms')}_fit"] = round(
            result["naive"]["fit"]["move"][key] / max(result["incremental"]["fit"]["move"][key], 1e-6), 1)
        result[f"release_speedup_vs_sync_journal_{key.removesuffix('_ms')}"] = round(
            sync["release"][key] / max(inc["release"][key], 1e-6), 1)
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
        "cases": [_bench_size(app, n, args) for n in args.sizes],
    }
    if not args.no_open:
        out["open_to_first_display"] = _bench_open(app)
    out["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    return out
