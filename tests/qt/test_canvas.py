"""Canvas: layers show the right colours, edits repaint only their rectangle, coordinates map both ways."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore, QtGui
from PySide6.QtTest import QTest

from seepview.core import editing
from seepview.core.classes import ClassTable
from seepview.core.history import LabelDocument
from seepview.qt.canvas import Canvas, outline_paths

RED = (255, 0, 0, 255)
GREEN = (0, 255, 0, 255)


def _lut():
    lut = np.zeros((256, 4), np.uint8)
    lut[1] = RED
    lut[2] = GREEN
    return lut


@pytest.fixture
def canvas(qtbot):
    c = Canvas()
    qtbot.addWidget(c)
    c.resize(420, 340)
    c.show()
    qtbot.waitExposed(c)
    c.set_image(np.full((100, 120), 128, np.uint8))
    c.set_lut(_lut())
    c.set_opacity(1.0)
    return c


def _pixel(canvas, x, y) -> tuple[int, int, int]:
    """Colour on screen at image point (x, y)."""
    QtCore.QCoreApplication.processEvents()
    img = canvas.view.viewport().grab().toImage()
    p = canvas.viewport_pos(x, y)
    c = QtGui.QColor(img.pixel(p.x(), p.y()))
    return c.red(), c.green(), c.blue()


def test_coordinates_round_trip_and_y_down(canvas):
    p_top = canvas.viewport_pos(10.5, 5.5)
    p_bottom = canvas.viewport_pos(10.5, 90.5)
    assert p_bottom.y() > p_top.y()  # row 90 is below row 5, as in image viewers
    x, y = canvas.image_pos_at(QtCore.QPointF(p_top))
    assert abs(x - 10.5) < 1 and abs(y - 5.5) < 1


def test_overlay_colours_follow_lut_and_edits(canvas):
    doc = LabelDocument(np.zeros((100, 120), np.uint8))
    canvas.set_document(doc)
    assert _pixel(canvas, 50.5, 50.5) == (128, 128, 128)
    doc.apply(editing.paint_disk(doc.labels, (50, 50), None, 6, 1))
    assert _pixel(canvas, 50.5, 50.5) == (255, 0, 0)
    assert _pixel(canvas, 80.5, 20.5) == (128, 128, 128)
    lut = _lut()
    lut[1] = (0, 0, 255, 255)  # recolour: shown at once
    canvas.set_lut(lut)
    assert _pixel(canvas, 50.5, 50.5) == (0, 0, 255)
    doc.undo()
    assert _pixel(canvas, 50.5, 50.5) == (128, 128, 128)
    canvas.set_opacity(0.5)
    doc.redo()
    r, g, b = _pixel(canvas, 50.5, 50.5)
    assert 60 < r < 100 and 60 < g < 100 and b > 180  # half blue over grey


def test_overlay_wraps_the_labels_and_updates_only_the_dirty_rect(canvas, monkeypatch):
    doc = LabelDocument(np.zeros((100, 120), np.uint8))
    canvas.set_document(doc)
    _pixel(canvas, 0, 0)  # render once
    item = canvas._labels_item
    rendered = item.qimage
    calls = []
    monkeypatch.setattr(item, "update", lambda *a: calls.append(a))
    doc.apply(editing.paint_disk(doc.labels, (30, 40), None, 3, 2))
    assert item.qimage is rendered  # no re-render, no copy
    assert len(calls) == 1
    rect = calls[0][0]
    assert (rect.x(), rect.y(), rect.width(), rect.height()) == (37, 27, 7, 7)


def test_prediction_modes(canvas):
    doc = LabelDocument(np.zeros((100, 120), np.uint8))
    canvas.set_document(doc)
    pred = np.zeros((100, 120), np.uint8)
    pred[20:60, 30:90] = 2
    conf = np.full((100, 120), 255, np.uint8)
    canvas.set_prediction(pred, conf)
    canvas.set_mode("prediction")
    assert _pixel(canvas, 60.5, 40.5) == (0, 255, 0)
    canvas.set_mode("labels")
    assert _pixel(canvas, 60.5, 40.5) == (128, 128, 128)
    canvas.set_mode("outlines")
    assert _pixel(canvas, 60.5, 40.5) == (128, 128, 128)  # inside: only the outline is drawn
    assert _pixel(canvas, 60.5, 20.0) == (0, 255, 0)  # on the top edge of the blob (between pixels)
    canvas.set_mode("confidence")
    r, g, b = _pixel(canvas, 5.5, 5.5)
    assert r > 200 and g > 200  # inferno at full confidence is pale yellow
    with pytest.raises(ValueError):
        canvas.set_mode("nope")


def test_outlines_of_big_predictions_are_traced_in_the_background(canvas, qtbot):
    canvas.sync_outline_pixels = 0  # treat this prediction as big
    canvas.set_document(LabelDocument(np.zeros((100, 120), np.uint8)))
    canvas.set_mode("outlines")
    pred = np.zeros((100, 120), np.uint8)
    pred[20:60, 30:90] = 2
    with qtbot.waitSignal(canvas.outlines_ready, timeout=10_000):
        canvas.set_prediction(pred, None)
    assert _pixel(canvas, 60.5, 20.0) == (0, 255, 0)
    # A newer prediction replaces the old outlines; a stale result would be dropped.
    pred2 = np.zeros_like(pred)
    pred2[70:90, 10:30] = 1
    with qtbot.waitSignal(canvas.outlines_ready, timeout=10_000):
        canvas.set_prediction(pred2, None)
    assert _pixel(canvas, 60.5, 20.0) == (128, 128, 128)
    assert _pixel(canvas, 20.5, 70.0) == (255, 0, 0)


def test_outline_paths_are_closed_across_tiles_and_edges():
    pred = np.zeros((40, 40), np.uint8)
    pred[0:25, 5:30] = 1  # touches the top edge and crosses tile borders at 16 and 32
    paths = outline_paths(pred, tile=16)
    assert {cls for cls, _ in paths} == {1}
    rect = QtCore.QRectF()
    for _, path in paths:
        rect = rect.united(path.boundingRect())
    # Contours run through the outer pixel centres' half-way points: x 5..30, y 0..25.
    assert (rect.left(), rect.top(), rect.right(), rect.bottom()) == (5.0, 0.0, 30.0, 25.0)


def test_hover_signal_and_brush_cursor(canvas, qtbot):
    canvas.set_brush_cursor(4)
    with qtbot.waitSignal(canvas.hovered) as blocker:
        QTest.mouseMove(canvas.viewport(), canvas.viewport_pos(30.5, 20.5))
    assert blocker.args == [30, 20]
    ring = canvas._cursor_items[0]
    assert ring.isVisible()
    assert ring.rect().center() == QtCore.QPointF(30.5, 20.5) and ring.rect().width() == 9
    with qtbot.waitSignal(canvas.hovered) as blocker:
        QTest.mouseMove(canvas.viewport(), canvas.viewport_pos(-5, 20.5))
    assert blocker.args == [-1, -1]
    canvas.set_brush_cursor(None)
    assert not ring.isVisible()


def test_pan_with_right_drag_and_wheel_zoom(canvas, qtbot):
    before = canvas.view_box.viewRange()
    vp = canvas.viewport()
    start = canvas.viewport_pos(60, 50)
    QTest.mousePress(vp, QtCore.Qt.MouseButton.RightButton, QtCore.Qt.KeyboardModifier.NoModifier, start)
    for dx in range(5, 60, 5):
        QTest.qWait(15)  # pyqtgraph ignores scene moves closer than 10 ms apart
        QTest.mouseMove(vp, start + QtCore.QPoint(dx, 0))
    QTest.mouseRelease(
        vp,
        QtCore.Qt.MouseButton.RightButton,
        QtCore.Qt.KeyboardModifier.NoModifier,
        start + QtCore.QPoint(60, 0),
    )
    after = canvas.view_box.viewRange()
    assert after[0][0] < before[0][0] - 10  # dragged right -> view moved left over the image
    assert after[1] == pytest.approx(before[1])
    canvas.fit()
    w0 = np.diff(canvas.view_box.viewRange()[0])[0]
    canvas.view_box.scaleBy((0.5, 0.5))
    assert np.diff(canvas.view_box.viewRange()[0])[0] == pytest.approx(w0 / 2)


def test_big_image_shows_and_class_table_lut(qtbot):
    c = Canvas()
    qtbot.addWidget(c)
    c.resize(300, 300)
    c.show()
    rgb = np.zeros((3000, 2000, 3), np.uint8)
    rgb[..., 2] = 200
    c.set_image(rgb)
    doc = LabelDocument(np.zeros((3000, 2000), np.uint8))
    doc.labels[1000:2000, :] = 1
    c.set_document(doc)
    c.set_lut(ClassTable.preset("corrosion").lut())
    c.set_opacity(1.0)
    assert _pixel(c, 1000, 500) == (0, 0, 200)
    assert _pixel(c, 1000, 1500) == (213, 94, 0)
    c.set_document(None)
    assert _pixel(c, 1000, 1500) == (0, 0, 200)


def test_bad_input(canvas):
    with pytest.raises(ValueError):
        canvas.set_image(np.zeros((10, 10), np.uint16))
    with pytest.raises(ValueError):
        canvas.set_lut(np.zeros((10, 4), np.uint8))
    with pytest.raises(ValueError):
        canvas.set_prediction(np.zeros((10, 10), np.float32))
