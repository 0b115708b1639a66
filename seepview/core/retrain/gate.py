"""The gate: is the candidate at least as good as the current model, on evidence it never trained on?

Both models are scored on every validation unit (a tile, or a block of a large image) separately, keeping
one confusion matrix per unit. The score is ``metrics.miou_binary_score`` (the mean of mIoU and binary IoU)
of the pooled matrices, so one tile with a rare class does not swing it. Uncertainty comes from a paired
bootstrap over units: resample the units, pool both models' matrices on the same draw, take the difference.
With the 5-10 units a project has early on, plain bootstrap percentiles are too narrow (they cover less
than they claim), so the interval is Hesterberg's *expanded percentile* interval: the percentiles are taken
further out, as far as a t interval on ``n - 1`` degrees of freedom with the ``sqrt(n / (n - 1))`` bias
correction would reach (T. Hesterberg, "What teachers should know about the bootstrap", The American
Statistician 69, 2015). The candidate is promoted only when the lower end of that interval is at least
``-tolerance``; with too few units or seep pixels the verdict is "not enough evidence" and promotion is left
to the user. A pass on fewer than ``PROMOTE_MIN_UNITS`` units is shown but not acted on: measured on real
fine-tunes, the interval's promise does not hold on 5-7 tiles of one scene.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from seepview.core.errors import Cancelled
from seepview.core.model.data import Sample
from seepview.core.model.metrics import ConfusionMatrix, miou_binary_score

MIN_UNITS = 5  # to judge at all (and what the validation split tops up to)
#: To promote *automatically*. With fewer units the gate still judges and shows its interval, but a pass
#: only offers "Promote anyway": on real candidates and tiles, the expanded interval on 5-7 units still
#: passed candidates that were worse for the user (docs/benchmarks.md, the gate section, session 11).
PROMOTE_MIN_UNITS = 8
MIN_SEEP_PIXELS = 1000  # labelled non-background pixels over all units
BOOTSTRAP = 2000


def confusions(checkpoint, samples: Sequence[Sample], device=None, cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """(n_units, k, k) int64 confusion matrices of ``checkpoint`` on each sample (255 ignored), computed with
    the tiling ``train`` validates with.

    What is scored is the model as given, as the ``Predictor`` runs it: the typer (issue 11) re-types the
    network's blobs, and a scene adaptation applies on the units of its scene (``Sample.scene``). The gate's
    caller must hand it an adaptation fitted without these units (``restage.refit_adaptation``): the app's
    own is fitted on every reviewed tile of the scene, the units included. A unit's ``Sample.edges`` (its
    reviewed neighbours' labels) count as they do in the app: slicks continued across the edge, classes voted.
    """
    import torch

    from seepview.core.adapt import refine
    from seepview.core.model.infer import REFINE_MAX_PIXELS
    from seepview.core.model.train import forward_tiled

    k = len(checkpoint.classes)
    out = np.zeros((len(samples), k, k), dtype=np.int64)
    model = checkpoint.model
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    meta = checkpoint.meta
    staged = bool(meta.typer or meta.adaptation)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i, s in enumerate(samples):
                if cancel is not None and cancel():
                    raise Cancelled()
                x = torch.from_numpy(s.image).unsqueeze(0).to(dev)
                if (staged or s.edges) and s.mask.size <= REFINE_MAX_PIXELS:
                    probs8, labels = probs8_tiled(model, x, 1024)
                    pred = refine(meta, labels, s.image, probs8, s.nodata, scene=s.scene or None, edges=s.edges)
                else:
                    pred = forward_tiled(model, x, 1024)[0].to("cpu", torch.uint8).numpy()
                out[i] = ConfusionMatrix(k).update(pred, s.mask).matrix
    finally:
        model.train(was_training)
    return out


def probs8_tiled(model, image, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 softmax × 255 (K, H, W), uint8 argmax labels (H, W)) for one (1, C, H, W) image, in the
    non-overlapping tiles ``forward_tiled`` uses: what the typer reads, as the ``Predictor`` gives it."""
    import torch

    h, w = image.shape[-2:]
    probs = torch.empty((model.num_classes, h, w), dtype=torch.float32, device=image.device)
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            probs[:, y:y + tile, x:x + tile] = model(image[..., y:y + tile, x:x + tile]).softmax(1)[0]
    return ((probs * 255).round().to("cpu", torch.uint8).numpy(), probs.argmax(0).to("cpu", torch.uint8).numpy())


def evaluate(checkpoint, samples: Sequence[Sample], device=None, cancel: Callable[[], bool] | None = None) -> dict:
    """Pooled metrics (``ConfusionMatrix.metrics``) of ``checkpoint`` on ``samples``."""
    cms = confusions(checkpoint, samples, device, cancel)
    cm = ConfusionMatrix(len(checkpoint.classes))
    cm.matrix[...] = cms.sum(axis=0)
    return cm.metrics(checkpoint.classes.names)


