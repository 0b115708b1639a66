""""Retrain on my corrections": training set from a project, fixed validation split, gate.

The loop (``retrain``) is a generator so the GUI and the CLI drive the same code:

1. ``ensure_validation_split`` reserves, once, a group-wise subset of the labelled images (chosen by a
   hash of the scene/photo id, so it is stable across runs and independent of ordering) and records it
   in ``project.settings``. It is never trained on, so before/after scores stay comparable.
2. ``build_training_set`` snapshots the user's labels: corrected pixels (labels != the cached
   prediction) weigh ``correction_weight``; 255 is ignored; on images not marked reviewed, labels far
   from any correction are ignored (the user only looked near their edits). Edits saved after the
   snapshot are used the next time.
3. The current model is evaluated, a *copy* of it is fine-tuned (``model.train.train``), the candidate
   is evaluated on the same validation set, and ``Gate`` decides. Nothing here writes a model: the
   caller hands the outcome to ``versions.ModelRegistry`` so a failed or cancelled run cannot touch
   the current model.

``RetrainConfig.process=True`` runs the same generator in a spawned child process and streams its
events back through a queue, so a crash, an out-of-memory kill or ``kill -9`` of the child becomes a
``TrainingError`` and the GUI survives.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import multiprocessing
import os
import queue as queue_mod
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from seepview.core.classes import IGNORE
from seepview.core.errors import Cancelled, SeepviewError, TrainingError
from seepview.core.model.data import Sample
from seepview.core.model.metrics import miou_binary_score

log = logging.getLogger(__name__)

BUDGETS = ("quick", "thorough")
FAULTS = ("nan", "error", "oom", "kill")
VALIDATION_KEY = "validation_ids"
VALIDATION_INFO_KEY = "validation"
UNCHANGED = "the current model is unchanged"
# Loss weight of pixels the user changed. 3x lost more binary IoU than 2x or 1x in 60 s CPU fine-tunes
# (docs/benchmarks.md, "Retrain on my corrections").
CORRECTION_WEIGHT = 2.0
CANCEL_GRACE_S = 1.5  # a child that has not stopped this long after cancel is terminated


# --- per-image labels -> mask and weight ------------------------------------------------------------

@dataclass(frozen=True)
class LabelWeights:
    """What one image contributes: the training mask (255 = ignored), its weight map and counts."""

    mask: np.ndarray
    weight: np.ndarray
    changed_pixels: int
    labelled_pixels: int


def correction_weights(
    labels: np.ndarray,
    prediction: np.ndarray | None,
    reviewed: bool,
    correction_weight: float = CORRECTION_WEIGHT,
    far_px: float = 32.0,
) -> LabelWeights:
    """Mask and weight map for one image from the user's labels and the prediction they corrected.

    Pixels the user changed (labels != prediction) weigh ``correction_weight``: they are exactly where
    the model was wrong. On an image not marked reviewed the user only vouches for the neighbourhood of
    their edits, so labelled pixels farther than ``far_px`` from any change are ignored (partial
    labelling). Without a cached prediction, every labelled pixel counts as an edit.
    """
    labels = np.asarray(labels)
    labelled = labels != IGNORE
    if prediction is not None and prediction.shape == labels.shape:
        changed = labelled & (labels != prediction)
    else:
        changed = labelled.copy() if not reviewed else np.zeros_like(labelled)
    keep = labelled.copy()
    if not reviewed:
        if changed.any():
            # distance of every pixel to the nearest changed pixel (EDT of the complement)
            near = ndimage.distance_transform_edt(~changed) <= far_px
            keep &= near
        else:
            keep[:] = False
    mask = np.where(keep, labels, IGNORE).astype(np.uint8)
    weight = np.where(keep, np.float32(1.0), np.float32(0.0)).astype(np.float32)
    weight[keep & changed] = np.float32(correction_weight)
    return LabelWeights(mask, weight, int((keep & changed).sum()), int(keep.sum()))


def _bbox(keep: np.ndarray, margin: int, min_size: int) -> tuple[int, int, int, int]:
    """Bounding box (y0, y1, x0, x1) of ``keep`` grown by ``margin`` and to at least ``min_size``."""
    h, w = keep.shape
    ys = np.flatnonzero(keep.any(axis=1))
    xs = np.flatnonzero(keep.any(axis=0))

    def span(lo: int, hi: int, n: int) -> tuple[int, int]:
        lo, hi = max(0, lo - margin), min(n, hi + margin)
        if hi - lo < min_size:
            extra = min_size - (hi - lo)
            lo = max(0, lo - extra // 2)
            hi = min(n, lo + min_size)
            lo = max(0, hi - min_size)
        return lo, hi

    y0, y1 = span(int(ys[0]), int(ys[-1]) + 1, h)
    x0, x1 = span(int(xs[0]), int(xs[-1]) + 1, w)
    return y0, y1, x0, x1


# --- training-set snapshot ----------------------------------------------------------------------------

@dataclass
class TrainingSetStats:
    """Lineage numbers recorded with a model version."""

    images: int = 0
    reviewed_images: int = 0
    corrected_images: int = 0
    corrected_pixels: int = 0
    labelled_pixels: int = 0
    validation_images: int = 0
    replay_images: int = 0
    replay_note: str = ""
    fingerprint: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _entry_sample(
    project,
    entry,
    model_keys: Sequence[str],
    normalization: dict,
    correction_weight: float,
    far_px: float,
    crop_min: int,
    channels: int | None = None,
    force_reviewed: bool = False,
) -> tuple[Sample, LabelWeights] | None:
    from seepview.core.model.normalize import fit_normalization, match_channels, normalize

    labels = project.load_labels(entry)
    if labels is None:
        return None
    prediction = None
    for key in model_keys:
        cached = project.load_prediction(entry, key)
        if cached is not None:
            prediction = cached[0]
            break
    reviewed = force_reviewed or entry.status == "reviewed"
    lw = correction_weights(labels, prediction, reviewed, correction_weight, far_px)
    keep = lw.mask != IGNORE
    if not keep.any():
        return None
    y0, y1, x0, x1 = _bbox(keep, margin=16, min_size=crop_min)
    with project.open_image(entry) as source:
        # Constants from the whole image (as inference fits them), then only the useful crop is read.
        spec = fit_normalization(source, normalization)
        array = source.read(y0, y1, x0, x1)
    if channels is not None:
        array = match_channels(array, channels, project.image_path(entry))
    image = normalize(array, spec)
    sample = Sample(image, lw.mask[y0:y1, x0:x1], lw.weight[y0:y1, x0:x1], entry.group, entry.id)
    return sample, lw


def build_training_set(
    project,
    model_key: str | Sequence[str],
    normalization: dict,
    correction_weight: float = CORRECTION_WEIGHT,
    far_px: float = 32.0,
    exclude_ids: Iterable[str] = (),
    only_ids: Iterable[str] | None = None,
    crop_min: int = 256,
    channels: int | None = None,
    force_reviewed: bool = False,
) -> tuple[list[Sample], TrainingSetStats]:
    """Snapshot every labelled image of ``project`` as a weighted ``Sample`` (see ``correction_weights``).

    ``model_key`` is the prediction cache to compare labels with; a sequence is tried in order (the
    active version, then its ancestors: an image edited before the last promotion was corrected
    against the older model's prediction). ``normalization`` is the model's input spec. Samples are
    cropped to their labelled area (at least ``crop_min`` square) so a corrected corner of a huge
    scene costs a tile, not the scene. ``force_reviewed`` treats every image as fully labelled (the
    validation set: a reviewed image is ground truth everywhere).
    """
    from seepview.core.model.data import fingerprint

    keys = [model_key] if isinstance(model_key, str) else list(model_key)
    excluded = set(exclude_ids)
    wanted = None if only_ids is None else set(only_ids)
    samples: list[Sample] = []
    stats = TrainingSetStats()
    for entry in project.entries:
        if entry.id in excluded or (wanted is not None and entry.id not in wanted):
            continue
        built = _entry_sample(
            project, entry, keys, normalization, correction_weight, far_px, crop_min, channels, force_reviewed
        )
        if built is None:
            continue
        sample, lw = built
        samples.append(sample)
        stats.images += 1
        stats.reviewed_images += entry.status == "reviewed"
        stats.corrected_images += lw.changed_pixels > 0
        stats.corrected_pixels += lw.changed_pixels
        stats.labelled_pixels += lw.labelled_pixels
    stats.fingerprint = fingerprint(samples) if samples else ""
    return samples, stats


# --- fixed validation split ----------------------------------------------------------------------------

def _stable_rank(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def choose_validation_groups(group_sizes: Mapping[str, int], fraction: float) -> set[str]:
    """Groups, in order of a hash of their id, until ``fraction`` of the images is covered.

    Hash order makes the choice depend only on the set of groups, never on file order or a random
    seed. At least one group is taken and at least one is left for training.
    """
    if len(group_sizes) < 2:
        return set()
    total = sum(group_sizes.values())
    chosen: set[str] = set()
    taken = 0
    for group in sorted(group_sizes, key=_stable_rank):
        if chosen and (taken >= fraction * total or len(chosen) == len(group_sizes) - 1):
            break
        chosen.add(group)
        taken += group_sizes[group]
    return chosen


def validation_ids(project) -> set[str]:
    """Ids of the reserved validation images: the recorded ids plus any labelled image of a reserved
    group (a scene reserved for validation never leaks into training)."""
    info = project.settings.get(VALIDATION_INFO_KEY) or {}
    ids = set(project.settings.get(VALIDATION_KEY) or ())
    groups = set(info.get("groups") or ())
    if info.get("unit", "group") == "group" and groups:
        ids |= {e.id for e in project.entries if e.group in groups}
    return ids


def ensure_validation_split(project, fraction: float = 0.2, min_images: int = 4) -> set[str]:
    """Reserve the validation images once enough images are labelled; return their ids.

    The first time the project has ``min_images`` labelled images in two or more groups, groups are
    chosen by ``choose_validation_groups`` and recorded in ``project.settings["validation_ids"]`` (ids)
    and ``["validation"]`` (groups, unit, time). With a single group (one scene or photo) single
    images are reserved instead (``unit: "image"``), which is weaker: tiles of one scene overlap.
    Later calls only add newly labelled images of reserved groups. To choose again (after importing
    many new scenes, say) call ``reset_validation`` or run ``seepview finetune PROJECT
    --reset-validation``; scores of older versions are then no longer comparable.
    """
    from seepview.core.project import utc_now

    labelled = [e for e in project.entries if project.has_labels(e)]
    info = project.settings.get(VALIDATION_INFO_KEY)
    if info:
        ids = validation_ids(project) & {e.id for e in labelled} | set(project.settings.get(VALIDATION_KEY) or ())
        if ids != set(project.settings.get(VALIDATION_KEY) or ()):
            project.settings[VALIDATION_KEY] = sorted(ids)
            project.save()
        return ids
    if len(labelled) < min_images:
        return set()
    sizes: dict[str, int] = {}
    for e in labelled:
        sizes[e.group] = sizes.get(e.group, 0) + 1
    unit = "group"
    groups = choose_validation_groups(sizes, fraction)
    if not groups:
        unit = "image"
        groups = choose_validation_groups({e.id: 1 for e in labelled}, fraction)
    ids = {e.id for e in labelled if (e.group if unit == "group" else e.id) in groups}
    project.settings[VALIDATION_INFO_KEY] = {
        "unit": unit,
        "groups": sorted(groups) if unit == "group" else [],
        "fraction": fraction,
        "created": utc_now(),
    }
    project.settings[VALIDATION_KEY] = sorted(ids)
    project.save()
    log.info("reserved %d validation image(s) (%s-wise): %s", len(ids), unit, ", ".join(sorted(ids)))
    return ids


def reset_validation(project) -> None:
    """Forget the reserved validation split; the next retrain chooses again."""
    project.settings.pop(VALIDATION_INFO_KEY, None)
    project.settings.pop(VALIDATION_KEY, None)
    project.save()


# --- the project's retrain settings ----------------------------------------------------------------------

SETTINGS_KEY = "retrain"


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# What a recorded value must be to be used: the project file may be hand-edited or from another version.
_SETTING_CHECKS: dict[str, Callable[[Any], bool]] = {
    "budget": lambda v: v in BUDGETS,
    "seconds": lambda v: _number(v) and v > 0,
    "tolerance": lambda v: _number(v) and v >= 0,
    "correction_weight": lambda v: _number(v) and v > 0,
    "process": lambda v: isinstance(v, bool),
}
PROJECT_SETTINGS = tuple(_SETTING_CHECKS)


def project_settings(project) -> dict:
    """The retrain choices recorded in ``project.json`` (the panel's last run): the gate's tolerance and the
    correction weight are project policy, so the GUI and ``seepview finetune PROJECT`` share them. Values of
    the wrong type or out of range are dropped (with a log line), never fatal."""
    stored = project.settings.get(SETTINGS_KEY)
    if not isinstance(stored, dict):
        return {}
    out = {}
    for name, check in _SETTING_CHECKS.items():
        if name not in stored:
            continue
        value = stored[name]
        if not check(value):
            log.warning("ignoring retrain setting %s=%r in %s", name, value, project.root)
        else:
            out[name] = float(value) if _number(value) else value
    return out


def store_project_settings(project, config: RetrainConfig) -> None:
    """Record ``config``'s project-level choices (``PROJECT_SETTINGS``) when they changed."""
    chosen = {name: getattr(config, name) for name in PROJECT_SETTINGS}
    if project.settings.get(SETTINGS_KEY) != chosen:
        project.settings[SETTINGS_KEY] = chosen
        project.save()


# --- evaluation and the gate ------------------------------------------------------------------------------

def evaluate(checkpoint, samples: Sequence[Sample], device=None, cancel: Callable[[], bool] | None = None) -> dict:
    """Metrics of ``checkpoint`` on normalised samples (``ConfusionMatrix.metrics``; 255 ignored).

    Computed exactly as ``train`` validates (same tiling), so the gate compares like with like.
    """
    import torch

    from seepview.core.model.metrics import ConfusionMatrix
    from seepview.core.model.train import forward_tiled

    classes = checkpoint.classes
    cm = ConfusionMatrix(len(classes))
    model = checkpoint.model
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in samples:
                if cancel is not None and cancel():
                    raise Cancelled()
                x = torch.from_numpy(s.image).unsqueeze(0).to(dev)
                pred = forward_tiled(model, x, 1024)[0].to("cpu", torch.uint8).numpy()
                cm.update(pred, s.mask)
    finally:
        model.train(was_training)
    return cm.metrics(classes.names)


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
    """The gate's verdict with everything the user needs to see why."""

    promote: bool
    reason: str
    miou_before: float | None
    miou_after: float | None
    tolerance: float
    rows: list[ClassRow] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)

    @property
    def delta(self) -> float | None:
        if self.miou_before is None or self.miou_after is None:
            return None
        return self.miou_after - self.miou_before

    def to_dict(self) -> dict:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "miou_before": self.miou_before,
            "miou_after": self.miou_after,
            "binary_iou_before": _num(self.before.get("binary_iou")),
            "binary_iou_after": _num(self.after.get("binary_iou")),
            "score_before": miou_binary_score(self.before),
            "score_after": miou_binary_score(self.after),
            "tolerance": self.tolerance,
            "per_class": [{"name": r.name, "before": r.before, "after": r.after, "delta": r.delta} for r in self.rows],
        }


