"""What the model learns from: the user's labels turned into weighted samples.

Only what the user vouched for trains: on an image marked reviewed every labelled pixel counts; on one still
in progress only the neighbourhood of the user's own edits does. Pixels at the image's no-data value, and
the gate's validation regions with their guard band, never train.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from seepview.core.classes import IGNORE
from seepview.core.errors import SeepviewError
from seepview.core.model.data import Sample
from seepview.core.nodata import nodata_mask, nodata_value
from seepview.core.retrain.settings import CORRECTION_WEIGHT

log = logging.getLogger(__name__)


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
    ignore: np.ndarray | None = None,
) -> LabelWeights:
    """Mask and weight map for one image from the user's labels and the prediction they corrected.

    Pixels the user changed (labels != prediction) weigh ``correction_weight``: they are exactly where the
    model was wrong. On an image not marked reviewed the user only vouches for the neighbourhood of their
    edits, so labelled pixels farther than ``far_px`` from any change are ignored (partial labelling).
    Without a cached prediction every labelled pixel of an unreviewed image counts as an edit. ``ignore``
    (no-data, validation regions) is never trained on.
    """
    labels = np.asarray(labels)
    labelled = labels != IGNORE
    if ignore is not None:
        labelled &= ~ignore
    if prediction is not None and prediction.shape == labels.shape:
        changed = labelled & (labels != prediction)
    else:
        changed = labelled.copy() if not reviewed else np.zeros_like(labelled)
    keep = labelled.copy()
    if not reviewed:
        if changed.any():
            near = ndimage.distance_transform_edt(~changed) <= far_px  # distance to the nearest change
            keep &= near
        else:
            keep[:] = False
    mask = np.where(keep, labels, IGNORE).astype(np.uint8)
    weight = np.where(keep, np.float32(1.0), np.float32(0.0)).astype(np.float32)
    weight[keep & changed] = np.float32(correction_weight)
    return LabelWeights(mask, weight, int((keep & changed).sum()), int(keep.sum()))


def bbox(keep: np.ndarray, margin: int, min_size: int) -> tuple[int, int, int, int]:
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


@dataclass
class TrainingSetStats:
    """Lineage numbers recorded with a model version."""

    images: int = 0
    reviewed_images: int = 0
    corrected_images: int = 0
    corrected_pixels: int = 0
    labelled_pixels: int = 0
    nodata_pixels: int = 0
    validation_images: int = 0
    validation_units: int = 0
    selection_images: int = 0
    replay_images: int = 0
    replay_note: str = ""
    fingerprint: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _prediction(project, entry, keys: Sequence[str]):
    for key in keys:
        cached = project.load_prediction(entry, key)
        if cached is not None:
            return cached[0]
    return None


def _read(project, entry, normalization: dict, region, channels):
    """(raw array of ``region``, normalised (C, h, w) float32, no-data value) of one image."""
    from seepview.core.model.normalize import fit_normalization, match_channels, normalize

    y0, y1, x0, x1 = region
    with project.open_image(entry) as source:
        spec = fit_normalization(source, normalization)  # constants from the whole image, as inference fits them
        array = source.read(y0, y1, x0, x1)
        nodata = nodata_value(source, normalization)
    if channels is not None:
        array = match_channels(array, channels, project.image_path(entry))
    return array, normalize(array, spec), nodata


def build_training_set(
    project,
    weights_key: str | Sequence[str],
    normalization: dict,
    correction_weight: float = CORRECTION_WEIGHT,
    far_px: float = 32.0,
    split=None,
    crop_min: int = 256,
    channels: int | None = None,
) -> tuple[list[Sample], TrainingSetStats]:
    """Snapshot every labelled image of ``project`` outside the validation ``split`` as a weighted ``Sample``.

    ``weights_key`` is the prediction cache to compare labels with; a sequence is tried in order (the active
    version, then its ancestors: an image edited before the last promotion was corrected against the older
    model's prediction). Validation blocks of an image, grown by the split's guard band, are ignored.
    Samples are cropped to their labelled area (at least ``crop_min`` square) so a corrected corner of a
    huge scene costs a tile, not the scene.
    """
    from seepview.core.model.data import fingerprint

    keys = [weights_key] if isinstance(weights_key, str) else list(weights_key)
    samples: list[Sample] = []
    stats = TrainingSetStats()
    for entry in project.entries:
        if split is not None and entry.id in split.whole:
            continue
        labels = project.load_labels(entry)
        if labels is None:
            continue
        ignore = split.training_ignore(entry.id, labels.shape) if split is not None else None
        reviewed = entry.status == "reviewed"
        lw = correction_weights(labels, _prediction(project, entry, keys), reviewed, correction_weight, far_px, ignore)
        keep = lw.mask != IGNORE
        if not keep.any():
            continue
        region = bbox(keep, margin=16, min_size=crop_min)
        array, image, nodata = _read(project, entry, normalization, region, channels)
        y0, y1, x0, x1 = region
        mask, weight = lw.mask[y0:y1, x0:x1].copy(), lw.weight[y0:y1, x0:x1].copy()
        nd = nodata_mask(array, nodata)
        if nd is not None and nd.any():
            stats.nodata_pixels += int((nd & (mask != IGNORE)).sum())
            mask[nd], weight[nd] = IGNORE, 0.0
        if not (mask != IGNORE).any():
            continue
        samples.append(Sample(image, mask, weight, entry.group, entry.id, nodata=nd, scene=entry.scene))
        stats.images += 1
        stats.reviewed_images += reviewed
        stats.corrected_images += lw.changed_pixels > 0
        stats.corrected_pixels += lw.changed_pixels
        stats.labelled_pixels += int((mask != IGNORE).sum())
    stats.fingerprint = fingerprint(samples) if samples else ""
    return samples, stats


def build_validation_set(project, split, normalization: dict, channels: int | None = None) -> list[Sample]:
    """One sample per validation unit (a whole reviewed image, or one block of a large one): the gate's
    evidence. Reviewed labels are ground truth everywhere; 255 and no-data pixels are not scored."""
    from seepview.core.scene_grid import project_edges

    samples: list[Sample] = []
    loaded: dict[str, np.ndarray | None] = {}  # a large image's blocks share one read of its labels
    for unit in split.units(project):
        entry = project.entry(unit.image_id)
        if unit.image_id not in loaded:
            loaded.clear()
            loaded[unit.image_id] = project.load_labels(entry)
        labels = loaded[unit.image_id]
        if labels is None:
            continue
        region = unit.region or (0, labels.shape[0], 0, labels.shape[1])
        y0, y1, x0, x1 = region
        mask = labels[y0:y1, x0:x1].copy()
        array, image, nodata = _read(project, entry, normalization, region, channels)
        nd = nodata_mask(array, nodata)
        if nd is not None:
            mask[nd] = IGNORE
        if (mask != IGNORE).any():
            # a whole tile gets its reviewed neighbours' labels along its edges, as its prediction would
            edges = project_edges(project, entry.id) if unit.region is None else None
            samples.append(Sample(image, mask, None, entry.group, unit.name, nodata=nd, scene=entry.scene,
                                  edges=edges or None))
    return samples


def lineage_keys(project, current) -> list[str]:
    """Prediction-cache keys to compare labels against: the current model's, then its ancestors'."""
    from seepview.core.versions import ModelRegistry, weights_key

    keys = [weights_key(current)]
    versions = {v.key: v for v in ModelRegistry(project).versions()}
    mine = next((v for v in versions.values() if v.weights_key == keys[0]), None)
    parent = mine.parent if mine is not None else current.meta.parent
    while parent in versions and versions[parent].weights_key not in keys:
        keys.append(versions[parent].weights_key)
        parent = versions[parent].parent
    return [k for k in keys if k]


def replay_samples(current, limit: int, exclude_groups: Iterable[str], seed: int = 0) -> tuple[list[Sample], str]:
    """Up to ``limit`` samples from the current model's own training data, against forgetting.

    Reachable only when the checkpoint records where its data lives
    (``meta.training["data"] = {"images": DIR, "masks": DIR, "train_groups": [...]}``) and the folders exist
    here. Returns (samples, note) where the note says what was used or why nothing was.
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