def scores(matrices: np.ndarray) -> np.ndarray:
    """``miou_binary_score`` of each (k, k) matrix of a (..., k, k) stack, vectorised for the bootstrap
    (NaN where undefined). Absent classes are left out of mIoU exactly as ``ConfusionMatrix.metrics`` does."""
    m = matrices.astype(np.float64)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    denom = m.sum(axis=-2) + m.sum(axis=-1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)
        present = np.isfinite(iou)
        miou = np.where(present.any(axis=-1), np.nansum(iou, axis=-1) / np.maximum(present.sum(axis=-1), 1), np.nan)
        fg = m[..., 1:, 1:].sum(axis=(-2, -1))
        bden = fg + m[..., 0, 1:].sum(axis=-1) + m[..., 1:, 0].sum(axis=-1)
        binary = np.where(bden > 0, fg / np.where(bden > 0, bden, 1), np.nan)
    return np.where(np.isfinite(binary), 0.5 * (miou + binary), miou)


def expanded_alpha(confidence: float, units: int) -> float:
    """The two-sided tail probability whose bootstrap percentiles give the expanded percentile interval of
    ``confidence`` on ``units`` units (module doc); ``1 - confidence`` as units grow."""
    from scipy.stats import norm, t

    alpha = 1.0 - confidence
    if units < 2:
        return alpha
    reach = math.sqrt(units / (units - 1)) * float(t.ppf(1 - alpha / 2, units - 1))
    return float(2 * norm.sf(reach))