class Gate:
    """Promote a candidate only if its ``miou_binary_score`` on the fixed validation set is not below the
    current model's minus ``tolerance`` (mIoU alone would pass a model that gains a rare class but finds
    fewer seeps)."""

    def __init__(self, tolerance: float = 0.0):
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance = float(tolerance)

    def decide(self, before: dict | None, after: dict | None, images: int | None = None) -> Decision:
        """``images``: how many validation images the metrics come from, named in the reason (a verdict on
        four images deserves less trust than one on forty)."""
        before, after = before or {}, after or {}
        names = list((before.get("per_class_iou") or {}).keys() or (after.get("per_class_iou") or {}).keys())
        rows = [
            ClassRow(n, _num((before.get("per_class_iou") or {}).get(n)), _num((after.get("per_class_iou") or {}).get(n)))
            for n in names
        ]
        mb, ma = _num(before.get("miou")), _num(after.get("miou"))
        sb, sa = miou_binary_score(before), miou_binary_score(after)
        if sb is None or sa is None:
            reason = "no validation images yet, so the candidate cannot be compared; it was not promoted"
            return Decision(False, reason, mb, ma, self.tolerance, rows, before, after)
        parts = [f"mIoU {mb:.3f} -> {ma:.3f}"]
        bb, ba = _num(before.get("binary_iou")), _num(after.get("binary_iou"))
        if bb is not None and ba is not None:
            parts.append(f"binary IoU {bb:.3f} -> {ba:.3f}")
        if images:
            parts.append(f"on {images} validation image{'s' if images != 1 else ''}")
        detail = ", ".join(parts)
        if sa >= sb - self.tolerance:
            verb = "improved" if sa > sb else "did not get worse"
            reason = f"validation score {verb}: {sb:.3f} -> {sa:.3f} ({detail})"
            if sa < sb:
                reason += f" (within tolerance {self.tolerance:.3f})"
            return Decision(True, reason, mb, ma, self.tolerance, rows, before, after)
        reason = f"validation score fell {sb:.3f} -> {sa:.3f} ({detail}; tolerance {self.tolerance:.3f})"
        worst = min((r for r in rows if r.delta is not None), key=lambda r: r.delta, default=None)
        if worst is not None and worst.delta < 0:
            reason += f"; worst class: {worst.name} {worst.before:.3f} -> {worst.after:.3f}"
        return Decision(False, reason, mb, ma, self.tolerance, rows, before, after)


