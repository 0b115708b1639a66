"""Training data: samples, grouped splits, class statistics, patch sampling and batched augmentation.

Images are normalised once when loaded (``model/normalize.py``), so a training step only crops,
stacks and augments. Augmentation runs on whole batches as tensors on the training device: the eight
dihedral transforms (90° rotations and flips; SAR and inspection photos have no preferred
orientation) plus a mild gain/offset jitter, identical for image, mask and weight map.

Splits are always by group (SAR scene or photo id): tiles of one scene overlap and flipped copies of
one photo are near-duplicates, so a random split would inflate validation scores.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seepview.core.classes import IGNORE
from seepview.core.errors import MaskError


@dataclass
class Sample:
    """One training image: normalised float32 (C, H, W), uint8 mask (H, W), optional weight (H, W)."""

    image: np.ndarray
    mask: np.ndarray
    weight: np.ndarray | None = None
    group: str = ""
    name: str = ""
    #: bool (H, W) no-data pixels (their mask is 255 too); the typer's features need them, training does not
    nodata: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: the project's scene (group, else image id) it was cut from: a scene adaptation applies only there.
    #: Left empty, it is the group.
    scene: str = field(default="", compare=False)
    #: {side: label line} of reviewed grid neighbours (``scene_grid.project_edges``): a gate unit is scored
    #: with the evidence across its edges that the user's predictions get (slicks continued, classes voted)
    edges: dict | None = field(default=None, repr=False, compare=False)
    _counts: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.scene = self.scene or self.group
        if self.image.ndim == 2:
            self.image = self.image[None]
        if self.image.ndim != 3:
            raise MaskError(self.name or None, f"a sample image must be (C, H, W), got shape {self.image.shape}")
        self.image = np.ascontiguousarray(self.image, dtype=np.float32)
        if self.mask.shape != self.image.shape[1:]:
            raise MaskError(
                self.name or None, f"mask shape {self.mask.shape} does not match image shape {self.image.shape[1:]}"
            )
        self.mask = np.ascontiguousarray(self.mask, dtype=np.uint8)
        if self.weight is not None:
            if self.weight.shape != self.mask.shape:
                raise MaskError(self.name or None, f"weight shape {self.weight.shape} != mask shape {self.mask.shape}")
            self.weight = np.ascontiguousarray(self.weight, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    def counts(self) -> np.ndarray:
        """Pixel count per id 0..255 (255 = unlabeled); cached, masks do not change during training."""
        if self._counts is None:
            self._counts = np.bincount(self.mask.ravel(), minlength=256).astype(np.int64)
        return self._counts


def load_samples(
    images: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike],
    norm_spec,
    classes=None,
    groups: Sequence[str] | None = None,
) -> list[Sample]:
    """Read, normalise and validate image/mask pairs (paired by position).

    ``norm_spec`` is the normalisation spec stored in the checkpoint so inference matches training.
    Groups default to ``project.group_of(name)`` (scene prefix / photo id).
    """
    from seepview.core.imageio import open_image, read_mask
    from seepview.core.model.normalize import normalize
    from seepview.core.project import group_of

    if len(images) != len(masks):
        raise MaskError(None, f"{len(images)} images but {len(masks)} masks")
    samples = []
    for i, (ip, mp) in enumerate(zip(images, masks)):
        with open_image(ip) as source:
            array = source.read_all()
            shape = tuple(source.shape)
        mask = read_mask(mp, classes, shape=shape)
        image = normalize(array, norm_spec)
        name = Path(ip).stem
        group = groups[i] if groups is not None else group_of(name)
        samples.append(Sample(image, mask, None, group, name, scene=group or name))
    return samples


def samples_from_project(project, norm_spec, entries=None) -> list[Sample]:
    """Samples for a project's labelled images (``entries`` or all of them), grouped by ``entry.group``."""
    from seepview.core.model.normalize import normalize

    samples = []
    for entry in entries if entries is not None else project.labelled_entries():
        mask = project.load_labels(entry)
        if mask is None:
            continue
        with project.open_image(entry) as source:
            array = source.read_all()
        samples.append(Sample(normalize(array, norm_spec), mask, None, entry.scene, entry.id, scene=entry.scene))
    return samples


# --- grouped splits ------------------------------------------------------------------------------

