"""Losses on cases small enough to compute by hand, including ignored pixels and weight maps."""

from __future__ import annotations

import math

import pytest
import torch

from seepview.core.model.losses import (
    LOSS_NAMES,
    focal_tversky_loss,
    make_loss,
    soft_dice_loss,
    weighted_cross_entropy,
)

# Two pixels, two classes: pixel 0 has logits (2, 0), pixel 1 has logits (0, 0).
LOGITS = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
P0 = math.exp(2) / (math.exp(2) + 1)  # softmax prob of class 0 at pixel 0


def test_ce_uniform_logits_is_ln2_and_ignores_255():
    target = torch.tensor([[[0, 255]]])
    assert weighted_cross_entropy(torch.zeros(1, 2, 1, 2), target).item() == pytest.approx(math.log(2))


def test_ce_class_weights_are_a_weighted_mean():
    target = torch.tensor([[[0, 1]]])
    expected = (-math.log(P0) * 1 + math.log(2) * 3) / 4
    assert weighted_cross_entropy(LOGITS, target, [1.0, 3.0]).item() == pytest.approx(expected, rel=1e-6)


def test_ce_weight_map_multiplies_class_weight_and_zero_weight_drops_pixel():
    target = torch.tensor([[[0, 1]]])
    wmap = torch.tensor([[[0.0, 2.0]]])
    # only pixel 1 counts
    assert weighted_cross_entropy(LOGITS, target, None, wmap).item() == pytest.approx(math.log(2))
    wmap = torch.tensor([[[1.0, 2.0]]])
    expected = (-math.log(P0) * 1 + math.log(2) * 2 * 3) / (1 + 6)
    assert weighted_cross_entropy(LOGITS, target, [1.0, 3.0], wmap).item() == pytest.approx(expected, rel=1e-6)


def test_all_ignored_gives_zero_loss_with_gradient():
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255)
    for name in LOSS_NAMES:
        loss = make_loss(name)(logits, target)
        assert loss.item() == 0.0
        loss.backward()


def test_soft_dice_by_hand():
    target = torch.tensor([[[0, 1]]])
    # class 0: p = (P0, .5), g = (1, 0): TP = P0, FP = .5, FN = 1 - P0
    # class 1: p = (1-P0, .5), g = (0, 1): TP = .5, FP = 1 - P0, FN = .5
    d0 = 2 * P0 / (2 * P0 + 0.5 + (1 - P0))
    d1 = 2 * 0.5 / (1.0 + (1 - P0) + 0.5)
    expected = 1 - (d0 + d1) / 2
    assert soft_dice_loss(LOGITS, target, smooth=0.0).item() == pytest.approx(expected, rel=1e-6)


def test_soft_dice_present_classes_only_and_ignore():
    # Only class 0 labelled (pixel 1 ignored): class 1 is absent and must not count.
    target = torch.tensor([[[0, 255]]])
    d0 = 2 * P0 / (2 * P0 + 0 + (1 - P0))  # ignored pixel contributes no FP
    assert soft_dice_loss(LOGITS, target, smooth=0.0).item() == pytest.approx(1 - d0, rel=1e-6)
    both = soft_dice_loss(LOGITS, target, smooth=0.0, classes="all").item()
    assert both > 1 - d0  # class 1 (nothing true, small FP) counted as a failure


def test_focal_tversky_by_hand_and_weight_map():
    target = torch.tensor([[[0, 1]]])
    a, b, g = 0.7, 0.3, 4 / 3
    ti0 = P0 / (P0 + a * (1 - P0) + b * 0.5)
    ti1 = 0.5 / (0.5 + a * 0.5 + b * (1 - P0))
    expected = ((1 - ti0) ** (1 / g) + (1 - ti1) ** (1 / g)) / 2
    assert focal_tversky_loss(LOGITS, target, smooth=0.0).item() == pytest.approx(expected, rel=1e-6)
    # Weight 0 on pixel 1 == ignoring it.
    w = torch.tensor([[[1.0, 0.0]]])
    ignored = torch.tensor([[[0, 255]]])
    assert focal_tversky_loss(LOGITS, target, w, smooth=0.0).item() == pytest.approx(
        focal_tversky_loss(LOGITS, ignored, smooth=0.0).item(), rel=1e-6
    )


def test_perfect_prediction_scores_near_zero():
    target = torch.tensor([[[0, 1, 1, 0]]])
    logits = torch.stack([(target == 0).float(), (target == 1).float()], 1) * 30.0
    for name in LOSS_NAMES:
        assert make_loss(name, [1.0, 5.0])(logits, target).item() < 1e-6


def test_make_loss_combination_is_sum_and_rejects_unknown():
    target = torch.tensor([[[0, 1]]])
    cw = [1.0, 3.0]
    combo = make_loss("ce+dice", cw)(LOGITS, target).item()
    assert combo == pytest.approx(
        weighted_cross_entropy(LOGITS, target, cw).item() + soft_dice_loss(LOGITS, target).item(), rel=1e-6
    )
    with pytest.raises(ValueError):
        make_loss("mse")


def test_weight_map_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        weighted_cross_entropy(LOGITS, torch.tensor([[[0, 1]]]), None, torch.ones(1, 2, 2))
