"""The gate: vectorised scores agree with ConfusionMatrix, the paired bootstrap, and the verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seepview.core.model.metrics import ConfusionMatrix, miou_binary_score
from seepview.core.retrain import Gate
from seepview.core.retrain.gate import paired_bootstrap, scores

NAMES = ["background", "seep 1", "seep 2"]


def _unit(rng, k=3, seep_hit=0.7, n=4000):
    """One tile's confusion matrix: mostly background, a slick found with rate ``seep_hit``."""
    true = np.zeros(n, np.uint8)
    true[: n // 10] = rng.integers(1, k, 1)[0]
    pred = true.copy()
    miss = rng.random(n) > seep_hit
    pred[: n // 10][miss[: n // 10]] = 0
    return ConfusionMatrix(k).update(pred, true).matrix


def test_vectorised_scores_match_the_metrics_definition():
    rng = np.random.default_rng(1)
    for _ in range(50):
        m = rng.integers(0, 50, (4, 4))
        m[rng.random((4, 4)) < 0.4] = 0  # absent classes, empty rows/columns
        cm = ConfusionMatrix(4)
        cm.matrix[...] = m
        expected = miou_binary_score(cm.metrics())
        got = float(scores(m))
        assert (expected is None and np.isnan(got)) or got == pytest.approx(expected)


def test_identical_models_give_a_zero_difference_whose_interval_holds_zero():
    rng = np.random.default_rng(0)
    units = np.stack([_unit(rng) for _ in range(20)])
    delta, lo, hi = paired_bootstrap(units, units.copy())
    assert delta == 0 and lo == 0 and hi == 0
    decision = Gate(0.0).decide(units, units.copy(), NAMES)
    assert decision.promote and decision.evidence and "not worse" in decision.reason


def test_clearly_better_is_promoted_and_clearly_worse_is_not():
    rng = np.random.default_rng(0)
    base = np.stack([_unit(rng, seep_hit=0.5) for _ in range(15)])
    rng = np.random.default_rng(0)
    good = np.stack([_unit(rng, seep_hit=0.9) for _ in range(15)])
    better = Gate(0.0).decide(base, good, NAMES, [f"t{i}" for i in range(15)])
    assert better.promote and better.ci[0] > 0 and better.delta > 0
    assert "better" in better.reason and "90% interval" in better.reason
    worse = Gate(0.02).decide(good, base, NAMES)
    assert not worse.promote and worse.evidence and worse.ci[1] < 0
    assert "may be worse" in worse.reason
    d = better.to_dict()
    assert len(d["per_unit"]) == 15 and d["per_unit"][0]["unit"] == "t0"
    json.dumps(d)


def test_one_lucky_tile_is_not_enough():
    """Candidate better on one tile, a bit worse on the rest: the interval straddles, so it is rejected."""
    rng = np.random.default_rng(3)
    before = np.stack([_unit(rng, seep_hit=0.7) for _ in range(10)])
    after = before.copy()
    after[0] = _unit(np.random.default_rng(9), seep_hit=1.0)
    rng = np.random.default_rng(4)
    for i in range(1, 10):
        after[i] = _unit(rng, seep_hit=0.6)
    d = Gate(0.0).decide(before, after, NAMES)
    assert not d.promote and d.ci[0] < 0


def test_too_little_evidence_is_said_and_not_promoted():
    rng = np.random.default_rng(0)
    two = np.stack([_unit(rng) for _ in range(2)])
    d = Gate().decide(two, two * 2, NAMES)
    assert not d.promote and not d.evidence and "not enough evidence" in d.reason and "by hand" in d.reason
    empty = np.zeros((0, 3, 3), np.int64)
    d = Gate().decide(empty, empty, NAMES)
    assert not d.promote and not d.evidence
    few_pixels = np.stack([_unit(rng, n=200) for _ in range(5)])
    assert not Gate().decide(few_pixels, few_pixels, NAMES).evidence


def test_a_pass_on_too_few_units_is_shown_but_not_promoted_automatically():
    """Judged on 6 units, clearly better: the verdict and interval are given, promotion is left to the user;
    the same matrices promote once the minimum is 6. A rejection needs no more than MIN_UNITS."""
    from seepview.core.retrain.gate import PROMOTE_MIN_UNITS

    rng = np.random.default_rng(0)
    base = np.stack([_unit(rng, seep_hit=0.5) for _ in range(6)])
    rng = np.random.default_rng(0)
    good = np.stack([_unit(rng, seep_hit=0.9) for _ in range(6)])
    d = Gate(0.0, promote_min_units=8).decide(base, good, NAMES)
    assert not d.promote and not d.evidence and d.ci is not None and d.ci[0] > 0
    assert d.verdict == "too few units to promote" and d.to_dict()["promote_min_units"] == 8
    assert d.reason.startswith("looks better") and "needs 8" in d.reason and "by hand" in d.reason
    assert Gate(0.0, promote_min_units=6).decide(base, good, NAMES).verdict == "promoted"
    worse = Gate(0.0, promote_min_units=8).decide(good, base, NAMES)
    assert not worse.promote and worse.evidence and "may be worse" in worse.reason and worse.verdict == "rejected"
    assert Gate().decide(base[:2], good[:2], NAMES).verdict == "not enough evidence"
    assert Gate().promote_min_units == PROMOTE_MIN_UNITS > Gate().min_units
    assert Gate(promote_min_units=1).promote_min_units == Gate().min_units  # never below what judging needs


def test_gate_rejects_a_higher_miou_that_finds_fewer_seeps():
    """mIoU up (a rare class gained) but binary IoU down a lot: worse for the user, so the score falls."""
    k = 3
    rng = np.random.default_rng(0)
    before, after = [], []
    for _ in range(12):
        true = np.zeros(3000, np.uint8)
        true[:300] = 1
        true[300:330] = 2
        b = true.copy()
        b[300:330] = 1  # class 2 called class 1, but found
        a = true.copy()
        a[:200] = 0  # class 2 right, most of class 1 missed
        before.append(ConfusionMatrix(k).update(b, true).matrix)
        after.append(ConfusionMatrix(k).update(a, true).matrix)
    d = Gate(0.0).decide(np.stack(before), np.stack(after), NAMES)
    assert d.miou_after > d.miou_before
    assert not d.promote and d.score_after < d.score_before
    del rng


def test_the_gate_scores_the_network_with_its_typer_and_a_scene_adaptation_on_its_scene_only():
    """A typer that rejects every blob must count in the gate, and so must a scene adaptation on its own scene's
    units (the runner hands it one fitted without them), but not on another scene's."""
    import dataclasses

    from seepview.core.adapt import Adaptation
    from seepview.core.model.checkpoint import Checkpoint
    from seepview.core.model.data import Sample
    from seepview.core.model.typer import feature_names, fit_typer
    from seepview.core.retrain.gate import confusions
    from tests.tiny import make_tiny_checkpoint

    poor = make_tiny_checkpoint(poor=True)  # the network calls everything seep 3
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        mask = np.zeros((40, 40), np.uint8)
        mask[5:30, 5:30] = 5
        nodata = np.zeros((40, 40), bool)
        nodata[:, :3] = True
        mask[nodata] = 255
        samples.append(Sample(rng.random((1, 40, 40)).astype(np.float32), mask, None, "S1", f"t{i}", nodata=nodata,
                              scene="S1" if i < 2 else "S2"))
    raw = confusions(poor, samples)
    assert raw[:, :, 3].sum() > 0
    n = 40
    rejector = fit_typer(rng.random((n, len(feature_names(8)))).astype(np.float32), np.zeros(n, np.int64),
                         np.full(n, 50), 8, rounds=5)  # every blob it ever saw was false: it rejects them all
    typed = Checkpoint(poor.model, dataclasses.replace(poor.meta, typer=rejector.to_dict()))
    staged = confusions(typed, samples)
    assert staged[:, :, 1:].sum() == 0 and staged[:, 5, 0].sum() == 3 * 25 * 25
    ad = Adaptation("main", "S1", 3, main_class=5, cv={"none": 0.1, "main": 0.2})
    adapted = Checkpoint(poor.model, dataclasses.replace(poor.meta, adaptation=ad.to_dict()))
    both = confusions(adapted, samples)
    assert np.array_equal(both[2], raw[2])  # scene S2: the adaptation is not for it
    assert both[:2, 5, 5].sum() == 2 * 25 * 25 and both[:2, :, 3].sum() == 0  # scene S1: all seep 5


def _population(size=400):
    """Units whose candidate is better on some, worse on others: (before, after, true pooled difference)."""
    rng = np.random.default_rng(0)

    def unit(i, hit, n=2000):
        r = np.random.default_rng([1, i])
        true = np.zeros(n, np.uint8)
        m = int(n * r.uniform(0.02, 0.2))
        true[:m] = r.integers(1, 3)
        pred = true.copy()
        pred[:m][r.random(m) > hit] = 0
        pred[m:][r.random(n - m) < r.uniform(0, 0.02)] = r.integers(1, 3)
        return ConfusionMatrix(3).update(pred, true).matrix

    hits = rng.uniform(0.3, 0.8, size)
    before = np.stack([unit(i, h) for i, h in enumerate(hits)])
    after = np.stack([unit(i, h) for i, h in enumerate(np.clip(hits + rng.normal(0.02, 0.25, size), 0, 1))])
    return before, after, float(scores(after.sum(axis=0)) - scores(before.sum(axis=0)))


def test_with_few_units_the_expanded_interval_covers_as_often_as_it_claims_and_plain_percentiles_do_not():
    """Draw 6 of 400 units many times: how often does the 90% interval hold the population's difference?"""
    before, after, true = _population()
    covered = {True: 0, False: 0}
    trials = 200
    for t in range(trials):
        idx = np.random.default_rng([2, t]).choice(len(before), 6, replace=False)
        for expanded in covered:
            _d, lo, hi = paired_bootstrap(before[idx], after[idx], 0.9, n=1000, seed=t, expanded=expanded)
            covered[expanded] += lo <= true <= hi
    assert covered[True] / trials >= 0.86, covered  # measured 0.90 (300 draws); plain 0.80
    assert covered[False] / trials <= 0.84, covered


def test_the_expanded_interval_is_wider_for_few_units_and_the_plain_one_for_many():
    from seepview.core.retrain.gate import expanded_alpha

    alphas = [expanded_alpha(0.9, n) for n in (5, 6, 8, 10, 20, 50, 1000)]
    assert all(a < b for a, b in zip(alphas, alphas[1:])) and alphas[0] < 0.02 and abs(alphas[-1] - 0.1) < 0.001
    before, after, _true = _population(60)
    few = paired_bootstrap(before[:6], after[:6], expanded=True), paired_bootstrap(before[:6], after[:6], expanded=False)
    assert few[0][1] < few[1][1] and few[0][2] > few[1][2]
    # some draw of 6 units that plain percentiles would promote, and the expanded interval does not
    population = _population()
    for t in range(200):
        idx = np.random.default_rng([3, t]).choice(len(population[0]), 6, replace=False)
        units = population[0][idx], population[1][idx]
        plain, expanded = (Gate(0.02, expanded=flag, promote_min_units=6) for flag in (False, True))  # the interval alone
        if plain.decide(*units, NAMES).promote and not expanded.decide(*units, NAMES).promote:
            break
    else:
        raise AssertionError("the expanded interval never changed a verdict in 200 draws of 6 units")


def test_a_unit_is_scored_with_the_evidence_its_reviewed_neighbours_give_across_the_edge():
    """The user's prediction of a tile continues a slick a reviewed neighbour labelled at the shared edge
    (``scene_grid.grow_from_edges``); the gate scores each unit the same way, so both sides are judged on what
    the user would see."""
    import torch

    from seepview.core.model.data import Sample
    from seepview.core.retrain.gate import confusions
    from tests.tiny import make_tiny_checkpoint

    ck = make_tiny_checkpoint()
    with torch.no_grad():  # the network half-sees seep everywhere: argmax background, P(seep) about 0.85
        ck.model.head.weight.zero_()
        ck.model.head.bias.zero_()
        ck.model.head.bias[0] = 0.2
    image = np.ones((1, 40, 40), np.float32)
    image[0, 10:20, :] = -2.0  # a dark slick crossing the tile from its left edge
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, :] = 5
    line = np.zeros(40, np.uint8)
    line[10:20] = 5  # the reviewed tile to the left labelled it seep 5 at the shared edge
    plain = confusions(ck, [Sample(image, mask, None, "S1", "t0")])
    assert plain[0, :, 1:].sum() == 0  # without the neighbour the network finds nothing
    told = confusions(ck, [Sample(image, mask, None, "S1", "t0", edges={"left": line})])
    # its core (as dark as the median seed) continued up to 32 px from the edge, and nothing else
    assert 6 * 30 <= told[0, 5, 5] <= 10 * 33 and told[0, 0, 1:].sum() == 0
    assert told[0, :, 5].sum() == told[0, 5, 5]  # the neighbour's class
