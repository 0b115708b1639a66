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


class _Fits(list):
    """The sorted tile names of each ``fit_adaptation`` call; ``probes``: a hash of the probabilities it read."""

    def __init__(self):
        super().__init__()
        self.probes: list[int] = []


def _record_fits(monkeypatch) -> _Fits:
    """Record every ``fit_adaptation`` call from now on (which still fits)."""
    from seepview.core import adapt

    seen, real = _Fits(), adapt.fit_adaptation

    def recording(meta, tiles, **kw):
        seen.append(sorted(t.name for t in tiles))
        seen.probes.append(hash(b"".join(t.probs.tobytes() for t in sorted(tiles, key=lambda t: t.name))))
        return real(meta, tiles, **kw)

    monkeypatch.setattr(adapt, "fit_adaptation", recording)
    return seen


def test_refit_adaptation_fits_on_its_own_scenes_samples_only(tiny_checkpoint, monkeypatch):
    from seepview.core import adapt
    from seepview.core.model.data import Sample
    from seepview.core.retrain.restage import refit_adaptation

    seen = _record_fits(monkeypatch)
    rng = np.random.default_rng(4)
    samples = []
    for i, scene in enumerate(["A", "A", "B", "A", "A"]):
        mask = np.zeros((48, 48), np.uint8)
        mask[10:30, 10:30] = 2
        group = "" if i == 4 else scene  # the last has no group: the app's scene is then its own id, "A"
        samples.append(Sample(rng.random((1, 48, 48)).astype(np.float32), mask, None, group, f"{scene}{i}",
                              scene=scene if i < 4 else "A"))
    current = tiny_checkpoint()
    current.meta.adaptation = adapt.Adaptation("main", "A", 9, main_class=2, cv={"none": 0.1, "main": 0.2}).to_dict()
    refitted, note = refit_adaptation(current, samples, "A")
    assert seen == [["A0", "A1", "A3", "A4"]] and note.startswith("scene A:"), (seen, note)
    assert refitted.model is current.model and current.meta.adaptation["tiles"] == 9  # the current one is untouched
    assert not refitted.meta.adaptation or refitted.meta.adaptation["tiles"] == 4
    lone, note = refit_adaptation(current, samples, "B")  # one tile of B: nothing to fit out-of-fold
    assert lone.meta.adaptation == {} and "adaptation dropped" in note
    refit_adaptation(current, samples, "")  # an adaptation for every scene refits on all of them
    assert seen[-1] == ["A0", "A1", "A3", "A4", "B2"]


def test_every_scene_the_model_is_adapted_to_is_refitted_on_its_own_tiles(tiny_checkpoint, monkeypatch):
    from seepview.core import adapt
    from seepview.core.model.data import Sample
    from seepview.core.retrain.restage import adaptation_scenes, refit_adaptation

    def fixed(meta, tiles, scene="", **kw):  # the choice is fixed: what is tested is which tiles and scenes
        fits.append((scene, sorted(t.name for t in tiles)))
        return adapt.Adaptation("main", scene, len(tiles), main_class=2, cv={"none": 0.1, "main": 0.2})

    fits = []
    monkeypatch.setattr(adapt, "fit_adaptation", fixed)
    rng = np.random.default_rng(5)
    samples = []
    for i, scene in enumerate(["A", "B", "A", "B", "C", "C"]):
        mask = np.zeros((48, 48), np.uint8)
        mask[10:30, 10:30] = 2
        samples.append(Sample(rng.random((1, 48, 48)).astype(np.float32), mask, None, scene, f"{scene}{i}"))
    current = tiny_checkpoint()
    current.meta.adaptation = adapt.with_adaptation(
        adapt.Adaptation("main", "A", 9, main_class=3).to_dict(), adapt.Adaptation("main", "B", 9, main_class=3))
    assert adaptation_scenes(current) == ["A", "B"]
    refitted, note = refit_adaptation(current, samples, adaptation_scenes(current))
    assert fits == [("A", ["A0", "A2"]), ("B", ["B1", "B3"])]  # scene C has none: not fitted
    assert [(a.scene, a.tiles) for a in adapt.adaptations_of(refitted.meta.adaptation)] == [("A", 2), ("B", 2)]
    assert note.startswith("scene A: adapted on 2 tiles") and "; scene B: adapted on 2 tiles" in note


def test_the_gate_compares_adaptations_that_never_saw_its_units(labelled, tiny_checkpoint, quick, drive, monkeypatch):
    """The user sees the current model with a scene adaptation the app fitted on every reviewed tile. The gate
    must score it, and the candidate, each with an adaptation fitted again on the same training tiles only."""
    from seepview.core import adapt
    from seepview.core.retrain import retrain
    from seepview.core.retrain.validation import validation_ids

    seen = _record_fits(monkeypatch)
    current = tiny_checkpoint()
    current.meta.adaptation = adapt.Adaptation("main", "", 10, main_class=2, cv={"none": 0.1, "main": 0.2}).to_dict()
    outcome, events = drive(retrain(labelled, current, quick(seconds=6.0)))
    held = validation_ids(labelled)
    reviewed = sorted(e.id for e in labelled.entries if e.status == "reviewed" and e.id not in held)
    assert len(seen) == 2 and seen[0] == seen[1] == reviewed, (seen, held)  # the current model's twin, the candidate
    assert seen.probes[0] != seen.probes[1]  # ... each read from its own network
    assert any("without the validation data" in getattr(e, "message", "") for e in events)
    decision = outcome.decision
    assert decision.ci is not None and "outside the validation set" in decision.reason, decision.reason
    stage2 = outcome.candidate.meta.training["finetune"]["stage2"]
    assert len(stage2) == 1 and stage2[0].startswith("every scene:"), stage2
    assert current.meta.adaptation["tiles"] == 10  # the current model is untouched
