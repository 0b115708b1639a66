"""Issue 11 in the app: a fitted scene adaptation swaps in, the Model panel says what and for which scene,
and the setting that turns it off is kept."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore

from seepview.core.adapt import adapt_checkpoint, scene_adaptation_job
from seepview.core.demo import make_demo_project
from seepview.core.session import ReviewSession
from seepview.qt.main_window import MainWindow
from tests.tiny import save_tiny_checkpoint


@pytest.fixture
def window(qtbot, tmp_path):
    project = make_demo_project(tmp_path / "demo", n_images=4, size=64)
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    project.save()
    window = MainWindow(ReviewSession(project))
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.image_opened, timeout=10_000):
        window.show()
    return window


def test_an_adaptation_swaps_in_and_the_model_panel_names_its_scene(window):
    base = window.session.checkpoint
    rng = np.random.default_rng(0)
    images = [(rng.random((48, 48)) * 3000 + 1).astype(np.uint16) for _ in range(3)]
    truths = [np.zeros((48, 48), np.uint8) for _ in images]
    for t in truths:
        t[10:20, 10:30] = 3
    scene = window.session.current.entry.scene  # the open image's
    adapted, ad = adapt_checkpoint(base, images, truths, scene=scene)
    ad.kind, ad.main_class = "main", 3  # force a non-trivial choice: the swap is what is tested
    other = ad.to_dict() | {"scene": "S9"}
    adapted.meta.adaptation = {"format": 2, "scenes": [ad.to_dict(), other]}
    window._adapt_from = window.session.checkpoint  # as if the fit had started from the model in use
    window._adaptation_done((adapted, ad, None))
    assert window.session.checkpoint is adapted
    text = window.model_panel.adapted.text()
    assert text.startswith("1 other scene adapted too. This one: adapted on") and f"for scene {scene}" in text, text
    another = next(e.id for e in window.session.project.entries if e.scene != scene)
    window.open_image(another)  # the line follows the open image's scene
    assert window.model_panel.adapted.text() == f"none for this scene (adapted: {min(scene, 'S9')}, {max(scene, 'S9')})"
    window.open_image(next(e.id for e in window.session.project.entries if e.scene == scene))
    ad.kind = "none"
    window._adapt_from = window.session.checkpoint
    window._adaptation_done((None, ad, None))  # "no adaptation" won: the model stays, the panel says so
    assert window.session.checkpoint is adapted and window.model_panel.adapted.text().startswith("not adapted")


def test_the_adapt_setting_is_kept_and_too_few_reviewed_tiles_fit_nothing(window):
    window.model_panel.adapt.setChecked(False)
    assert QtCore.QSettings().value("model/adapt_after_review") in (False, "false")
    image_id = window.current_id
    assert scene_adaptation_job(window.session.project, window.session.checkpoint, image_id)() == (None, None, None)


def test_an_adaptation_re_predicts_its_scenes_other_unreviewed_tiles_only(window, qtbot):
    session = window.session
    entries = session.project.entries
    for i, e in enumerate(entries):
        e.group = "A" if i < 2 else "B"
    rng = np.random.default_rng(1)
    images = [(rng.random((48, 48)) * 3000 + 1).astype(np.uint16) for _ in range(3)]
    truths = [np.zeros((48, 48), np.uint8) for _ in images]
    for t in truths:
        t[5:25, 5:40] = 2
    adapted, ad = adapt_checkpoint(session.checkpoint, images, truths, scene="A")
    ad.kind, ad.main_class = "main", 2
    adapted.meta.adaptation = ad.to_dict()
    window._adapt_from = window.session.checkpoint  # as if the fit had started from the model in use
    window._adaptation_done((adapted, ad, None))
    panel = window.training_panel
    qtbot.waitUntil(lambda: panel._repredict_worker is None, timeout=20_000)
    others = [e.id for e in entries if e.id != window.current_id]
    in_a = [i for i in others if session.project.entry(i).group == "A"]
    in_b = [i for i in others if session.project.entry(i).group == "B"]
    assert in_a and in_b
    assert not any(session.needs_prediction(i) for i in in_a)  # predicted with the adapted model
    assert all(session.needs_prediction(i) for i in in_b)  # another scene: the adaptation does not apply


def test_a_second_adaptation_while_re_predicting_restarts_it_with_the_newer_model(window, qtbot):
    session = window.session
    entries = session.project.entries
    for i, e in enumerate(entries):
        e.group = "A" if i < 2 else "B"
    rng = np.random.default_rng(2)
    images = [(rng.random((48, 48)) * 3000 + 1).astype(np.uint16) for _ in range(3)]
    truths = [np.zeros((48, 48), np.uint8) for _ in images]
    for t in truths:
        t[5:25, 5:40] = 2
    for scene in ("A", "B"):  # back to back: the first re-predict is still running when the second model arrives
        adapted, ad = adapt_checkpoint(session.checkpoint, images, truths, scene=scene)
        ad.kind, ad.main_class = "main", 2
        adapted.meta.adaptation = ad.to_dict()
        window._adapt_from = session.checkpoint
        window._adaptation_done((adapted, ad, None))
    panel = window.training_panel
    qtbot.waitUntil(lambda: panel._repredict_worker is None, timeout=20_000)
    others = [e.id for e in entries if e.id != window.current_id]
    # scene A's tiles were predicted with A's adaptation, which the B model replaced: both scenes are redone
    assert not any(session.needs_prediction(i) for i in others)


def test_reviews_in_a_row_register_adaptation_versions_one_fit_at_a_time(window, qtbot, monkeypatch):
    import seepview.core.adapt as adapt_mod
    from seepview.core.adapt import Adaptation
    from seepview.core.versions import ModelRegistry

    window.model_panel.adapt.setChecked(True)
    import threading
    import time

    fits, running, most = [], [0], [0]
    lock = threading.Lock()

    def forced(meta, tiles, scene="", **kw):  # the choice is fixed: what is tested is what the app does with it
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)  # slower than the reviewer's Enter presses
        with lock:
            running[0] -= 1
        fits.append(len(tiles))
        # the fourth tile changes the scene's main class (the same one again would store nothing new)
        return Adaptation("main", scene, len(tiles), main_class=2 + (len(tiles) >= 4), cv={"none": 0.1, "main": 0.2})

    monkeypatch.setattr(adapt_mod, "fit_adaptation", forced)
    session = window.session
    for e in session.project.entries:
        e.group = "A"
    for _ in range(3):  # Enter on three tiles in a row, faster than the fits finish
        session.fill_unlabeled(window.current_id)
        window.mark_reviewed()
    registry = ModelRegistry(session.project)
    qtbot.waitUntil(lambda: not window._adapting and fits and fits[-1] == 3, timeout=30_000)
    assert most[0] == 1 and fits == sorted(fits)  # never two at once; the last fit saw every reviewed tile
    first = registry.active
    assert first.parent == registry.versions()[0].key and first.note.startswith("adapted on 3 tiles")
    # the next review refits on top of the adapted model in use: a second version, with the same base as parent
    session.fill_unlabeled(window.current_id)
    window.mark_reviewed()
    qtbot.waitUntil(lambda: not window._adapting and fits[-1] == 4, timeout=30_000)
    second = registry.active
    assert second.key != first.key and second.parent == first.parent and second.note.startswith("adapted on 4 tiles")
    assert session.checkpoint.meta.adaptation["scene"] == "A" and session.checkpoint.meta.adaptation["tiles"] == 4
    keys = [window.training_panel.versions.topLevelItem(i).data(0, QtCore.Qt.ItemDataRole.UserRole)
            for i in range(window.training_panel.versions.topLevelItemCount())]
    assert {first.key, second.key} <= set(keys)  # listed, so either can be rolled back
    row = window.training_panel.versions.topLevelItem(keys.index(second.key))
    assert row.text(2) == "4 tiles reviewed"  # what it learned from, not "4 img / 0 px" corrected


def test_a_rollback_while_an_adaptation_is_fitted_wins(window, qtbot, monkeypatch):
    import threading

    import seepview.core.adapt as adapt_mod
    from seepview.core.adapt import Adaptation
    from seepview.core.versions import ModelRegistry

    window.model_panel.adapt.setChecked(True)
    session = window.session
    for e in session.project.entries:
        e.group = "A"
    go, fitting = threading.Event(), threading.Event()

    def slow(meta, tiles, scene="", **kw):
        fitting.set()
        go.wait(10)
        return Adaptation("main", scene, len(tiles), main_class=2, cv={"none": 0.1, "main": 0.2})

    monkeypatch.setattr(adapt_mod, "fit_adaptation", slow)
    registry = ModelRegistry(session.project)
    base = registry.ensure_base(session.checkpoint)
    for _ in range(2):
        session.fill_unlabeled(window.current_id)
        window.mark_reviewed()
    qtbot.waitUntil(fitting.is_set, timeout=10_000)
    other = registry.add(session.checkpoint, note="the user's choice")  # promoted by hand while the fit runs
    registry.promote(other)
    go.set()
    qtbot.waitUntil(lambda: not window._adapting, timeout=20_000)
    assert registry.active.key == other.key and len(registry.versions()) == 2  # no adaptation was registered
    assert base.key != other.key and not session.checkpoint.meta.adaptation


def test_a_tile_next_to_a_reviewed_one_says_its_slicks_were_typed_from_there(qtbot, tmp_path):
    """Issue 11: the reviewed tile's labels reach across the edge, and the Model panel tells the user."""
    from seepview.core.project import Project
    from tests.core.test_scene_grid import TILE, _grid_project

    project = _grid_project(tmp_path)
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors", poor=True)  # every pixel "seep 3": one blob
    project.settings["active_model"] = "models/tiny.safetensors"
    project.save()
    labels = np.zeros((TILE, TILE), np.uint8)
    labels[10:20, -6:] = 2
    project.save_labels("777001.000006", labels)
    project.set_status("777001.000006", "reviewed")
    window = MainWindow(ReviewSession(Project.open(project.root)))
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.image_opened, timeout=10_000):
        window.show()
    with qtbot.waitSignal(window.prediction_shown, timeout=30_000):
        window.open_image("777001.000007")
    qtbot.waitUntil(lambda: "Predicted" in window.model_panel.state.text(), timeout=10_000)
    assert "reviewed tile to the left" in window.model_panel.state.text()
    assert set(np.unique(window.session.current.prediction.labels)) == {2}, "the slick took the neighbour's class"
    with qtbot.waitSignal(window.prediction_shown, timeout=30_000):
        window.open_image("777001.000009")  # no reviewed neighbour
    qtbot.waitUntil(lambda: "Predicted" in window.model_panel.state.text(), timeout=10_000)
    assert "reviewed tile" not in window.model_panel.state.text()
    window.open_image("777001.000007")  # cached now: the panel still says why its slick has that class
    assert window.model_panel.state.text().startswith("Cached prediction")
    assert "reviewed tile to the left" in window.model_panel.state.text()


