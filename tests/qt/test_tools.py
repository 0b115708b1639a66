"""Tools driven by real mouse and key events on the canvas viewport."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore
from PySide6.QtTest import QTest

from seepview.core.classes import ClassTable
from seepview.core.history import LabelDocument
from seepview.qt.canvas import Canvas
from seepview.qt.tools import ToolController

LEFT = QtCore.Qt.MouseButton.LeftButton
NOMOD = QtCore.Qt.KeyboardModifier.NoModifier
H, W = 80, 100


@pytest.fixture
def setup(qtbot):
    canvas = Canvas()
    qtbot.addWidget(canvas)
    canvas.resize(500, 420)
    canvas.show()
    qtbot.waitExposed(canvas)
    canvas.set_image(np.full((H, W), 100, np.uint8))
    canvas.set_lut(ClassTable.preset("sar-seep").lut())
    doc = LabelDocument(np.zeros((H, W), np.uint8))
    canvas.set_document(doc)
    tools = ToolController(canvas)
    tools.set_context(doc)
    return canvas, tools, doc


def _at(canvas, x, y):
    """Viewport position of the centre of pixel (col x, row y)."""
    return canvas.viewport_pos(x + 0.5, y + 0.5)


def _drag(canvas, points, button=LEFT, wait_ms=0):
    """Press, move through ``points``, release. pyqtgraph drops scene moves closer than 10 ms
    (its mouseRateLimit), so drags that must reach the view box (panning) wait between moves."""
    vp = canvas.viewport()
    QTest.mousePress(vp, button, NOMOD, _at(canvas, *points[0]))
    for p in points[1:]:
        QTest.qWait(wait_ms)
        QTest.mouseMove(vp, _at(canvas, *p))
    QTest.mouseRelease(vp, button, NOMOD, _at(canvas, *points[-1]))


def _click(canvas, x, y):
    QTest.mouseClick(canvas.viewport(), LEFT, NOMOD, _at(canvas, x, y))


def test_brush_stroke_with_real_mouse_events_is_one_undo_step(setup):
    canvas, tools, doc = setup
    tools.set_active_class(3)
    tools.set_brush_radius(2)
    _drag(canvas, [(10, 40), (50, 40), (90, 40)])  # two big jumps: the capsules must join them
    changed = np.argwhere(doc.labels != 0)
    assert set(np.unique(doc.labels[doc.labels != 0])) == {3}
    assert changed[:, 0].min() == 38 and changed[:, 0].max() == 42
    assert changed[:, 1].min() == 8 and changed[:, 1].max() == 92
    assert (doc.labels[38:43, 10:91] == 3).all()  # no gaps
    assert doc.history.undo_steps == 1 and not tools.stroking
    painted = doc.labels.copy()
    doc.undo()
    assert not doc.labels.any()
    doc.redo()
    np.testing.assert_array_equal(doc.labels, painted)


def test_eraser_and_preserve_labels(setup):
    canvas, tools, doc = setup
    doc.labels[:, :50] = 1
    doc.labels[:, 50:] = 2
    tools.set_tool("eraser")
    tools.set_brush_radius(3)
    tools.set_active_class(2)
    tools.set_preserve_labels(True)
    _drag(canvas, [(30, 20), (70, 20)])
    assert (doc.labels[:, :50] == 1).all()  # preserved: only the active class is erased
    assert (doc.labels[17:24, 50:71] == 0).all()
    tools.set_tool("brush")
    tools.set_active_class(4)
    _drag(canvas, [(40, 20), (60, 20)])
    assert (doc.labels[20, 40:50] == 1).all() and (doc.labels[20, 50:61] == 4).all()


def test_escape_aborts_the_stroke(setup):
    canvas, tools, doc = setup
    vp = canvas.viewport()
    QTest.mousePress(vp, LEFT, NOMOD, _at(canvas, 20, 20))
    QTest.mouseMove(vp, _at(canvas, 60, 20))
    assert doc.labels.any() and tools.stroking
    QTest.keyClick(canvas.view, QtCore.Qt.Key.Key_Escape)
    QTest.mouseRelease(vp, LEFT, NOMOD, _at(canvas, 60, 20))
    assert not doc.labels.any() and not doc.history.can_undo


def test_fill_and_tolerance_fill(setup):
    canvas, tools, doc = setup
    doc.labels[:, 50] = 1
    tools.set_tool("fill")
    tools.set_active_class(2)
    _click(canvas, 10, 10)
    assert (doc.labels[:, :50] == 2).all() and not doc.labels[:, 51:].any()
    image = np.zeros((H, W), np.uint16)
    image[40:, :] = 5000
    tools.set_context(doc, image_data=image)
    tools.set_fill_tolerance(100)
    tools.set_active_class(5)
    _click(canvas, 80, 10)
    assert (doc.labels[:40, 51:] == 5).all() and not doc.labels[40:, 51:].any()
    assert doc.history.undo_steps == 2


def test_polygon_click_vertices_double_click_closes(setup, qtbot):
    canvas, tools, doc = setup
    tools.set_tool("polygon")
    tools.set_active_class(6)
    for p in [(10, 10), (60, 10), (60, 50)]:
        _click(canvas, *p)
    QTest.mouseMove(canvas.viewport(), _at(canvas, 10, 50))
    assert not tools._polygon_item.path().isEmpty()  # the polygon being drawn is shown
    assert not doc.labels.any()
    # A user's double-click is press, release, double-click, release: the first press adds the vertex.
    _click(canvas, 10, 50)
    QTest.mouseDClick(canvas.viewport(), LEFT, NOMOD, _at(canvas, 10, 50))
    assert tools._polygon_item.path().isEmpty()
    assert (doc.labels[11:49, 11:59] == 6).all()
    assert doc.labels[5, 5] == 0 and doc.labels[55, 30] == 0
    assert doc.history.undo_steps == 1


def test_polygon_enter_closes_escape_cancels(setup):
    canvas, tools, doc = setup
    tools.set_tool("polygon")
    for p in [(10, 10), (30, 10), (30, 30)]:
        _click(canvas, *p)
    QTest.keyClick(canvas.view, QtCore.Qt.Key.Key_Escape)
    assert tools.polygon_vertices == []
    for p in [(10, 10), (30, 10), (30, 30)]:
        _click(canvas, *p)
    QTest.keyClick(canvas.view, QtCore.Qt.Key.Key_Return)
    assert doc.labels[15, 25] == tools.active_class


def test_accept_and_reject_components(setup, qtbot):
    canvas, tools, doc = setup
    pred = np.zeros((H, W), np.uint8)
    pred[10:30, 10:40] = 2
    pred[50:70, 60:90] = 3
    tools.set_context(doc, prediction=pred)
    tools.set_tool("accept")
    _click(canvas, 20, 20)
    np.testing.assert_array_equal(doc.labels == 2, pred == 2)
    assert not (doc.labels == 3).any()
    tools.set_tool("reject")
    _click(canvas, 20, 20)
    assert not doc.labels.any()
    assert tools.accept_all()
    np.testing.assert_array_equal(doc.labels, pred)
    assert doc.history.undo_steps == 3
    doc.undo()
    assert not doc.labels.any()


def test_picker_and_settings_signals(setup, qtbot):
    canvas, tools, doc = setup
    doc.labels[5:10, 5:10] = 7
    with qtbot.waitSignal(tools.tool_changed) as sig:
        tools.set_tool("picker")
    assert sig.args == ["picker"]
    with qtbot.waitSignal(tools.class_picked) as sig:
        _click(canvas, 7, 7)
    assert sig.args == [7] and tools.active_class == 7
    with qtbot.waitSignal(tools.brush_radius_changed) as sig:
        tools.set_brush_radius(10)
    assert sig.args == [10]
    tools.grow_brush(+1)
    assert tools.brush_radius == 11
    tools.grow_brush(-3)
    assert tools.brush_radius == 8
    with pytest.raises(ValueError):
        tools.set_tool("lasso-of-doom")


def test_panning_still_works_with_a_tool(setup, qtbot):
    canvas, tools, doc = setup
    before = canvas.view_box.viewRange()[0][0]
    _drag(
        canvas,
        [(50, 40), (60, 40), (70, 40), (80, 40)],
        button=QtCore.Qt.MouseButton.MiddleButton,
        wait_ms=15,
    )
    assert canvas.view_box.viewRange()[0][0] < before - 5
    assert not doc.labels.any()
    # space + left drag pans too, and does not paint
    canvas.fit()  # bring the image back under the mouse positions used below
    QTest.keyPress(canvas.view, QtCore.Qt.Key.Key_Space)
    assert canvas.space_held
    before = canvas.view_box.viewRange()[0][0]
    _drag(canvas, [(50, 40), (60, 40), (70, 40), (80, 40)], wait_ms=15)
    QTest.keyRelease(canvas.view, QtCore.Qt.Key.Key_Space)
    assert canvas.view_box.viewRange()[0][0] < before - 5
    assert not doc.labels.any()
    canvas.fit()
    _drag(canvas, [(50, 40), (52, 40)])
    assert doc.labels.any()


def test_no_document_is_harmless(setup):
    canvas, tools, doc = setup
    tools.set_context(None)
    _drag(canvas, [(10, 10), (20, 20)])
    assert not tools.accept_all()
    assert not doc.labels.any()


def test_enter_closes_the_polygon_before_a_window_shortcut_sees_it(qtbot):
    """Enter is also "mark reviewed" in the main window: while a polygon is open, the tool claims it."""
    from PySide6 import QtGui, QtWidgets

    window = QtWidgets.QMainWindow()
    qtbot.addWidget(window)
    canvas = Canvas()
    window.setCentralWidget(canvas)
    window.resize(500, 420)
    with qtbot.waitActive(window):  # window shortcuts only fire in the active window
        window.show()
        window.activateWindow()
    canvas.set_image(np.zeros((H, W), np.uint8))
    doc = LabelDocument(np.zeros((H, W), np.uint8))
    canvas.set_document(doc)
    tools = ToolController(canvas)
    tools.set_context(doc)
    fired = []
    action = QtGui.QAction("mark reviewed", window)
    action.setShortcut(QtGui.QKeySequence(QtCore.Qt.Key.Key_Return))
    action.triggered.connect(lambda: fired.append(True))
    window.addAction(action)
    tools.set_tool("polygon")
    for p in [(10, 10), (40, 10), (40, 40)]:
        _click(canvas, *p)
    QTest.keyClick(canvas.view, QtCore.Qt.Key.Key_Return)
    assert doc.labels[15, 35] == tools.active_class and not fired
    QTest.keyClick(canvas.view, QtCore.Qt.Key.Key_Return)  # no polygon open: the window gets it
    assert fired == [True]


def test_hover_keeps_reporting_during_a_stroke(setup, qtbot):
    canvas, tools, doc = setup
    seen = []
    canvas.hovered.connect(lambda x, y: seen.append((x, y)))
    vp = canvas.viewport()
    QTest.mousePress(vp, LEFT, NOMOD, _at(canvas, 10, 10))
    QTest.mouseMove(vp, _at(canvas, 30, 12))
    QTest.mouseMove(vp, _at(canvas, 50, 14))
    QTest.mouseRelease(vp, LEFT, NOMOD, _at(canvas, 50, 14))
    assert (30, 12) in seen and (50, 14) in seen
    assert doc.labels[14, 50] == tools.active_class


def test_undo_in_the_middle_of_a_drag_stops_the_stroke(setup):
    canvas, tools, doc = setup
    vp = canvas.viewport()
    QTest.mousePress(vp, LEFT, NOMOD, _at(canvas, 10, 10))
    QTest.mouseMove(vp, _at(canvas, 30, 10))
    doc.undo()  # Ctrl+Z while the button is still down: the stroke so far is committed, then undone
    assert not doc.labels.any()
    QTest.mouseMove(vp, _at(canvas, 60, 10))
    QTest.mouseRelease(vp, LEFT, NOMOD, _at(canvas, 60, 10))
    assert not doc.labels.any() and doc.history.can_redo and not tools.stroking


def test_fill_on_big_images_runs_in_the_background(setup, qtbot):
    canvas, tools, doc = setup
    tools.sync_fill_pixels = 0  # treat this small image as big
    doc.labels[:, 50] = 1
    tools.set_tool("fill")
    tools.set_active_class(2)
    with qtbot.waitSignal(tools.fill_finished, timeout=10_000):
        _click(canvas, 10, 10)
    assert (doc.labels[:, :50] == 2).all() and not doc.labels[:, 51:].any()
    assert doc.history.undo_steps == 1 and not tools.busy


def test_background_fill_is_dropped_if_the_labels_changed_meanwhile(setup, qtbot, monkeypatch):
    import threading

    from seepview.core import editing

    canvas, tools, doc = setup
    tools.sync_fill_pixels = 0
    release = threading.Event()
    real_fill = editing.flood_fill

    def slow_fill(*args, **kwargs):
        release.wait(10)
        return real_fill(*args, **kwargs)

    monkeypatch.setattr(editing, "flood_fill", slow_fill)
    tools.set_tool("fill")
    tools.set_active_class(2)
    _click(canvas, 10, 10)
    assert tools.busy
    _click(canvas, 60, 60)  # ignored while the fill runs
    doc.apply(editing.paint_disk(doc.labels, (70, 90), None, 2, 5))  # e.g. a redo from the keyboard
    with qtbot.waitSignal(tools.fill_finished, timeout=10_000):
        release.set()
    assert not (doc.labels == 2).any() and doc.history.undo_steps == 1
