"""Mouse and key events on the canvas -> ``seepview.core.editing`` operations on a ``LabelDocument``.

Only the left button belongs to the tools. Middle/right drags and space + left drag reach the
canvas' view box untouched, so panning works whatever tool is active. A brush or eraser stroke
(press ... release) is one undo step: ``begin_stroke`` on press, ``end_stroke`` on release, and
Escape aborts it. Consecutive mouse positions are joined by capsules so fast strokes leave no gaps.
"""

from __future__ import annotations

import math

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from seepview.core import editing
from seepview.core.classes import IGNORE
from seepview.core.history import LabelDocument
from seepview.qt.canvas import Canvas
from seepview.qt.workers import WorkerSet

TOOLS = ("brush", "eraser", "fill", "polygon", "picker", "accept", "reject")
MIN_RADIUS, MAX_RADIUS = 0, 512

_LEFT = QtCore.Qt.MouseButton.LeftButton
_EV = QtCore.QEvent.Type


class ToolController(QtCore.QObject):
    """Turns left-button gestures on a Canvas into edits of the current document."""

    class_picked = QtCore.Signal(int)
    brush_radius_changed = QtCore.Signal(int)
    tool_changed = QtCore.Signal(str)
    fill_finished = QtCore.Signal()  # a background fill ended (applied or dropped)

    sync_fill_pixels = 4_000_000  # fills on bigger label maps run in a worker thread

    def __init__(self, canvas: Canvas, parent: QtCore.QObject | None = None):
        super().__init__(parent if parent is not None else canvas)
        self._canvas = canvas
        self._tool = "brush"
        self._active = 1
        self._radius = 5
        self._preserve = False
        self._tolerance: float | None = None
        self._document: LabelDocument | None = None
        self._image_data: np.ndarray | None = None
        self._prediction: np.ndarray | None = None
        self._nodata: np.ndarray | None = None  # no class is ever painted there (core.editing)
        self._last: tuple[int, int] | None = None  # last (row, col) of the brush stroke in progress
        self._polygon: list[tuple[float, float]] = []  # vertices in scene (x, y)
        self._rubber: tuple[float, float] | None = None
        self._fill_pending: tuple[LabelDocument, int] | None = None
        self._workers = WorkerSet(self)

        pen = QtGui.QPen(QtGui.QColor(255, 255, 0), 1.5, QtCore.Qt.PenStyle.DashLine)
        pen.setCosmetic(True)
        self._polygon_item = QtWidgets.QGraphicsPathItem()
        self._polygon_item.setPen(pen)
        canvas.add_item(self._polygon_item)

        # Compare against these wrappers in eventFilter: asking the canvas for its viewport while
        # Qt is destroying it (events still arrive then) would touch a half-deleted object.
        self._viewport = canvas.viewport()
        self._view = canvas.view
        self._viewport.installEventFilter(self)
        self._view.installEventFilter(self)
        self._update_cursor()

    # --- settings -------------------------------------------------------------------------------
    @property
    def tool(self) -> str:
        return self._tool

    def set_tool(self, name: str) -> None:
        if name not in TOOLS:
            raise ValueError(f"unknown tool {name!r}; choose from {', '.join(TOOLS)}")
        if name == self._tool:
            return
        self.cancel()
        self._tool = name
        self._update_cursor()
        self.tool_changed.emit(name)

    @property
    def active_class(self) -> int:
        return self._active

    def set_active_class(self, class_id: int) -> None:
        class_id = int(class_id)
        if not 0 <= class_id <= 255:
            raise ValueError(f"class id {class_id} is not in 0..255")
        self._active = class_id

    @property
    def brush_radius(self) -> int:
        return self._radius

    def set_brush_radius(self, radius: int) -> None:
        radius = int(np.clip(int(radius), MIN_RADIUS, MAX_RADIUS))
        if radius == self._radius:
            return
        self._radius = radius
        self._update_cursor()
        self.brush_radius_changed.emit(radius)

    def grow_brush(self, steps: int) -> None:
        """``[`` / ``]``: change the radius by about 10 % per step (at least one pixel)."""
        self.set_brush_radius(self._radius + int(steps) * max(1, round(self._radius * 0.1)))

    @property
    def preserve_labels(self) -> bool:
        return self._preserve

    def set_preserve_labels(self, preserve: bool) -> None:
        self._preserve = bool(preserve)

    def set_fill_tolerance(self, tolerance: float | None) -> None:
        """Bound the fill by raw image intensity within ``tolerance`` of the clicked pixel (None: off)."""
        self._tolerance = None if tolerance is None else float(tolerance)

    def set_context(
        self,
        document: LabelDocument | None,
        image_data: np.ndarray | None = None,
        prediction: np.ndarray | None = None,
        nodata: np.ndarray | None = None,
    ) -> None:
        """What the tools edit: the document, the raw image (tolerance fill), the prediction and the
        image's no-data mask."""
        self.finish()
        self.cancel()
        self._document = document
        self._image_data = image_data
        self._prediction = prediction
        self._nodata = nodata

    # --- actions --------------------------------------------------------------------------------
    def accept_all(self) -> bool:
        """Accept the whole prediction into the labels as one undo step (key A)."""
        doc, pred = self._document, self._prediction
        if doc is None or pred is None or doc.in_stroke:
            return False
        return editing.apply(doc, editing.accept_prediction(doc.labels, pred, self._preserve, self._nodata))

    def cancel(self) -> None:
        """Escape: abort the stroke in progress and drop the polygon being drawn."""
        if self._last is not None and self._document is not None:
            self._document.abort_stroke()
        self._last = None
        self._polygon = []
        self._rubber = None
        self._draw_polygon()

    def finish(self) -> None:
        """Commit a stroke in progress (e.g. before switching images)."""
        if self._last is not None and self._document is not None:
            self._document.end_stroke()
        self._last = None

    @property
    def stroking(self) -> bool:
        return self._last is not None

    @property
    def polygon_vertices(self) -> list[tuple[float, float]]:
        """The polygon being drawn, as (row, col) pixel coordinates."""
        return [(y - 0.5, x - 0.5) for x, y in self._polygon]

    # --- gestures (image coordinates x, y as floats; also usable without a mouse) ---------------
    def press(self, x: float, y: float) -> None:
        doc = self._document
        if doc is None or doc.in_stroke or self.busy:
            return
        row, col = math.floor(y), math.floor(x)
        tool = self._tool
        if tool in ("brush", "eraser"):
            doc.begin_stroke()
            self._last = (row, col)
            doc.apply(self._dab((row, col), None))
        elif tool == "fill":
            self._fill(doc, row, col)
        elif tool == "polygon":
            self._polygon.append((x, y))
            self._draw_polygon()
        elif tool == "picker":
            value = editing.pick(doc.labels, (row, col))
            if value is not None and value != IGNORE:
                self._active = value
                self.class_picked.emit(value)
        elif tool in ("accept", "reject") and self._prediction is not None:
            op = editing.accept_component if tool == "accept" else editing.reject_component
            kwargs = {"preserve": self._preserve, "nodata": self._nodata} if tool == "accept" else {}
            editing.apply(doc, op(doc.labels, self._prediction, (row, col), **kwargs))

    def move(self, x: float, y: float) -> None:
        if self._last is not None and self._document is not None and not self._document.in_stroke:
            self._last = None  # the stroke was ended elsewhere (Ctrl+Z mid-drag): stop painting
        if self._last is not None and self._document is not None:
            p = (math.floor(y), math.floor(x))
            if p == self._last:
                return
            # Split long jumps so each atom's box stays close to the capsule (less memory, less work).
            dy, dx = p[0] - self._last[0], p[1] - self._last[1]
            pieces = max(1, math.ceil(math.hypot(dy, dx) / max(4 * self._radius, 16)))
            start = self._last
            for i in range(1, pieces + 1):
                end = (self._last[0] + round(dy * i / pieces), self._last[1] + round(dx * i / pieces))
                self._document.apply(self._dab(start, end))
                start = end
            self._last = p
        elif self._polygon:
            self._rubber = (x, y)
            self._draw_polygon()

    def release(self) -> None:
        if self._last is not None and self._document is not None:
            self._document.end_stroke()
        self._last = None

    def close_polygon(self) -> bool:
        """Fill the polygon drawn so far (double-click or Enter); True if labels changed."""
        vertices = self.polygon_vertices
        self._polygon = []
        self._rubber = None
        self._draw_polygon()
        doc = self._document
        if doc is None or len(vertices) < 3:
            return False
        return editing.apply(
            doc, editing.fill_polygon(doc.labels, vertices, self._active, self._preserve, self._active, self._nodata)
        )

    def _fill(self, doc: LabelDocument, row: int, col: int) -> None:
        """Flood fill; on big images in a worker thread (skimage's flood releases the GIL), so a
        fill of a 64-Mpx region does not freeze the window for seconds."""
        kwargs = {
            "image": self._image_data if self._tolerance is not None else None,
            "tolerance": self._tolerance,
            "preserve": self._preserve,
            "active": self._active,
            "nodata": self._nodata,
        }
        if doc.labels.size <= self.sync_fill_pixels:
            editing.apply(doc, editing.flood_fill(doc.labels, (row, col), self._active, **kwargs))
            return
        # Edits are blocked until it returns (see press); the result is dropped if the labels
        # changed meanwhile (undo from the keyboard, another image).
        self._fill_pending = (doc, doc.history.state_id)
        QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.BusyCursor)
        self._workers.start_function(
            editing.flood_fill,
            doc.labels,
            (row, col),
            self._active,
            on_returned=self._fill_done,
            on_finished=self._fill_finished,
            **kwargs,
        )

    def _fill_done(self, atom) -> None:
        doc, state = self._fill_pending or (None, None)
        if doc is not None and doc is self._document and doc.history.state_id == state and not doc.in_stroke:
            editing.apply(doc, atom)

    def _fill_finished(self) -> None:
        self._fill_pending = None
        QtWidgets.QApplication.restoreOverrideCursor()
        self.fill_finished.emit()

    @property
    def busy(self) -> bool:
        """A background fill is running; clicks are ignored until it is done."""
        return self._fill_pending is not None

    def _dab(self, p0, p1):
        value = editing.ERASE if self._tool == "eraser" else self._active
        return editing.paint_disk(
            self._document.labels, p0, p1, self._radius, value, self._preserve, active=self._active,
            nodata=self._nodata,
        )

    # --- Qt plumbing ----------------------------------------------------------------------------
    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        etype = event.type()
        if obj is self._viewport:
            if etype == _EV.MouseButtonPress and event.button() == _LEFT:
                if self._canvas.space_held:
                    return False  # space + left drag pans
                x, y = self._canvas.image_pos_at(event.position())
                self.press(x, y)
                return True
            if etype == _EV.MouseMove:
                if self._last is not None or self._polygon:
                    x, y = self._canvas.image_pos_at(event.position())
                    self.move(x, y)
                return False  # the canvas still tracks the hover position and brush cursor
            if etype == _EV.MouseButtonRelease and event.button() == _LEFT:
                if self._last is not None:
                    self.release()
                    return True
                return not self._canvas.space_held
            if etype == _EV.MouseButtonDblClick and event.button() == _LEFT:
                if self._tool == "polygon":
                    self.close_polygon()
                return True
        elif obj is self._view and etype in (_EV.ShortcutOverride, _EV.KeyPress):
            key = event.key()
            busy = self._last is not None or bool(self._polygon)
            closing = bool(self._polygon) and key in (QtCore.Qt.Key.Key_Return, QtCore.Qt.Key.Key_Enter)
            if (busy and key == QtCore.Qt.Key.Key_Escape) or closing:
                if etype == _EV.ShortcutOverride:
                    event.accept()  # claim the key from window shortcuts (Enter = mark reviewed)
                elif closing:
                    self.close_polygon()
                else:
                    self.cancel()
                return True
        return False

    def _update_cursor(self) -> None:
        self._canvas.set_brush_cursor(self._radius if self._tool in ("brush", "eraser") else None)

    def _draw_polygon(self) -> None:
        path = QtGui.QPainterPath()
        points = self._polygon + ([self._rubber] if self._rubber is not None and self._polygon else [])
        if points:
            path.moveTo(*points[0])
            for p in points[1:]:
                path.lineTo(*p)
            if len(points) > 2:
                path.lineTo(*points[0])
        self._polygon_item.setPath(path)
