"""Review queue in the window: list sorting, score labels, name filter, error badge, N and Enter follow
the queue, uncertainty mode, uncertain regions, adding and removing classes."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtWidgets import QDialog

from seepview.core.classes import IGNORE, ClassTable
from seepview.core.demo import make_demo_project
from seepview.core.history import Atom
from seepview.core.project import ImageEntry
from seepview.core.queue import rank_regions
from seepview.core.session import ReviewSession
from seepview.qt.panels.classes import ClassesPanel, RemoveClassDialog
from seepview.qt.panels.files import FilesPanel
from seepview.qt.panels.regions import RegionsBox
from tests.qt.test_app import SIZE, open_window
from tests.tiny import save_tiny_checkpoint


@pytest.fixture
def project(tmp_path):
    project = make_demo_project(tmp_path / "demo", n_images=3, size=SIZE)
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    project.save()
    return project


def paint_square(document, value, size=4):
    new = np.full((size, size), value, np.uint8)
    document.begin_stroke()
    document.apply(Atom.from_region(document.labels, (0, size, 0, size), new))
    document.end_stroke()


def _entries(*specs):
    return [ImageEntry(i, f"{i}.tif", status) for i, status in specs]


def test_files_panel_sorts_by_queue_shows_scores_and_badges(qtbot):
    panel = FilesPanel()
    qtbot.addWidget(panel)
    panel.set_entries(_entries(("a", "unreviewed"), ("b", "unreviewed"), ("c", "reviewed"), ("d", "unreviewed")))
    assert panel.listed_ids() == ["a", "b", "c", "d"]  # no queue yet: project order
    panel.set_queue(["d", "a"], {"a": 0.1, "c": 0.7, "d": 0.4}, {"b": "truncated TIFF"}, stale={"a"})
    assert panel.sort.currentData() == "queue"
    assert panel.listed_ids() == ["d", "a", "b", "c"]  # queue first, then broken/reviewed in project order
    texts = [panel.list.item(r).text() for r in range(panel.list.count())]
    assert texts[0].startswith("0.400 ") and texts[0].endswith("d")
    assert texts[1].startswith("0.100~")  # stale: scored by the previous model
    broken = panel.list.item(2)
    assert "cannot be read: truncated TIFF" in broken.toolTip()
    panel.sort.setCurrentIndex(panel.sort.findData("name"))
    assert panel.listed_ids() == ["a", "b", "c", "d"]


def test_files_panel_name_filter(qtbot):
    panel = FilesPanel()
    qtbot.addWidget(panel)
    panel.set_entries(_entries(("041870.000003", "unreviewed"), ("045588.000007", "unreviewed"), ("041870.9", "reviewed")))
    qtbot.keyClicks(panel.search, "4187")
    assert panel.listed_ids() == ["041870.000003", "041870.9"]
    panel.filter.setCurrentIndex(panel.filter.findData("reviewed"))
    assert panel.listed_ids() == ["041870.9"]
    panel.search.clear()
    panel.filter.setCurrentIndex(0)
    assert len(panel.listed_ids()) == 3


def test_classes_panel_add_and_remove_requests(qtbot, monkeypatch):
    panel = ClassesPanel()
    qtbot.addWidget(panel)
    panel.set_classes(ClassTable.preset("sar-seep"))
    monkeypatch.setattr("seepview.qt.panels.classes.QInputDialog.getText", lambda *a, **k: ("oil rig", True))
    with qtbot.waitSignal(panel.add_requested) as added:
        panel.add_button.click()
    assert added.args == ["oil rig"]
    panel.set_active(3)
    with qtbot.waitSignal(panel.remove_requested) as removed:
        panel.remove_button.click()
    assert removed.args == [3]
    dialog = RemoveClassDialog(ClassTable.preset("sar-seep"), 3, {"x": 10, "y": 5}, panel)
    assert dialog.choice() == IGNORE  # default: nothing is claimed
    dialog.becomes.setCurrentIndex(dialog.becomes.findText("seep 1"))
    assert dialog.choice() == 1


def test_regions_box_steps_through_ranked_blocks(qtbot):
    box = RegionsBox()
    qtbot.addWidget(box)
    labels = np.zeros((1024, 1536), np.uint8)
    conf = np.full(labels.shape, 250, np.uint8)
    unc = np.full(labels.shape, 5, np.uint8)
    labels[600:700, 1100:1200] = 1
    unc[590:710, 1090:1210] = 250
    box.set_regions(rank_regions(labels, conf, unc))
    seen = []
    box.region_requested.connect(seen.append)
    first = box.next_region()
    assert (first.y0, first.x0) == (512, 1024) and seen == [first]
    assert box.next_region() != first
    box.set_regions(rank_regions(labels[:300, :300], conf[:300, :300], unc[:300, :300]))
    assert box.next_region() is None and not box.next_button.isEnabled()


def _wait_queue(qtbot, session, n):
    qtbot.waitUntil(lambda: len(session.queue.scores) >= n, timeout=30_000)


def test_window_queue_follows_predictions_and_n_enter_follow_it(qtbot, project):
    session = ReviewSession(project)
    for entry in project.entries:  # every image predicted, so every image gets a score
        session.store_prediction(session.prediction_job(entry.id)())
    window = open_window(qtbot, session)
    _wait_queue(qtbot, session, len(project.entries))
    order = session.queue_order()
    assert window.files_panel.listed_ids()[: len(order)] == order
    window.open_image(order[0])
    window.next_unreviewed()
    assert window.current_id == order[1]
    window.open_image(order[0])
    window.mark_reviewed()  # Enter: the next in the queue, not the next in the file list
    assert window.current_id == order[1]
    assert order[0] not in session.queue_order()
    assert order[0] == window.files_panel.listed_ids()[-1]  # reviewed images sink to the end


def test_window_uncertainty_mode_and_broken_badge(qtbot, project):
    session = ReviewSession(project)
    window = open_window(qtbot, session)
    window.set_mode("uncertainty")
    assert window.canvas.mode == "uncertainty" and window.view_panel.uncertainty_bar.isVisibleTo(window)
    assert window.canvas._prediction_item.isVisible()
    broken = project.entries[-1]
    project.image_path(broken).write_bytes(b"\x00garbage")
    window.open_image(broken.id)  # the error is shown, the image gets a badge and leaves the queue
    assert broken.id in session.queue.broken and broken.id not in session.queue_order()
    row = window.files_panel.listed_ids().index(broken.id)
    assert "cannot be read" in window.files_panel.list.item(row).toolTip()


def test_window_remove_used_class_asks_and_undo_restores(qtbot, project):
    session = ReviewSession(project)
    window = open_window(qtbot, session)
    paint_square(session.current.document, 2)
    window.classes_panel.set_active(2)
    window.classes_panel.remove_button.click()
    dialog = window.remove_dialog
    assert isinstance(dialog, QDialog) and dialog.isVisible()
    dialog.becomes.setCurrentIndex(dialog.becomes.findData(1))
    dialog.accept()
    assert len(session.classes) == 7 and window.classes_panel.view.rowCount() == 7
    assert (session.current.document.labels[:4, :4] == 1).all()
    assert window.classes_panel.undo_button.isEnabled()
    window.classes_panel.undo_button.click()
    assert len(session.classes) == 8 and (session.current.document.labels[:4, :4] == 2).all()
    assert session.checkpoint is not None


def test_window_add_class(qtbot, project, monkeypatch):
    session = ReviewSession(project)
    window = open_window(qtbot, session)
    monkeypatch.setattr("seepview.qt.panels.classes.QInputDialog.getText", lambda *a, **k: ("platform", True))
    window.classes_panel.add_button.click()
    assert session.classes.names[-1] == "platform" and window.classes_panel.view.rowCount() == 9
    assert window.canvas._lut.shape == (256, 4)


@pytest.fixture(autouse=True)
def _no_modal_boxes(monkeypatch):
    """Errors show a window-modal box; keep them from piling up in tests."""
    monkeypatch.setattr("seepview.qt.main_window.QMessageBox.open", lambda self: None)



def test_typing_in_the_name_filter_does_not_trigger_window_shortcuts(qtbot, project):
    session = ReviewSession(project)
    window = open_window(qtbot, session)
    before = window.current_id
    window.files_panel.search.setFocus()
    qtbot.keyClicks(window.files_panel.search, "nbu")  # N (next), B (brush), U (next region) as text
    assert window.files_panel.search.text() == "nbu" and window.current_id == before
    assert window.files_panel.listed_ids() == []  # no demo image is named like that
