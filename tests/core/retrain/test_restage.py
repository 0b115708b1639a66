"""Stage 2 after a fine-tune (issue 11): the typer is refitted on the new network's blobs when that helps
out-of-fold, a scene adaptation is fitted again, and the runner records what it did."""

from __future__ import annotations

import numpy as np
import torch

from seepview.core.adapt import TileData
from seepview.core.model.typer import blob_features, blob_targets, blobs_of, fit_typer
from seepview.core.retrain.restage import refit_typer_checked

K = 8


def _tile(rng, true_class, size=48):
    """A dark slick of ``true_class`` and a bright speck; the network calls both seep 1."""
    img = rng.normal(0.6, 0.05, (size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(12, size - 12, 2)
    slick = (yy - cy) ** 2 / rng.uniform(20, 80) + (xx - cx) ** 2 / rng.uniform(20, 80) < 1
    img[slick] -= 0.4
    truth = np.where(slick, true_class, 0).astype(np.uint8)
    detected = slick.copy()
    sy, sx = rng.integers(2, 8, 2)
    img[sy : sy + 3, sx : sx + 3] += 0.3
    detected[sy : sy + 3, sx : sx + 3] = True
    probs = np.zeros((K, size, size), np.float32)
    probs[0] = np.where(detected, 0.3, 0.95)
    probs[1] = 1 - probs[0]
    probs8 = (probs * 255).round().astype(np.uint8)
    return TileData(img, probs8, np.where(detected, 1, 0).astype(np.uint8), None, truth)


def _typer(tiles):
    parts = []
    for t in tiles:
        comp, n = blobs_of(t.labels)
        parts.append((blob_features(t.image, t.probs, comp, n), *blob_targets(comp, n, t.truth, K)))
    return fit_typer(*(np.concatenate(p) for p in zip(*parts)), K, rounds=30)


def test_a_refit_that_learns_the_new_scenes_class_replaces_the_carried_typer():
    rng = np.random.default_rng(0)
    old = _typer([_tile(rng, c) for c in (2, 5, 2) * 10])  # learnt elsewhere: such slicks are mostly seep 2
    new_scene = [_tile(rng, 5) for _ in range(16)]  # here they are all seep 5
    typer, note = refit_typer_checked(old, new_scene, K)
    assert typer is not old and note.startswith("typer refitted"), note
    fresh = _tile(rng, 5)
    out = typer.apply(fresh.labels, fresh.image, fresh.probs)
    assert (out[fresh.truth == 5] == 5).mean() > 0.9 and not out[fresh.truth == 0].any()
    assert typer.info["refit"]["blobs"] == 32 and typer.info["blobs"] == old.info["blobs"]


def test_a_refit_that_does_not_help_out_of_fold_keeps_the_carried_typer():
    rng = np.random.default_rng(1)
    old = _typer([_tile(rng, 2) for _ in range(30)])  # already right about these slicks: nothing to gain
    typer, note = refit_typer_checked(old, [_tile(rng, 2) for _ in range(12)], K)
    assert typer is old and note.startswith("typer carried over (refit cv"), note
    few, note = refit_typer_checked(old, [_tile(rng, 2) for _ in range(3)], K)  # 6 blobs: no refit is tried
    assert few is old and "a refit needs" in note


def test_the_fine_tune_refits_the_typer_on_its_new_network(labelled, tiny_checkpoint, quick, drive, monkeypatch):
    from seepview.core.adapt import Adaptation
    from seepview.core.retrain import restage, retrain

    monkeypatch.setattr(restage, "MIN_REFIT_BLOBS", 5)  # the 128² demo tiles hold fewer blobs than real scenes

    rng = np.random.default_rng(2)
    typer = _typer([_tile(rng, c) for c in (1, 2, 3) * 10])
    current = tiny_checkpoint(typer=typer.to_dict())
    scene = labelled.entries[0].group
    current.meta.adaptation = Adaptation("main", scene, 3, main_class=2, cv={"none": 0.1, "main": 0.2}).to_dict()
    with torch.no_grad():
        current.model.head.bias[3] = 5.0
    outcome, _events = drive(retrain(labelled, current, quick(seconds=12.0, lr=1e-2, refit_stage2=True)))
    stage2 = outcome.candidate.meta.training["finetune"]["stage2"]
    assert "cv" in stage2[0], stage2  # the refit was fitted and compared out-of-fold, whichever won
    assert any(n.startswith(f"scene {scene}:") for n in stage2), stage2
    assert outcome.candidate.meta.typer["model"]  # the candidate is scored and shipped with a typer
    assert current.meta.typer == typer.to_dict()  # the current model is untouched


def test_by_default_the_fine_tune_carries_the_typer_unchanged(labelled, tiny_checkpoint, quick, drive):
    from seepview.core.retrain import retrain

    rng = np.random.default_rng(3)
    typer = _typer([_tile(rng, c) for c in (1, 2) * 10])
    current = tiny_checkpoint(typer=typer.to_dict())
    outcome, _events = drive(retrain(labelled, current, quick(seconds=6.0)))
    assert outcome.candidate.meta.typer == typer.to_dict()
    assert outcome.candidate.meta.training["finetune"]["stage2"] == []
