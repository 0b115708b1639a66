"""Stage 2 of images too large for memory (``seepview.core.refine_streamed``): the same labels as in memory."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import seepview.core.model.infer as infer
import seepview.core.refine_streamed as rs
from seepview.core.adapt import Adaptation, with_adaptation
from seepview.core.errors import ModelError
from seepview.core.model.infer import Predictor
from seepview.core.model.typer import blob_features, blobs_of, fit_typer, window_features
from tests.core.model.test_typer import training_set
from tests.tiny import make_tiny_checkpoint

K = 8


def snakes(shape, n, seed):
    """A mask of random walks: long thin blobs that wander across many bands and cells, plus specks."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    for _ in range(n):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        for _ in range(rng.integers(1, 400)):
            mask[y, x] = True
            y = int(np.clip(y + rng.integers(-1, 2), 0, shape[0] - 1))
            x = int(np.clip(x + rng.integers(-1, 2), 0, shape[1] - 1))
    return mask


def partition(comp):
    """Each pixel's blob as the set of the blob's first pixel: comparable whatever the numbering."""
    flat = comp.ravel()
    first = np.full(int(flat.max()) + 1, -1, np.int64)
    idx = np.flatnonzero(flat)
    first_seen = np.unique(flat[idx], return_index=True)
    first[first_seen[0]] = idx[first_seen[1]]
    return np.where(flat > 0, first[flat], -1)


@pytest.mark.parametrize("rows", [1, 7, 64, 500])
def test_blobs_joined_across_bands_are_scipys_components(tmp_path, rows):
    mask = snakes((300, 260), 60, seed=rows)
    labels = mask.astype(np.uint8)
    comp = rs.RowFile(tmp_path / "c.i32", 300, (260,), np.int32)
    n, box, area = rs.label_streamed(labels, comp, rs._bands(300, rows))
    whole, m = ndimage.label(mask, structure=np.ones((3, 3), bool))
    got = comp.read(0, 300)
    comp.close()
    assert n == m
    assert np.array_equal(partition(got), partition(whole))
    assert sorted(area.tolist()) == sorted(np.bincount(whole.ravel())[1:].tolist())
    assert boxes_by_first_pixel(got, box) == boxes_by_first_pixel(whole)  # scipy's boxes of the same blobs


def boxes_by_first_pixel(comp, box=None):
    """{a blob's first pixel (row-major): its (top, left, bottom, right)}, from ``box`` (indexed by id - 1) or
    from scipy's ``find_objects``: comparable whatever the numbering."""
    flat = comp.ravel()
    ids, first = np.unique(flat, return_index=True)
    out = {}
    for label, index in zip(ids[ids > 0], first[ids > 0]):
        if box is None:
            sl = ndimage.find_objects((comp == label).astype(np.int32))[0]
            out[int(index)] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        else:
            out[int(index)] = tuple(int(v) for v in box[label - 1])
    return out


def test_a_scratch_file_reads_back_rows_and_column_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(rs, "READ_ROWS", 3)
    probs = np.random.default_rng(0).integers(0, 256, (K, 20, 30), dtype=np.uint8)
    f = rs.ProbabilityFile(tmp_path / "p.u8", K, (20, 30))
    f.write_band(0, probs[:, :11])
    f.write_band(11, probs[:, 11:])
    assert np.array_equal(f.read_band(0, 20), probs)
    assert np.array_equal(f.read_band(4, 17, 5, 23), probs[:, 4:17, 5:23])  # from whole rows
    assert np.array_equal(f.read_band(2, 19, 20, 30), probs[:, 2:19, 20:30])  # segment by segment
    assert np.array_equal(f.read_band(0, 20, 0, 1), probs[:, :, :1])
    f.close()


