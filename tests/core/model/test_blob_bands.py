"""A huge blob's features band by band (``blob_bands``) against the in-memory ones (``typer.window_features``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from seepview.core.model.blob_bands import banded_features
from seepview.core.model.typer import blob_features, blobs_of, feature_names

K = 8
NAMES = feature_names(K)
#: integer counts and exact geometry: must agree to float32 rounding of the same value
EXACT = ["log_area", "log_perimeter", "eccentricity", "solidity", "extent", "log_major", "log_minor", "compactness",
         "touches_edge", "nodata_ring", "seep_share_tile", "blobs_tile"]


def _scene(h=300, w=340, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    labels[np.abs(yy - 0.8 * xx - 20) < 1.6] = 1  # a thin diagonal slick across most of the image
    ring = (yy - 150) ** 2 + (xx - 250) ** 2
    labels[(ring < 45**2) & (ring > 20**2) & (xx < 280)] = 2  # an open annulus: holes and a concave side
    labels[0:30, 300:340] = 3  # touches the top and right borders
    labels[40:120, 10:13] = 4  # one pixel column wide (3 wide) and tall
    labels[200:203, 100:101] = 5  # a 3-pixel stub
    labels[130:170, 330:340] = 7  # touches the right border only
    blobby = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6) > 0.05
    labels[220:300, 150:260][blobby[220:300, 150:260]] = 6  # ragged blobs, some touching the bottom edge
    image = ndimage.gaussian_filter(rng.random((h, w)).astype(np.float32), 1).astype(np.float32)
    image[labels > 0] *= 0.6
    nodata = np.zeros((h, w), bool)
    nodata[:, :25] = yy[:, :25] > 150  # a no-data corner some rings reach into
    image[nodata] = 0
    probs = rng.integers(0, 256, size=(K, h, w)).astype(np.uint8)
    return image, probs, labels, nodata


def _readers(image, probs, comp, nodata):
    def read(y0, y1, x0, x1):
        return image[None, y0:y1, x0:x1], nodata[y0:y1, x0:x1]

    return read, (lambda y0, y1, x0, x1: probs[:, y0:y1, x0:x1]), (lambda y0, y1, x0, x1: comp[y0:y1, x0:x1])


@pytest.mark.parametrize("rows", [1, 2, 7, 50, None])
def test_every_feature_of_every_blob_matches_window_features(rows):
    image, probs, labels, nodata = _scene()
    comp, n = blobs_of(labels)
    assert n >= 8
    want = blob_features(image, probs, comp, n, nodata)
    read, read_probs, read_comp = _readers(image, probs, comp, nodata)
    for i, sl in enumerate(ndimage.find_objects(comp), 1):
        box = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        got = np.asarray(banded_features(i, box, comp.shape, read, read_probs, read_comp, K, rows=rows), np.float32)
        for j, name in enumerate(NAMES):
            tol = dict(rtol=1e-6, atol=1e-7) if name in EXACT else dict(rtol=2e-5, atol=2e-6)
            assert np.isclose(got[j], want[i - 1, j], **tol), (i, box, name, got[j], want[i - 1, j])


@pytest.mark.parametrize("shape", [(1, 40), (40, 1), (2, 2)])
def test_images_one_pixel_thin_match_too(shape):
    """No gradient on a patch under 2 pixels either way (typer._grad), and the hull of a line."""
    rng = np.random.default_rng(1)
    labels = np.ones(shape, np.uint8)
    image = rng.random(shape).astype(np.float32)
    probs = rng.integers(0, 256, size=(K, *shape)).astype(np.uint8)
    nodata = np.zeros(shape, bool)
    comp, n = blobs_of(labels)
    want = blob_features(image, probs, comp, n, nodata)[0]
    got = np.asarray(banded_features(1, (0, 0, *shape), shape, *_readers(image, probs, comp, nodata), K, rows=1),
                     np.float32)
    assert np.allclose(got, want, rtol=2e-5, atol=2e-6), [(n, a, b) for n, a, b in zip(NAMES, got, want) if a != b]


def test_a_huge_diagonal_slick_is_typed_alike_streamed_band_by_band(tmp_path, monkeypatch):
    """End to end through streamed stage 2: with every blob measured band by band, the labels equal the
    in-memory refine's (a real typer fitted on these features)."""
    from types import SimpleNamespace

    import seepview.core.model.blob_bands as bb
    from seepview.core.adapt import refine
    from seepview.core.model.typer import blob_targets, fit_typer
    from seepview.core.refine_streamed import ProbabilityFile, refine_streamed

    image, probs, labels, nodata = _scene(seed=1)
    comp, n = blobs_of(labels)
    truth = labels.copy()
    truth[truth == 6] = 0  # the ragged ones are false: something to reject
    feats = blob_features(image, probs, comp, n, nodata)
    targets, areas = blob_targets(comp, n, truth, K)
    rng = np.random.default_rng(0)
    x = np.concatenate([feats + rng.normal(0, 0.02, feats.shape).astype(np.float32) for _ in range(10)])
    typer = fit_typer(x, np.tile(targets, 10), np.tile(areas, 10), K, rounds=20)
    meta = SimpleNamespace(typer=typer.to_dict(), adaptation=None)
    seep = (probs[1:].max(axis=0) > probs[0]) | (labels > 0)  # a network output with these blobs and more
    net = np.where(labels > 0, labels, np.where(seep & (rng.random(labels.shape) < 0.01), 1, 0)).astype(np.uint8)
    want = refine(meta, net, image, probs, nodata)
    monkeypatch.setattr(bb, "BANDED_WINDOW", 0)  # every blob outside its cell's window goes band by band
    calls = []
    real = bb.banded_features
    monkeypatch.setattr(bb, "banded_features", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    pf = ProbabilityFile(tmp_path / "p.u8", K, labels.shape)
    pf.write_band(0, probs)
    out = net.copy()

    def read(y0, y1, x0, x1):
        return image[None, y0:y1, x0:x1], nodata[y0:y1, x0:x1]

    import seepview.core.refine_streamed as rs

    monkeypatch.setattr(rs, "CELL", 64)  # the slick and the annulus leave their 64² cells
    refine_streamed(meta, out, pf, read, tmp_path, rows=37)
    pf.close()
    assert len(calls) >= 2
    assert np.array_equal(out, want)
    assert len(np.unique(want[labels > 0])) > 1  # the typer did type (not everything one class)


def test_hull_rows_count_what_skimage_draws():
    """The hull's pixels row by row equal skimage's ``convex_hull_image`` (``grid_points_in_poly``), for the
    hulls of random blobs, lines and discs, on any band of rows."""
    from skimage.morphology import convex_hull_image

    from seepview.core.model.blob_bands import hull_row_counts

    rng = np.random.default_rng(5)
    shapes = []
    yy, xx = np.mgrid[:120, :150]
    shapes.append((yy - 60) ** 2 + (xx - 75) ** 2 < 55**2)  # a disc: many hull vertices
    shapes.append(np.abs(yy - 0.37 * xx - 10) < 0.8)  # a thin line of irrational-looking slope
    shapes.append(np.abs(yy - 0.8 * xx) < 2)
    for _ in range(6):
        shapes.append(ndimage.gaussian_filter(rng.normal(size=(120, 150)), rng.uniform(2, 9)) > 0.1)
    from scipy.spatial import ConvexHull
    from skimage.morphology._convex_hull import possible_hull
    from skimage.util import unique_rows

    for mask in shapes:
        want = convex_hull_image(mask).sum(axis=1)
        coords = possible_hull(np.ascontiguousarray(mask, np.uint8)).astype(np.float64)
        offsets = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])
        coords = unique_rows((coords[:, None, :] + offsets).reshape(-1, 2))
        vertices = coords[ConvexHull(coords).vertices]
        assert np.array_equal(hull_row_counts(vertices, 0, 120, 150), want)
        assert np.array_equal(hull_row_counts(vertices - [40, 0], 0, 30, 150), want[40:70])  # one band
