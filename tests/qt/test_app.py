"""The review window end to end: real mouse/key events, actions, autosave, background prediction."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PySide6 import QtCore
from PySide6.QtTest import QTest

from seepview.core.classes import IGNORE
from seepview.core.demo import make_demo_project
from seepview.core.project import Project
from seepview.core.session import ReviewSession
from seepview.qt.main_window import ACTIONS, MainWindow, ShortcutsDialog
from tests.tiny import save_tiny_checkpoint

LEFT = QtCore.Qt.MouseButton.LeftButton
NOMOD = QtCore.Qt.KeyboardModifier.NoModifier
CTRL = QtCore.Qt.KeyboardModifier.ControlModifier
SIZE = 96
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path):
    project = make_demo_project(tmp_path / "demo", n_images=3, size=SIZE)
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    project.save()
    return project


def open_window(qtbot, session: ReviewSession, wait_prediction: bool = True) -> MainWindow:
    window = MainWindow(session)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.image_opened, timeout=10_000):
        window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    if wait_prediction and session.current.prediction is None:
        qtbot.waitSignal(window.prediction_shown, timeout=30_000).wait()
    return window


@pytest.fixture
def window(qtbot, project):
    return open_window(qtbot, ReviewSession(project))


def at(window, x, y):
    """Viewport position of the centre of image pixel (col x, row y)."""
    return window.canvas.viewport_pos(x + 0.5, y + 0.5)


def drag(window, points):
    vp = window.canvas.viewport()
    QTest.mousePress(vp, LEFT, NOMOD, at(window, *points[0]))
    for p in points[1:]:
        QTest.mouseMove(vp, at(window, *p))
    QTest.mouseRelease(vp, LEFT, NOMOD, at(window, *points[-1]))


def click(window, x, y):
    QTest.mouseClick(window.canvas.viewport(), LEFT, NOMOD, at(window, x, y))


def key(window, k, modifier=NOMOD):
    QTest.keyClick(window.canvas.view, k, modifier)


def labels(window) -> np.ndarray:
    return window.session.current.document.labels


def test_opens_first_image_with_its_prediction(window):
    current = window.session.current
    assert current.entry.id == window.session.project.entries[0].id
    assert current.prediction is not None
    assert current.prediction.labels.shape == (SIZE, SIZE)
    assert (labels(window) == IGNORE).all()  # nothing decided yet
    assert window.model_panel.name.text().startswith("<b>tiny</b>")
    assert window.actions_by_name["accept_all"].isEnabled()
    assert window.canvas.mode == "outlines" == window.view_panel.mode.currentData()
    assert window.actions_by_name["mode_outlines"].isChecked()


def test_paint_stroke_with_real_mouse_events_undo_redo_by_keyboard(window):
    key(window, QtCore.Qt.Key.Key_B)
    key(window, QtCore.Qt.Key.Key_3)
    assert window.tools.tool == "brush" and window.tools.active_class == 3
    window.tools.set_brush_radius(3)
    drag(window, [(10, 40), (50, 40), (80, 40)])
    painted = labels(window) == 3
    rows = np.flatnonzero(painted.any(axis=1))
    assert rows.min() == 37 and rows.max() == 43
    assert painted[40, 10:81].all()  # the jump between mouse events is joined
    assert (labels(window)[~painted] == IGNORE).all()
    after = labels(window).copy()
    key(window, QtCore.Qt.Key.Key_Z, CTRL)
    assert (labels(window) == IGNORE).all()
    key(window, QtCore.Qt.Key.Key_Z, CTRL | QtCore.Qt.KeyboardModifier.ShiftModifier)
    np.testing.assert_array_equal(labels(window), after)
    key(window, QtCore.Qt.Key.Key_Z, CTRL)
    key(window, QtCore.Qt.Key.Key_Y, CTRL)
    np.testing.assert_array_equal(labels(window), after)


def test_brush_size_keys_and_slider(window):
    window.tools.set_brush_radius(10)
    key(window, QtCore.Qt.Key.Key_BracketRight)
    assert window.tools.brush_radius == 11 and window.view_panel.brush.value() == 11
    window.view_panel.brush.setValue(4)
    assert window.tools.brush_radius == 4


def test_fill_polygon_and_accept_prediction(window):
    # Fill: the whole blank image is one region of equal label.
    key(window, QtCore.Qt.Key.Key_F)
    key(window, QtCore.Qt.Key.Key_2)
    click(window, 5, 5)
    assert (labels(window) == 2).all()
    # Polygon: three vertices, double-click on the last closes and fills it.
    key(window, QtCore.Qt.Key.Key_P)
    key(window, QtCore.Qt.Key.Key_5)
    vp = window.canvas.viewport()
    for x, y in ((20, 20), (60, 20), (60, 60)):
        click(window, x, y)
    QTest.mouseDClick(vp, LEFT, NOMOD, at(window, 60, 60))
    assert labels(window)[30, 50] == 5 and labels(window)[50, 30] == 2  # inside / outside the triangle
    # Accept prediction (A): every predicted pixel becomes the label.
    key(window, QtCore.Qt.Key.Key_A)
    prediction = window.session.current.prediction.labels
    np.testing.assert_array_equal(labels(window), prediction)
    key(window, QtCore.Qt.Key.Key_Z, CTRL)
    assert labels(window)[30, 50] == 5


def test_autosave_journal_and_edits_survive_switching(window):
    session = window.session
    first = session.current.entry
    key(window, QtCore.Qt.Key.Key_B)
    key(window, QtCore.Qt.Key.Key_4)
    window.tools.set_brush_radius(2)
    drag(window, [(10, 10), (30, 10)])
    journal_dir = session.project.root / "journal" / first.id
    assert list(journal_dir.glob("*.svj")), "the stroke is journaled as soon as it ends"
    assert first.status == "in_progress"
    key(window, QtCore.Qt.Key.Key_N)  # next unreviewed
    assert session.current.entry.id != first.id
    key(window, QtCore.Qt.Key.Key_N, QtCore.Qt.KeyboardModifier.ShiftModifier)  # back
    assert session.current.entry.id == first.id
    assert labels(window)[10, 20] == 4
    key(window, QtCore.Qt.Key.Key_Z, CTRL)  # history survived the switch
    assert labels(window)[10, 20] == IGNORE


def test_enter_marks_reviewed_saves_and_moves_on(window):
    session = window.session
    first = session.current.entry
    window.set_mode("prediction")  # shown filled: one Enter saves (outlines need two, see test_review_keys)
    key(window, QtCore.Qt.Key.Key_Return)
    assert first.status == "reviewed"
    assert session.project.has_labels(first)
    assert session.current.entry.id != first.id
    assert "1 of 3 reviewed" in window.files_panel.summary.text()


def test_ctrl_s_saves(window):
    session = window.session
    window.tools.set_brush_radius(1)
    drag(window, [(3, 3), (6, 3)])
    key(window, QtCore.Qt.Key.Key_S, CTRL)
    assert session.project.has_labels(session.current.entry)
    assert not session.is_dirty(session.current.entry.id)


def test_recolor_updates_the_overlay_at_once(window, qtbot):
    window.view_panel.opacity.setValue(100)
    window.set_mode("labels")
    key(window, QtCore.Qt.Key.Key_F)
    key(window, QtCore.Qt.Key.Key_1)
    click(window, 5, 5)
    window.classes_panel.recolor_requested.emit(1, (255, 0, 255, 255))
    window.classes_panel.rename_requested.emit(1, "natural seep")
    assert Project.open(window.session.project.root).classes[1].name == "natural seep"
    assert window.classes_panel.view.item(1, 1).text() == "natural seep"
    qtbot.wait(50)
    grab = window.canvas.grab().toImage()
    centre = grab.pixelColor(at(window, SIZE // 2, SIZE // 2))
    assert (centre.red(), centre.green(), centre.blue()) == (255, 0, 255)
    window.classes_panel.view.item(1, 3).setCheckState(QtCore.Qt.CheckState.Unchecked)  # hide class 1
    qtbot.wait(50)
    centre = window.canvas.grab().toImage().pixelColor(at(window, SIZE // 2, SIZE // 2))
    assert (centre.red(), centre.green(), centre.blue()) != (255, 0, 255)


def test_status_bar_reports_pixel_and_class(window, qtbot):
    QTest.mouseMove(window.canvas.viewport(), at(window, 12, 34))
    qtbot.waitUntil(lambda: "x 12  y 34" in window.status_pixel.text(), timeout=2000)
    value = int(window.session.current.image[34, 12])
    assert f"value {value}" in window.status_pixel.text()
    assert "label: unlabeled" in window.status_class.text()
    assert "model:" in window.status_class.text()


def test_shortcuts_dialog_lists_every_bound_shortcut(window):
    from PySide6.QtGui import QKeySequence

    dialog = ShortcutsDialog(window)
    listed = set()
    for row in range(dialog.table.rowCount()):
        listed.update(dialog.table.item(row, 2).text().split("  or  "))
    bound = 0
    for spec in ACTIONS:
        action = window.actions_by_name.get(spec.name)
        if action is None:
            continue
        for seq in action.shortcuts():
            bound += 1
            assert any(QKeySequence(text) == seq for text in listed), f"{seq.toString()} is not in the dialog"
    assert bound >= 30
    assert {"Space+drag", "Ctrl+Y", "Ctrl+Shift+Z", "B", "[", "]", "0", "Return"} <= listed


def test_prediction_worker_keeps_the_event_loop_responsive(qtbot, tmp_path):
    project = Project.create(tmp_path / "big", "sar-seep")
    rng = np.random.default_rng(0)
    path = tmp_path / "scene.0.tif"
    tifffile.imwrite(path, rng.integers(1, 60000, (1024, 1024), dtype=np.uint16))
    project.add_image(path)
    session = ReviewSession(project, save_tiny_checkpoint(tmp_path / "tiny.safetensors"))
    window = open_window(qtbot, session, wait_prediction=False)
    ticks: list[float] = []
    timer = QtCore.QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    start = time.perf_counter()
    with qtbot.waitSignal(window.prediction_shown, timeout=60_000):
        pass
    timer.stop()
    elapsed = time.perf_counter() - start
    assert session.current.prediction is not None
    gaps = np.diff([start, *ticks])
    assert len(ticks) >= 5, f"only {len(ticks)} timer ticks in {elapsed:.2f} s"
    assert gaps.max() < 0.5, f"the GUI thread stalled for {gaps.max():.2f} s"


def test_switching_images_cancels_the_running_prediction(qtbot, project):
    session = ReviewSession(project)
    window = open_window(qtbot, session, wait_prediction=False)
    first = session.current.entry.id
    window.next_unreviewed()  # before the first prediction arrived
    qtbot.waitSignal(window.prediction_shown, timeout=30_000).wait()
    qtbot.waitUntil(lambda: window.workers.running == 0, timeout=10_000)
    assert session.current.entry.id != first
    assert session.current.prediction is not None


def test_without_a_model_the_window_still_works(qtbot, tmp_path):
    project = make_demo_project(tmp_path / "demo", n_images=2, size=64)
    session = ReviewSession(project, load_model=False)
    window = open_window(qtbot, session, wait_prediction=False)
    assert "no model" in window.model_panel.name.text()
    assert not window.actions_by_name["predict"].isEnabled()
    key(window, QtCore.Qt.Key.Key_F)
    click(window, 3, 3)
    assert (labels(window) == 1).all()


def test_a_broken_image_is_reported_not_raised(qtbot, project):
    session = ReviewSession(project)
    window = open_window(qtbot, session, wait_prediction=False)
    broken = project.entries[1]
    project.image_path(broken).write_bytes(b"not a tiff at all")
    window.open_image(broken.id)  # must not raise
    assert broken.id in window.statusBar().currentMessage()
    assert session.current.entry.id == project.entries[0].id


def test_docks_and_training_slot(window):
    from PySide6.QtWidgets import QLabel

    assert {"Images", "Classes", "Tool and view options", "Model"} <= set(window.docks)
    dock = window.add_dock(QLabel("training"), "Training")
    assert window.docks["Training"] is dock
    assert dock.toggleViewAction() in window.menu("View").actions()


def test_screenshot_subprocess(project, tmp_path):
    out = tmp_path / "shot.png"
    env = {
        **__import__("os").environ,
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "seepview", "--screenshot", str(out), str(project.root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # it waited for the prediction: the first image's prediction is cached in the project
    assert list((project.root / "predictions").glob("*/*.labels.tif"))


def test_unopenable_path_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "seepview", "--screenshot", str(tmp_path / "x.png"), str(tmp_path / "missing")],
        cwd=REPO,
        env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "missing" in proc.stderr and "Traceback" not in proc.stderr


def test_ui_state_and_recent_projects_persist(qtbot, project):
    from seepview.qt.main_window import recent_projects

    first = open_window(qtbot, ReviewSession(project), wait_prediction=False)
    first.docks["Model"].hide()
    first.close()
    assert recent_projects()[0] == str(project.root)
    second = open_window(qtbot, ReviewSession(Project.open(project.root)), wait_prediction=False)
    assert not second.docks["Model"].isVisible()
    assert second.docks["Images"].isVisible()
    assert second.canvas.width() >= 320  # a restored layout never squeezes the image away


def test_a_prediction_stored_elsewhere_is_shown(window, qtbot):
    """The retrain panel re-predicts in its own worker and stores through the session: the view follows."""
    from seepview.core.session import PredictionResult

    session = window.session
    image_id = session.current.entry.id
    fake = np.full((SIZE, SIZE), 4, np.uint8)
    with qtbot.waitSignal(window.prediction_shown):
        session.store_prediction(PredictionResult(image_id, session.weights_key, fake, np.full_like(fake, 9)))
    key(window, QtCore.Qt.Key.Key_A)
    assert (labels(window) == 4).all()


def test_close_guard_can_keep_the_window_open(window):
    answers = [False, True]
    window.add_close_guard(lambda: answers.pop(0))
    assert not window.close()
    assert window.isVisible()
    assert window.close()


def test_screenshot_does_not_wait_for_an_unreadable_image(qtbot, project, tmp_path):
    from PySide6.QtWidgets import QApplication

    from seepview.qt.app import take_screenshot

    project.image_path(project.entries[0]).write_bytes(b"junk, not a TIFF")
    window = MainWindow(ReviewSession(project))
    qtbot.addWidget(window)
    window.show()
    start = time.perf_counter()
    assert take_screenshot(QApplication.instance(), window, tmp_path / "s.png", timeout_s=60) == 0
    assert time.perf_counter() - start < 30
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_retrain_dock_is_wired(window, qtbot, tmp_path):
    panel = window.training_panel
    assert window.docks["Retrain"].widget() is panel
    assert window.actions_by_name["retrain"].shortcut().toString() == "Ctrl+T"
    assert panel.confirm_stop in window._close_guards
    other = save_tiny_checkpoint(tmp_path / "other.safetensors", seed=3)
    with qtbot.waitSignal(window.prediction_shown, timeout=30_000):
        panel.model_promoted.emit(other)  # what a promotion or rollback does
    assert window.session.checkpoint is other
    assert window.session.current.prediction.weights_key == window.session.weights_key


def test_debounced_autosave_writes_labels_in_the_background(window, qtbot):
    session = window.session
    entry = session.current.entry
    window._autosave_timer.setInterval(300)
    window.tools.set_brush_radius(2)
    assert entry.id in window.windowTitle() and not window.isWindowModified()
    drag(window, [(10, 10), (20, 10)])
    assert window.isWindowModified()  # the title shows '*' until the label file has the stroke
    qtbot.waitUntil(lambda: session.project.has_labels(entry) and not session.is_dirty(entry.id), timeout=10_000)
    qtbot.waitUntil(lambda: not window.isWindowModified(), timeout=2_000)
    assert session.project.load_labels(entry)[10, 15] == window.tools.active_class
    assert not session.project.journal(entry).has_entries


def test_training_is_prepared_in_the_background_after_start_up(qtbot, project, monkeypatch):
    """The first retrain click must not pay for training's imports and GC sweeps on the GUI thread."""
    import threading

    import seepview.core.retrain as retrain
    import seepview.qt.main_window as main_window

    calls = []
    monkeypatch.setattr(main_window, "WARM_UP_DELAY_MS", 50)
    monkeypatch.setattr(retrain, "prepare_for_training", lambda: calls.append(threading.current_thread()))
    window = open_window(qtbot, ReviewSession(project), wait_prediction=False)
    qtbot.waitUntil(lambda: bool(calls), timeout=5_000)
    assert calls[0] is not threading.main_thread()
    window.close()