def test_marking_a_tile_reviewed_re_predicts_its_neighbours_in_the_background(qtbot, tmp_path):
    from seepview.core.project import Project
    from tests.core.test_scene_grid import _grid_project

    project = _grid_project(tmp_path)
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    project.save()
    window = MainWindow(ReviewSession(Project.open(project.root)))
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.image_opened, timeout=10_000):
        window.show()
    session = window.session
    neighbours = ["777001.000001", "777001.000006", "777001.000008", "777001.000013"]
    for i in neighbours:
        session.store_prediction(session.prediction_job(i)())
    with qtbot.waitSignal(window.prediction_shown, timeout=30_000):
        window.open_image("777001.000007")
    window.mark_reviewed()
    if session.project.entry("777001.000007").status != "reviewed":  # predicted pixels were filled in first
        window.mark_reviewed()
    assert session.project.entry("777001.000007").status == "reviewed"
    assert "no tile grid" not in window.statusBar().currentMessage()
    key = session.weights_key
    qtbot.waitUntil(lambda: all(session.project.load_prediction(i, key) is not None for i in neighbours),
                    timeout=30_000)


def test_a_review_in_a_scene_without_a_readable_grid_says_its_neighbours_are_not_typed(window):
    """The demo's scenes hold 2 tiles each, too few to read a grid from: the user is told why a review does
    nothing next door, instead of silence."""
    session = window.session
    image_id = window.current_id
    scene = session.project.entry(image_id).group or image_id
    assert sum((e.group or e.id) == scene for e in session.project.entries) == 2
    session.fill_unlabeled(image_id)
    window.mark_reviewed()
    assert session.project.entry(image_id).status == "reviewed"
    message = window.statusBar().currentMessage()
    assert f"{image_id} reviewed and saved" in message and "no tile grid found for this scene" in message


