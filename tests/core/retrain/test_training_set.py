"""Training samples from labels: correction weights, partial labels, no-data and validation blocks never train."""

from __future__ import annotations

import numpy as np

from seepview.core.classes import IGNORE
from seepview.core.demo import truth_path
from seepview.core.imageio import read_mask
from seepview.core.model.normalize import SAR_NORMALIZATION
from seepview.core.retrain import build_training_set, correction_weights
from seepview.core.retrain.validation import ValidationSplit
from seepview.core.versions import weights_key


def test_changed_pixels_weigh_more_and_unlabeled_is_ignored():
    labels = np.zeros((20, 20), np.uint8)
    labels[:, 15:] = IGNORE
    labels[5:8, 5:8] = 3
    pred = np.zeros((20, 20), np.uint8)
    lw = correction_weights(labels, pred, reviewed=True, correction_weight=3.0)
    assert lw.changed_pixels == 9
    assert lw.labelled_pixels == 20 * 15
    assert np.all(lw.weight[5:8, 5:8] == 3.0)
    assert lw.weight[0, 0] == 1.0
    assert np.all(lw.weight[:, 15:] == 0) and np.all(lw.mask[:, 15:] == IGNORE)
    assert np.array_equal(lw.mask[:, :15], labels[:, :15])


def test_unreviewed_image_ignores_pixels_far_from_edits():
    labels = np.zeros((100, 100), np.uint8)  # e.g. the prediction accepted, then one fix
    labels[10:12, 10:12] = 2
    pred = np.zeros((100, 100), np.uint8)
    lw = correction_weights(labels, pred, reviewed=False, correction_weight=3.0, far_px=5)
    assert lw.changed_pixels == 4
    assert lw.mask[10, 10] == 2 and lw.weight[10, 10] == 3.0
    assert lw.mask[10, 15] == 0 and lw.weight[10, 15] == 1.0  # 4 px away: kept
    assert lw.mask[10, 20] == IGNORE and lw.weight[10, 20] == 0.0  # 9 px away: ignored
    assert lw.mask[90, 90] == IGNORE
    assert correction_weights(labels, pred, reviewed=True).labelled_pixels == 100 * 100


def test_unreviewed_without_edits_contributes_nothing_and_without_prediction_strokes_count():
    labels = np.zeros((30, 30), np.uint8)
    assert correction_weights(labels, labels.copy(), reviewed=False).labelled_pixels == 0
    strokes = np.full((30, 30), IGNORE, np.uint8)
    strokes[3:6, :] = 1
    lw = correction_weights(strokes, None, reviewed=False, correction_weight=2.0)
    assert lw.labelled_pixels == 90 and lw.changed_pixels == 90
    assert np.all(lw.weight[3:6] == 2.0)


def test_ignored_pixels_never_train_even_when_changed():
    labels = np.ones((10, 10), np.uint8)
    ignore = np.zeros((10, 10), bool)
    ignore[:, :4] = True
    lw = correction_weights(labels, np.zeros_like(labels), reviewed=True, ignore=ignore)
    assert np.all(lw.mask[:, :4] == IGNORE) and np.all(lw.weight[:, :4] == 0)
    assert lw.changed_pixels == 60