# --- after promotion ---------------------------------------------------------------------------------------

def repredict_order(project, current_id: str | None = None, visible_ids: Iterable[str] = ()) -> list[str]:
    """Unreviewed images to re-predict after a promotion, the one on screen and visible ones first,
    then by distance from the current image in project order (the next ones the user will open).

    Only images with status "unreviewed" are listed: predictions go to the cache, labels the user made
    are never touched.
    """
    entries = project.entries
    todo = [e.id for e in entries if e.status == "unreviewed"]
    if not todo:
        return []
    index = {e.id: i for i, e in enumerate(entries)}
    n = len(entries)
    start = index.get(current_id, 0) if current_id is not None else 0
    visible = [v for v in visible_ids if v in set(todo)]
    first = ([current_id] if current_id in set(todo) else []) + [v for v in visible if v != current_id]
    rest = sorted(
        (i for i in todo if i not in set(first)),
        key=lambda i: ((index[i] - start) % n, i),
    )
    return first + rest


def repredict(jobs: Sequence[tuple[str, Callable]], cancel: Callable[[], bool] | None = None):
    """Run prediction jobs (``ReviewSession.prediction_job``, built on the GUI thread in
    ``repredict_order``) one after another, yielding each result for the GUI thread to store.

    An unreadable image is logged and skipped, so one bad file does not stop the rest.
    """
    for image_id, job in jobs:
        if cancel is not None and cancel():
            return
        try:
            yield job(cancel=cancel)
        except Cancelled:
            return
        except SeepviewError as exc:
            log.warning("re-predicting %s failed: %s", image_id, exc)