def test_a_rollback_pauses_the_scenes_adaptation_until_the_user_resumes_it(window, qtbot, monkeypatch):
    """Before, the next Mark reviewed fitted a new adaptation on top and silently undid the rollback."""
    import seepview.core.adapt as adapt_mod
    from seepview.core.adapt import Adaptation, paused_scenes
    from seepview.core.versions import ModelRegistry

    window.model_panel.adapt.setChecked(True)
    fits = []

    def forced(meta, tiles, scene="", **kw):
        fits.append(len(tiles))
        return Adaptation("main", scene, len(tiles), main_class=2 + len(tiles) % 2, cv={"none": 0.1, "main": 0.2})

    monkeypatch.setattr(adapt_mod, "fit_adaptation", forced)
    session = window.session
    for e in session.project.entries:
        e.group = "A"
    for _ in range(2):
        session.fill_unlabeled(window.current_id)
        window.mark_reviewed()
    qtbot.waitUntil(lambda: not window._adapting and fits == [2], timeout=30_000)
    registry = ModelRegistry(session.project)
    adapted = registry.active
    base = registry.get(adapted.parent)
    panel = window.training_panel
    row = next(panel.versions.topLevelItem(i) for i in range(panel.versions.topLevelItemCount())
               if panel.versions.topLevelItem(i).data(0, QtCore.Qt.ItemDataRole.UserRole) == base.key)
    panel.versions.setCurrentItem(row)
    panel.rollback_selected()  # the user goes back to the plain base model
    assert registry.active.key == base.key and paused_scenes(session.project) == {"A": base.key}
    assert panel.state.text().startswith(f"Now using {base.key}. Scene adaptation after reviews is paused for scene A")
    assert window.model_panel.paused.isVisible() and window.model_panel.resume.isVisible()
    assert window.model_panel.paused.text() == f"Paused for scene A since the rollback to {base.key}."
    session.fill_unlabeled(window.current_id)
    window.mark_reviewed()  # a third review: nothing is fitted, the rollback stands, the status bar says why
    qtbot.wait(300)
    assert fits == [2] and not window._adapting and registry.active.key == base.key
    assert f"adapting scene A is paused since the rollback to {base.key}" in window.statusBar().currentMessage()
    window.model_panel.resume.click()  # the user asks for it again: fitted now, on all 3 reviewed tiles
    assert window.statusBar().currentMessage().startswith("Adapting scene A resumed: fitting it now")
    qtbot.waitUntil(lambda: not window._adapting and fits == [2, 3], timeout=30_000)
    assert paused_scenes(session.project) == {} and not window.model_panel.resume.isVisible()
    assert registry.active.key != base.key and registry.active.parent == base.key


def test_a_pause_lifted_by_another_program_leaves_the_model_panel(window):
    from seepview.core.adapt import PAUSED_KEY
    from seepview.core.project import Project

    project = window.session.project
    scene = window.session.current.entry.scene
    project.settings[PAUSED_KEY] = {scene: "tiny-v0"}
    project.save()
    window._show_adaptation()
    assert window.model_panel.resume.isVisibleTo(window) and scene in window.model_panel.paused.text()
    other = Project.open(project.root)  # `seepview adapt PROJECT` in a terminal lifts it
    other.settings[PAUSED_KEY] = {}
    other.save()
    window.sync_project()
    assert not window.model_panel.resume.isVisibleTo(window) and not window.model_panel.paused.isVisibleTo(window)