def test_features_on_a_window_with_margin_equal_the_whole_images():
    rng = np.random.default_rng(3)
    image = rng.normal(0.5, 0.1, (400, 420)).astype(np.float32)
    probs = rng.integers(0, 256, (K, 400, 420), dtype=np.uint8)
    nodata = np.zeros((400, 420), bool)
    nodata[:, :30] = True
    comp, n = blobs_of(snakes((400, 420), 40, seed=1))
    whole = blob_features(image, probs, comp, n, nodata)
    for blob in (1, n // 2, n):
        ys, xs = np.nonzero(comp == blob)
        y0, x0 = max(0, ys.min() - rs_margin()), max(0, xs.min() - rs_margin())
        y1, x1 = min(400, ys.max() + 1 + rs_margin()), min(420, xs.max() + 1 + rs_margin())
        win = window_features(image[y0:y1, x0:x1], probs[:, y0:y1, x0:x1], comp[y0:y1, x0:x1], [blob],
                              nodata[y0:y1, x0:x1], shape=(400, 420), origin=(y0, x0))
        np.testing.assert_allclose(win[0], whole[blob - 1], rtol=1e-6, atol=1e-6)


def rs_margin():
    from seepview.core.model.typer import MARGIN

    return MARGIN


@pytest.fixture(scope="module")
def typer():
    x, y, a, _ = training_set(0, 40)
    return fit_typer(x, y, a, K, rounds=30)


def synthetic_scene(seed=0, shape=(300, 340)):
    """uint16 SAR-like image with dark slicks (some long, crossing bands) and a no-data corner."""
    rng = np.random.default_rng(seed)
    img = rng.normal(3000, 300, shape)
    slick = ndimage.binary_dilation(snakes(shape, 25, seed), iterations=3)
    img[slick] *= 0.4
    img[:60, :60][np.tri(60, dtype=bool)[::-1]] = 0
    return np.clip(img, 0, 65535).astype(np.uint16)


def adapted(kind):
    return Adaptation(kind=kind, tiles=12, prior=[1, 0.5, 3, 1, 1, 2, 1, 1], main_class=5,
                      head={"coef": [1.0, 2.0, -1.5, -0.5, 0.3, 0.1], "intercept": -0.5})


def fake_network(image):
    """Class probabilities of a "network" that calls dark pixels seep, its type varying across the image:
    stage 2, not the network, is under test (the tiny random U-Net detects nothing)."""
    import torch

    img = image.astype(np.float32) / 3000
    seep = 1 / (1 + np.exp((img - 0.7) * 12))
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    mix = np.stack([np.cos(xx / (20 + 7 * k) + yy / (31 + 5 * k)) + 1.2 for k in range(K - 1)])
    mix /= mix.sum(axis=0)
    probs = np.concatenate([(1 - seep)[None], seep[None] * mix]).astype(np.float32)
    probs[:, image == 0] = np.eye(K, dtype=np.float32)[0][:, None]

    def bands(*args, **kwargs):
        for y0 in range(0, image.shape[0], 50):
            y1 = min(image.shape[0], y0 + 50)
            yield y0, y1, torch.from_numpy(probs[:, y0:y1].copy()), torch.ones((y1 - y0, image.shape[1]))

    return bands


def predict_streamed(predictor, image, scratch, monkeypatch, cell: int, band_rows: int, **kwargs) -> np.ndarray:
    """``predictor.predict_to`` forced through streamed stage 2, with small cells and bands so that blobs
    cross many of them."""
    monkeypatch.setattr(infer, "REFINE_MAX_PIXELS", 0)
    monkeypatch.setattr(rs, "CELL", cell)
    monkeypatch.setattr(rs, "BAND_PIXELS", band_rows * image.shape[1])
    labels = np.empty(image.shape, np.uint8)
    predictor.predict_to(image, labels, scratch=scratch, **kwargs)
    return labels


@pytest.mark.parametrize("kind", ["none", "prior", "main", "head+prior"])
def test_a_streamed_prediction_equals_the_in_memory_one(tmp_path, monkeypatch, typer, kind):
    checkpoint = make_tiny_checkpoint(typer=typer.to_dict())
    if kind != "none":
        checkpoint.meta.adaptation = with_adaptation(None, adapted(kind))
    image = synthetic_scene()
    predictor = Predictor(checkpoint, compile=False)
    monkeypatch.setattr(predictor, "_row_bands", fake_network(image))
    in_memory = predictor.predict(image).labels
    labels = predict_streamed(predictor, image, tmp_path, monkeypatch, cell=64, band_rows=40)
    assert np.array_equal(labels, in_memory)
    assert list(tmp_path.iterdir()) == []  # scratch files removed
    network = np.empty(image.shape, np.uint8)
    monkeypatch.setattr(checkpoint.meta, "typer", {})
    monkeypatch.setattr(checkpoint.meta, "adaptation", None)
    predictor.predict_to(image, network)
    assert (network > 0).sum() > 2000 and len(np.unique(network)) > 3
    assert not np.array_equal(labels, network)  # stage 2 did run: not the network's own labels


def test_the_shipped_model_types_a_large_real_mosaic_as_it_types_it_in_memory(tmp_path, monkeypatch, cgg_seep):
    import tifffile

    from seepview.core.model.checkpoint import load_checkpoint
    from tests.conftest import REPO_ROOT

    files = sorted((cgg_seep / "images").glob("045588.*.tif"))[:6]
    tiles = [tifffile.imread(f) for f in files]
    mosaic = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], axis=1)])
    checkpoint = load_checkpoint(REPO_ROOT / "models" / "sar-seep.safetensors")
    checkpoint.meta.adaptation = with_adaptation(None, adapted("head+prior"))
    predictor = Predictor(checkpoint, compile=False)
    in_memory = predictor.predict(mosaic).labels
    streamed = predict_streamed(predictor, mosaic, tmp_path, monkeypatch, cell=128, band_rows=64)
    assert (in_memory > 0).sum() > 1000
    assert np.array_equal(streamed, in_memory)


