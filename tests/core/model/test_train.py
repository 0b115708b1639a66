"""The training generator on tiny synthetic data: it learns, cancels, respects budgets and fails cleanly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seepview.core.classes import ClassTable
from seepview.core.errors import TrainingError
from seepview.core.model import data as d
from seepview.core.model.checkpoint import load_checkpoint
from seepview.core.model.train import TrainConfig, TrainEvent, run_training, train
from tests.tiny import make_tiny_checkpoint

CLASSES = ClassTable.from_names(["background", "blob"])
NORM = {"kind": "scale", "scale": 1.0}
ARCH = {"in_channels": 1, "base_width": 4, "depth": 2}


def _samples(n=12, size=24, seed=0):
    """Dark squares (class 1) on noisy bright background: learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.normal(0.6, 0.05, (1, size, size)).astype(np.float32)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(2, size - 10, 2)
        img[0, y:y + 8, x:x + 8] -= 0.4
        mask[y:y + 8, x:x + 8] = 1
        out.append(d.Sample(img, mask, group=f"g{i % 4}", name=f"g{i % 4}.{i}"))
    return out


def _config(**kw):
    base = dict(epochs=4, batch_size=4, patch=24, lr=1e-2, threads=1, seed=0, patience=None, warmup_fraction=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_loss_and_returns_a_checkpoint(tmp_path):
    samples = _samples()
    tr, va = d.split_by_group(samples, val_groups=["g0"])
    events: list[TrainEvent] = []
    result = run_training(ARCH, tr, va, _config(epochs=8, best_path=str(tmp_path / "best.safetensors")),
                          classes=CLASSES, normalization=NORM, on_event=events.append)
    epochs = [e for e in events if e.kind == "epoch"]
    assert len(epochs) == 8 and events[-1].kind == "done"
    assert epochs[-1].loss < 0.7 * epochs[0].loss
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, len(steps) + 1))
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in steps)
    assert all(e.val is not None and "miou" in e.val for e in epochs)
    assert not result.cancelled and result.stop_reason == "epochs done"
    meta = result.checkpoint.meta
    assert meta.metrics == result.best_metrics and meta.metrics["miou"] == max(e.val["miou"] for e in epochs)
    assert meta.fingerprint == d.fingerprint(tr) and meta.normalization == NORM
    assert meta.training["val_groups"] == ["g0"] and meta.training["patch"] == 24
    assert meta.training["device"] == "cpu" and meta.training["seconds"] > 0
    saved = load_checkpoint(tmp_path / "best.safetensors")  # the periodic best-model file
    assert saved.meta.metrics["miou"] == pytest.approx(meta.metrics["miou"])