# --- the retrain generator ------------------------------------------------------------------------------------

@dataclass
class RetrainConfig:
    """How to retrain. ``budget="quick"``: the whole run, from the click (child start-up, snapshot,
    evaluation and saving included), aims to fit in ``seconds``; ``"thorough"`` trains up to ``epochs`` with early stopping (``patience``).

    ``threads`` limits torch's CPU threads (1 keeps a 2-core machine's GUI fluid) and ``nice`` lowers
    the training's CPU priority (the thread on Linux, else the child process); ``process`` runs
    training in a spawned child process. ``fault`` injects a failure at the first step (testing hook:
    "nan" poisons the weights, "error" raises, "oom" raises CUDA out-of-memory, "kill" SIGKILLs the
    child) so every failure path is exercised end to end.
    """

    budget: str = "quick"
    seconds: float = 60.0
    epochs: int = 40
    patience: int = 5
    correction_weight: float = CORRECTION_WEIGHT
    far_px: float = 32.0
    tolerance: float = 0.0
    validation_fraction: float = 0.2
    min_validation_images: int = 4
    replay: int = 16
    batch_size: int = 8
    patch: int = 128  # small patches: many short steps (cancel stays prompt on CPU)
    lr: float = 5e-4
    # No rare-class emphasis on top of the correction weight: base training's inverse-frequency class weights and
    # rare-centred patches made one scene's fine-tune over-predict rare seep types (benchmarks.md, fine-tuning table).
    class_weight_power: float = 0.0
    rare_fraction: float = 0.0
    freeze_bn: bool = True  # a few small batches of one scene would skew the base model's BN statistics
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    nice: int = 0  # >0: lower the training thread's/child's CPU priority so the GUI wins the cores
    process: bool = False
    fault: str | None = None

    def __post_init__(self):
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {self.fault!r}")


