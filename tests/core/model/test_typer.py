"""The typer (stage 2): blob features, fitting, storage without pickle, and the Predictor applying it."""

from __future__ import annotations

import base64
import dataclasses
import json
import zlib

import numpy as np
import pytest

from seepview.core.errors import ModelError
from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint
from seepview.core.model.infer import Predictor
from seepview.core.model.typer import (
    Typer,
    _pack,
    blob_features,
    blob_targets,
    blobs_of,
    feature_names,
    fit_typer,
    refit_typer,
)
from tests.tiny import make_tiny_checkpoint

K = 8


def synthetic_tile(rng, size=64):
    """A tile with dark round slicks (class 2), dark long streaks (class 5) and tiny bright specks that
    the "network" also detected (false blobs). Returns (image, probs uint8, detected labels, truth)."""
    img = rng.normal(0.6, 0.05, (size, size)).astype(np.float32)
    truth = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(12, size - 12, 2)
    if rng.random() < 0.5:
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(25, 60)
        truth[blob] = 2
    else:
        blob = (abs(yy - cy) < 2) & (abs(xx - cx) < rng.integers(8, 12))
        truth[blob] = 5
    img[blob] -= 0.4
    detected = truth > 0
    sy, sx = rng.integers(2, size - 4, 2)
    img[sy : sy + 3, sx : sx + 3] += 0.3  # a bright speck: not a slick
    detected[sy : sy + 3, sx : sx + 3] = True
    probs = np.zeros((K, size, size), np.float32)
    probs[0] = np.where(detected, 0.3, 0.95)
    probs[1] = np.where(detected, 0.7, 0.05)  # the network calls every detection seep 1
    labels = np.where(detected, 1, 0).astype(np.uint8)
    return img, (probs * 255).round().astype(np.uint8), labels, truth


def training_set(seed, n):
    rng = np.random.default_rng(seed)
    feats, targets, areas, tiles = [], [], [], []
    for _ in range(n):
        img, probs, labels, truth = synthetic_tile(rng)
        comp, nb = blobs_of(labels)
        feats.append(blob_features(img, probs, comp, nb))
        t, a = blob_targets(comp, nb, truth, K)
        targets.append(t)
        areas.append(a)
        tiles.append((img, probs, labels, truth))
    return np.concatenate(feats), np.concatenate(targets), np.concatenate(areas), tiles


@pytest.fixture(scope="module")
def typer():
    x, y, a, _ = training_set(0, 40)
    return fit_typer(x, y, a, K, rounds=40)


def test_blob_targets_take_the_majority_class_and_reject_false_blobs():
    labels = np.zeros((10, 10), np.uint8)
    labels[1:4, 1:4] = 1
    labels[6:9, 6:9] = 1
    truth = np.zeros((10, 10), np.uint8)
    truth[1:4, 1:4] = 3
    truth[1, 1] = 4
    comp, n = blobs_of(labels)
    target, area = blob_targets(comp, n, truth, K)
    assert n == 2 and sorted(target.tolist()) == [0, 3] and area.tolist() == [9, 9]


def test_features_have_the_declared_layout():
    img, probs, labels, _ = synthetic_tile(np.random.default_rng(1))
    comp, n = blobs_of(labels)
    f = blob_features(img, probs, comp, n)
    assert f.shape == (n, len(feature_names(K))) and np.isfinite(f).all()
    assert f[:, feature_names(K).index("contrast")].max() > 0.2  # the dark slick against its sea


def test_typer_types_slicks_and_rejects_specks_on_new_tiles(typer):
    _, _, _, tiles = training_set(99, 10)
    correct = total = 0
    for img, probs, labels, truth in tiles:
        out = typer.apply(labels, img, probs)
        assert set(np.unique(out[labels == 0])) == {0}  # only blob pixels change
        correct += int((out == truth).sum())
        total += truth.size
        before = (labels == truth).mean()
        assert (out == truth).mean() >= before
    assert correct / total > 0.995


def test_typer_is_stored_as_text_in_the_model_file_and_applied_by_the_predictor(tmp_path, typer):
    tiny = make_tiny_checkpoint(name="", typer=typer.to_dict())
    path = save_checkpoint(tmp_path / "typed.safetensors", tiny.model, tiny.meta)
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    stored = json.loads(header["__metadata__"]["seepview"])["typer"]
    assert stored["kind"] == "lightgbm" and stored["encoding"] == "deflate+base64"
    assert zlib.decompress(base64.b64decode(stored["model"])).startswith(b"tree")
    ck = load_checkpoint(path)
    assert Typer.from_dict(ck.meta.typer).model_text == typer.model_text

    image = (np.random.default_rng(3).random((64, 64)) * 3000 + 1).astype(np.uint16)
    typed = Predictor(ck, compile=False).predict(image).labels
    plain = dataclasses.replace(ck.meta, typer={})
    raw_pred = Predictor(type(ck)(ck.model, plain), compile=False)
    raw_labels = raw_pred.predict(image).labels
    probs = raw_pred.predict_proba(image)
    from seepview.core.adapt import refine
    from seepview.core.model.normalize import normalize

    expected = refine(ck.meta, raw_labels, normalize(image, raw_pred.fit(image)),
                      (probs * 255).round().astype(np.uint8))
    assert np.array_equal(typed, expected)
    assert ((typed == 0) | (raw_labels != 0)).all()  # the typer never adds seep pixels