def test_same_seed_same_result():
    samples = _samples(n=6)
    a = run_training(ARCH, samples, [], _config(epochs=1), classes=CLASSES, normalization=NORM)
    b = run_training(ARCH, samples, [], _config(epochs=1), classes=CLASSES, normalization=NORM)
    for (ka, va), (_, vb) in zip(a.checkpoint.model.state_dict().items(), b.checkpoint.model.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_freeze_bn_keeps_learned_running_statistics_and_still_learns():
    samples = _samples(n=6)
    base = run_training(ARCH, samples, [], _config(epochs=1), classes=CLASSES, normalization=NORM).checkpoint
    bn = [k for k in base.model.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert bn
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    free = run_training(base, samples, [], _config(epochs=2), normalization=NORM)
    frozen = run_training(base, samples, [], _config(epochs=2, freeze_bn=True), normalization=NORM)
    frozen_sd, free_sd = frozen.checkpoint.model.state_dict(), free.checkpoint.model.state_dict()
    assert all(torch.equal(frozen_sd[k], before[k]) for k in bn)  # learned statistics kept
    assert not all(torch.equal(free_sd[k], before[k]) for k in bn)
    weights = [k for k in frozen_sd if k.endswith("weight")]
    assert any(not torch.equal(frozen_sd[k], before[k]) for k in weights)  # the weights still learn
    assert frozen.checkpoint.meta.training["freeze_bn"] is True


def test_freeze_bn_lets_a_fresh_model_learn_its_statistics():
    """A never-trained model has no statistics worth keeping: freeze_bn must not pin the defaults."""
    samples = _samples(n=6)
    fresh = run_training(ARCH, samples, [], _config(epochs=1, freeze_bn=True), classes=CLASSES, normalization=NORM)
    sd = fresh.checkpoint.model.state_dict()
    means = [k for k in sd if k.endswith("running_mean")]
    assert any(sd[k].abs().sum() > 0 for k in means)


def test_best_model_selection_by_miou_or_by_miou_and_binary():
    samples = _samples()
    tr, va = d.split_by_group(samples, val_groups=["g0"])

    def best(select):
        events: list[TrainEvent] = []
        result = run_training(ARCH, tr, va, _config(epochs=6, select=select), classes=CLASSES,
                              normalization=NORM, on_event=events.append)
        vals = [e.val for e in events if e.kind == "epoch"]
        return result.best_metrics, vals

    got, vals = best("miou")
    assert got["miou"] == max(v["miou"] for v in vals)
    got, vals = best("miou+binary")
    assert got["miou"] + got["binary_iou"] == pytest.approx(max(v["miou"] + v["binary_iou"] for v in vals))
    with pytest.raises(TrainingError, match="unknown selection"):
        run_training(ARCH, tr, va, _config(select="f1"), classes=CLASSES, normalization=NORM)


def test_cancel_stops_between_steps_and_leaves_the_init_model_alone():
    samples = _samples()
    init = make_tiny_checkpoint(name="", classes=CLASSES, normalization=NORM, fingerprint="parentfp")
    init_model = init.model
    before = {k: v.clone() for k, v in init_model.state_dict().items()}
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3  # allow three steps

    events = []
    result = run_training(init, samples, samples[:2], _config(epochs=50), cancel=cancel, on_event=events.append)
    assert result.cancelled and result.stop_reason == "cancelled"
    assert sum(e.kind == "step" for e in events) == 3
    assert result.checkpoint is not None and result.checkpoint.meta.parent == "parentfp"
    for k, v in init_model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed: the caller's model must stay untouched"


def test_cancel_before_first_step_gives_no_checkpoint():
    result = run_training(ARCH, _samples(n=4), [], _config(), cancel=lambda: True, classes=CLASSES,
                          normalization=NORM)
    assert result.cancelled and result.checkpoint is None


def test_time_budget_stops_and_validates_the_partial_epoch():
    samples = _samples()
    result = run_training(ARCH, samples[3:], samples[:3], _config(epochs=1000, time_budget_s=1.0),
                          classes=CLASSES, normalization=NORM)
    assert result.stop_reason == "time budget" and not result.cancelled
    assert result.best_metrics is not None  # judged even though no epoch completed in time
    assert result.seconds < 60


def test_early_stopping_on_patience():
    samples = _samples(n=8)
    # lr 0: nothing improves after the first validation
    result = run_training(ARCH, samples[2:], samples[:2], _config(epochs=20, lr=0.0, patience=2),
                          classes=CLASSES, normalization=NORM)
    assert result.stop_reason == "early stopping" and len(result.history) == 3


def test_nan_loss_raises_training_error_and_init_untouched():
    samples = _samples(n=4)
    samples[0].image[:] = np.nan
    init = make_tiny_checkpoint(name="", classes=CLASSES, normalization=NORM)
    init_model = init.model
    before = {k: v.clone() for k, v in init_model.state_dict().items()}
    cfg = _config(rare_fraction=0.0, patches_per_epoch=8, batch_size=8)
    with pytest.raises(TrainingError, match="loss became nan"):
        run_training(init, samples, [], cfg)
    for k, v in init_model.state_dict().items():
        assert torch.equal(v, before[k])


def test_bad_inputs_raise_training_error():
    samples = _samples(n=4)
    with pytest.raises(TrainingError, match="class table"):
        run_training(ARCH, samples, [], _config())
    with pytest.raises(TrainingError, match="channel"):
        run_training({**ARCH, "in_channels": 3}, samples, [], _config(), classes=CLASSES, normalization=NORM)
    with pytest.raises(TrainingError, match="no training samples"):
        run_training(ARCH, [], [], _config(), classes=CLASSES, normalization=NORM)


def test_generator_yields_and_returns_result():
    gen = train(ARCH, _samples(n=4), [], _config(epochs=1), classes=CLASSES, normalization=NORM)
    kinds = []
    with pytest.raises(StopIteration) as stop:
        while True:
            kinds.append(next(gen).kind)
    assert kinds[-1] == "done" and "epoch" in kinds
    assert stop.value.value.checkpoint is not None
