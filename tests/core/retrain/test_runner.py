"""Retrain on corrections: training-set builder, fixed validation split, gate, faults, cancel, snapshot."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch

from seepview.core.classes import IGNORE, ClassTable
from seepview.core.demo import make_demo_project, truth_path
from seepview.core.errors import TrainingError
from seepview.core.retrain import (
    Gate,
    RetrainConfig,
    RetrainEvent,
    build_training_set,
    choose_validation_groups,
    correction_weights,
    ensure_validation_split,
    evaluate,
    repredict_order,
    reset_validation,
    retrain,
    validation_ids,
)
from seepview.core.imageio import read_mask
from seepview.core.model.checkpoint import Checkpoint, make_meta
from seepview.core.model.metrics import miou_binary_score
from seepview.core.model.normalize import SAR_NORMALIZATION
from seepview.core.model.unet import UNet
from seepview.core.project import Project
from seepview.core.versions import weights_key
from seepview.core.versions import ModelRegistry

# --- helpers ---------------------------------------------------------------------------------------


def tiny_checkpoint(seed: int = 0, name: str = "tiny") -> Checkpoint:
    torch.manual_seed(seed)
    model = UNet(1, 8, base_width=4, depth=2).eval()
    return Checkpoint(model, make_meta(model, ClassTable.preset("sar-seep"), SAR_NORMALIZATION, name=name))


def state_of(checkpoint) -> dict:
    return {k: v.detach().clone() for k, v in checkpoint.model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def demo(tmp_path):
    return make_demo_project(tmp_path / "demo", n_images=8, size=64)


def label_with_truth(project: Project, ids=None, status="reviewed") -> None:
    for entry in project.entries:
        if ids is not None and entry.id not in ids:
            continue
        project.save_labels(entry, read_mask(truth_path(project, entry)))
        project.set_status(entry, status)


def quick(**kw) -> RetrainConfig:
    base = dict(budget="quick", seconds=4.0, patch=64, batch_size=4, threads=1, replay=0, lr=3e-3)
    base.update(kw)
    return RetrainConfig(**base)


def drive(gen, on_event=None):
    events = []
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value, events
        events.append(ev)
        if on_event is not None:
            on_event(ev)


# --- correction_weights: weights, ignore, partial labels ---------------------------------------------


def test_changed_pixels_weigh_more_and_unlabeled_is_ignored():
    labels = np.zeros((20, 20), np.uint8)
    labels[:, 15:] = IGNORE
    labels[5:8, 5:8] = 3
    pred = np.zeros((20, 20), np.uint8)
    lw = correction_weights(labels, pred, reviewed=True, correction_weight=3.0)
    assert lw.changed_pixels == 9
    assert lw.labelled_pixels == 20 * 15
    assert np.all(lw.weight[5:8, 5:8] == 3.0)
    assert lw.weight[0, 0] == 1.0
    assert np.all(lw.weight[:, 15:] == 0) and np.all(lw.mask[:, 15:] == IGNORE)
    assert np.array_equal(lw.mask[:, :15], labels[:, :15])


def test_unreviewed_image_ignores_pixels_far_from_edits():
    labels = np.zeros((100, 100), np.uint8)  # e.g. the prediction accepted, then one fix
    labels[10:12, 10:12] = 2
    pred = np.zeros((100, 100), np.uint8)
    lw = correction_weights(labels, pred, reviewed=False, correction_weight=3.0, far_px=5)
    assert lw.changed_pixels == 4
    assert lw.mask[10, 10] == 2 and lw.weight[10, 10] == 3.0
    assert lw.mask[10, 15] == 0 and lw.weight[10, 15] == 1.0  # 4 px away: kept
    assert lw.mask[10, 20] == IGNORE and lw.weight[10, 20] == 0.0  # 9 px away: ignored
    assert lw.mask[90, 90] == IGNORE
    # the same labels on a reviewed image are ground truth everywhere
    assert correction_weights(labels, pred, reviewed=True).labelled_pixels == 100 * 100


def test_unreviewed_without_edits_contributes_nothing_and_without_prediction_strokes_count():
    labels = np.zeros((30, 30), np.uint8)
    assert correction_weights(labels, labels.copy(), reviewed=False).labelled_pixels == 0
    strokes = np.full((30, 30), IGNORE, np.uint8)
    strokes[3:6, :] = 1
    lw = correction_weights(strokes, None, reviewed=False, correction_weight=2.0)
    assert lw.labelled_pixels == 90 and lw.changed_pixels == 90
    assert np.all(lw.weight[3:6] == 2.0)


def test_build_training_set_uses_cached_prediction_of_the_model(demo):
    ckpt = tiny_checkpoint()
    key = weights_key(ckpt)
    e_rev, e_part, e_none = demo.entries[:3]
    truth = read_mask(truth_path(demo, e_rev))
    pred = truth.copy()
    pred[:8, :8] = 5  # the model was wrong here; the user fixed it
    demo.save_prediction(e_rev, key, pred, np.full_like(pred, 200))
    demo.save_labels(e_rev, truth)
    demo.set_status(e_rev, "reviewed")
    part = np.zeros((64, 64), np.uint8)
    part[30:34, 30:34] = 1
    demo.save_prediction(e_part, key, np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8))
    demo.save_labels(e_part, part)  # becomes in_progress
    samples, stats = build_training_set(demo, key, SAR_NORMALIZATION, correction_weight=4.0, far_px=3, crop_min=8)
    by_name = {s.name: s for s in samples}
    assert set(by_name) == {e_rev.id, e_part.id}  # e_none has no labels
    s = by_name[e_rev.id]
    assert s.image.shape == (1, 64, 64) and s.image.dtype == np.float32
    assert s.group == e_rev.group
    changed = truth[:8, :8] != 5
    assert np.all(s.weight[:8, :8][changed] == 4.0)
    assert np.all(s.weight[8:, 8:] == 1.0)
    p = by_name[e_part.id]
    # partial: cropped to the edit's neighbourhood (+margin), far pixels ignored
    assert p.mask.shape[0] < 64 and (p.mask == 1).sum() == 16
    assert (p.weight == 4.0).sum() == 16
    assert stats.images == 2 and stats.corrected_images == 2
    assert stats.corrected_pixels == int(changed.sum()) + 16
    assert stats.fingerprint
    # excluded ids never appear
    samples, _ = build_training_set(demo, key, SAR_NORMALIZATION, exclude_ids={e_rev.id})
    assert [s.name for s in samples] == [e_part.id]


# --- the fixed validation split ------------------------------------------------------------------------


def test_choose_validation_groups_is_order_independent_and_never_takes_all():
    sizes = {f"scene{i}": 1 + i % 3 for i in range(12)}
    first = choose_validation_groups(sizes, 0.25)
    items = list(sizes.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        assert choose_validation_groups(dict(items), 0.25) == first
    assert 0 < sum(sizes[g] for g in first) - 0.25 * sum(sizes.values()) < 3
    assert choose_validation_groups({"a": 5, "b": 1}, 0.9) in ({"a"}, {"b"})
    assert choose_validation_groups({"a": 5}, 0.5) == set()


def test_validation_split_is_recorded_and_stable_across_runs(demo):
    assert ensure_validation_split(demo, 0.25, min_images=4) == set()  # nothing labelled yet
    label_with_truth(demo, {e.id for e in demo.entries[:6]})
    ids = ensure_validation_split(demo, 0.25, min_images=4)
    assert ids and len(ids) < 6
    groups = {demo.entry(i).group for i in ids}
    assert all(e.id in ids for e in demo.entries[:6] if e.group in groups)  # whole groups
    reopened = Project.open(demo.root)
    assert set(reopened.settings["validation_ids"]) == ids
    assert ensure_validation_split(reopened, 0.5, min_images=1) == ids  # recorded: not re-chosen
    # a newly labelled image of a reserved group joins validation; others do not
    label_with_truth(reopened)
    later = ensure_validation_split(reopened, 0.25, min_images=4)
    assert later == {e.id for e in reopened.entries if e.group in groups}
    assert validation_ids(reopened) == later
    # after a reset the choice is made again, from the same hash order
    reset_validation(reopened)
    assert "validation_ids" not in Project.open(demo.root).settings
    again = ensure_validation_split(reopened, 0.25, min_images=4)
    assert again and ensure_validation_split(Project.open(demo.root), 0.25) == again


def test_validation_split_does_not_depend_on_image_order(tmp_path):
    a = make_demo_project(tmp_path / "a", n_images=8, size=32)
    b = make_demo_project(tmp_path / "b", n_images=8, size=32)
    b._entries.reverse()  # same images, other order
    label_with_truth(a)
    label_with_truth(b)
    assert ensure_validation_split(a, 0.3) == ensure_validation_split(b, 0.3)


def test_single_group_projects_reserve_images(tmp_path):
    project = make_demo_project(tmp_path / "one", n_images=2, size=32)
    for e in project.entries:  # put both tiles in one scene
        e.group = "same"
    label_with_truth(project)
    ids = ensure_validation_split(project, 0.5, min_images=2)
    assert len(ids) == 1 and project.settings["validation"]["unit"] == "image"


# --- the gate ----------------------------------------------------------------------------------------


def _metrics(miou, per_class, binary=None):
    out = {"miou": miou, "per_class_iou": per_class}
    if binary is not None:
        out["binary_iou"] = binary
    return out


def test_gate_table_and_tolerance():
    before = _metrics(0.50, {"background": 0.9, "seep 1": 0.1, "seep 2": None})
    after = _metrics(0.49, {"background": 0.95, "seep 1": 0.03, "seep 2": None})
    strict = Gate(0.0).decide(before, after)
    assert not strict.promote and "seep 1" in strict.reason
    assert [r.name for r in strict.rows] == ["background", "seep 1", "seep 2"]
    assert strict.rows[0].delta == pytest.approx(0.05) and strict.rows[2].delta is None
    assert Gate(0.02).decide(before, after).promote
    assert "on 4 validation images" in Gate().decide(before, after, images=4).reason
    assert Gate().decide(before, _metrics(0.6, {})).promote
    undecided = Gate().decide(None, _metrics(0.6, {}))
    assert not undecided.promote and "validation" in undecided.reason
    json.dumps(strict.to_dict())


def test_gate_rejects_a_higher_miou_that_finds_fewer_seeps():
    """mIoU up a little, binary IoU down a lot (a rare class gained, detection lost): worse for the user."""
    before = _metrics(0.150, {"background": 0.98, "seep 1": 0.2}, binary=0.246)
    after = _metrics(0.158, {"background": 0.97, "seep 1": 0.1}, binary=0.142)
    assert miou_binary_score(before) == pytest.approx(0.198) and miou_binary_score(after) == pytest.approx(0.150)
    decision = Gate(0.0).decide(before, after)
    assert not decision.promote
    assert "binary IoU 0.246 -> 0.142" in decision.reason and "0.198 -> 0.150" in decision.reason
    assert decision.to_dict()["binary_iou_after"] == pytest.approx(0.142)
    assert Gate(0.05).decide(before, after).promote  # within a generous tolerance
    # a degenerate "everything is a seep" model: a large mIoU gain outweighs its trivial binary IoU
    trivial = _metrics(0.001, {}, binary=0.033)
    learned = _metrics(0.247, {}, binary=0.020)
    assert Gate(0.0).decide(trivial, learned).promote
    assert miou_binary_score(_metrics(0.3, {})) == 0.3  # no binary IoU: mIoU alone


def test_gate_promotes_trained_model_and_rejects_corrupted_weights(demo):
    label_with_truth(demo)
    current = tiny_checkpoint()
    with torch.no_grad():  # a bad current model: calls everything "seep 3"
        current.model.head.bias[3] = 5.0
    threads = torch.get_num_threads()
    outcome, events = drive(retrain(demo, current, quick(seconds=16.0, lr=1e-2, threads=1)))
    assert torch.get_num_threads() == threads  # the GUI's prediction gets its threads back
    assert outcome.decision is not None and outcome.candidate is not None
    assert outcome.decision.promote, outcome.decision.reason
    assert outcome.decision.miou_after > outcome.decision.miou_before
    assert isinstance(events[-1], RetrainEvent) and events[-1].kind == "gate"
    trained_with = outcome.candidate.meta.training  # the fine-tune's own sampling, not base training's
    assert (trained_with["rare_fraction"], trained_with["class_weight_power"], trained_with["freeze_bn"]) == (
        RetrainConfig.rare_fraction, RetrainConfig.class_weight_power, True)
    assert len(set(trained_with["class_weights"])) == 1  # power 0: every class weighs the same
    kinds = {e.kind for e in events}
    assert {"prepare", "step", "epoch", "done", "gate"} <= kinds
    # corrupt the good model's weights: the gate must refuse it
    val_ids = validation_ids(demo)
    val, _ = build_training_set(demo, [], SAR_NORMALIZATION, only_ids=val_ids, force_reviewed=True)
    good = outcome.candidate
    bad = tiny_checkpoint()
    bad.model.load_state_dict(good.model.state_dict())
    with torch.no_grad():
        for p in bad.model.parameters():
            p.add_(torch.randn_like(p) * 2.0)
    decision = Gate(0.0).decide(evaluate(good, val), evaluate(bad, val))
    assert not decision.promote
    assert decision.miou_after < decision.miou_before


# --- faults, cancel, snapshot ---------------------------------------------------------------------------


def _registry_snapshot(project):
    files = sorted(p.name for p in project.models_dir.iterdir())
    return files, json.loads((project.root / "project.json").read_text())["settings"].get("active_model")


@pytest.mark.parametrize("fault", ["nan", "error", "oom"])
def test_injected_fault_in_thread_leaves_model_unchanged(demo, fault):
    label_with_truth(demo)
    current = tiny_checkpoint()
    ModelRegistry(demo).ensure_base(current)
    before_state, before_reg = state_of(current), _registry_snapshot(demo)
    with pytest.raises(TrainingError) as info:
        drive(retrain(demo, current, quick(fault=fault)))
    message = str(info.value)
    assert "unchanged" in message
    assert {"nan": "loss became nan", "error": "injected fault", "oom": "out of memory"}[fault] in message
    assert same_state(before_state, state_of(current))
    assert _registry_snapshot(demo) == before_reg


@pytest.mark.slow
def test_exception_in_child_process_becomes_training_error(demo):
    label_with_truth(demo)
    current = tiny_checkpoint()
    before_state = state_of(current)
    with pytest.raises(TrainingError, match="injected fault") as info:
        drive(retrain(demo, current, quick(process=True, fault="error")))
    assert "unchanged" in str(info.value)
    assert same_state(before_state, state_of(current))


@pytest.mark.slow
def test_child_killed_from_outside_is_reported(demo):
    label_with_truth(demo)
    current = tiny_checkpoint()

    def kill_on_first_step(ev):
        if isinstance(ev, RetrainEvent) and ev.pid:
            kill_on_first_step.pid = ev.pid
        elif getattr(ev, "kind", "") == "step" and getattr(kill_on_first_step, "pid", None):
            os.kill(kill_on_first_step.pid, signal.SIGKILL)
            kill_on_first_step.pid = None

    before_state = state_of(current)
    with pytest.raises(TrainingError, match=r"stopped unexpectedly \(killed by signal 9\)"):
        drive(retrain(demo, current, quick(process=True, seconds=30)), kill_on_first_step)
    assert same_state(before_state, state_of(current))
    assert not list(demo.models_dir.iterdir())


@pytest.mark.parametrize("process", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_cancel_stops_within_two_seconds_and_keeps_model(demo, process):
    label_with_truth(demo)
    current = tiny_checkpoint()
    before = state_of(current)
    flag = threading.Event()
    t_cancel = []

    def on_event(ev):
        if getattr(ev, "kind", "") == "step" and not flag.is_set():
            flag.set()
            t_cancel.append(time.perf_counter())

    outcome, _ = drive(retrain(demo, current, quick(seconds=60, process=process), cancel=flag.is_set), on_event)
    elapsed = time.perf_counter() - t_cancel[0]
    assert outcome.cancelled and outcome.candidate is None and outcome.decision is None
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    assert same_state(before, state_of(current))


def test_edits_during_training_are_kept_for_next_time(demo):
    ids = [e.id for e in demo.entries]
    label_with_truth(demo, set(ids[:6]))
    current = tiny_checkpoint()
    late = demo.entry(ids[7])
    edit = np.full((64, 64), IGNORE, np.uint8)
    edit[10:20, 10:20] = 4

    def on_event(ev):
        if getattr(ev, "kind", "") == "step" and not demo.has_labels(late):
            demo.save_labels(late, edit)  # the user keeps editing while training runs

    outcome, _ = drive(retrain(demo, current, quick(seconds=3)), on_event)
    assert late.id not in validation_ids(demo)
    assert outcome.stats.images == 6 - len(validation_ids(demo))  # the snapshot did not see the edit
    assert np.array_equal(demo.load_labels(late), edit)  # the edit is persisted ...
    samples, _ = build_training_set(demo, weights_key(current), SAR_NORMALIZATION, exclude_ids=validation_ids(demo))
    assert late.id in {s.name for s in samples}  # ... and used next time


def test_nothing_to_train_on_is_a_clear_error(demo):
    with pytest.raises(TrainingError, match="nothing to train on"):
        drive(retrain(demo, tiny_checkpoint(), quick()))


def test_fault_kill_refused_in_thread_mode(demo):
    label_with_truth(demo)
    with pytest.raises(ValueError, match="process=True"):
        drive(retrain(demo, tiny_checkpoint(), quick(fault="kill")))


# --- after promotion -----------------------------------------------------------------------------------


def test_repredict_order_current_visible_then_nearest_unreviewed(demo):
    ids = [e.id for e in demo.entries]
    demo.set_status(ids[3], "reviewed")
    demo.set_status(ids[5], "in_progress")
    order = repredict_order(demo, current_id=ids[2], visible_ids=[ids[6], ids[3]])
    assert order[:2] == [ids[2], ids[6]]
    assert ids[3] not in order and ids[5] not in order  # labels of reviewed/edited images are theirs
    assert order[2:] == [ids[4], ids[7], ids[0], ids[1]]



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
def test_training_thread_runs_at_lower_priority_and_is_restored(demo):
    label_with_truth(demo)
    tid = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, tid)
    seen = []
    stop = threading.Event()

    def on_event(ev):
        if getattr(ev, "kind", "") == "step":
            seen.append(os.getpriority(os.PRIO_PROCESS, tid))
            stop.set()

    drive(retrain(demo, tiny_checkpoint(), quick(nice=5), cancel=stop.is_set), on_event)
    assert seen and seen[0] == min(19, before + 5)
    assert os.getpriority(os.PRIO_PROCESS, tid) == before


def test_repredict_runs_jobs_in_order_and_skips_unreadable_images():
    from seepview.core.errors import ImageReadError
    from seepview.core.retrain import repredict

    calls = []

    def job(name, fail=False):
        def run(cancel=None):
            calls.append(name)
            if fail:
                raise ImageReadError(name, "truncated TIFF")
            return name.upper()

        return run

    jobs = [("a", job("a")), ("b", job("b", fail=True)), ("c", job("c"))]
    assert list(repredict(jobs)) == ["A", "C"] and calls == ["a", "b", "c"]
    stop = threading.Event()
    gen = repredict(jobs, cancel=stop.is_set)
    assert next(gen) == "A"
    stop.set()
    assert list(gen) == []


def test_project_settings_round_trip_and_bad_values_are_dropped(tmp_path, caplog):
    from seepview.core.retrain import SETTINGS_KEY, project_settings, store_project_settings

    project = make_demo_project(tmp_path / "demo", n_images=2, size=32)
    assert project_settings(project) == {}
    store_project_settings(project, RetrainConfig(seconds=90, tolerance=0.01, correction_weight=3.0, process=True))
    again = Project.open(project.root)
    assert project_settings(again) == {"budget": "quick", "seconds": 90.0, "tolerance": 0.01,
                                       "correction_weight": 3.0, "process": True}
    stamp = (project.root / "project.json").stat().st_mtime_ns
    store_project_settings(again, RetrainConfig(seconds=90, tolerance=0.01, correction_weight=3.0, process=True))
    assert (project.root / "project.json").stat().st_mtime_ns == stamp  # unchanged: not rewritten
    again.settings[SETTINGS_KEY] = {"budget": "forever", "seconds": -5, "tolerance": "x", "correction_weight": 2,
                                    "process": "yes"}
    assert project_settings(again) == {"correction_weight": 2.0}
    assert "ignoring retrain setting budget='forever'" in caplog.text
    again.settings[SETTINGS_KEY] = ["not", "a", "dict"]
    assert project_settings(again) == {}