def paired_bootstrap(before: np.ndarray, after: np.ndarray, confidence: float = 0.9, n: int = BOOTSTRAP,
                     seed: int = 0, expanded: bool = True,
                     foreground_only: bool = False) -> tuple[float, float, float]:
    """(difference, low, high): the pooled score difference after - before and its interval from resampling
    the units (the same draw for both models: the comparison is paired); ``expanded`` (default): widened for
    few units (``expanded_alpha``), else the plain percentiles. ``foreground_only``: draws with no foreground
    pixel at all, in the truth or in either prediction, are left out: their difference is 0 by construction,
    and no evidence either way (a draw where one side predicts foreground on clean units still counts)."""
    units = before.shape[0]
    delta = float(scores(after.sum(axis=0)) - scores(before.sum(axis=0)))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(units, np.full(units, 1.0 / units), size=n).astype(np.float64)  # (n, units)
    pooled_b = np.einsum("nu,ukl->nkl", counts, before)
    pooled_a = np.einsum("nu,ukl->nkl", counts, after)
    diffs = scores(pooled_a) - scores(pooled_b)
    if foreground_only:
        empty = [counts @ (m.sum(axis=(1, 2)) - m[:, 0, 0]) == 0 for m in (before, after)]
        diffs[empty[0] & empty[1]] = np.nan
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return delta, math.nan, math.nan
    alpha = (expanded_alpha(confidence, units) if expanded else 1.0 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return delta, float(lo), float(hi)


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


@dataclass(frozen=True)
class ClassRow:
    """One line of the before/after table; None where a class has no pixels in either."""

    name: str
    before: float | None
    after: float | None

    @property
    def delta(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before


@dataclass
class Decision:
    """The gate's verdict with everything the user needs to see why.

    ``evidence`` is False when nothing may be promoted automatically for want of data: too little to judge
    (``ci`` None), or a pass on fewer than ``promote_min_units`` units (``ci`` set); the user may promote by
    hand. ``verdict`` names the four outcomes. ``unit_deltas``: (unit, score before, after) per unit.
    """

    promote: bool
    reason: str
    miou_before: float | None
    miou_after: float | None
    tolerance: float
    rows: list[ClassRow] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    evidence: bool = True
    score_before: float | None = None
    score_after: float | None = None
    ci: tuple[float, float] | None = None
    confidence: float = 0.9
    units: int = 0
    seep_pixels: int = 0
    unit_deltas: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    promote_min_units: int = 0

    @property
    def verdict(self) -> str:
        """"promoted", "rejected", "too few units to promote" (judged, passed, not acted on) or "not enough
        evidence" (not judged)."""
        if self.promote:
            return "promoted"
        if self.ci is None:
            return "not enough evidence"
        return "rejected" if self.evidence else "too few units to promote"

    @property
    def delta(self) -> float | None:
        if self.score_before is None or self.score_after is None:
            return None
        return self.score_after - self.score_before

    def to_dict(self) -> dict:
        return {
            "promote": self.promote,
            "verdict": self.verdict,
            "evidence": self.evidence,
            "reason": self.reason,
            "score_before": self.score_before,
            "score_after": self.score_after,
            "delta": self.delta,
            "ci": list(self.ci) if self.ci is not None else None,
            "confidence": self.confidence,
            "units": self.units,
            "promote_min_units": self.promote_min_units,
            "seep_pixels": self.seep_pixels,
            "miou_before": self.miou_before,
            "miou_after": self.miou_after,
            "binary_iou_before": _num(self.before.get("binary_iou")),
            "binary_iou_after": _num(self.after.get("binary_iou")),
            "tolerance": self.tolerance,
            "per_class": [{"name": r.name, "before": r.before, "after": r.after, "delta": r.delta} for r in self.rows],
            "per_unit": [{"unit": u, "before": b, "after": a} for u, b, a in self.unit_deltas],
        }


def _metrics(matrices: np.ndarray, names: Sequence[str]) -> dict:
    cm = ConfusionMatrix(len(names))
    cm.matrix[...] = matrices.sum(axis=0)
    return cm.metrics(names)


class Gate:
    """Promote only if the bootstrap interval's lower end of the score difference is >= ``-tolerance``."""

    def __init__(self, tolerance: float = 0.0, confidence: float = 0.9, min_units: int = MIN_UNITS,
                 min_seep_pixels: int = MIN_SEEP_PIXELS, expanded: bool = True,
                 promote_min_units: int = PROMOTE_MIN_UNITS):
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance = float(tolerance)
        self.confidence = float(confidence)
        self.min_units = int(min_units)
        self.promote_min_units = max(int(promote_min_units), self.min_units)
        self.min_seep_pixels = int(min_seep_pixels)
        self.expanded = bool(expanded)  # the small-sample interval (module doc); False: plain percentiles

    def decide(self, before: np.ndarray, after: np.ndarray, names: Sequence[str],
               unit_names: Sequence[str] = ()) -> Decision:
        """``before``/``after``: (n_units, k, k) confusion matrices of the two models on the same units."""
        before, after = np.asarray(before), np.asarray(after)
        units = int(before.shape[0]) if before.ndim == 3 else 0
        if units == 0:
            reason = ("not enough evidence: no validation images yet (mark tiles reviewed; a share of them is held "
                      "out to judge the new model). Promote it by hand if you trust it")
            return Decision(False, reason, None, None, self.tolerance, evidence=False, confidence=self.confidence,
                            promote_min_units=self.promote_min_units)
        mb, ma = _metrics(before, names), _metrics(after, names)
        rows = [ClassRow(n, _num(mb["per_class_iou"].get(n)), _num(ma["per_class_iou"].get(n))) for n in names]
        seep = int(before.sum(axis=0)[1:, :].sum())
        sb, sa = miou_binary_score(mb), miou_binary_score(ma)
        per_unit = [(unit_names[i] if i < len(unit_names) else str(i), _num(scores(before[i])), _num(scores(after[i])))
                    for i in range(units)]
        common = dict(before=mb, after=ma, score_before=sb, score_after=sa, confidence=self.confidence,
                      units=units, seep_pixels=seep, unit_deltas=per_unit, promote_min_units=self.promote_min_units)
        where = f"{units} validation unit{'s' if units != 1 else ''}, {seep:,} seep pixels"
        if units < self.min_units or seep < self.min_seep_pixels or sb is None or sa is None:
            reason = (f"not enough evidence to judge ({where}; needs {self.min_units} units and "
                      f"{self.min_seep_pixels:,} seep pixels): not promoted. Promote it by hand if you trust it")
            if sb is not None and sa is not None:
                reason = f"score {sb:.3f} -> {sa:.3f}, but " + reason
            return Decision(False, reason, _num(mb["miou"]), _num(ma["miou"]), self.tolerance, rows,
                            evidence=False, **common)
        delta, lo, hi = paired_bootstrap(before, after, self.confidence, expanded=self.expanded)
        pct = round(self.confidence * 100)
        detail = (f"score {sb:.3f} -> {sa:.3f} ({delta:+.3f}, {pct}% interval {lo:+.3f} to {hi:+.3f}) on {where}; "
                  f"mIoU {mb['miou']:.3f} -> {ma['miou']:.3f}")
        bb, ba = _num(mb.get("binary_iou")), _num(ma.get("binary_iou"))
        if bb is not None and ba is not None:
            detail += f", binary IoU {bb:.3f} -> {ba:.3f}"
        promote = bool(lo >= -self.tolerance)
        if promote and units < self.promote_min_units:
            verb = "looks better" if lo > 0 else "looks not worse"
            reason = (f"{verb}: {detail}; but {units} units are too few to promote automatically (needs "
                      f"{self.promote_min_units}: on so few, candidates that passed were still worse for the user "
                      "elsewhere in the scene): not promoted. Promote it by hand if you trust it")
            return Decision(False, reason, _num(mb["miou"]), _num(ma["miou"]), self.tolerance, rows,
                            ci=(lo, hi), evidence=False, **common)
        if promote:
            verb = "better" if lo > 0 else "not worse"
            reason = f"{verb}: {detail}; even the interval's low end is within the tolerance {self.tolerance:.3f}"
        else:
            reason = f"may be worse: {detail}; the interval's low end is below -{self.tolerance:.3f}"
            worst = min((r for r in rows if r.delta is not None), key=lambda r: r.delta, default=None)
            if worst is not None and worst.delta < 0:
                reason += f"; worst class: {worst.name} {worst.before:.3f} -> {worst.after:.3f}"
        return Decision(promote, reason, _num(mb["miou"]), _num(ma["miou"]), self.tolerance, rows,
                        ci=(lo, hi), **common)