@dataclass
class RetrainEvent:
    """A retrain stage event (training itself yields ``TrainEvent``): "prepare", "evaluate", "gate"."""

    kind: str
    message: str
    decision: Decision | None = None
    stats: TrainingSetStats | None = None
    pid: int | None = None


@dataclass
class RetrainOutcome:
    """What ``retrain`` returns. ``candidate`` is None when cancelled; the caller registers it."""

    candidate: Any
    decision: Decision | None
    seconds: float
    device: str
    cancelled: bool = False
    stats: TrainingSetStats = field(default_factory=TrainingSetStats)
    history: list = field(default_factory=list)
    version: Any = None  # the ModelVersion it was stored as (``retrain_and_record``)


def lineage_keys(project, current) -> list[str]:
    """Prediction-cache keys to compare labels against: the current model's, then its ancestors'
    (an image edited before the last promotion was corrected against the older model's output)."""
    from seepview.core.session import model_key
    from seepview.core.versions import ModelRegistry

    keys = [model_key(current)]
    registry = ModelRegistry(project)
    versions = {v.key: v for v in registry.versions()}
    mine = next((v for v in versions.values() if v.cache_key == keys[0]), None)
    parent = mine.parent if mine is not None else current.meta.parent
    while parent in versions and versions[parent].cache_key not in keys:
        keys.append(versions[parent].cache_key)
        parent = versions[parent].parent
    return [k for k in keys if k]


