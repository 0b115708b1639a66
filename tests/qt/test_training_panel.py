"""The training panel driven like a user: button, live progress, gate table, cancel, faults, versions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PySide6 import QtCore

from seepview.core.demo import make_demo_project, truth_path
from seepview.core.imageio import read_mask
from seepview.core.retrain import Gate, RetrainEvent, RetrainOutcome, TrainingSetStats
from seepview.core.retrain import runner as runner_mod
from seepview.core.session import ReviewSession
from seepview.core.versions import ModelRegistry, weights_key
from seepview.qt.panels.training import TrainingPanel
from tests.tiny import make_tiny_checkpoint

LEFT = QtCore.Qt.MouseButton.LeftButton
FAST = {"seconds": 6.0, "patch": 64, "batch_size": 4, "lr": 1e-2, "replay": 0}


def poor_model(seed: int = 0):
    return make_tiny_checkpoint(seed, poor=True)


@pytest.fixture
def session(tmp_path):
    project = make_demo_project(tmp_path / "demo", n_images=10, size=128)
    for entry in project.entries[:9]:
        project.save_labels(entry, read_mask(truth_path(project, entry)))
        project.set_status(entry, "reviewed")
    return ReviewSession(project, poor_model())


@pytest.fixture
def panel(qtbot, session):
    panel = TrainingPanel(session)
    panel.config_overrides = dict(FAST)
    panel.model_promoted.connect(session.set_model)  # what the window does
    qtbot.addWidget(panel)
    panel.resize(420, 760)
    panel.show()
    yield panel
    panel.stop_and_wait()


def test_button_retrains_promotes_and_repredicts(qtbot, panel, session):
    old_key = session.weights_key
    panel.promote_min_units.setValue(5)  # the demo project holds out 5 tiles
    with qtbot.waitSignal(panel.model_promoted, timeout=90_000) as promoted, \
            qtbot.waitSignal(panel.finished, timeout=90_000) as done:
        qtbot.mouseClick(panel.retrain_button, LEFT)
        assert panel.running and not panel.retrain_button.isEnabled() and panel.cancel_button.isEnabled()
    outcome = done.args[0]
    assert outcome.decision.promote, outcome.decision.reason
    assert outcome.decision.score_after >= outcome.decision.score_before
    assert promoted.args[0] is outcome.candidate and session.weights_key == weights_key(outcome.candidate)
    assert session.weights_key != old_key
    # live progress reached the widgets
    assert panel._losses and panel.loss_curve.getData()[0] is not None
    assert panel.progress.format() == "done"
    # the before/after table: every class, then the mIoU and the gate's score
    assert panel.table.isVisible() and panel.table.rowCount() == 8 + 2
    assert panel.table.item(8, 0).text() == "mIoU" and panel.table.item(9, 0).text() == "score"
    assert "promoted" in panel.verdict.text() and "interval" in panel.verdict.text()
    assert not panel.promote_button.isVisible()
    # the held-out validation tiles are shown
    n_val = len(session.project.settings["validation_ids"])
    assert panel.validation.text().startswith(f"Validation: {n_val} tiles held out")
    # versions: base + new, the new one active and shown in the list
    registry = ModelRegistry(session.project)
    assert [v.version for v in registry.versions()] == [0, 1] and registry.active.version == 1
    assert panel.versions.topLevelItemCount() == 2
    assert "active" in panel.versions.topLevelItem(0).text(0)
    new = registry.active
    assert panel.versions.topLevelItem(0).text(2) == f"{new.images} img, {new.corrected_pixels:,} px corrected"
    assert new.images > 0 and panel.versions.topLevelItem(1).text(2) == "–"  # the base learned from nothing here
    # the unreviewed image gets re-predicted by the new model in the background; labels untouched
    unreviewed = [e for e in session.project.entries if e.status == "unreviewed"]
    qtbot.waitUntil(lambda: session.project.load_prediction(unreviewed[0], session.weights_key) is not None,
                    timeout=30_000)
    assert session.project.load_labels(unreviewed[0]) is None
    panel.grab().save(str(session.project.root / "training.png"))

    # one-click rollback to the base model
    base_row = panel.versions.topLevelItem(1)
    panel.versions.setCurrentItem(base_row)
    with qtbot.waitSignal(panel.model_promoted, timeout=5_000) as rolled:
        qtbot.mouseClick(panel.rollback_button, LEFT)
    assert ModelRegistry(session.project).active.version == 0
    assert weights_key(rolled.args[0]) == weights_key(poor_model())


def test_cancel_stops_within_two_seconds_and_keeps_the_model(qtbot, panel, session):
    panel.config_overrides["seconds"] = 120.0
    before = {k: v.clone() for k, v in session.checkpoint.model.state_dict().items()}
    key = session.weights_key
    qtbot.mouseClick(panel.retrain_button, LEFT)
    qtbot.waitUntil(lambda: len(panel._losses) > 0, timeout=60_000)
    with qtbot.waitSignal(panel.finished, timeout=2_000) as done:
        qtbot.mouseClick(panel.cancel_button, LEFT)
    assert done.args[0].cancelled
    qtbot.waitUntil(lambda: not panel.running, timeout=2_000)
    assert "unchanged" in panel.state.text() and panel.retrain_button.isEnabled()
    assert session.weights_key == key
    assert all(torch.equal(before[k], v) for k, v in session.checkpoint.model.state_dict().items())
    assert [v.version for v in ModelRegistry(session.project).versions()] == [0]


def _oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _kernel_failure(*args, **kwargs):
    raise RuntimeError("a kernel failed")  # superqt would swallow this one without the worker wrapper


def _scoring_fails_on(call: int):
    real = runner_mod.confusions
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            _oom()
        return real(*args, **kwargs)

    return flaky


@pytest.mark.parametrize("stage", ["scoring before", "scoring after", "registry write", "nan weights"])
def test_a_fault_at_any_stage_shows_a_message_and_returns_to_idle(qtbot, panel, session, monkeypatch, stage):
    if stage == "scoring before":
        monkeypatch.setattr(runner_mod, "confusions", _scoring_fails_on(1))
    elif stage == "scoring after":
        monkeypatch.setattr(runner_mod, "confusions", _scoring_fails_on(2))
    elif stage == "registry write":
        monkeypatch.setattr(ModelRegistry, "add", _kernel_failure)
    else:
        with torch.no_grad():
            next(iter(session.checkpoint.model.parameters())).fill_(float("nan"))
        session.set_model(session.checkpoint)
    key = session.weights_key
    with qtbot.waitSignal(panel.finished, timeout=60_000) as done:
        qtbot.mouseClick(panel.retrain_button, LEFT)
    assert isinstance(done.args[0], BaseException)
    expected = {"registry write": "a kernel failed", "nan weights": "loss became nan"}.get(stage, "out of memory")
    assert expected in panel.state.text() and panel.state.text().startswith("⚠")
    assert "Traceback" not in panel.state.text()
    assert not panel.running and panel.retrain_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert session.weights_key == key
    assert [v.version for v in ModelRegistry(session.project).versions()] == [0]


def test_a_failing_repredict_is_shown(qtbot, panel, session, monkeypatch):
    monkeypatch.setattr(session, "prediction_job", lambda image_id: _kernel_failure)
    panel._swap(poor_model(seed=2))
    qtbot.waitUntil(lambda: panel._repredict_worker is None, timeout=10_000)
    assert "re-predicting" in panel.state.text() and "a kernel failed" in panel.state.text()


def _confusions(hit: float, units: int = 6):
    rows = []
    for _ in range(units):
        m = np.zeros((8, 8), np.int64)
        m[0, 0] = 9000
        m[1, 1] = int(1000 * hit)
        m[1, 0] = 1000 - int(1000 * hit)
        rows.append(m)
    return np.stack(rows)


def test_rejected_candidate_shows_why_and_can_be_promoted_anyway(qtbot, panel, session):
    ModelRegistry(session.project).ensure_base(session.checkpoint)
    names = session.classes.names
    decision = Gate(0.0).decide(_confusions(0.6), _confusions(0.4), names)
    assert not decision.promote
    candidate = poor_model(seed=1)
    candidate.meta.parent = ModelRegistry(session.project).active.key
    stats = TrainingSetStats(images=4)
    version = ModelRegistry(session.project).add(candidate, promote=False, stats=stats)  # as the worker does
    panel._on_event(RetrainEvent("gate", decision.reason, decision=decision))
    panel._on_returned(RetrainOutcome(candidate, decision, 3.0, "cpu", stats=stats, version=version))
    assert panel.promote_button.isVisible() and "not promoted" in panel.verdict.text()
    assert "-0." in panel.verdict.text() and "&lt;" not in decision.reason  # numbers shown, nothing eaten as HTML
    delta_bg, delta_seep = panel.table.item(0, 3), panel.table.item(1, 3)
    assert delta_seep.text().startswith("-")
    assert delta_seep.foreground().color().red() > delta_seep.foreground().color().green()
    assert delta_bg.text().startswith("-")
    assert ModelRegistry(session.project).active.version == 0  # stored, not active
    with qtbot.waitSignal(panel.model_promoted, timeout=5_000):
        qtbot.mouseClick(panel.promote_button, LEFT)
    assert ModelRegistry(session.project).active.version == 1
    assert session.weights_key == weights_key(candidate)
    assert np.isfinite(panel.progress.value())


def test_a_pass_on_too_few_units_is_shown_and_offers_a_hand_promotion(qtbot, panel, session):
    decision = Gate(0.0).decide(_confusions(0.4), _confusions(0.9), session.classes.names)  # 6 units
    ModelRegistry(session.project).ensure_base(session.checkpoint)
    candidate = poor_model(seed=4)
    version = ModelRegistry(session.project).add(candidate, promote=False)
    panel._on_event(RetrainEvent("gate", decision.reason, decision=decision))
    panel._on_returned(RetrainOutcome(candidate, decision, 3.0, "cpu", version=version))
    text = panel.verdict.text()
    assert "not promoted automatically" in text and "looks better" in text and "interval" in text, text
    assert panel.promote_button.isVisible() and "passed" in panel.promote_button.toolTip()
    assert ModelRegistry(session.project).active.version == 0


def test_not_enough_evidence_offers_a_hand_promotion(qtbot, panel, session):
    decision = Gate(0.0).decide(_confusions(0.4, units=2), _confusions(0.9, units=2), session.classes.names)
    ModelRegistry(session.project).ensure_base(session.checkpoint)
    candidate = poor_model(seed=3)
    version = ModelRegistry(session.project).add(candidate, promote=False)
    panel._on_event(RetrainEvent("gate", decision.reason, decision=decision))
    panel._on_returned(RetrainOutcome(candidate, decision, 3.0, "cpu", version=version))
    assert "not judged" in panel.verdict.text() and "not enough evidence" in panel.verdict.text()
    assert panel.promote_button.isVisible()


def test_the_user_can_hold_an_image_out(qtbot, panel, session):
    from seepview.core.retrain import validation_split

    panel.show_validation()
    image = session.project.entries[0].id
    panel.show_image(image)
    was = panel.hold_out.isChecked()
    panel.hold_out.setChecked(not was)
    assert (image in validation_split(session.project).image_ids) == (not was)
    panel.show_image(session.project.entries[-1].id)  # not reviewed: it cannot be evidence by the rule
    assert not panel.hold_out.isChecked()


def test_held_out_images_are_marked_in_the_file_list(qtbot, session):
    from seepview.core.retrain import validation_split
    from seepview.qt.main_window import MainWindow

    window = MainWindow(session)
    qtbot.addWidget(window)
    held = validation_split(session.project).image_ids
    assert held  # reviewed tiles exist, so the rule was fixed when the window opened
    labels = {window.files_panel.list.item(r).data(QtCore.Qt.ItemDataRole.UserRole):
              window.files_panel.list.item(r).text() for r in range(window.files_panel.list.count())}
    assert all(("[validation]" in text) == (image_id in held) for image_id, text in labels.items())
    window.training_panel.stop_and_wait()


def test_settings_reach_the_retrain_config(panel):
    """What the user sets in the panel is what the fine-tune runs with."""
    panel.config_overrides = {}
    panel.tolerance.setValue(0.015)
    panel.correction_weight.setValue(4.5)
    panel.seconds.setValue(120)
    assert panel.config().seconds == 120.0 and panel.config().budget == "quick"
    panel.budget.setCurrentIndex(panel.budget.findData("thorough"))
    assert not panel.seconds.isEnabled()  # Thorough has no time budget
    config = panel.config()
    assert (config.tolerance, config.correction_weight, config.budget) == (0.015, 4.5, "thorough")


def test_settings_are_the_projects_and_survive_a_new_panel(qtbot, panel, session):
    panel.tolerance.setValue(0.01)
    panel.correction_weight.setValue(3.0)
    panel.promote_min_units.setValue(12)
    with qtbot.waitSignal(panel.finished, timeout=90_000):
        qtbot.mouseClick(panel.retrain_button, LEFT)
    stored = session.project.settings["retrain"]
    assert (stored["tolerance"], stored["correction_weight"], stored["promote_min_units"]) == (0.01, 3.0, 12)
    assert stored["seconds"] == 60.0  # the panel's own choice; the test's override (6 s) is not recorded
    fresh = TrainingPanel(session)
    qtbot.addWidget(fresh)
    assert (fresh.tolerance.value(), fresh.correction_weight.value()) == (0.01, 3.0)
    assert fresh.promote_min_units.value() == 12 and fresh.config().promote_min_units == 12


def test_the_version_list_says_what_each_version_learned_from():
    """A fine-tune: images and corrected pixels; a scene adaptation: its reviewed tiles, also as stored before
    ``learned_from`` existed (tiles as images, no pixels); the base: nothing."""
    from seepview.core.versions import ModelVersion
    from seepview.qt.panels.training import _learned_from

    v = {"key": "m-v1", "name": "m", "version": 1, "file": "f", "created": "c"}
    tuned = ModelVersion.from_dict(v | {"images": 5, "corrected_images": 3, "corrected_pixels": 1234})
    assert _learned_from(tuned) == "5 img, 1,234 px corrected"
    old = ModelVersion.from_dict(v | {"images": 14, "corrected_images": 14, "note": "adapted on 14 tiles for scene A"})
    assert _learned_from(old) == "14 tiles reviewed"
    new = ModelVersion.from_dict(v | {"learned_from": "3 tiles and 96 tile-sized blocks reviewed"})
    assert _learned_from(new) == "3 tiles and 96 tile-sized blocks reviewed"
    assert _learned_from(ModelVersion.from_dict(v | {"note": "base model"})) == "–"