def _repacked(packed: str, edit) -> str:
    return _pack(edit(zlib.decompress(base64.b64decode(packed)).decode()))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.update(model="import os; os.system('x')"), "not a LightGBM text model"),
        (lambda t: t.update(model=_pack("tree\nversion=v4\ngarbage")), "typer model is damaged: it holds no trees"),
        (lambda t: t.update(model="tree\nversion=v4"), "typer model is not a LightGBM text model"),  # not packed
        (lambda t: t.update(format=True), "unknown typer format"),
        (lambda t: t.update(model=_pack("tree") + "AAAA"), "not a LightGBM text model"),  # trailing bytes
        (lambda t: t["info"].update(typist_blobs=["x"] + [1] * (K - 1)), "typist_blobs"),
        (lambda t: t.update(typist=t["model"], format=1), "does not match its encoding or typist"),
        (lambda t: t.update(encoding=None), "does not match its encoding"),
        (lambda t: t.update(model=_repacked(t["model"], lambda x: x.replace("num_leaves=", "num_leaves=9", 1))),
         "typer model is damaged: tree 0"),
        (lambda t: t.update(typist=_repacked(t["model"], lambda x: x.replace("max_feature_idx=", "max_feature_idx=1"))),
         "typer typist is damaged: its header says max_feature_idx"),
        (lambda t: t.update(model=_repacked(t["model"], lambda x: x + "pandas_categorical:[[")), None),  # dropped
        (lambda t: t.update(format="x" * 10_000), "unknown typer format"),
        (lambda t: t.update(encoding="rot13"), "unknown typer encoding"),
        (lambda t: t.update(features=["a"]), "features differ"),
        (lambda t: t.update(num_classes=3), "typer types 3 classes"),
        (lambda t: t.update(num_classes=True), "typer num_classes"),
        (lambda t: t.update(format=9), "unknown typer format"),
        (lambda t: t.update(typist=_pack("tree\nversion=v4\ngarbage")), "typer typist is damaged"),
        (lambda t: t.update(typist=5), "typist is not a LightGBM text model"),
    ],
)
def test_a_damaged_typer_is_refused_on_load_with_one_clear_error(tmp_path, typer, edit, message):
    data = typer.to_dict()
    edit(data)
    tiny = make_tiny_checkpoint(name="")
    tiny.meta.typer = data
    path = save_checkpoint(tmp_path / "bad.safetensors", tiny.model, tiny.meta)
    if message is None:  # harmless once re-built: it loads and types
        assert Typer.from_dict(load_checkpoint(path).meta.typer).blob_proba(np.zeros((2, len(data["features"])))).shape == (2, K)
        return
    with pytest.raises(ModelError, match=message) as err:
        load_checkpoint(path)
    assert "bad.safetensors" in str(err.value) and len(str(err.value)) < 400  # one line, not the file's junk


def test_a_fine_tuned_model_keeps_its_parents_typer_but_not_a_scene_adaptation(typer):
    from seepview.core.model import data as d
    from seepview.core.model.train import TrainConfig, run_training

    parent = make_tiny_checkpoint(name="", typer=typer.to_dict(),
                                  adaptation={"format": 1, "kind": "main", "main_class": 2, "scene": "S"})
    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        img, _, _, truth = synthetic_tile(rng, size=32)
        samples.append(d.Sample(img, truth, group=f"g{i}", name=f"g{i}.0"))
    config = TrainConfig(epochs=1, batch_size=2, patch=32, threads=1, seed=0, patience=None, warmup_fraction=0.0)
    result = run_training(parent, samples, [], config)
    assert result.checkpoint.meta.typer == typer.to_dict() and result.checkpoint.meta.adaptation == {}


def _swapped(targets):
    """Types 2 and 5 swapped: blobs whose types teach the wrong thing (a network's training scenes)."""
    out = targets.copy()
    out[targets == 2], out[targets == 5] = 5, 2
    return out


@pytest.fixture(scope="module")
def typed_by_typist():
    """(plain typer, same typer with a typist): 60 tiles whose types mislead, 30 whose types are right, and
    the typist fitted on the right ones only."""
    xa, ya, aa, _ = training_set(10, 60)
    xb, yb, ab, _ = training_set(11, 30)
    x, y, a = np.concatenate([xa, xb]), np.concatenate([_swapped(ya), yb]), np.concatenate([aa, ab])
    rows = np.r_[np.zeros(len(ya), bool), np.ones(len(yb), bool)]
    return fit_typer(x, y, a, K, rounds=40), fit_typer(x, y, a, K, rounds=40, typist_rows=rows)