def replay_samples(current, limit: int, exclude_groups: Iterable[str], seed: int = 0) -> tuple[list[Sample], str]:
    """Up to ``limit`` samples from the current model's own training data, against forgetting.

    Reachable only when the checkpoint records where its data lives
    (``meta.training["data"] = {"images": DIR, "masks": DIR, "train_groups": [...]}``) and the folders
    exist here. Returns (samples, note) where the note says what was used or why nothing was.
    """
    from seepview.core.imageio import IMAGE_SUFFIXES
    from seepview.core.model.data import load_samples
    from seepview.core.project import group_of

    if limit <= 0:
        return [], "replay disabled"
    training = current.meta.training or {}
    data = training.get("data") or {}
    images_dir, masks_dir = data.get("images"), data.get("masks")
    if not images_dir or not masks_dir:
        return [], "replay skipped: the model does not record where its training data is"
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not images_dir.is_dir() or not masks_dir.is_dir():
        return [], f"replay skipped: the model's training data ({images_dir}) is not reachable here"
    train_groups = set(data.get("train_groups") or training.get("train_groups") or ())
    excluded = set(exclude_groups)
    pairs = []
    for img in sorted(images_dir.iterdir()):
        if img.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        group = group_of(img.name)
        if group in excluded or (train_groups and group not in train_groups):
            continue
        mask = next((m for m in (masks_dir / img.name, masks_dir / f"{img.stem}.png") if m.is_file()), None)
        if mask is not None:
            pairs.append((img, mask))
    if not pairs:
        return [], f"replay skipped: no usable image/mask pairs in {images_dir}"
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(pairs), size=min(limit, len(pairs)), replace=False).tolist())
    picked = [pairs[i] for i in chosen]
    try:
        samples = load_samples([p[0] for p in picked], [p[1] for p in picked], current.normalization, current.classes)
    except SeepviewError as exc:
        return [], f"replay skipped: {exc}"
    return samples, f"replayed {len(samples)} tile(s) of the model's training data from {images_dir}"


def _train_config(config: RetrainConfig, time_budget_s: float | None):
    from seepview.core.model.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    wanted = {
        "epochs": config.epochs if config.budget == "thorough" else 10_000,
        "batch_size": config.batch_size,
        "patch": config.patch,
        "lr": config.lr,
        "class_weight_power": config.class_weight_power,
        "rare_fraction": config.rare_fraction,
        "freeze_bn": config.freeze_bn,
        "select": "miou+binary",  # the gate's score, so the kept epoch is the one the gate would pick
        "seed": config.seed,
        "device": config.device,
        "threads": config.threads,
        "time_budget_s": time_budget_s,
        "patience": config.patience if config.budget == "thorough" else None,
    }
    return TrainConfig(**{k: v for k, v in wanted.items() if k in fields})


def _poison(model) -> None:
    import torch

    with torch.no_grad():
        next(iter(model.parameters())).fill_(float("nan"))


def _raise_fault(fault: str, in_child: bool) -> None:
    import torch

    if fault == "error":
        raise RuntimeError("injected fault: an exception inside a training step")
    if fault == "oom":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected fault)")
    if fault == "kill":
        if not in_child:
            raise ValueError("fault 'kill' needs process=True (it would kill this process)")
        os.kill(os.getpid(), signal.SIGKILL)


def _training_failure(exc: BaseException, device: str) -> TrainingError:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return TrainingError(
            None, f"training ran out of memory on {device}; try a smaller batch or patch. {UNCHANGED}"
        )
    return TrainingError(None, f"training failed: {type(exc).__name__}: {exc}. {UNCHANGED}")


def warm_up() -> None:
    """Import what the first training step needs (torch's optimiser pulls in torch._dynamo: seconds
    on a cold process). Done before the time budget starts; the GUI may call it early in a worker."""
    import torch._dynamo  # noqa: F401

    import seepview.core.model.train  # noqa: F401


def _version_key_of(project, cache_key: str) -> str | None:
    from seepview.core.versions import ModelRegistry

    return next((v.key for v in ModelRegistry(project).versions() if v.cache_key == cache_key), None)


def _base_data(current) -> dict:
    """Where the base model's training data lives, carried down the lineage so replay keeps working."""
    training = current.meta.training or {}
    data = dict(training.get("data") or {})
    if "train_groups" not in data and training.get("train_groups") and "finetune" not in training:
        data["train_groups"] = list(training["train_groups"])
    return data


