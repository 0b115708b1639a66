"""The retrain loop: the gate on held-out data, epoch choice that never sees it, faults at every stage,
cancel, the child process, and edits made while training runs."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch

from seepview.core.classes import IGNORE
from seepview.core.errors import TrainingError
from seepview.core.model.normalize import SAR_NORMALIZATION
from seepview.core.retrain import (
    RetrainConfig,
    RetrainEvent,
    build_training_set,
    build_validation_set,
    retrain,
    retrain_and_record,
    validation_split,
)
from seepview.core.retrain import child as child_mod
from seepview.core.retrain import gate as gate_mod
from seepview.core.retrain import runner as runner_mod
from seepview.core.versions import ModelRegistry, weights_key


def state_of(checkpoint) -> dict:
    return {k: v.detach().clone() for k, v in checkpoint.model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a)  # NaN == NaN


def _registry_snapshot(project):
    files = sorted(p.name for p in project.models_dir.iterdir()) if project.models_dir.is_dir() else []
    return files, json.loads((project.root / "project.json").read_text())["settings"].get("active_model")


def test_gate_promotes_a_trained_model_and_rejects_corrupted_weights(labelled, tiny_checkpoint, quick, drive):
    current = tiny_checkpoint()
    with torch.no_grad():  # a bad current model: calls everything "seep 3"
        current.model.head.bias[3] = 5.0
    threads = torch.get_num_threads()
    # 10 tiles hold out 5: lower the minimum for an automatic promotion to what this project has
    outcome, events = drive(retrain(labelled, current, quick(seconds=16.0, lr=1e-2, promote_min_units=5)))
    assert torch.get_num_threads() == threads  # the GUI's prediction gets its threads back
    d = outcome.decision
    assert d.evidence and d.promote, d.reason
    assert d.score_after > d.score_before and d.ci[0] > 0
    assert isinstance(events[-1], RetrainEvent) and events[-1].kind == "gate"
    assert {"prepare", "step", "done", "gate"} <= {e.kind for e in events}
    assert outcome.candidate.meta.training["finetune"]["gate"]["promote"] is True
    # the same weights, corrupted: the gate refuses them on the same held-out units
    split = validation_split(labelled)
    val = build_validation_set(labelled, split, SAR_NORMALIZATION)
    good = outcome.candidate
    bad = tiny_checkpoint()
    bad.model.load_state_dict(good.model.state_dict())
    with torch.no_grad():
        for p in bad.model.parameters():
            p.add_(torch.randn_like(p) * 2.0)
    names = good.classes.names
    decision = gate_mod.Gate(0.0).decide(gate_mod.confusions(good, val), gate_mod.confusions(bad, val), names)
    assert not decision.promote and decision.score_after < decision.score_before


@pytest.mark.parametrize("budget", ["quick", "thorough"])
def test_epoch_choice_never_sees_the_validation_data(labelled, tiny_checkpoint, quick, drive, monkeypatch, budget):
    seen = {}
    from seepview.core.model import train as train_mod

    real_train = train_mod.train

    def spy(init, train_samples, val_samples, config, cancel=None, **kw):
        seen["train"] = {s.name for s in train_samples}
        seen["select"] = {s.name for s in val_samples}
        seen["patience"] = config.patience
        return real_train(init, train_samples, val_samples, config, cancel=cancel, **kw)

    monkeypatch.setattr(train_mod, "train", spy)
    outcome, _ = drive(retrain(labelled, tiny_checkpoint(), quick(budget=budget, epochs=2, seconds=3)))
    units = {u.name for u in validation_split(labelled).units()}
    assert units and outcome.decision is not None
    assert not (seen["train"] | seen["select"]) & units
    if budget == "quick":
        assert seen["select"] == set() and seen["patience"] is None  # last weights, no choice


def test_one_scene_project_can_be_gated(demo, label_with_truth, tiny_checkpoint, quick, drive):
    for e in demo.entries:
        e.group = "one-scene"
    label_with_truth(demo)
    outcome, _ = drive(retrain(demo, tiny_checkpoint(), quick(seconds=3)))
    assert outcome.decision.units >= 3 and outcome.decision.ci is not None, outcome.decision.reason  # judged


def _fail(exc):
    def raiser(*args, **kwargs):
        raise exc

    return raiser


@pytest.mark.parametrize("stage", ["scoring before", "scoring after", "training step", "registry write",
                                   "nan loss"])
def test_a_fault_at_any_stage_is_a_clear_error_and_changes_nothing(labelled, tiny_checkpoint, quick, drive,
                                                                    monkeypatch, stage):
    current = tiny_checkpoint()
    if stage == "nan loss":  # weights a huge learning rate would leave behind
        with torch.no_grad():
            next(iter(current.model.parameters())).fill_(float("nan"))
    ModelRegistry(labelled).ensure_base(current)
    before_state, before_reg = state_of(current), _registry_snapshot(labelled)
    if stage.startswith("scoring"):
        calls = []
        real = runner_mod.confusions

        def flaky(*args, **kwargs):
            calls.append(1)
            if len(calls) == (1 if stage == "scoring before" else 2):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(*args, **kwargs)

        monkeypatch.setattr(runner_mod, "confusions", flaky)
        expected = "out of memory"
    elif stage == "training step":
        from seepview.core.model import unet

        real_forward = unet.UNet.forward

        def broken(self, x):
            if self.training:
                raise RuntimeError("a kernel failed")
            return real_forward(self, x)

        monkeypatch.setattr(unet.UNet, "forward", broken)
        expected = "a kernel failed"
    elif stage == "registry write":
        monkeypatch.setattr(ModelRegistry, "add", _fail(OSError(28, "No space left on device")))
        expected = None
    else:
        expected = "loss became nan"
    if expected is None:
        with pytest.raises(OSError, match="No space left"):
            drive(retrain_and_record(labelled, current, quick(seconds=2)))
    else:
        with pytest.raises(TrainingError) as info:
            drive(retrain_and_record(labelled, current, quick(seconds=2)))
        assert expected in str(info.value) and "unchanged" in str(info.value)
    assert same_state(before_state, state_of(current))
    assert _registry_snapshot(labelled) == before_reg


@pytest.mark.slow
def test_child_that_dies_is_reported(labelled, tiny_checkpoint, quick, drive, monkeypatch):
    """The child's entry point replaced by one that exits at once (spawned children import it fresh, so the
    replacement is a picklable standard-library callable)."""
    monkeypatch.setattr(child_mod, "child_main", functools.partial(os._exit, 3))
    current = tiny_checkpoint()
    before = state_of(current)
    with pytest.raises(TrainingError, match=r"stopped unexpectedly \(exit code 1\)|exit code 3"):
        drive(retrain(labelled, current, quick(process=True)))
    assert same_state(before, state_of(current))


@pytest.mark.slow
def test_child_killed_from_outside_is_reported(labelled, tiny_checkpoint, quick, drive):
    current = tiny_checkpoint()

    def kill_on_first_step(ev):
        if isinstance(ev, RetrainEvent) and ev.pid:
            kill_on_first_step.pid = ev.pid
        elif getattr(ev, "kind", "") == "step" and getattr(kill_on_first_step, "pid", None):
            os.kill(kill_on_first_step.pid, signal.SIGKILL)
            kill_on_first_step.pid = None

    before_state = state_of(current)
    with pytest.raises(TrainingError, match=r"stopped unexpectedly \(killed by signal 9\)"):
        drive(retrain(labelled, current, quick(process=True, seconds=30)), kill_on_first_step)
    assert same_state(before_state, state_of(current))


@pytest.mark.parametrize("process", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_cancel_stops_within_two_seconds_and_keeps_model(labelled, tiny_checkpoint, quick, drive, process):
    current = tiny_checkpoint()
    before = state_of(current)
    flag = threading.Event()
    t_cancel = []

    def on_event(ev):
        if getattr(ev, "kind", "") == "step" and not flag.is_set():
            flag.set()
            t_cancel.append(time.perf_counter())

    outcome, _ = drive(retrain(labelled, current, quick(seconds=60, process=process), cancel=flag.is_set), on_event)
    elapsed = time.perf_counter() - t_cancel[0]
    assert outcome.cancelled and outcome.candidate is None and outcome.decision is None
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    assert same_state(before, state_of(current))


def test_edits_during_training_are_kept_for_next_time(demo, label_with_truth, tiny_checkpoint, quick, drive):
    ids = [e.id for e in demo.entries]
    label_with_truth(demo, set(ids[:8]))
    current = tiny_checkpoint()
    late = demo.entry(ids[9])
    edit = np.full((128, 128), IGNORE, np.uint8)
    edit[10:20, 10:20] = 4

    def on_event(ev):
        if getattr(ev, "kind", "") == "step" and not demo.has_labels(late):
            demo.save_labels(late, edit)  # the user keeps editing while training runs

    outcome, _ = drive(retrain(demo, current, quick(seconds=3)), on_event)
    split = validation_split(demo)
    assert late.id not in {e.id for e in demo.entries[:8]} and outcome.stats.images == 8 - len(split.whole)
    assert np.array_equal(demo.load_labels(late), edit)  # the edit is persisted ...
    samples, _ = build_training_set(demo, weights_key(current), SAR_NORMALIZATION, split=split)
    assert late.id in {s.name for s in samples}  # ... and used next time


def test_nothing_to_train_on_is_a_clear_error(demo, tiny_checkpoint, quick, drive):
    with pytest.raises(TrainingError, match="nothing to train on"):
        drive(retrain(demo, tiny_checkpoint(), quick()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
def test_training_thread_runs_at_lower_priority_and_is_restored(labelled, tiny_checkpoint, quick, drive):
    tid = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, tid)
    seen = []
    stop = threading.Event()

    def on_event(ev):
        if getattr(ev, "kind", "") == "step":
            seen.append(os.getpriority(os.PRIO_PROCESS, tid))
            stop.set()

    drive(retrain(labelled, tiny_checkpoint(), quick(nice=5), cancel=stop.is_set), on_event)
    assert seen and seen[0] == min(19, before + 5)
    assert os.getpriority(os.PRIO_PROCESS, tid) == before


@pytest.mark.slow
def test_retrain_after_a_compiled_prediction_in_another_thread(labelled, tiny_checkpoint, quick, drive):
    """A compiled whole-scene prediction in a worker thread and the training warm-up in another must not
    race on importing torch._dynamo ("partially initialized module")."""
    from seepview.core.model.infer import Predictor

    current = tiny_checkpoint()
    image = np.random.default_rng(0).integers(1, 60000, (256, 256), dtype=np.uint16)
    errors = []

    def predict():
        try:
            Predictor(current, compile=True, tile=128, overlap=16).predict(image)
        except Exception as exc:  # noqa: BLE001 - the test reports whatever happened
            errors.append(exc)

    thread = threading.Thread(target=predict)
    thread.start()
    outcome, _ = drive(retrain(labelled, current, quick(seconds=3)))
    thread.join(120)
    assert not errors, errors
    assert outcome.decision is not None


@pytest.mark.parametrize("bad", [
    {"budget": "forever"}, {"tolerance": -1}, {"seconds": 0}, {"seconds": float("nan")}, {"lr": -1e-3},
    {"batch_size": 0}, {"patch": 0}, {"epochs": 0}, {"replay": -1}, {"threads": 0}, {"far_px": -1},
    {"correction_weight": 0}, {"validation_fraction": 1.0}, {"confidence": 1.0}, {"promote_min_units": 0},
    {"promote_min_units": 2.5}, {"promote_min_units": 4}, {"batch_size": True},
])
def test_config_refuses_nonsense(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=f"^{field} must be"):
        RetrainConfig(**bad)


def test_candidate_keeps_the_scenes_its_ancestors_saw(labelled, tiny_checkpoint, quick, drive):
    """``evaluate`` warns about scenes a model or its ancestors trained or validated on (optimistic scores)."""
    import dataclasses

    from seepview.core.retrain.runner import seen_groups

    current = tiny_checkpoint()
    current.meta = dataclasses.replace(current.meta, training={"train_groups": ["base-a"], "val_groups": ["base-v"]})
    outcome, _ = drive(retrain(labelled, current, quick(seconds=2)))
    seen = seen_groups(outcome.candidate.meta)
    assert "base-a" in seen["trained"] and "base-v" in seen["validated"]
    scenes = {e.group for e in labelled.entries}
    assert scenes & set(seen["trained"]) and scenes & set(seen["validated"])
