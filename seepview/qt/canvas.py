"""The image view: a uint8 image, a uint8 class-map overlay, prediction layers, pan/zoom, brush cursor.

Speed comes from pyqtgraph's fast path and from never re-rendering the overlay per dab:
- every layer is a ``uint8`` row-major array shown with ``levels=None`` (and a <= 256 entry RGBA LUT
  for class maps), which pyqtgraph turns into a QImage that *wraps the array without a copy*
  (Grayscale8 / RGB888 / Indexed8 with a colour table);
- the label overlay wraps ``LabelDocument.labels`` itself, which the document edits in place. A
  dab therefore only has to invalidate its dirty rectangle (``QGraphicsItem.update(rect)``); the
  view (MinimalViewportUpdate) repaints just that part of the screen. Nothing is converted or
  copied, whatever the image size (8192², 16384²).
  If a binding ever made pyqtgraph copy instead of wrap, the canvas notices (the QImage no longer
  points at the labels) and falls back to re-rendering the overlay, which is slow but correct.

Axis order is set per ImageItem (``axisOrder="row-major"``), not through pyqtgraph's global config.
The y axis points down as in image viewers. Scene/view coordinates: pixel (row r, col c) covers
``x in [c, c+1), y in [r, r+1)``.

Mouse: wheel zooms about the cursor; middle or right drag, or space + left drag, pans. Left-button
events are left to a tool controller (``seepview.qt.tools``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets  # PySide6 before pyqtgraph: pyqtgraph picks this binding

import pyqtgraph as pg  # isort: skip
import shiboken6  # isort: skip

from skimage.measure import find_contours

from seepview.core.history import LabelDocument
from seepview.qt.workers import WorkerSet

log = logging.getLogger(__name__)

MODES = ("labels", "prediction", "outlines", "confidence", "uncertainty")
Z_IMAGE, Z_LABELS, Z_PREDICTION, Z_OUTLINES, Z_TOOL = 0, 10, 20, 30, 100
OUTLINE_TILE = 512
OUTLINE_WIDTH = 1.5  # screen pixels


def outline_paths(prediction: np.ndarray, tile: int = OUTLINE_TILE) -> list[tuple[int, QtGui.QPainterPath]]:
    """Vector outlines of the predicted regions: (class id, path in image coordinates) per tile and class.

    Vector paths drawn with a cosmetic pen stay one screen pixel wide at any zoom, where a raster
    outline would vanish when a 8192² image is zoomed out. Contours are traced per tile that holds
    predictions (marching squares on the tile plus one shared row/column, zero-padded at the image
    edge), so sparse predictions cost little and each item has a small bounding box for culling.
    """
    h, w = prediction.shape
    out = []
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            y1, x1 = min(ty + tile + 1, h), min(tx + tile + 1, w)
            block = prediction[ty:y1, tx:x1]
            counts = np.bincount(block.ravel(), minlength=256)  # much faster than np.unique on uint8
            counts[[0, 255]] = 0
            present = np.flatnonzero(counts)
            for cls in present:
                hit = block == cls
                rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
                # Crop to the class's box plus a margin of one (background) pixel inside the block.
                r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, hit.shape[0])
                c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, hit.shape[1])
                top, bottom = ty + r0 == 0, ty + r1 == h  # image edges: pad so contours close
                left, right = tx + c0 == 0, tx + c1 == w
                mask = np.pad(hit[r0:r1, c0:c1], ((int(top), int(bottom)), (int(left), int(right))))
                mask = mask.view(np.uint8)
                oy, ox = ty + r0 - int(top), tx + c0 - int(left)
                contours = find_contours(mask, 0.5)
                if not contours:
                    continue
                # One path per tile and class; NaN rows break the line between contours.
                gap = np.full((1, 2), np.nan)
                points = np.concatenate([part for c in contours for part in (c, gap)])
                ys = points[:, 0] + (oy + 0.5)  # pixel centre (r, c) is at (c + 0.5, r + 0.5)
                xs = points[:, 1] + (ox + 0.5)
                out.append((int(cls), pg.arrayToQPath(xs, ys, connect="finite")))
    return out


def confidence_lut() -> np.ndarray:
    """A (256, 4) heat-map LUT for confidence 0..255 (inferno: dark = unsure, bright = sure)."""
    lut = pg.colormap.get("inferno").getLookupTable(0.0, 1.0, 256, alpha=True, mode="byte")
    return np.ascontiguousarray(lut, dtype=np.uint8)


def uncertainty_lut() -> np.ndarray:
    """A (256, 4) LUT for uncertainty 0..255: viridis, transparent where the model is sure, so the image
    shows through and only the doubtful areas are coloured."""
    lut = pg.colormap.get("viridis").getLookupTable(0.0, 1.0, 256, alpha=True, mode="byte")
    lut = np.ascontiguousarray(lut, dtype=np.uint8)
    lut[:, 3] = np.clip(np.arange(256) * 2, 0, 255)
    return lut


def _aliases(item: pg.ImageItem, array: np.ndarray) -> bool:
    """Whether the item's rendered QImage points at ``array``'s memory (no copy was made)."""
    qimage = item.qimage
    if qimage is None:
        return True  # not rendered yet: it will be built from the array's current values
    try:
        address = np.frombuffer(qimage.constBits(), dtype=np.uint8, count=1).ctypes.data
    except (TypeError, ValueError):
        return False
    return address == array.ctypes.data


class _ViewBox(pg.ViewBox):
    """A ViewBox that pans with middle/right drag or space + left drag, and leaves plain left to tools."""

    def __init__(self, space_held):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self._space_held = space_held

    def mouseDragEvent(self, ev, axis=None):
        buttons = (QtCore.Qt.MouseButton.MiddleButton, QtCore.Qt.MouseButton.RightButton)
        if not (
            ev.button() in buttons or (ev.button() == QtCore.Qt.MouseButton.LeftButton and self._space_held())
        ):
            ev.ignore()
            return
        ev.accept()
        inverse = pg.functions.invertQTransform(self.childGroup.transform())
        delta = inverse.map(ev.lastPos()) - inverse.map(ev.pos())
        self.translateBy(x=delta.x(), y=delta.y())
        self.sigRangeChangedManually.emit(self.state["mouseEnabled"])

    def mouseClickEvent(self, ev):
        ev.accept()  # no context menu, no auto-range on right click


class Canvas(QtWidgets.QWidget):
    """Shows one image with its label document, prediction layers and the brush cursor."""

    hovered = QtCore.Signal(int, int)  # pixel (x, y) under the mouse; (-1, -1) outside the image
    outlines_ready = QtCore.Signal()  # prediction outlines were traced and added

    sync_outline_pixels = 4_000_000  # outlines of bigger predictions are traced in a worker thread

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.view = pg.GraphicsView(self, useOpenGL=False, background=(40, 40, 40))
        self.view.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
        self.view.setMouseTracking(True)
        self.view_box = _ViewBox(lambda: self._space_held)
        self.view_box.disableAutoRange()
        self.view.setCentralItem(self.view_box)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)

        self._image_item = self._add_layer(Z_IMAGE)
        self._labels_item = self._add_layer(Z_LABELS)
        self._prediction_item = self._add_layer(Z_PREDICTION)

        self._image: np.ndarray | None = None
        self._document: LabelDocument | None = None
        self._unsubscribe = None
        self._prediction: np.ndarray | None = None
        self._confidence: np.ndarray | None = None
        self._uncertainty: np.ndarray | None = None
        self._outline_items: list[tuple[int, QtWidgets.QGraphicsPathItem]] | None = None
        self._outlines_for: np.ndarray | None = None  # the prediction being (or last) traced
        self._workers = WorkerSet(self)
        self._lut = np.zeros((256, 4), np.uint8)
        self._confidence_lut = confidence_lut()
        self._uncertainty_lut = uncertainty_lut()
        self._mode = "labels"
        self._opacity = 0.6
        self._space_held = False
        self._last_hover = (-1, -1)
        self._fallback_warned = False

        self._cursor_items = []
        for color, width in (((0, 0, 0, 200), 3), ((255, 255, 255, 230), 1)):
            pen = QtGui.QPen(QtGui.QColor(*color), width)
            pen.setCosmetic(True)
            ellipse = QtWidgets.QGraphicsEllipseItem()
            ellipse.setPen(pen)
            ellipse.setZValue(Z_TOOL)
            ellipse.setVisible(False)
            self.view_box.addItem(ellipse, ignoreBounds=True)
            self._cursor_items.append(ellipse)
        self._brush_radius: float | None = None
        self._cursor_pixel: tuple[int, int] | None = None

        self._viewport = self.view.viewport()
        self._viewport.installEventFilter(self)
        self.view.installEventFilter(self)
        self.view.viewport().setCursor(QtCore.Qt.CursorShape.CrossCursor)
        self._apply_mode()

    def _add_layer(self, z: int) -> pg.ImageItem:
        item = pg.ImageItem(axisOrder="row-major")
        item.setZValue(z)
        self.view_box.addItem(item)
        return item

    # --- data -----------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int] | None:
        if self._image is not None:
            return self._image.shape[:2]  # type: ignore[return-value]
        if self._document is not None:
            return self._document.shape
        return None

    def set_image(self, image: np.ndarray | None) -> None:
        """Show a display-ready uint8 image, (H, W) grey or (H, W, 3) RGB. The array is wrapped, not copied."""
        if image is None:
            self._image = None
            self._image_item.clear()
            return
        image = np.asarray(image)
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(
                f"the canvas shows uint8 (H, W) or (H, W, 3) images, got {image.dtype} {image.shape}"
            )
        image = np.ascontiguousarray(image)
        old_shape = self.image_shape if self._image is not None else None
        self._image = image
        self._image_item.setImage(image, autoLevels=False, levels=None, lut=None)
        h, w = image.shape[:2]
        self.view_box.setLimits(minXRange=4, minYRange=4, maxXRange=8 * max(h, w), maxYRange=8 * max(h, w))
        if old_shape != (h, w):
            self.fit()

    def set_document(self, document: LabelDocument | None) -> None:
        """Show ``document``'s labels and follow its changes (dirty rectangles only)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._document = document
        if document is None:
            self._labels_item.clear()
            return
        self._labels_item.setImage(document.labels, autoLevels=False, levels=None, lut=self._lut)
        self._unsubscribe = document.subscribe(self._on_labels_changed)
        if self._image is None:
            self.fit()

    @property
    def document(self) -> LabelDocument | None:
        return self._document

    def set_prediction(
        self, labels: np.ndarray | None, confidence: np.ndarray | None = None, uncertainty: np.ndarray | None = None
    ) -> None:
        """Prediction layers (uint8 class map, confidence, uncertainty); shown by the matching mode."""
        for name, arr in (("prediction", labels), ("confidence", confidence), ("uncertainty", uncertainty)):
            if arr is not None and (arr.dtype != np.uint8 or arr.ndim != 2):
                raise ValueError(f"{name} must be a 2-D uint8 array, got {arr.dtype} {arr.shape}")
        self._prediction = None if labels is None else np.ascontiguousarray(labels)
        self._confidence = None if confidence is None else np.ascontiguousarray(confidence)
        self._uncertainty = None if uncertainty is None else np.ascontiguousarray(uncertainty)
        self._clear_outlines()
        self._apply_mode()

    def set_lut(self, lut: np.ndarray) -> None:
        """The class colours, (256, 4) uint8 RGBA (``ClassTable.lut()``); applied at once."""
        lut = np.asarray(lut, dtype=np.uint8)
        if lut.shape != (256, 4):
            raise ValueError(f"a class LUT is (256, 4) uint8 RGBA, got {lut.shape}")
        self._lut = np.ascontiguousarray(lut)
        if self._document is not None:
            self._labels_item.setLookupTable(self._lut)
        self._apply_mode()

    def set_mode(self, mode: str) -> None:
        """ "labels", "prediction", "outlines" (labels + prediction outlines) or "confidence"."""
        if mode not in MODES:
            raise ValueError(f"unknown display mode {mode!r}; choose from {', '.join(MODES)}")
        self._mode = mode
        self._apply_mode()

    @property
    def mode(self) -> str:
        return self._mode

    def set_opacity(self, opacity: float) -> None:
        """Overlay opacity 0..1 (item opacity: the LUT and the QImage stay as they are)."""
        self._opacity = float(np.clip(opacity, 0.0, 1.0))
        self._apply_mode()

    def _clear_outlines(self) -> None:
        for _, item in self._outline_items or []:
            self.view_box.removeItem(item)
        self._outline_items = None
        self._outlines_for = None

    def _show_outlines(self, show: bool) -> None:
        prediction = self._prediction
        if (
            show
            and self._outline_items is None
            and prediction is not None
            and self._outlines_for is not prediction
        ):
            self._outlines_for = prediction
            if prediction.size <= self.sync_outline_pixels:
                self._add_outlines(prediction, outline_paths(prediction))
            else:  # ~1 s on 8192²: trace in a worker, the window stays responsive meanwhile
                self._workers.start_function(
                    outline_paths,
                    prediction,
                    on_returned=lambda paths, p=prediction: self._add_outlines(p, paths),
                )
        for cls, item in self._outline_items or []:
            r, g, b, a = (int(v) for v in self._lut[cls])
            pen = QtGui.QPen(QtGui.QColor(r, g, b, 255 if a else 0), OUTLINE_WIDTH)
            pen.setCosmetic(True)
            item.setPen(pen)
            item.setVisible(show and a > 0)

    def _add_outlines(self, prediction: np.ndarray, paths) -> None:
        if prediction is not self._prediction or not shiboken6.isValid(self.view_box):
            return  # a newer prediction arrived while these were traced
        self._clear_outlines()
        self._outline_items = []
        for cls, path in paths:
            item = QtWidgets.QGraphicsPathItem(path)
            item.setZValue(Z_OUTLINES)
            self.view_box.addItem(item, ignoreBounds=True)
            self._outline_items.append((cls, item))
        self._show_outlines(self._mode == "outlines")
        self.outlines_ready.emit()

    def _apply_mode(self) -> None:
        mode = self._mode
        self._show_outlines(mode == "outlines")
        self._labels_item.setVisible(mode in ("labels", "outlines"))
        self._labels_item.setOpacity(self._opacity)
        layer, lut, opacity = None, None, self._opacity
        if mode == "prediction" and self._prediction is not None:
            layer, lut = self._prediction, self._lut
        elif mode == "confidence" and self._confidence is not None:
            layer, lut = self._confidence, self._confidence_lut
        elif mode == "uncertainty" and self._uncertainty is not None:
            layer, lut = self._uncertainty, self._uncertainty_lut
        if layer is None:
            self._prediction_item.setVisible(False)
            return
        if self._prediction_item.image is layer:
            self._prediction_item.setLookupTable(lut)
        else:
            self._prediction_item.setImage(layer, autoLevels=False, levels=None, lut=lut)
        self._prediction_item.setOpacity(opacity)
        self._prediction_item.setVisible(True)

    def _on_labels_changed(self, bbox) -> None:
        if not shiboken6.isValid(self._labels_item):
            return
        item = self._labels_item
        if self._document is None:
            return
        if not _aliases(item, self._document.labels):
            if not self._fallback_warned:
                log.warning("label overlay is a copy, not a view: falling back to full re-renders")
                self._fallback_warned = True
            item.updateImage()
            return
        y0, y1, x0, x1 = bbox
        item.update(QtCore.QRectF(x0, y0, x1 - x0, y1 - y0))

    # --- view -----------------------------------------------------------------------------------
    def fit(self) -> None:
        """Zoom so that the whole image is visible."""
        shape = self.image_shape
        if shape is None:
            return
        h, w = shape
        self.view_box.setRange(QtCore.QRectF(0, 0, w, h), padding=0.02)

    def show_region(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Pan and zoom so that rows y0..y1, columns x0..x1 fill the view (a little margin around)."""
        self.view_box.setRange(QtCore.QRectF(x0, y0, x1 - x0, y1 - y0), padding=0.05)

    def viewport(self) -> QtWidgets.QWidget:
        """The widget that receives mouse events (tools install their event filter here)."""
        return self.view.viewport()

    def image_pos(self, scene_pos: QtCore.QPointF) -> tuple[float, float]:
        """Scene position -> image (x, y) in pixels (pixel (r, c) spans [c, c+1) x [r, r+1))."""
        p = self.view_box.mapSceneToView(QtCore.QPointF(scene_pos))
        return p.x(), p.y()

    def image_pos_at(self, viewport_pos: QtCore.QPoint | QtCore.QPointF) -> tuple[float, float]:
        """Viewport (widget) position -> image (x, y)."""
        return self.image_pos(self.view.mapToScene(QtCore.QPointF(viewport_pos).toPoint()))

    def viewport_pos(self, x: float, y: float) -> QtCore.QPoint:
        """Image (x, y) -> viewport position: where to click to hit that point (tests, benchmarks)."""
        scene = self.view_box.mapViewToScene(QtCore.QPointF(x, y))
        return self.view.mapFromScene(scene)

    def add_item(self, item: QtWidgets.QGraphicsItem) -> None:
        """Add a tool graphic (e.g. a polygon preview) in image coordinates."""
        if item.zValue() == 0:
            item.setZValue(Z_TOOL)
        self.view_box.addItem(item, ignoreBounds=True)

    def remove_item(self, item: QtWidgets.QGraphicsItem) -> None:
        self.view_box.removeItem(item)

    @property
    def space_held(self) -> bool:
        """Space is held: left drag pans instead of painting."""
        return self._space_held

    # --- brush cursor ---------------------------------------------------------------------------
    def set_brush_cursor(self, radius: float | None) -> None:
        """Show a circle the size of a brush of ``radius`` (diameter 2r+1 pixels) at the mouse; None hides it."""
        self._brush_radius = None if radius is None else float(radius)
        self._move_cursor()

    def _move_cursor(self) -> None:
        r, pixel = self._brush_radius, self._cursor_pixel
        show = r is not None and pixel is not None
        for e in self._cursor_items:
            e.setVisible(show)
            if show:
                cx, cy = pixel[0] + 0.5, pixel[1] + 0.5
                e.setRect(QtCore.QRectF(cx - r - 0.5, cy - r - 0.5, 2 * r + 1, 2 * r + 1))

    # --- events ---------------------------------------------------------------------------------
    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        etype = event.type()
        if obj is self._viewport:
            if etype == QtCore.QEvent.Type.MouseMove:
                self._hover(event.position())
            elif etype == QtCore.QEvent.Type.Leave:
                self._leave()
            elif etype == QtCore.QEvent.Type.MouseButtonPress:
                self.view.setFocus(QtCore.Qt.FocusReason.MouseFocusReason)
        elif obj is self.view:
            if etype in (QtCore.QEvent.Type.KeyPress, QtCore.QEvent.Type.KeyRelease):
                if event.key() == QtCore.Qt.Key.Key_Space and not event.isAutoRepeat():
                    self._set_space(etype == QtCore.QEvent.Type.KeyPress)
                    return True
            elif etype == QtCore.QEvent.Type.FocusOut:
                self._set_space(False)
        return super().eventFilter(obj, event)

    def _set_space(self, held: bool) -> None:
        self._space_held = held
        shape = QtCore.Qt.CursorShape.OpenHandCursor if held else QtCore.Qt.CursorShape.CrossCursor
        if shiboken6.isValid(self._viewport):  # focus-out also arrives while the canvas is being destroyed
            self._viewport.setCursor(shape)

    def _hover(self, viewport_pos: QtCore.QPointF) -> None:
        x, y = self.image_pos_at(viewport_pos)
        pixel = (math.floor(x), math.floor(y))
        self._cursor_pixel = pixel
        self._move_cursor()
        shape = self.image_shape
        inside = shape is not None and 0 <= pixel[1] < shape[0] and 0 <= pixel[0] < shape[1]
        self._set_hover(pixel if inside else (-1, -1))

    def _leave(self) -> None:
        self._cursor_pixel = None
        self._move_cursor()
        self._set_hover((-1, -1))

    def _set_hover(self, pixel: tuple[int, int]) -> None:
        if pixel != self._last_hover:
            self._last_hover = pixel
            self.hovered.emit(*pixel)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.set_document(None)
        super().closeEvent(event)
