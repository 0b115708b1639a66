"""Tiled inference: bookkeeping exact with a pointwise model, close to whole-image with a U-Net."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from seepview.core.classes import ClassTable
from seepview.core.errors import Cancelled, ModelError
from seepview.core.imageio import open_image
from seepview.core.model.checkpoint import Checkpoint
from seepview.core.model.infer import Predictor, blend_window, select_device, tile_starts
from seepview.core.model.normalize import PHOTO_NORMALIZATION, SAR_NORMALIZATION
from tests.tiny import make_tiny_checkpoint


class _Pointwise(torch.nn.Module):
    """Per-pixel logits (no spatial context): tiling must not change its output at all."""

    def __init__(self, in_channels=1, num_classes=4):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.conv = torch.nn.Conv2d(in_channels, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-6, 6, num_classes * in_channels).view_as(self.conv.weight))
            self.conv.bias.copy_(torch.linspace(3, -3, num_classes))

    def forward(self, x):
        return self.conv(x)


def _checkpoint(model, preset="sar-seep", norm=SAR_NORMALIZATION):
    """A checkpoint around one of the hand-made test models above (U-Nets come from ``tests/tiny.py``)."""
    table = ClassTable.preset(preset)
    if len(table) != model.num_classes:
        table = ClassTable.from_names([f"c{i}" for i in range(model.num_classes)])
    return Checkpoint(model.eval(), _meta(table, norm))


def _meta(table, norm):
    from seepview.core.model.checkpoint import ModelMeta

    return ModelMeta(arch={}, classes=table.to_dict(), normalization=dict(norm))


def _sar(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(20000, 50000, size=(h, w)).astype(np.uint16)
    img[: h // 5, : w // 6] = 0  # a no-data wedge
    img[h // 2 : h // 2 + 9, 5 : w - 5] //= 3  # a dark "slick"
    return img


def test_tile_starts_cover_and_end_flush():
    assert tile_starts(100, 128, 16) == [0]
    assert tile_starts(256, 256, 32) == [0]
    starts = tile_starts(1000, 256, 32)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 224 for a, b in zip(starts, starts[1:]))


def test_blend_window_is_positive_symmetric_and_flat_inside():
    w = blend_window(64, 48, 16)
    assert w.shape == (64, 48) and w.dtype == np.float32
    assert (w > 0).all() and w.max() == 1.0
    assert np.allclose(w, w[::-1]) and np.allclose(w, w[:, ::-1])
    assert (w[16:48, 16:32] == 1).all()


def test_tiled_equals_whole_exactly_for_a_pointwise_model():
    img = _sar(150, 131)
    ck = _checkpoint(_Pointwise())
    whole = Predictor(ck, tile=512).predict_proba(img)
    for tile, overlap, batch in [(32, 8, 3), (48, 16, 16), (64, 0, 1)]:
        tiled = Predictor(ck, tile=tile, overlap=overlap, batch_size=batch).predict_proba(img)
        np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert np.allclose(whole.sum(axis=0), 1.0, atol=1e-5)


def test_tiled_close_to_whole_image_for_a_unet_away_from_borders():
    ck = make_tiny_checkpoint(name="")
    with torch.no_grad():
        ck.model.head.weight.mul_(30)  # sharper probabilities, so context differences show
    img = _sar(160, 144, seed=1)
    whole = Predictor(ck, tile=1024).predict_proba(img)
    tiled = Predictor(ck, tile=64, overlap=32, batch_size=5).predict_proba(img)
    m = 8
    diff = np.abs(tiled - whole)[:, m:-m, m:-m]
    assert diff.mean() < 1e-4
    assert diff.max() < 5e-3
    agree = (tiled.argmax(0) == whole.argmax(0))[m:-m, m:-m].mean()
    assert agree > 0.99
    # Without overlap the seams are visibly worse: the blending is doing real work.
    seams = np.abs(Predictor(ck, tile=64, overlap=0).predict_proba(img) - whole)[:, m:-m, m:-m]
    assert seams.mean() > 10 * diff.mean()


def test_predict_labels_and_confidence_match_probabilities():
    ck = make_tiny_checkpoint(name="")
    img = _sar(90, 70)
    p = Predictor(ck, tile=48, overlap=16, batch_size=4)
    proba = p.predict_proba(img)
    pred = p.predict(img)
    assert pred.labels.dtype == np.uint8 and pred.confidence.dtype == np.uint8
    np.testing.assert_array_equal(pred.labels, proba.argmax(0))
    np.testing.assert_array_equal(pred.confidence, np.round(proba.max(0) * 255).astype(np.uint8))


def test_streaming_predict_to_a_memmap_from_a_tiled_tiff_equals_predict(tmp_path):
    ck = make_tiny_checkpoint(name="")
    img = _sar(300, 260, seed=2)
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, img, tile=(64, 64))
    expected = Predictor(ck, tile=64, overlap=16, batch_size=16).predict(img)
    labels = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint8, shape=img.shape)
    conf = np.memmap(tmp_path / "conf.raw", mode="w+", dtype=np.uint8, shape=img.shape)
    calls = []
    with open_image(path) as source:
        # batch 2: groups of one tile row, so the row-band carry is exercised many times
        Predictor(ck, tile=64, overlap=16, batch_size=2).predict_to(
            source, labels, conf, progress=lambda d, t: calls.append((d, t))
        )
    labels.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected.labels)
    # Normalisation was fitted on a sample of the source vs the full array: allow rare 1-level rounding.
    assert np.abs(conf.astype(int) - expected.confidence.astype(int)).max() <= 1
    total = len(tile_starts(300, 64, 16)) * len(tile_starts(260, 64, 16))
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_cancel_raises_cancelled_and_stops_early():
    ck = _checkpoint(_Pointwise())
    img = _sar(200, 200)
    seen = []

    def cancel():
        return len(seen) >= 2

    with pytest.raises(Cancelled):
        Predictor(ck, tile=32, overlap=0, batch_size=4).predict(
            img, cancel=cancel, progress=lambda d, t: seen.append(d)
        )
    assert seen[-1] < 49  # 7 x 7 tiles; stopped after two batches


def test_scene_normalisation_is_fitted_once_not_per_tile():
    # Left half bright, right half dark: stretching each tile on its own would make the halves alike.
    img = np.full((64, 128), 40000, np.uint16)
    img[:, 64:] = 20000
    img[::7, ::5] = 30000
    ck = _checkpoint(_Pointwise())
    whole = Predictor(ck, tile=512).predict_proba(img)
    tiled = Predictor(ck, tile=32, overlap=8).predict_proba(img)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    labels = whole.argmax(0)
    assert labels[5, 10] != labels[5, 100]


def test_rgb_model_channels_and_mismatch():
    ck = make_tiny_checkpoint(name="", preset="corrosion", in_channels=3, normalization=PHOTO_NORMALIZATION)
    rgb = np.random.default_rng(0).integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
    assert Predictor(ck, tile=32, overlap=8).predict(rgb).labels.shape == (40, 50)
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(Predictor(ck).predict(rgba).labels, Predictor(ck).predict(rgb).labels)
    sar_ck = make_tiny_checkpoint(name="")
    with pytest.raises(ModelError, match="expects 1-channel"):
        Predictor(sar_ck).predict(rgb)


def test_inference_copy_leaves_the_checkpoint_model_untouched():
    ck = make_tiny_checkpoint(name="")
    net = ck.model
    before = {k: v.clone() for k, v in net.state_dict().items()}
    p = Predictor(ck)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in p.model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = torch.rand(2, 1, 40, 40)
    with torch.inference_mode():
        torch.testing.assert_close(p.model(x), net.eval()(x), atol=1e-4, rtol=1e-4)


def test_select_device():
    assert select_device("cpu").type == "cpu"
    expected = (
        "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert select_device().type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA"):
            select_device("cuda")
    with pytest.raises(ModelError, match="use cpu, cuda, cuda:N") as info:
        select_device("warp-drive")
    assert "mkldnn" not in str(info.value)  # not torch's list of every backend it was built to know


def test_compiled_predictor_matches_eager_including_a_padded_last_batch():
    """torch.compile (inductor) gives the eager probabilities; 5 tiles at batch 4 pads the second batch."""
    ck = make_tiny_checkpoint(name="")
    img = _sar(96, 150)
    eager = Predictor(ck, tile=64, overlap=16, batch_size=4, compile=False)
    compiled = Predictor(ck, tile=64, overlap=16, batch_size=4, compile=True)
    expected = eager.predict_proba(img)
    got = compiled.predict_proba(img)
    if not compiled.compiled:
        pytest.skip("torch.compile is unavailable on this machine (the Predictor fell back to eager)")
    assert not eager.compiled
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_auto_compile_only_for_big_jobs(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(kw) or module)
    ck = make_tiny_checkpoint(name="")
    p = Predictor(ck, tile=32, overlap=0, batch_size=4)
    p.predict(_sar(64, 64))  # 4 tiles: stays eager
    assert not p.compiled and calls == []
    monkeypatch.setattr("seepview.core.model.infer.AUTO_COMPILE_TILES", 4)
    p.predict(_sar(64, 64))
    assert p.compiled and calls == [{"dynamic": False, "options": {"freezing": True}}]


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    """A backend that fails lazily (as inductor does without a C compiler) must not fail the prediction."""

    def broken(*args, **kwargs):
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: broken)
    ck = make_tiny_checkpoint(name="")
    img = _sar(64, 80)
    expected = Predictor(ck, tile=32, overlap=8, compile=False).predict(img)
    p = Predictor(ck, tile=32, overlap=8, compile=True)
    with caplog.at_level("WARNING"):
        got = p.predict(img)
    assert not p.compiled
    assert "no C compiler" in caplog.text
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(got.confidence, expected.confidence)


def test_default_batch_size_suits_the_device():
    ck = make_tiny_checkpoint(name="")
    assert Predictor(ck, device="cpu").batch_size == 4  # small batches stay in cache on CPU
    assert Predictor(ck, device="cpu", batch_size=16).batch_size == 16
    if torch.cuda.is_available():
        assert Predictor(ck, device="cuda").batch_size == 16


class _SeepEverywhere(torch.nn.Module):
    """Predicts class 1 (a seep) with high confidence at every pixel, no-data included."""

    in_channels, num_classes = 1, 8

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([0.0, 5.0, *([0.0] * 6)]))

    def forward(self, x):
        return torch.zeros(x.shape[0], 8, *x.shape[2:]) + self.bias.view(1, 8, 1, 1)


def test_nodata_is_never_a_seep_in_memory_and_streamed(tmp_path):
    img = _sar(300, 260, seed=3)  # a wedge of exact 0 in the top-left corner
    wedge = img == 0
    p = Predictor(_checkpoint(_SeepEverywhere()), tile=64, overlap=16, batch_size=2)
    pred = p.predict(img)
    assert (pred.labels[wedge] == 0).all() and (pred.confidence[wedge] == 255).all()
    assert (pred.labels[~wedge] == 1).all()  # the forcing stops exactly at the wedge
    proba = p.predict_proba(img)
    np.testing.assert_array_equal(proba[0][wedge], 1.0)
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, img, tile=(64, 64))
    labels = np.zeros(img.shape, np.uint8)
    with open_image(path) as source:  # streamed: the source's own no-data value (0 for uint16 SAR)
        p.predict_to(source, labels)
    np.testing.assert_array_equal(labels, pred.labels)


def test_photos_have_no_nodata():
    model = _Pointwise(in_channels=3, num_classes=4)
    with torch.no_grad():
        model.conv.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    img = np.zeros((40, 40, 3), np.uint8)  # black is a colour in a photo, not missing data
    labels = Predictor(_checkpoint(model, preset="corrosion", norm=PHOTO_NORMALIZATION)).predict(img).labels
    assert (labels == 2).all()


def test_shipped_model_calls_no_nodata_pixel_of_unseen_tiles_a_seep(cgg_seep):
    """The shipped SAR model on tiles of its validation scenes (never trained on) with no-data wedges:
    the raw network calls ~2 % of those pixels a seep (docs/benchmarks.md); the Predictor none."""
    from seepview.core.model.checkpoint import default_model_path, load_checkpoint
    from seepview.core.nodata import nodata_mask

    predictor = Predictor(load_checkpoint(default_model_path("sar-seep")), device="cpu")
    checked = 0
    for path in sorted(p for s in ("041870", "045588", "045591") for p in (cgg_seep / "images").glob(f"{s}.*.tif")):
        with open_image(path) as source:
            nodata = nodata_mask(source.read_all(), source.nodata)
            if not nodata.any():
                continue
            assert not predictor.predict(source).labels[nodata].any(), path.name
            checked += 1
        if checked == 4:
            break
    assert checked == 4


def test_uint8_probabilities_are_the_float_ones_rounded_without_a_float_copy_of_the_image():
    from tests.tiny import make_tiny_checkpoint

    predictor = Predictor(make_tiny_checkpoint(seed=3), compile=False, tile=32, overlap=8)
    image = (np.random.default_rng(0).random((70, 90)) * 3000 + 1).astype(np.uint16)
    spec = predictor.fit(image)
    probs8 = predictor.predict_probs8(image, normalization=spec)
    assert probs8.dtype == np.uint8 and probs8.shape == (predictor.num_classes, 70, 90)
    expected = (predictor.predict_proba(image, normalization=spec) * 255).round().astype(np.uint8)
    assert np.array_equal(probs8, expected) and len(np.unique(probs8)) > 10


def test_stage_twos_inputs_come_with_the_labels_predict_gives_before_it():
    """Scene adaptation scores "no adaptation" on what the app showed: the labels are the float
    probabilities' argmax, which the rounded ones' argmax misses where two classes tie after rounding."""
    from tests.tiny import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(seed=3)
    last = [m for m in checkpoint.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # near-equal logits: every class ~1/8, so the rounded probabilities tie
        last.weight.mul_(1e-3)
        last.bias.mul_(1e-3)
    predictor = Predictor(checkpoint, compile=False, tile=32, overlap=8)
    image = (np.random.default_rng(1).random((70, 90)) * 3000 + 1).astype(np.uint16)
    spec = predictor.fit(image)
    labels, probs8 = predictor.predict_labels_probs8(image, normalization=spec)
    assert np.array_equal(labels, predictor.predict(image, normalization=spec).labels)
    assert (probs8.argmax(axis=0) != labels).any()  # what adaptation used as the labels until session 16
    assert np.array_equal(probs8, predictor.predict_probs8(image, normalization=spec))