def split_by_group(
    samples: Sequence[Sample],
    val_fraction: float = 0.2,
    seed: int = 0,
    val_groups: Iterable[str] | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, val) with every group entirely on one side.

    With ``val_groups`` those groups are validation. Otherwise groups are shuffled with ``seed``
    (independent of input order) and taken until at least ``val_fraction`` of the samples are in
    validation; both sides keep at least one group when there are two or more.
    """
    groups = sorted({s.group for s in samples})
    if val_groups is not None:
        chosen = set(val_groups)
        unknown = chosen - set(groups)
        if unknown:
            raise MaskError(None, f"validation group(s) not in the data: {', '.join(sorted(unknown))}")
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        sizes = {g: 0 for g in groups}
        for s in samples:
            sizes[s.group] += 1
        order = list(groups)
        np.random.default_rng(seed).shuffle(order)
        chosen, taken, target = set(), 0, val_fraction * len(samples)
        for g in order:
            if taken >= target or (val_fraction > 0 and len(chosen) == len(groups) - 1):
                break
            chosen.add(g)
            taken += sizes[g]
    train = [s for s in samples if s.group not in chosen]
    val = [s for s in samples if s.group in chosen]
    return train, val


# --- class statistics ------------------------------------------------------------------------------

def class_counts(samples: Iterable[Sample], num_classes: int) -> np.ndarray:
    """Labelled pixel count per class (ignored pixels excluded)."""
    total = np.zeros(256, dtype=np.int64)
    for s in samples:
        total += s.counts()
    bad = np.flatnonzero(total[num_classes:IGNORE])
    if bad.size:
        raise MaskError(None, f"masks hold class id {int(bad[0]) + num_classes} but there are {num_classes} classes")
    return total[:num_classes]


def class_weights(counts: np.ndarray, power: float = 0.5, max_ratio: float = 50.0) -> np.ndarray:
    """Inverse-frequency^power class weights, normalised so the average labelled pixel weighs 1.

    ``power=0.5`` (inverse square root) lifts rare classes without letting a class with a few
    hundred pixels dominate the gradient; ``max_ratio`` caps the largest/smallest weight ratio.
    Classes absent from the data get the largest weight (harmless: no pixel uses it).
    """
    counts = np.asarray(counts, dtype=np.float64)
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    w = np.zeros_like(freq)
    if not present.any():
        return np.ones_like(freq, dtype=np.float32)
    w[present] = freq[present] ** -power
    w[present] = np.minimum(w[present], w[present].min() * max_ratio)
    w /= float((freq * w).sum())
    w[~present] = w[present].max()
    return w.astype(np.float32)


def fingerprint(samples: Iterable[Sample]) -> str:
    """Fingerprint of a training set (names, masks and weight maps) via ``checkpoint.data_fingerprint``."""
    from seepview.core.model.checkpoint import data_fingerprint

    items: list = []
    for s in samples:
        items.append(s.name)
        items.append(s.mask.tobytes())
        if s.weight is not None:
            items.append(s.weight.tobytes())
    return data_fingerprint(items)


# --- patch sampling --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Crop:
    index: int  # sample index
    y0: int
    x0: int


class PatchSampler:
    """Plans each epoch's crops: random crops plus crops centred on rare-class pixels.

    A fraction ``rare_fraction`` of the crops picks a foreground class (probability proportional to
    count**-0.5, so rarer classes are chosen more often), then a sample containing it, then a pixel of
    it, and centres the patch there with jitter. The plan depends only on (seed, epoch), so every
    DDP rank computes the same plan and takes its own shard.
    """

    def __init__(self, samples: Sequence[Sample], patch: int, num_classes: int,
                 rare_fraction: float = 0.5, seed: int = 0, patches_per_epoch: int | None = None):
        if not samples:
            raise ValueError("no training samples")
        self.samples = list(samples)
        self.patch = int(patch)
        self.num_classes = num_classes
        self.rare_fraction = float(rare_fraction)
        self.seed = seed
        # default: as many patches as would tile every image once
        self.patches_per_epoch = patches_per_epoch or sum(
            max(1, round(s.shape[0] / self.patch)) * max(1, round(s.shape[1] / self.patch)) for s in self.samples
        )
        per_sample = np.stack([s.counts()[:num_classes] for s in self.samples])  # (S, K)
        self._per_sample = per_sample
        totals = per_sample.sum(0)
        fg = np.flatnonzero(totals[1:] > 0) + 1
        self._fg_classes = fg
        if fg.size:
            p = totals[fg].astype(np.float64) ** -0.5
            self._class_p = p / p.sum()
        else:
            self._class_p = np.zeros(0)

    def __len__(self) -> int:
        return self.patches_per_epoch

    def _random_origin(self, rng, shape) -> tuple[int, int]:
        h, w = shape
        y0 = int(rng.integers(0, h - self.patch + 1)) if h > self.patch else 0
        x0 = int(rng.integers(0, w - self.patch + 1)) if w > self.patch else 0
        return y0, x0

    def plan(self, epoch: int) -> list[Crop]:
        rng = np.random.default_rng([self.seed, epoch])
        crops = []
        for _ in range(self.patches_per_epoch):
            if self._fg_classes.size and rng.random() < self.rare_fraction:
                c = int(rng.choice(self._fg_classes, p=self._class_p))
                having = np.flatnonzero(self._per_sample[:, c] > 0)
                idx = int(rng.choice(having))
                s = self.samples[idx]
                ys, xs = np.nonzero(s.mask == c)
                k = int(rng.integers(len(ys)))
                h, w = s.shape
                jitter = self.patch // 4
                cy = int(ys[k]) + int(rng.integers(-jitter, jitter + 1)) if jitter else int(ys[k])
                cx = int(xs[k]) + int(rng.integers(-jitter, jitter + 1)) if jitter else int(xs[k])
                y0 = int(np.clip(cy - self.patch // 2, 0, max(h - self.patch, 0)))
                x0 = int(np.clip(cx - self.patch // 2, 0, max(w - self.patch, 0)))
            else:
                idx = int(rng.integers(len(self.samples)))
                y0, x0 = self._random_origin(rng, self.samples[idx].shape)
            crops.append(Crop(idx, y0, x0))
        return crops


def shard(items: Sequence, rank: int, world: int) -> list:
    """Rank ``rank``'s share of ``items`` (like DistributedSampler: equal length, padded by wrapping)."""
    items = list(items)
    if world <= 1:
        return items
    per = -(-len(items) // world)
    padded = items + items[: per * world - len(items)]
    return padded[rank::world]


def collate(samples: Sequence[Sample], crops: Sequence[Crop], patch: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stack crops into (B, C, P, P) float32, (B, P, P) uint8 and optional (B, P, P) float32 weights.

    Images smaller than the patch are padded: image 0, mask IGNORE, weight 0 (padding never trains).
    """
    c = samples[crops[0].index].image.shape[0]
    b = len(crops)
    img = np.zeros((b, c, patch, patch), np.float32)
    msk = np.full((b, patch, patch), IGNORE, np.uint8)
    any_weight = any(samples[cr.index].weight is not None for cr in crops)
    wts = np.zeros((b, patch, patch), np.float32) if any_weight else None
    for i, cr in enumerate(crops):
        s = samples[cr.index]
        h = min(patch, s.shape[0] - cr.y0)
        w = min(patch, s.shape[1] - cr.x0)
        img[i, :, :h, :w] = s.image[:, cr.y0:cr.y0 + h, cr.x0:cr.x0 + w]
        msk[i, :h, :w] = s.mask[cr.y0:cr.y0 + h, cr.x0:cr.x0 + w]
        if wts is not None:
            wts[i, :h, :w] = 1.0 if s.weight is None else s.weight[cr.y0:cr.y0 + h, cr.x0:cr.x0 + w]
    return (torch.from_numpy(img), torch.from_numpy(msk),
            None if wts is None else torch.from_numpy(wts))


# --- batched augmentation on the device -----------------------------------------------------------

def dihedral(t: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` in 0..7 of the last two (square) axes: rotate by k % 4 quarter turns, then
    flip horizontally when k >= 4."""
    out = torch.rot90(t, k % 4, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if k >= 4 else out


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    jitter: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random dihedral transform per sample plus gain/offset jitter, on whatever device the batch is.

    Works on the whole batch: one indexed rot/flip per transform that occurs (at most 8 tensor ops),
    never a Python loop over samples. Pixels that are exactly 0 in every channel (no-data) stay 0.
    """
    b = images.shape[0]
    if images.shape[-1] != images.shape[-2]:
        raise ValueError("dihedral augmentation needs square patches")
    dev = images.device
    ks = torch.randint(0, 8, (b,), generator=generator, device="cpu")
    images, masks = images.clone(), masks.clone()
    weights = None if weights is None else weights.clone()
    for k in torch.unique(ks).tolist():
        if k == 0:
            continue
        idx = torch.nonzero(ks == k).flatten().to(dev)
        images[idx] = dihedral(images[idx], k)
        masks[idx] = dihedral(masks[idx], k)
        if weights is not None:
            weights[idx] = dihedral(weights[idx], k)
    if jitter > 0:
        c = images.shape[1]
        gain = 1.0 + (torch.rand((b, c, 1, 1), generator=generator) * 2 - 1) * jitter
        offset = (torch.rand((b, c, 1, 1), generator=generator) * 2 - 1) * jitter
        valid = (images != 0).any(dim=1, keepdim=True).to(images.dtype)
        images = (images * gain.to(dev, images.dtype) + offset.to(dev, images.dtype)) * valid
    return images, masks, weights
