"""Training data: grouped deterministic splits, class statistics, patch plans and batched augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seepview.core.errors import MaskError
from seepview.core.model import data as d


def _samples(n=24, groups=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.random((1, size, size), dtype=np.float32)
        mask = (rng.random((size, size)) > 0.9).astype(np.uint8)
        out.append(d.Sample(img, mask, group=f"scene{i % groups}", name=f"scene{i % groups}.{i:03d}"))
    return out


def test_split_keeps_groups_whole_and_is_deterministic():
    samples = _samples()
    train, val = d.split_by_group(samples, 0.25, seed=3)
    assert {s.group for s in train}.isdisjoint({s.group for s in val})
    assert len(train) + len(val) == len(samples)
    assert len(val) >= 0.25 * len(samples)
    again = d.split_by_group(list(reversed(samples)), 0.25, seed=3)[1]
    assert {s.group for s in again} == {s.group for s in val}  # input order does not matter
    other = [{s.group for s in d.split_by_group(samples, 0.25, seed=k)[1]} for k in range(6)]
    assert len({frozenset(g) for g in other}) > 1  # the seed does matter


def test_split_explicit_groups_and_unknown_group():
    samples = _samples()
    train, val = d.split_by_group(samples, val_groups=["scene1", "scene4"])
    assert {s.group for s in val} == {"scene1", "scene4"}
    assert all(s.group not in ("scene1", "scene4") for s in train)
    with pytest.raises(MaskError, match="nowhere"):
        d.split_by_group(samples, val_groups=["nowhere"])


def test_split_never_empties_training():
    samples = _samples(n=4, groups=2)
    train, val = d.split_by_group(samples, 0.9)
    assert train and val


def test_class_weights_inverse_sqrt_frequency():
    w = d.class_weights(np.array([900, 100, 0]))
    assert w[1] / w[0] == pytest.approx(3.0)  # sqrt(900/100)
    assert 0.9 * w[0] + 0.1 * w[1] == pytest.approx(1.0)  # average labelled pixel weighs 1
    assert w[2] == pytest.approx(w[1])  # absent class: harmless maximum


def test_class_counts_exclude_ignore_and_reject_unknown_ids():
    mask = np.array([[0, 1], [255, 1]], np.uint8)
    s = d.Sample(np.zeros((1, 2, 2), np.float32), mask)
    assert d.class_counts([s], 2).tolist() == [1, 2]
    with pytest.raises(MaskError):
        d.class_counts([s], 1)


def test_sample_shape_checks():
    with pytest.raises(MaskError):
        d.Sample(np.zeros((1, 4, 4), np.float32), np.zeros((4, 5), np.uint8), name="x")


def test_patch_plan_is_seeded_and_oversamples_rare_class():
    rng = np.random.default_rng(1)
    samples = []
    for i in range(20):
        mask = np.zeros((64, 64), np.uint8)
        if i == 7:
            mask[50:54, 50:54] = 1  # 16 rare pixels in one image
        samples.append(d.Sample(rng.random((1, 64, 64), dtype=np.float32), mask, group=str(i)))
    sampler = d.PatchSampler(samples, 16, 2, rare_fraction=0.5, seed=5, patches_per_epoch=200)
    plan = sampler.plan(1)
    assert plan == sampler.plan(1) and plan != sampler.plan(2)
    img, msk, _ = d.collate(samples, plan, 16)
    share = float((msk == 1).float().mean())
    assert share > 50 * 16 / (20 * 64 * 64)  # far above the natural share of the rare class
    assert sum(c.index == 7 for c in plan) > 60


def test_collate_pads_small_images_with_ignore_and_zero_weight():
    s = d.Sample(np.ones((2, 5, 7), np.float32), np.ones((5, 7), np.uint8), weight=np.full((5, 7), 3.0, np.float32))
    img, msk, w = d.collate([s], [d.Crop(0, 0, 0)], 8)
    assert img.shape == (1, 2, 8, 8) and img[0, :, 5:].abs().sum() == 0
    assert (msk[0, 5:] == 255).all() and (msk[0, :5, :7] == 1).all()
    assert (w[0, 5:] == 0).all() and (w[0, :5, :7] == 3).all()


def test_shard_is_equal_length_and_covers_everything():
    items = list(range(7))
    shards = [d.shard(items, r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4
    assert set(shards[0]) | set(shards[1]) == set(items)


def test_dihedral_covers_all_eight_transforms():
    t = torch.arange(9).reshape(3, 3)
    outs = {tuple(d.dihedral(t, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8


def test_augmentation_keeps_image_mask_and_weight_aligned():
    # The image encodes its own mask (mask = image > .5) and weight (= image * 10): any misalignment
    # between the three after augmentation breaks the relation.
    g = torch.Generator().manual_seed(0)
    img = torch.rand(32, 1, 12, 12, generator=g)
    img[img == 0] = 0.01
    msk = (img[:, 0] > 0.5).to(torch.uint8)
    wts = img[:, 0] * 10
    a_img, a_msk, a_w = d.augment_batch(img, msk, wts, torch.Generator().manual_seed(1), jitter=0.0)
    assert torch.equal(a_msk, (a_img[:, 0] > 0.5).to(torch.uint8))
    assert torch.allclose(a_w, a_img[:, 0] * 10)
    changed = [not torch.equal(a_img[i], img[i]) for i in range(32)]
    assert 20 < sum(changed) < 32  # most samples transformed, identity is one of the 8
    # Each output is one of the 8 dihedral images of its input.
    for i in range(32):
        assert any(torch.equal(a_img[i], d.dihedral(img[i], k)) for k in range(8))


def test_jitter_changes_intensity_but_keeps_nodata_and_mask():
    img = torch.rand(8, 1, 8, 8) + 0.1
    img[:, :, :2] = 0.0  # no-data rows
    msk = torch.zeros(8, 8, 8, dtype=torch.uint8)
    a_img, a_msk, _ = d.augment_batch(img, msk, None, torch.Generator().manual_seed(2), jitter=0.2)
    assert not torch.allclose(a_img, img)
    assert torch.equal(a_msk, msk)
    nodata = (a_img == 0).all(dim=1)
    assert int(nodata.sum()) == 8 * 2 * 8  # rotated/flipped, but still 16 no-data pixels per sample
