"""Segmentation losses that survive heavy class imbalance, unlabeled pixels and per-pixel weights.

Every loss takes raw logits (N, K, H, W), integer targets (N, H, W) where ``IGNORE`` (255) marks
unlabeled pixels, and an optional per-pixel weight map (N, H, W). The retrain loop uses that map to
weight the pixels a user corrected more, and to switch off pixels far from any edit (weight 0).

Losses are computed in float32 even under bf16 autocast: the soft-Dice/Tversky ratios of rare
classes underflow in bf16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from seepview.core.classes import IGNORE

LOSS_NAMES = ("ce", "dice", "focal_tversky", "ce+dice", "ce+focal_tversky")
DEFAULT_LOSS = "ce+dice"


def _valid_weights(target: torch.Tensor, weight_map: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """Per-pixel weight (N, H, W), zero on ignored pixels."""
    valid = (target != ignore_index).float()
    if weight_map is None:
        return valid
    if weight_map.shape != target.shape:
        raise ValueError(f"weight map shape {tuple(weight_map.shape)} != target shape {tuple(target.shape)}")
    return valid * weight_map.float()


def _one_hot(target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(N, K, H, W) float one-hot; ignored pixels are all-zero."""
    safe = torch.where(target == ignore_index, torch.zeros_like(target), target).long()
    if safe.numel() and int(safe.max()) >= num_classes:
        raise ValueError(f"target holds class id {int(safe.max())} but the model has {num_classes} classes")
    hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()
    return hot * (target != ignore_index).unsqueeze(1).float()


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor | Sequence[float] | None = None,
    weight_map: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Cross-entropy averaged with weights ``class_weight[y] * weight_map`` (PyTorch's weighted mean).

    Returns 0 (with a gradient path) when every pixel is ignored or has weight 0.
    """
    logits = logits.float()
    target = target.long()
    pix = _valid_weights(target, weight_map, ignore_index)
    safe = torch.where(target == ignore_index, torch.zeros_like(target), target)
    ce = F.cross_entropy(logits, safe, reduction="none")
    if class_weights is not None:
        cw = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
        pix = pix * cw[safe]
    total = pix.sum()
    return (ce * pix).sum() / total.clamp_min(1e-12)


def _class_stats(logits, target, weight_map, ignore_index):
    """Weighted soft TP, FP, FN per class summed over the batch (so tiny classes get stable ratios)."""
    logits = logits.float()
    target = target.long()
    k = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    hot = _one_hot(target, k, ignore_index)
    w = _valid_weights(target, weight_map, ignore_index).unsqueeze(1)
    dims = (0, 2, 3)
    tp = (w * probs * hot).sum(dims)
    fp = (w * probs * (1.0 - hot)).sum(dims)
    fn = (w * (1.0 - probs) * hot).sum(dims)
    present = (hot * w).sum(dims) > 0
    return tp, fp, fn, present


def _reduce_classes(per_class: torch.Tensor, present: torch.Tensor, classes: str) -> torch.Tensor:
    if classes == "present":
        if not bool(present.any()):
            return per_class.sum() * 0.0
        return per_class[present].mean()
    if classes == "all":
        return per_class.mean()
    raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight_map: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
    smooth: float = 1.0,
    classes: str = "present",
) -> torch.Tensor:
    """1 - mean soft Dice over classes, ``2TP / (2TP + FP + FN)`` with soft counts.

    ``classes="present"`` averages only over classes that occur in the batch's targets: a class absent
    from a patch would otherwise reward predicting nothing and drown the rare classes.
    """
    tp, fp, fn, present = _class_stats(logits, target, weight_map, ignore_index)
    dice = (2.0 * tp + smooth) / (2.0 * tp + fp + fn + smooth)
    return _reduce_classes(1.0 - dice, present, classes)


def focal_tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight_map: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
    alpha: float = 0.7,
    beta: float = 0.3,
    gamma: float = 4.0 / 3.0,
    smooth: float = 1.0,
    classes: str = "present",
) -> torch.Tensor:
    """Focal Tversky (Abraham & Khan 2019): mean over classes of ``(1 - TI) ** (1 / gamma)``.

    ``TI = TP / (TP + alpha FN + beta FP)``; alpha > beta penalises missed seep pixels more than false
    alarms, and the focal exponent keeps gradients alive for classes that are already nearly right.
    """
    tp, fp, fn, present = _class_stats(logits, target, weight_map, ignore_index)
    ti = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    per_class = (1.0 - ti).clamp_min(0.0) ** (1.0 / gamma)
    return _reduce_classes(per_class, present, classes)


class SegmentationLoss:
    """A named sum of terms; call as ``loss(logits, target, weight_map=None)``."""

    def __init__(self, name: str, class_weights: torch.Tensor | Sequence[float] | None = None,
                 ignore_index: int = IGNORE):
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")
        self.name = name
        self.ignore_index = ignore_index
        self.class_weights = (
            None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        )

    def __call__(self, logits: torch.Tensor, target: torch.Tensor,
                 weight_map: torch.Tensor | None = None) -> torch.Tensor:
        cw = self.class_weights
        if cw is not None and cw.device != logits.device:
            cw = self.class_weights = cw.to(logits.device)
        terms = self.name.split("+")
        total = logits.new_zeros((), dtype=torch.float32)
        for term in terms:
            if term == "ce":
                total = total + weighted_cross_entropy(logits, target, cw, weight_map, self.ignore_index)
            elif term == "dice":
                total = total + soft_dice_loss(logits, target, weight_map, self.ignore_index)
            elif term == "focal_tversky":
                total = total + focal_tversky_loss(logits, target, weight_map, self.ignore_index)
        return total

    def __repr__(self) -> str:
        return f"SegmentationLoss({self.name!r})"


def make_loss(name: str = DEFAULT_LOSS, class_weights: torch.Tensor | Sequence[float] | None = None,
              ignore_index: int = IGNORE) -> SegmentationLoss:
    """The loss called ``name`` (see ``LOSS_NAMES``); ``class_weights`` only affect the CE term.

    The default ``"ce+dice"`` with inverse-sqrt-frequency class weights (``data.class_weights``) is
    what keeps a model from predicting only the commonest seep class.
    """
    return SegmentationLoss(name, class_weights, ignore_index)