def test_a_typist_types_kept_blobs_and_keeps_the_first_boosters_p_reject(typed_by_typist):
    plain, with_typist = typed_by_typist
    assert with_typist.typist_text and plain.typist_text is None
    ok = {"typist": 0, "plain": 0, "slick pixels": 0}
    for img, probs, labels, truth in training_set(98, 20)[3]:
        comp, n = blobs_of(labels)
        feats = blob_features(img, probs, comp, n)
        p, q = plain.blob_proba(feats), with_typist.blob_proba(feats)
        assert np.allclose(p[:, 0], q[:, 0]) and np.allclose(q.sum(axis=1), 1)  # same P(reject)
        out = with_typist.apply(labels, img, probs)
        assert np.array_equal(out > 0, plain.apply(labels, img, probs) > 0)  # on these tiles no blob is split
        slick = truth > 0
        ok["typist"] += int((out[slick] == truth[slick]).sum())
        ok["plain"] += int((plain.apply(labels, img, probs)[slick] == truth[slick]).sum())
        ok["slick pixels"] += int(slick.sum())
    # the plain typer learnt two thirds of its types from the swapped tiles, the typist none; the two
    # together (geometric mean) follow the typist where the plain one is unsure
    assert ok["typist"] > 0.9 * ok["slick pixels"] and ok["plain"] < 0.6 * ok["slick pixels"], ok


def test_a_typist_is_stored_and_a_refit_keeps_it(tmp_path, typed_by_typist):
    _, with_typist = typed_by_typist
    tiny = make_tiny_checkpoint(name="", typer=with_typist.to_dict())
    path = save_checkpoint(tmp_path / "typist.safetensors", tiny.model, tiny.meta)
    loaded = Typer.from_dict(load_checkpoint(path).meta.typer)
    assert loaded.typist_text == with_typist.typist_text and loaded.to_dict()["format"] == 2
    x, y, a, _ = training_set(12, 10)
    assert refit_typer(loaded, x, y, a, rounds=5).typist_text == with_typist.typist_text


def test_a_format_1_typer_without_a_typist_still_loads(tmp_path, typer):
    old = typer.to_dict()
    old["format"] = 1
    old["model"] = typer.model_text  # format 1: plain text, no encoding, no typist
    del old["typist"], old["encoding"]
    tiny = make_tiny_checkpoint(name="", typer=old)
    path = save_checkpoint(tmp_path / "old.safetensors", tiny.model, tiny.meta)
    loaded = Typer.from_dict(load_checkpoint(path).meta.typer)
    assert loaded.typist_text is None and loaded.model_text == typer.model_text


def test_a_deflate_bomb_is_refused_without_inflating_it(monkeypatch, typer):
    import tracemalloc

    from seepview.core.model import typer as typer_module

    monkeypatch.setattr(typer_module, "MAX_TEXT", 10_000)
    data = typer.to_dict()
    data["model"] = _pack("tree" + " " * 50_000_000)  # 50 MB of text in ~70 kB
    tracemalloc.start()
    with pytest.raises(ModelError, match="not a LightGBM text model"):
        Typer.from_dict(data, "bomb.safetensors")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000  # inflation stopped at the cap


def test_a_class_the_typist_never_saw_keeps_the_first_boosters_say():
    """The typist's rows hold types 2 and 3 only; type 5 (long streaks) must still be called."""
    xa, ya, aa, _ = training_set(20, 60)
    xb, yb, ab, _ = training_set(21, 40)
    yb = yb.copy()
    yb[(yb == 2) & (np.arange(len(yb)) % 2 == 0)] = 3
    yb[yb == 5] = -1
    x, y, a = np.concatenate([xa, xb]), np.concatenate([ya, yb]), np.concatenate([aa, ab])
    rows = np.r_[np.zeros(len(ya), bool), np.ones(len(yb), bool)]
    typer = fit_typer(x, y, a, K, rounds=40, typist_rows=rows)
    assert typer.info["typist_blobs"][5] == 0 and typer.info["typist_blobs"][3] > 0
    streak = called = 0
    for img, probs, labels, truth in training_set(97, 20)[3]:
        out = typer.apply(labels, img, probs)
        streak += int((truth == 5).sum())
        called += int(((truth == 5) & (out == 5)).sum())
    assert streak and called > 0.9 * streak


def test_when_both_type_distributions_vanish_a_blob_keeps_the_first_boosters_types(typed_by_typist, monkeypatch):
    """Underflow in the geometric mean (the typist gives every seep type 0) must not make a kept blob's seep
    mass vanish: the first booster's types stand."""
    _plain, typer = typed_by_typist
    typer = dataclasses.replace(typer, info={**typer.info, "typist_blobs": [1] * K})  # every class "seen"
    x, _, _, _ = training_set(21, 4)
    first = np.asarray(typer.booster().predict(x), np.float64).reshape(len(x), K)

    class Silent:  # a typist whose seep types all underflowed to 0
        def predict(self, feats):
            return np.tile(np.r_[1.0, np.zeros(K - 1)], (len(feats), 1))

    monkeypatch.setattr(typer, "typist", lambda path=None: Silent())
    p = typer.blob_proba(x)
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1)
    assert np.allclose(p, first)  # P(reject) and the seep types are the first booster's
