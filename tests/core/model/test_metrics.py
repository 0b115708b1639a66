"""Metrics against a hand-made confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest

from seepview.core.model.metrics import ConfusionMatrix

NAMES = ["background", "a", "b", "c"]


def _pairs_from_matrix(matrix):
    """Pixels (pred, true) realising a given confusion matrix (rows true, cols pred)."""
    true, pred = [], []
    for t, row in enumerate(matrix):
        for p, n in enumerate(row):
            true += [t] * n
            pred += [p] * n
    return np.array(pred, np.uint8), np.array(true, np.uint8)


# Class 3 ("c") occurs in neither truth nor prediction.
MATRIX = [
    [50, 2, 3, 0],
    [4, 10, 1, 0],
    [1, 0, 5, 0],
    [0, 0, 0, 0],
]


def test_counts_and_scores_match_hand_computation():
    pred, true = _pairs_from_matrix(MATRIX)
    rng = np.random.default_rng(0)
    order = rng.permutation(pred.size)
    cm = ConfusionMatrix(4).update(pred[order].reshape(4, -1), true[order].reshape(4, -1))
    assert cm.matrix.tolist() == MATRIX
    m = cm.metrics(NAMES)
    # background: tp 50, fp 5, fn 5 -> IoU 50/60; a: tp 10, fp 2, fn 5 -> 10/17; b: tp 5, fp 4, fn 1 -> 5/10
    assert m["per_class"]["background"]["iou"] == pytest.approx(50 / 60)
    assert m["per_class"]["a"]["iou"] == pytest.approx(10 / 17)
    assert m["per_class"]["b"]["iou"] == pytest.approx(5 / 10)
    assert m["per_class"]["a"]["precision"] == pytest.approx(10 / 12)
    assert m["per_class"]["a"]["recall"] == pytest.approx(10 / 15)
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 * 10 / (2 * 10 + 2 + 5))
    assert m["per_class"]["b"]["support"] == 6
    assert m["per_class"]["b"]["predicted"] == 9
    # Absent class: undefined, excluded from the means.
    assert m["per_class"]["c"] == {
        "iou": None,
        "f1": None,
        "precision": None,
        "recall": None,
        "support": 0,
        "predicted": 0,
    }
    assert m["per_class_iou"]["c"] is None
    assert m["miou"] == pytest.approx((50 / 60 + 10 / 17 + 5 / 10) / 3)
    assert m["miou_foreground"] == pytest.approx((10 / 17 + 5 / 10) / 2)
    # binary: foreground tp = 10+1+0+5 = 16, fp = 2+3 = 5, fn = 4+1 = 5
    assert m["binary_iou"] == pytest.approx(16 / 26)
    assert m["pixel_accuracy"] == pytest.approx(65 / 76)
    assert m["confusion"] == MATRIX
    assert m["n_pixels"] == 76


def test_ignore_pixels_are_skipped_and_merge_adds():
    true = np.array([[0, 1, 255], [2, 255, 1]], np.uint8)
    pred = np.array([[0, 1, 2], [2, 0, 0]], np.uint8)
    a = ConfusionMatrix(3).update(pred, true)
    assert a.total == 4
    assert a.matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    b = ConfusionMatrix(3).update(pred, true)
    a.merge(b)
    assert a.matrix.tolist() == [[2, 0, 0], [2, 2, 0], [0, 0, 2]]
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(4))


def test_present_but_missed_class_counts_as_zero():
    cm = ConfusionMatrix(3).update(np.zeros(4, np.uint8), np.array([0, 0, 2, 2], np.uint8))
    m = cm.metrics()
    assert m["per_class_iou"] == {"0": 0.5, "1": None, "2": 0.0}
    assert m["miou"] == pytest.approx(0.25)
    assert m["miou_foreground"] == 0.0
    assert m["binary_iou"] == 0.0


def test_empty_matrix_has_no_scores():
    m = ConfusionMatrix(2).metrics(["bg", "x"])
    assert m["miou"] is None and m["binary_iou"] is None and m["pixel_accuracy"] is None


def test_out_of_range_ids_rejected_without_partial_update():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="truth holds class id"):
        cm.update(np.zeros(3, np.uint8), np.array([0, 1, 7], np.uint8))
    with pytest.raises(ValueError, match="prediction holds class id"):
        cm.update(np.array([0, 5, 1], np.int64), np.array([0, 1, 1], np.uint8))
    with pytest.raises(ValueError, match="pixels"):
        cm.update(np.zeros(3, np.uint8), np.zeros(4, np.uint8))
    assert cm.total == 0


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    cm = ConfusionMatrix(2).update(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]))
    assert cm.matrix.tolist() == [[0, 0], [1, 1]]


def test_matches_a_naive_loop_on_random_data():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 5, size=(37, 41)).astype(np.uint8)
    true[rng.random(true.shape) < 0.1] = 255
    pred = rng.integers(0, 5, size=true.shape).astype(np.uint8)
    expected = np.zeros((5, 5), np.int64)
    for t, p in zip(true.ravel(), pred.ravel()):
        if t != 255:
            expected[t, p] += 1
    assert np.array_equal(ConfusionMatrix(5).update(pred, true).matrix, expected)