def _retrain_core(
    project,
    current,
    config: RetrainConfig,
    cancel: Callable[[], bool],
    val_ids: set[str],
    in_child: bool = False,
    clicked_at: float | None = None,
) -> Generator[Any, None, RetrainOutcome]:
    from seepview.core.model.train import train

    t0 = time.perf_counter()
    clicked_at = time.time() if clicked_at is None else clicked_at
    warm_up()
    keys = lineage_keys(project, current)
    norm = current.normalization
    yield RetrainEvent("prepare", "collecting your corrections")
    train_samples, stats = build_training_set(
        project, keys, norm, config.correction_weight, config.far_px, exclude_ids=val_ids,
        crop_min=config.patch, channels=current.in_channels,
    )
    val_samples, _ = build_training_set(
        project, keys, norm, only_ids=val_ids, crop_min=config.patch, channels=current.in_channels,
        force_reviewed=True,
    )
    stats.validation_images = len(val_samples)
    if not train_samples:
        raise TrainingError(
            project.root,
            "nothing to train on: label or correct at least one image outside the validation set "
            f"({len(val_ids)} reserved). {UNCHANGED}",
        )
    replay, stats.replay_note = replay_samples(
        current, config.replay, {s.group for s in val_samples}, config.seed
    )
    stats.replay_images = len(replay)
    log.info(stats.replay_note)
    yield RetrainEvent(
        "prepare",
        f"{stats.images} image(s), {stats.corrected_pixels} corrected pixel(s), "
        f"{len(val_samples)} validation image(s); {stats.replay_note}",
        stats=stats,
    )
    if cancel():
        return RetrainOutcome(None, None, time.perf_counter() - t0, "cpu", True, stats)

    before = None
    if val_samples:
        yield RetrainEvent("evaluate", "scoring the current model on the validation images")
        before = evaluate(current, val_samples, cancel=cancel)
    budget = None
    if config.budget == "quick":
        # ``seconds`` counts from the click (wall clock, so a child's spawn and imports count too);
        # 10% is kept for what follows the last step (checkpoint copy, gate, writing the version).
        budget = max(2.0, 0.9 * config.seconds - (time.time() - clicked_at))

    work = copy.deepcopy(current)  # fine-tune a copy: the current model must stay as it was
    if config.fault == "nan":
        _poison(work.model)
    device = "cpu"
    gen = train(work, train_samples + replay, val_samples, _train_config(config, budget), cancel=cancel)
    result = None
    first = True
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if first and config.fault in ("error", "oom", "kill"):
                _raise_fault(config.fault, in_child)
            first = False
            yield event
    except (TrainingError, Cancelled):
        raise
    except RuntimeError as exc:  # torch reports OOM and most kernel failures as RuntimeError
        raise _training_failure(exc, device) from exc
    finally:
        gen.close()
    device = str(result.device)
    if result.cancelled or cancel():
        return RetrainOutcome(None, None, time.perf_counter() - t0, device, True, stats, result.history)
    candidate = result.checkpoint
    if candidate is None:
        raise TrainingError(None, f"training stopped before its first step ({result.stop_reason}). {UNCHANGED}")
    after = result.best_metrics  # train() validated the returned weights on these same samples
    if val_samples and after is None:
        yield RetrainEvent("evaluate", "scoring the new model on the validation images")
        after = evaluate(candidate, val_samples, cancel=cancel)
    decision = Gate(config.tolerance).decide(before, after, images=len(val_samples))
    candidate.meta = dataclasses.replace(
        candidate.meta,
        name=current.meta.name,
        version=0,
        parent=_version_key_of(project, keys[0]) or current.meta.name or None,
        fingerprint=stats.fingerprint,
        metrics=after or {},
        training={
            **(candidate.meta.training or {}),
            "data": _base_data(current),
            "finetune": {
                "budget": config.budget,
                "seconds": round(time.perf_counter() - t0, 2),
                "device": device,
                "correction_weight": config.correction_weight,
                "far_px": config.far_px,
                **stats.to_dict(),
            },
        },
    )
    yield RetrainEvent("gate", decision.reason, decision=decision, stats=stats)
    return RetrainOutcome(candidate, decision, time.perf_counter() - t0, device, False, stats, result.history)


def retrain(
    project,
    current,
    config: RetrainConfig | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Generator[Any, None, RetrainOutcome]:
    """Fine-tune ``current`` (a ``Checkpoint``) on the project's corrections; gate the result.

    Yields ``RetrainEvent`` (prepare/evaluate/gate) and ``TrainEvent`` (step/epoch/done) objects and
    returns a ``RetrainOutcome``. ``current`` is never modified. Failures raise ``TrainingError`` with a
    message for the user; cancel returns an outcome with ``cancelled=True`` and no candidate.
    """
    clicked_at = time.time()
    config = config or RetrainConfig()
    cancel = cancel or (lambda: False)
    val_ids = ensure_validation_split(project, config.validation_fraction, config.min_validation_images)
    t0 = time.perf_counter()
    import torch

    threads = torch.get_num_threads()
    restore_priority = None if config.process else _lower_thread_priority(config.nice)
    try:
        if config.process:
            return (yield from _retrain_in_child(project, current, config, cancel, val_ids, clicked_at))
        return (yield from _retrain_core(project, current, config, cancel, val_ids, clicked_at=clicked_at))
    except Cancelled:
        return RetrainOutcome(None, None, time.perf_counter() - t0, "cpu", True)
    finally:
        # train() limits torch's (process-wide) thread pool; give prediction its threads back
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if restore_priority is not None:
            restore_priority()


def _lower_thread_priority(nice: int):
    """Lower this thread's CPU priority (Linux: threads are tasks with their own nice value); returns
    a function restoring it, or None. With 1 torch thread the compute runs in this very thread."""
    import threading

    if nice <= 0 or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        old = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, old + nice))
    except OSError as exc:
        log.info("cannot lower the training thread's priority: %s", exc)
        return None

    def restore() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, old)
        except OSError:  # unprivileged users may not raise priority again: the pooled thread stays low
            log.info("training thread keeps its lowered priority")

    return restore


