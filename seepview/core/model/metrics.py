"""Segmentation metrics from one confusion matrix accumulated over a whole dataset.

Accumulating counts (not averaging per-image scores) weights every pixel equally and lets shards from
several workers or DDP ranks be merged exactly. Rows are the true class, columns the predicted class.

Classes that occur in neither the truth nor the prediction have no defined IoU/F1: they are reported
as ``None`` (JSON null) and left out of ``miou`` and ``miou_foreground`` rather than counted as 0 or 1.
A class that is present in the truth but never predicted (or predicted but absent) scores IoU 0 and
does count. No-data pixels (``update(..., nodata=mask)``) count like truth 255: nowhere. Pixel accuracy
is reported for completeness, but it is near 1 for all-background
predictions on imbalanced data (cgg-seep: ~98%); judge models by IoU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seepview.core.classes import IGNORE

_CHUNK = 1 << 24  # pixels per bincount pass: bounds the int32 index temporary to 64 MB on huge scenes


def miou_binary_score(metrics: dict | None) -> float | None:
    """The mean of mIoU and binary IoU (mIoU alone where binary IoU is missing); None without mIoU.

    mIoU alone can rise while a model finds fewer seeps (one rare class gained, detection lost), which
    users experience as a worse model; binary IoU alone ignores the classes. The retrain gate compares
    models by it and training can pick its best epoch by it (``TrainConfig.select="miou+binary"``).
    """
    metrics = metrics or {}
    miou, binary = metrics.get("miou"), metrics.get("binary_iou")
    if miou is None or miou != miou:  # None or NaN
        return None
    if binary is None or binary != binary:
        return float(miou)
    return 0.5 * (float(miou) + float(binary))


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


class ConfusionMatrix:
    """``(num_classes, num_classes)`` int64 counts; ``update`` with predictions and truth of any shape."""

    def __init__(self, num_classes: int):
        if not 1 <= num_classes <= 255:
            raise ValueError(f"num_classes must be 1..255, got {num_classes}")
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, true, nodata=None) -> ConfusionMatrix:
        """Add one prediction/truth pair (same shape; pixels with truth 255 are ignored, and so are the
        image's no-data pixels when ``nodata``, a bool mask from ``seepview.core.nodata.nodata_mask``)."""
        pred, true = _as_numpy(pred).ravel(), _as_numpy(true).ravel()
        if pred.shape != true.shape:
            raise ValueError(f"prediction has {pred.size} pixels but the truth has {true.size}")
        keep = true != IGNORE
        if nodata is not None:
            nodata = _as_numpy(nodata).ravel()
            if nodata.shape != true.shape:
                raise ValueError(f"no-data mask has {nodata.size} pixels but the truth has {true.size}")
            keep &= ~nodata
        if not keep.all():
            pred, true = pred[keep], true[keep]
        if true.size == 0:
            return self
        counts = sum(
            self._count(pred[i : i + _CHUNK], true[i : i + _CHUNK]) for i in range(0, true.size, _CHUNK)
        )
        self.matrix += counts  # only after every chunk validated: a bad mask leaves the matrix untouched
        return self

    def _count(self, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
        k = self.num_classes
        for name, values in (("truth", true), ("prediction", pred)):
            lo, hi = (0, int(values.max())) if values.dtype.kind == "u" else (values.min(), values.max())
            if lo < 0 or hi >= k:
                bad = np.unique(values[(values < 0) | (values >= k)])[:5].tolist()
                raise ValueError(f"{name} holds class id(s) {bad} outside 0..{k - 1}")
        # One bincount over true*k+pred; int32 indices (k <= 255) halve the memory traffic of int64.
        idx = true.astype(np.int32) * k
        idx += pred.astype(np.int32, copy=False)
        return np.bincount(idx, minlength=k * k).reshape(k, k)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another worker or rank)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class counts into {self.num_classes}")
        self.matrix += other.matrix
        return self

    def reset(self) -> None:
        self.matrix[...] = 0

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def metrics(self, class_names: Sequence[str] | None = None) -> dict:
        """Per-class IoU/F1/precision/recall plus the summary scores (see module doc for absent classes).

        Returns ``{"miou", "miou_foreground", "binary_iou", "pixel_accuracy", "per_class": {name: {...}},
        "per_class_iou": {name: iou}, "confusion": [[...]], "n_pixels"}``; undefined values are None.
        """
        k = self.num_classes
        names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        if len(names) != k:
            raise ValueError(f"{len(names)} class names for {k} classes")
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        fp = m.sum(axis=0) - tp
        fn = m.sum(axis=1) - tp
        per_class = {}
        ious: list[float | None] = []
        for i, name in enumerate(names):
            iou = _ratio(tp[i], tp[i] + fp[i] + fn[i])
            ious.append(iou)
            per_class[name] = {
                "iou": iou,
                "f1": _ratio(2 * tp[i], 2 * tp[i] + fp[i] + fn[i]),
                "precision": _ratio(tp[i], tp[i] + fp[i]),
                "recall": _ratio(tp[i], tp[i] + fn[i]),
                "support": int(tp[i] + fn[i]),  # true pixels of this class
                "predicted": int(tp[i] + fp[i]),
            }
        present = [v for v in ious if v is not None]
        present_fg = [v for v in ious[1:] if v is not None]
        # Binary: any non-background class counts as "seep"/"corrosion", whichever type it was given.
        fg_tp = m[1:, 1:].sum()
        binary = _ratio(fg_tp, fg_tp + m[0, 1:].sum() + m[1:, 0].sum())
        return {
            "miou": float(np.mean(present)) if present else None,
            "miou_foreground": float(np.mean(present_fg)) if present_fg else None,
            "binary_iou": binary,
            "pixel_accuracy": _ratio(tp.sum(), m.sum()),
            "per_class": per_class,
            "per_class_iou": dict(zip(names, ious)),
            "confusion": self.matrix.tolist(),
            "n_pixels": self.total,
        }
