"""The review queue: uncertainty maps, image and block scores, queue order, score cache, session wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seepview.core import queue
from seepview.core.demo import make_demo_project
from seepview.core.errors import SeepviewError
from seepview.core.model.infer import Predictor, margin_uncertainty
from seepview.core.session import ReviewSession
from tests.tiny import save_tiny_checkpoint


@pytest.fixture
def project(tmp_path):
    return make_demo_project(tmp_path / "demo", n_images=4, size=64)


@pytest.fixture
def ckpt(tmp_path):
    return save_tiny_checkpoint(tmp_path / "tiny.safetensors")


def test_margin_uncertainty_is_one_minus_the_top_two_margin():
    probs = torch.tensor([[0.5, 0.9, 0.34], [0.5, 0.05, 0.33], [0.0, 0.05, 0.33]])[:, None, :]  # (K=3, 1, 3)
    weights = torch.full((1, 3), 2.0)
    u = margin_uncertainty(probs * weights, weights)
    assert u.dtype == torch.uint8
    assert u[0].tolist() == [255, round((1 - 0.85) * 255), round((1 - 0.01) * 255)]


def test_predictor_returns_uncertainty_consistent_with_probabilities(ckpt):
    image = np.random.default_rng(0).integers(1, 5000, (70, 90)).astype(np.uint16)
    predictor = Predictor(ckpt, tile=32, overlap=8, compile=False)
    pred = predictor.predict(image)
    assert pred.uncertainty.shape == image.shape and pred.uncertainty.dtype == np.uint8
    proba = np.sort(predictor.predict_proba(image), axis=0)
    expected = np.round((1 - (proba[-1] - proba[-2])) * 255)
    assert np.abs(pred.uncertainty.astype(int) - expected).max() <= 1


def _maps(shape=(64, 64)):
    labels = np.zeros(shape, np.uint8)
    conf = np.full(shape, 250, np.uint8)
    unc = np.full(shape, 10, np.uint8)
    return labels, conf, unc


def test_score_grows_with_uncertain_seeps_and_edges():
    calm = _maps()
    seep = _maps()
    seep[0][20:30, 20:30] = 1
    seep[2][18:32, 18:32] = 200  # unsure inside the seep and at its edge
    assert queue.image_score(*seep) > queue.image_score(*calm)
    # The same uncertainty far from any predicted seep counts less for seep_edge.
    far = _maps()
    far[0][20:30, 20:30] = 1
    far[2][50:64, 50:64] = 200
    assert queue.image_score(*seep, method="seep_edge") > queue.image_score(*far, method="seep_edge")


def test_feature_sums_do_not_depend_on_the_block_size():
    rng = np.random.default_rng(1)
    labels = (rng.random((300, 410)) < 0.05).astype(np.uint8) * 3
    conf = rng.integers(0, 256, labels.shape).astype(np.uint8)
    unc = rng.integers(0, 256, labels.shape).astype(np.uint8)
    whole = queue.block_sums(labels, conf, unc, block=1024).sum(axis=(0, 1))
    blocked = queue.block_sums(labels, conf, unc, block=64).sum(axis=(0, 1))
    np.testing.assert_allclose(blocked, whole)
    assert whole[queue.FEATURES.index("area")] == np.count_nonzero(labels)


def test_old_caches_without_uncertainty_fall_back_to_confidence():
    labels, conf, _ = _maps()
    conf[:10] = 0
    assert queue.image_score(labels, conf, None, "margin") == pytest.approx(queue.image_score(labels, conf, None, "confidence"))


def test_rank_regions_puts_the_uncertain_block_first():
    labels, conf, unc = _maps((1100, 1300))
    labels[700:760, 900:980] = 2
    unc[690:770, 890:990] = 240
    regions = queue.rank_regions(labels, conf, unc, block=512)
    assert regions.grid.shape == (3, 3)
    first = regions.regions[0]
    assert (first.y0, first.x0) == (512, 512) and first.y1 == 1024 and first.x1 == 1024
    assert regions.next_after(first) == regions.regions[1]
    assert regions.next_after(regions.regions[-1]) == first
    assert regions.region_at(1099, 1299).y1 == 1100  # edge block is clipped to the image


class _E:
    def __init__(self, id, status="unreviewed"):
        self.id, self.status = id, status


def test_queue_order_and_navigation():
    entries = [_E("a"), _E("b"), _E("c", "reviewed"), _E("d"), _E("e")]
    q = queue.ReviewQueue()
    q.update({"a": 0.1, "b": 0.5, "c": 0.9, "d": 0.3}, {"e": "unreadable"})
    assert q.order(entries) == ["b", "d", "a"]  # reviewed c and broken e are not queued
    assert q.next_after(entries, None) == "b"
    assert q.next_after(entries, "b") == "d"
    assert q.next_after(entries, "a") == "b"  # wraps
    assert q.next_after(entries, "d", backwards=True) == "b"
    entries[1].status = "reviewed"  # b just reviewed: the next is the one ranked below it
    assert q.next_after(entries, "b") == "d"
    q.update({"e": 0.05})  # a score means it could be read after all
    assert q.order(entries) == ["d", "a", "e"]


def test_unscored_images_follow_the_scored_in_project_order():
    entries = [_E("a"), _E("b"), _E("c")]
    q = queue.ReviewQueue()
    q.update({"c": 0.2})
    assert q.order(entries) == ["c", "a", "b"]


def test_project_scores_are_cached_and_follow_new_predictions(project, ckpt, monkeypatch):
    session = ReviewSession(project, ckpt)
    key = session.weights_key
    ids = [e.id for e in project.entries]
    for image_id in ids[:3]:
        session.store_prediction(session.prediction_job(image_id)())
    assert project.uncertainty_path(ids[0], key).is_file()
    scores, broken = queue.project_scores(project, key)
    assert set(scores) == set(ids[:3]) and not broken
    stored = json.loads((project.prediction_dir(key) / queue.SCORE_FILE).read_text())
    assert set(stored["images"]) == set(ids[:3])

    calls = []
    real = queue._score_cached
    monkeypatch.setattr(queue, "_score_cached", lambda *a: calls.append(a[1].id) or real(*a))
    again, _ = queue.project_scores(project, key)
    assert again == scores and calls == []  # nothing re-read
    labels, conf = project.load_prediction(ids[0], key)
    labels = labels.copy()
    labels[:8, :8] = 1  # a doubtful seep now
    project.save_prediction(ids[0], key, labels, np.zeros_like(conf), np.full_like(conf, 255))
    again, _ = queue.project_scores(project, key)
    assert calls == [ids[0]] and again[ids[0]] > scores[ids[0]]


def test_missing_image_is_broken_and_predict_missing_fills_the_cache(project, ckpt):
    session = ReviewSession(project, ckpt)
    key = session.weights_key
    gone = project.entries[1]
    project.image_path(gone).unlink()
    broken = queue.predict_missing(project, session._get_predictor(), key)
    assert set(broken) == {gone.id}
    scores, broken = queue.project_scores(project, key)
    assert gone.id in broken and gone.id not in scores and len(scores) == len(project.entries) - 1


def test_unpredicted_unreadable_image_is_broken_without_opening_it(project, ckpt):
    session = ReviewSession(project, ckpt)
    bad = project.entries[2]
    project.image_path(bad).write_bytes(b"garbage")
    scores, broken = queue.project_scores(project, session.weights_key)
    assert set(broken) == {bad.id} and not scores and "TIFF" in broken[bad.id]


def test_session_follows_the_queue(project, ckpt):
    session = ReviewSession(project, ckpt)
    ids = [e.id for e in project.entries]
    assert session.next_unreviewed(ids[0]) == ids[1]  # no scores yet: project order
    changed = []
    session.queue_changed.connect(lambda: changed.append(1))
    session.queue.update({ids[0]: 0.1, ids[1]: 0.2, ids[2]: 0.9, ids[3]: 0.5})
    assert session.queue_order() == [ids[2], ids[3], ids[1], ids[0]]
    assert session.next_unreviewed(None) == ids[2]
    assert session.mark_reviewed(ids[2]) == ids[3]
    assert session.queue_order() == [ids[3], ids[1], ids[0]]
    job = session.queue_job()
    assert session.queue_done(job()) and changed
    session.set_model(save_tiny_checkpoint(project.root / "other.safetensors", seed=1))
    assert not session.queue_done(job())  # scores of a replaced model are dropped
    assert session.queue.stale == set(session.queue.scores)


def test_unreadable_image_is_marked_broken_on_open(project):
    session = ReviewSession(project, load_model=False)
    entry = project.entries[0]
    project.image_path(entry).write_bytes(b"not a tiff")
    with pytest.raises(SeepviewError):
        session.open(entry.id)
    assert entry.id in session.queue.broken