def test_too_little_scratch_disk_is_one_clear_error_before_any_inference(tmp_path, monkeypatch, typer):
    import shutil

    checkpoint = make_tiny_checkpoint(typer=typer.to_dict())
    monkeypatch.setattr(infer, "REFINE_MAX_PIXELS", 0)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    predictor = Predictor(checkpoint, compile=False)
    monkeypatch.setattr(predictor, "_row_bands", lambda *a, **k: pytest.fail("inference ran"))
    with pytest.raises(ModelError, match=r"needs 0\.0 GB of scratch disk in .*free some space there$"):
        predictor.predict_to(synthetic_scene(), np.empty((300, 340), np.uint8), scratch=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cancelling_stage_2_removes_its_scratch_files(tmp_path, monkeypatch, typer):
    from seepview.core.errors import Cancelled

    checkpoint = make_tiny_checkpoint(typer=typer.to_dict())
    monkeypatch.setattr(infer, "REFINE_MAX_PIXELS", 0)
    in_stage_2 = []
    original = rs.refine_streamed

    def started(*args, **kwargs):
        in_stage_2.append(True)
        return original(*args, **kwargs)

    monkeypatch.setattr(rs, "refine_streamed", started)
    with pytest.raises(Cancelled):
        Predictor(checkpoint, compile=False).predict_to(synthetic_scene(), np.empty((300, 340), np.uint8),
                                                        cancel=lambda: bool(in_stage_2), scratch=tmp_path)
    assert in_stage_2 and list(tmp_path.iterdir()) == []


def test_progress_covers_the_network_then_stage_2_and_never_goes_back(tmp_path, monkeypatch, typer):
    checkpoint = make_tiny_checkpoint(typer=typer.to_dict())
    checkpoint.meta.adaptation = with_adaptation(None, adapted("head+prior"))
    image = synthetic_scene()
    predictor = Predictor(checkpoint, compile=False)
    seen = []
    predict_streamed(predictor, image, tmp_path, monkeypatch, cell=64, band_rows=40,
                     progress=lambda d, t: seen.append((d, t)))
    done = [d for d, _ in seen]
    totals = {t for _, t in seen}
    assert len(totals) == 1 and done == sorted(done) and seen[-1] == (totals.pop(),) * 2
    tiles = len(infer.tile_starts(300, 256, 32)) * len(infer.tile_starts(340, 256, 32))
    assert seen[-1][1] == 2 * tiles
    assert sum(d > tiles for d in done) >= 3  # stage 2 moved the bar on its own


class HashTyper:
    """A typer whose class for a blob is a hash of its features' bytes: any difference in any feature bit
    (a window cut too small, a ring or context clipped) changes the labels, which a trained typer may not."""

    num_classes = K

    def blob_proba(self, feats):
        import hashlib

        out = np.zeros((len(feats), K))
        for i, row in enumerate(np.asarray(feats, np.float32)):
            out[i, hashlib.blake2b(row.tobytes(), digest_size=2).digest()[0] % K] = 1.0
        return out

    from seepview.core.model.typer import Typer

    score_blobs = Typer.score_blobs  # blobs_of, blob_features, then this blob_proba


def hostile_blobs(shape, cell):
    """Blobs that test every seam: snakes, 1-row and 1-column blobs on cells' first rows and columns,
    a full-height and a full-width line, a large dark region (a blob bigger than 2 x 2 cells)."""
    mask = snakes(shape, 80, seed=7)
    for y in range(0, shape[0], cell):
        mask[y, 5 : 5 + cell // 2] = True  # 1 row, on a cell's top row
        mask[y + 3 : y + 3 + cell // 3, min(shape[1] - 1, y % shape[1])] = True  # 1 column
    mask[:, shape[1] // 3] = True
    mask[shape[0] // 2, :] = True
    mask[100:100 + 3 * cell, 400:400 + 3 * cell] = True
    return mask


@pytest.mark.parametrize("kind,rows", [("none", 16), ("prior", 37), ("head+prior", 64), ("main", 1000)])
def test_every_feature_bit_matches_the_whole_image_on_a_scene_many_windows_wide(tmp_path, monkeypatch, kind, rows):
    import seepview.core.adapt as adapt_mod
    from seepview.core.adapt import refine
    from seepview.core.refine_streamed import ProbabilityFile, refine_streamed

    cell, shape = 32, (900, 1100)  # windows (2 cells + 2 x MARGIN) are a fraction of the image
    monkeypatch.setattr(rs, "CELL", cell)
    monkeypatch.setattr(adapt_mod, "_cached_typer", lambda data: HashTyper())
    rng = np.random.default_rng(1)
    mask = hostile_blobs(shape, cell)
    image = ndimage.gaussian_filter(rng.normal(0.5, 0.2, shape), 2).astype(np.float32) - 0.3 * mask
    nodata = np.zeros(shape, bool)
    nodata[:, :40] = True
    nodata[850:, 1000:] = True
    probs = rng.integers(0, 256, (K, *shape), dtype=np.uint8)
    probs[0] = np.where(mask, 40, 220)
    labels = np.where(mask & ~nodata, 1 + (np.arange(shape[1]) % (K - 1))[None, :], 0).astype(np.uint8)
    meta = make_tiny_checkpoint(typer={"hash": True}).meta
    # the head uses only the 6-px contrast, the filter that reaches farthest across a band's halo
    head = {"coef": [0.0, 0.0, 0.0, 0.0, 40.0, 0.0], "intercept": -0.5}
    meta.adaptation = with_adaptation(None, Adaptation(kind=kind, tiles=12, prior=[1, 0.5, 3, 1, 1, 2, 1, 1],
                                                       main_class=5, head=head))
    expected = refine(meta, labels.copy(), image, probs, nodata)
    assert 0.01 < (expected > 0).mean() < 0.5 and len(np.unique(expected)) >= (2 if kind == "main" else 4)

    pfile = ProbabilityFile(tmp_path / "p.u8", K, shape)
    pfile.write_band(0, probs)
    streamed = labels.copy()
    refine_streamed(meta, streamed, pfile, lambda y0, y1, x0, x1: (image[None, y0:y1, x0:x1], nodata[y0:y1, x0:x1]),
                    tmp_path, rows=rows)
    pfile.close()
    assert np.array_equal(streamed, expected), int((streamed != expected).sum())


def test_a_full_scratch_disk_is_one_clear_error_naming_the_image(tmp_path, monkeypatch, typer):
    import errno

    checkpoint = make_tiny_checkpoint(typer=typer.to_dict())
    monkeypatch.setattr(infer, "REFINE_MAX_PIXELS", 0)

    def full(self, y0, block):
        raise rs._named(OSError(errno.ENOSPC, "No space left on device"), self.path)

    monkeypatch.setattr(rs.RowFile, "write", full)
    image = synthetic_scene()
    predictor = Predictor(checkpoint, compile=False)
    monkeypatch.setattr(predictor, "_row_bands", fake_network(image))
    with pytest.raises(ModelError, match=f"scratch files for typing this image's slicks in {tmp_path} failed: "
                                         "No space left on device"):
        predictor.predict_to(image, np.empty(image.shape, np.uint8), scratch=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_progress_ends_at_the_end_with_an_adaptation_and_no_typer(tmp_path, monkeypatch):
    checkpoint = make_tiny_checkpoint()
    checkpoint.meta.adaptation = with_adaptation(None, adapted("main"))
    image = synthetic_scene()
    predictor = Predictor(checkpoint, compile=False)
    monkeypatch.setattr(predictor, "_row_bands", fake_network(image))
    monkeypatch.setattr(infer, "REFINE_MAX_PIXELS", 0)
    seen = []
    labels = np.empty(image.shape, np.uint8)
    predictor.predict_to(image, labels, progress=lambda d, t: seen.append((d, t)), scratch=tmp_path)
    assert seen[-1][0] == seen[-1][1] and set(np.unique(labels)) == {0, 5}