def retrain_and_record(
    project,
    current,
    config: RetrainConfig | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Generator[Any, None, RetrainOutcome]:
    """``retrain``, then store the candidate as the next version (active only if the gate passed).

    Writing the model files (fsync) happens here, in the worker, not on the GUI thread. The base
    model is registered first so rollback to it is always possible.
    """
    from seepview.core.versions import ModelRegistry

    registry = ModelRegistry(project)
    registry.ensure_base(current)
    outcome = yield from retrain(project, current, config, cancel)
    if outcome.candidate is not None and not outcome.cancelled:
        outcome.version = registry.add(outcome.candidate, promote=outcome.decision.promote, stats=outcome.stats)
    return outcome


# --- the child-process option ---------------------------------------------------------------------------

def _child_main(q, stop, root: str, current_path: str, config: RetrainConfig, val_ids: set[str], out_path: str,
                clicked_at: float | None = None):
    """Entry point of the spawned training process: run ``_retrain_core`` and stream its events."""
    from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint
    from seepview.core.project import Project

    try:
        if config.nice > 0 and hasattr(os, "nice"):
            os.nice(config.nice)
        project = Project.open(root)
        current = load_checkpoint(current_path)
        gen = _retrain_core(project, current, config, stop.is_set, val_ids, in_child=True, clicked_at=clicked_at)
        while True:
            try:
                event = next(gen)
            except StopIteration as done:
                outcome: RetrainOutcome = done.value
                break
            q.put(("event", event))
        has_candidate = outcome.candidate is not None
        if has_candidate:
            save_checkpoint(out_path, outcome.candidate.model, outcome.candidate.meta)
        q.put(("result", dataclasses.replace(outcome, candidate=None), has_candidate))
    except SeepviewError as exc:
        q.put(("error", type(exc).__name__, None if exc.path is None else str(exc.path), exc.reason))
    except BaseException as exc:  # the process boundary: whatever happened, tell the parent in words
        q.put(("error", "TrainingError", None, f"training process failed: {type(exc).__name__}: {exc}. {UNCHANGED}"))


def _retrain_in_child(project, current, config, cancel, val_ids, clicked_at=None):
    from seepview.core import errors
    from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="seepview-retrain-"))
    current_path, out_path = tmp / "current.safetensors", tmp / "candidate.safetensors"
    save_checkpoint(current_path, current.model, current.meta)
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    stop = ctx.Event()
    child_config = dataclasses.replace(config, process=False)
    proc = ctx.Process(
        target=_child_main,
        args=(q, stop, str(project.root), str(current_path), child_config, set(val_ids), str(out_path), clicked_at),
        name="seepview-retrain",
        daemon=True,
    )
    t0 = time.perf_counter()
    proc.start()
    cancelled_at = None
    try:
        yield RetrainEvent("prepare", f"training process started (pid {proc.pid})", pid=proc.pid)
        while True:
            if cancelled_at is None and cancel():
                stop.set()
                cancelled_at = time.perf_counter()
            if cancelled_at is not None and time.perf_counter() - cancelled_at > CANCEL_GRACE_S:
                proc.terminate()
                proc.join(2)
                return RetrainOutcome(None, None, time.perf_counter() - t0, "cpu", True)
            try:
                msg = q.get(timeout=0.1)
            except queue_mod.Empty:
                if proc.is_alive():
                    continue
                msg = _drain(q)
                if msg is None:
                    code = proc.exitcode
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    raise TrainingError(
                        None, f"the training process stopped unexpectedly ({how}). {UNCHANGED}"
                    ) from None
            if msg[0] == "event":
                yield msg[1]
            else:
                return _finish_child_message(msg, out_path, load_checkpoint, errors)
    finally:
        if proc.is_alive():
            stop.set()
            proc.join(1.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
        q.close()
        q.cancel_join_thread()
        shutil.rmtree(tmp, ignore_errors=True)


def _drain(q):
    """The first message still queued by a child that has exited, or None (it died silently)."""
    try:
        return q.get(timeout=0.5)
    except queue_mod.Empty:
        return None


def _finish_child_message(msg, out_path: Path, load_checkpoint, errors) -> RetrainOutcome:
    if msg[0] == "error":
        _, kind, path, reason = msg
        cls = getattr(errors, kind, TrainingError)
        if not (isinstance(cls, type) and issubclass(cls, SeepviewError)):
            cls = TrainingError
        raise cls(path, reason)
    _, outcome, has_candidate = msg
    if has_candidate:
        outcome.candidate = load_checkpoint(out_path)
    return outcome