def test_build_training_set_uses_cached_prediction_of_the_model(demo, tiny_checkpoint):
    ckpt = tiny_checkpoint()
    key = weights_key(ckpt)
    e_rev, e_part, _ = demo.entries[:3]
    truth = read_mask(truth_path(demo, e_rev))
    pred = truth.copy()
    pred[:8, :8] = 5  # the model was wrong here; the user fixed it
    demo.save_prediction(e_rev, key, pred, np.full_like(pred, 200))
    demo.save_labels(e_rev, truth)
    demo.set_status(e_rev, "reviewed")
    part = np.zeros((128, 128), np.uint8)
    part[60:64, 60:64] = 1
    demo.save_prediction(e_part, key, np.zeros((128, 128), np.uint8), np.zeros((128, 128), np.uint8))
    demo.save_labels(e_part, part)  # becomes in_progress
    samples, stats = build_training_set(demo, key, SAR_NORMALIZATION, correction_weight=4.0, far_px=3, crop_min=8)
    by_name = {s.name: s for s in samples}
    assert set(by_name) == {e_rev.id, e_part.id}  # the third has no labels
    s = by_name[e_rev.id]
    assert s.image.shape[0] == 1 and s.image.dtype == np.float32 and s.group == e_rev.group
    changed = truth[:8, :8] != 5
    assert np.all(s.weight[:8, :8][changed] == 4.0)
    p = by_name[e_part.id]
    assert p.mask.shape[0] < 128 and (p.mask == 1).sum() == 16  # cropped to the edit's neighbourhood
    assert (p.weight == 4.0).sum() == 16
    assert stats.images == 2 and stats.corrected_images == 2
    assert stats.fingerprint
    # a validation image never appears
    samples, _ = build_training_set(demo, key, SAR_NORMALIZATION, split=ValidationSplit(whole={e_rev.id}))
    assert [s.name for s in samples] == [e_part.id]


def test_nodata_pixels_never_train(demo, tiny_checkpoint):
    """A no-data wedge (exact 0) labelled as a seep (e.g. by an old version's fill) is ignored."""
    entry = demo.entries[0]
    path = demo.image_path(entry)
    from seepview.core.imageio import open_image

    with open_image(path) as src:
        image = src.read_all().copy()
    image[:, :40] = 0  # a no-data wedge
    import tifffile

    tifffile.imwrite(path, image)
    labels = read_mask(truth_path(demo, entry))
    labels[:, :40] = 1
    demo.save_labels(entry, labels)
    demo.set_status(entry, "reviewed")
    samples, stats = build_training_set(demo, [], SAR_NORMALIZATION, crop_min=8)
    (s,) = samples
    assert np.all(s.mask[:, :40] == IGNORE) and np.all(s.weight[:, :40] == 0)
    assert stats.nodata_pixels == 128 * 40


def test_validation_blocks_and_their_guard_band_never_train(tmp_path):
    from seepview.core.project import Project

    project = Project.create(tmp_path / "p", "sar-seep")
    rng = np.random.default_rng(0)
    image = rng.integers(1000, 40000, (1100, 1100), dtype=np.uint16)
    import tifffile

    tifffile.imwrite(tmp_path / "scene.tif", image)
    entry = project.add_image(tmp_path / "scene.tif")
    labels = np.zeros((1100, 1100), np.uint8)
    labels[100:200, 100:200] = 1
    project.save_labels(entry, labels)
    project.set_status(entry, "reviewed")
    split = ValidationSplit(blocks={entry.id: [(0, 512, 0, 512)]}, guard_px=32)
    samples, _ = build_training_set(project, [], SAR_NORMALIZATION, split=split, crop_min=8)
    (s,) = samples
    # the crop starts where trainable pixels start; nothing of the block or its 32 px band survives
    assert s.mask.shape == (1100, 1100)
    assert np.all(s.mask[:544, :544] == IGNORE)
    assert (s.mask[600:, 600:] != IGNORE).all()


def test_a_validation_tile_carries_its_reviewed_neighbours_edges_and_a_block_none(tmp_path):
    from seepview.core.retrain import build_validation_set
    from tests.core.test_scene_grid import TILE, _grid_project

    project = _grid_project(tmp_path)
    left = np.zeros((TILE, TILE), np.uint8)
    left[10:20, -5:] = 3  # a slick leaving 777001.000006 through its right edge
    for name, labels in (("777001.000006", left), ("777001.000007", np.zeros((TILE, TILE), np.uint8))):
        project.save_labels(name, labels)
        project.set_status(name, "reviewed")
    split = ValidationSplit(whole={"777001.000007"}, blocks={"777001.000006": [(0, 24, 0, 24)]})
    tile, block = build_validation_set(project, split, SAR_NORMALIZATION)
    assert tile.name == "777001.000007" and list(tile.edges) == ["left"]
    assert (tile.edges["left"] == left[:, -1]).all()
    assert block.name.startswith("777001.000006[") and block.edges is None
