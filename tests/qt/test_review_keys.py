"""Enter saves only what was seen; keys typed in editors and the image list never fire window shortcuts;
versions another program adds to project.json show up in the Models list."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QAbstractSpinBox, QApplication, QLineEdit

from seepview.core.classes import IGNORE
from seepview.core.demo import make_demo_project
from seepview.core.project import Project
from seepview.core.session import PredictionResult, ReviewSession
from seepview.core.versions import ModelRegistry
from seepview.qt.main_window import MainWindow
from seepview.qt.panels.classes import COL_NAME
from tests.tiny import save_tiny_checkpoint

Key = QtCore.Qt.Key
SIZE = 64


@pytest.fixture
def window(qtbot, tmp_path):
    project = make_demo_project(tmp_path / "demo", n_images=6, size=SIZE)
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    project.save()
    window = MainWindow(ReviewSession(project))
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.image_opened, timeout=10_000):
        window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    if window.session.current.prediction is None:
        qtbot.waitSignal(window.prediction_shown, timeout=30_000).wait()
    return window


def _show_prediction(window, labels):
    s = window.session
    s.store_prediction(PredictionResult(s.current.entry.id, s.weights_key, labels, np.full_like(labels, 200)))


def test_enter_with_outline_predictions_fills_them_first_and_saves_on_the_second_enter(window):
    session, first = window.session, window.session.current.entry
    pred = np.zeros((SIZE, SIZE), np.uint8)
    pred[10:20, 10:20] = 3
    _show_prediction(window, pred)
    window.set_mode("outlines")
    QTest.keyClick(window.canvas.view, Key.Key_Return)
    doc = session.current.document
    assert session.current.entry is first and first.status != "reviewed"  # not saved, not moved on
    assert doc.labels[15, 15] == 3 and IGNORE not in doc.labels  # now shown filled, as labels
    assert "press Enter again" in window.statusBar().currentMessage()
    QTest.keyClick(window.canvas.view, Key.Key_Return)
    assert first.status == "reviewed" and session.project.load_labels(first)[15, 15] == 3
    assert session.current.entry is not first


def test_enter_in_confidence_mode_switches_to_labels_to_show_the_fill(window):
    pred = np.zeros((SIZE, SIZE), np.uint8)
    pred[0:5, 0:5] = 2
    _show_prediction(window, pred)
    window.set_mode("confidence")
    QTest.keyClick(window.canvas.view, Key.Key_Return)
    assert window.canvas.mode == "labels" and window.session.current.entry.status != "reviewed"


def test_enter_in_the_class_rename_editor_renames_and_does_not_mark_reviewed(window, qtbot):
    session, first = window.session, window.session.current.entry
    view = window.classes_panel.view
    view.editItem(view.item(2, COL_NAME))
    editor = QApplication.focusWidget()
    assert isinstance(editor, QLineEdit)
    editor.selectAll()
    qtbot.keyClicks(editor, "Slick 2")
    qtbot.keyClick(editor, Key.Key_Return)
    qtbot.waitUntil(lambda: session.classes[2].name == "Slick 2", timeout=3000)  # the delegate commits queued
    assert session.current.entry is first and first.status != "reviewed"
    assert Project.open(session.project.root).classes[2].name == "Slick 2"


def _zoom_in(window):
    window.canvas.view_box.setRange(QtCore.QRectF(0, 0, 8, 8), padding=0)
    return window.canvas.view_box.viewRange()


def test_typing_in_the_image_list_searches_it_and_fires_no_shortcut(window, qtbot):
    session = window.session
    listing = window.files_panel.list
    listing.setFocus()
    zoomed = _zoom_in(window)
    active_before, tool_before = window.tools.active_class, window.tools.tool
    qtbot.keyClicks(listing, "900003")  # the demo's third scene: ids 900003.000001, 900003.000002
    assert listing.currentItem().text().startswith("900003.")
    assert window.tools.active_class == active_before and window.tools.tool == tool_before  # no "3"/"9"
    assert window.canvas.view_box.viewRange() == zoomed  # no "0" = fit
    opened = session.current.entry.id
    qtbot.keyClick(listing, Key.Key_Return)  # Enter in the list opens the row, it does not mark reviewed
    assert session.current.entry.id.startswith("900003.") and session.project.entry(opened).status != "reviewed"
    qtbot.waitUntil(lambda: window.canvas.view.hasFocus(), timeout=2000)  # the review keys work again


def test_digits_and_enter_in_a_spin_box_stay_there(window, qtbot):
    box = next(b for b in window.findChildren(QAbstractSpinBox) if b.isVisible() and b.isEnabled())
    box.setFocus()
    active, first = window.tools.active_class, window.session.current.entry
    zoomed = _zoom_in(window)
    qtbot.keyClicks(box, "70")
    qtbot.keyClick(box, Key.Key_Return)
    assert window.tools.active_class == active and window.canvas.view_box.viewRange() == zoomed
    assert first.status != "reviewed"


def test_window_shortcuts_still_work_on_the_canvas(window):
    QTest.keyClick(window.canvas.view, Key.Key_4)
    assert window.tools.active_class == 4
    QTest.keyClick(window.canvas.view, Key.Key_E)
    assert window.tools.tool == "eraser"


def test_a_version_added_by_another_program_shows_in_the_models_list(window, qtbot, tmp_path):
    panel = window.training_panel

    def listed():
        return [panel.versions.topLevelItem(i).text(0) for i in range(panel.versions.topLevelItemCount())]

    before = listed()
    # `seepview finetune PROJECT` in another process: its own Project object, its own save.
    other = Project.open(window.session.project.root)
    candidate = save_tiny_checkpoint(tmp_path / "cli.safetensors", seed=5)
    version = ModelRegistry(other).add(candidate, promote=True, note="from the CLI")
    qtbot.waitUntil(lambda: any(version.key in text for text in listed()), timeout=10_000)
    assert len(listed()) == len(before) + 1
    assert window.session.checkpoint.meta.version == version.version  # the CLI promoted it: now in use
    # The app's next save merges instead of overwriting: the CLI's version survives.
    window.session.project.set_status(window.session.current.entry, "in_progress")
    keys = [v.key for v in ModelRegistry(Project.open(window.session.project.root)).versions()]
    assert version.key in keys


def test_type_to_search_matches_the_image_id_not_the_row_text(qtbot):
    from PySide6.QtWidgets import QListWidget, QListWidgetItem

    from seepview.qt.keys import TypeToSearch

    listing = QListWidget()
    qtbot.addWidget(listing)
    for score, image_id in (("0.91", "041870.000004"), ("0.50", "045588.000012"), ("0.12", "045591.000002")):
        item = QListWidgetItem(f"{score}  {image_id}")  # a review-queue score shown before the id
        item.setData(QtCore.Qt.ItemDataRole.UserRole, image_id)
        listing.addItem(item)
    TypeToSearch(listing)
    listing.show()
    listing.setFocus()
    qtbot.keyClicks(listing, "0455")
    assert listing.currentItem().data(QtCore.Qt.ItemDataRole.UserRole) == "045588.000012"  # prefix of the id
    qtbot.keyClick(listing, Key.Key_Backspace)  # "045"
    qtbot.keyClicks(listing, "59")  # "04559"
    assert listing.currentItem().data(QtCore.Qt.ItemDataRole.UserRole) == "045591.000002"
    QTest.qWait(QApplication.keyboardInputInterval() + 50)
    qtbot.keyClicks(listing, "000004")  # a new search after a pause; no prefix match, so a substring one
    assert listing.currentItem().data(QtCore.Qt.ItemDataRole.UserRole) == "041870.000004"
