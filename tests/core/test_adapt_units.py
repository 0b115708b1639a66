"""A reviewed image's blocks are typed in their surroundings, so the out-of-fold choice scores what the user saw."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from seepview.core.adapt import TileData, fit_adaptation
from seepview.core.adapt_units import AROUND, BLOCK, Around, typed_in_place, units_of
from seepview.core.model.typer import MARGIN, Typer, blob_features, blobs_of, feature_names, fit_typer
from tests.tiny import make_tiny_checkpoint

K = 8


def slick_image(size, seed, n=14):
    """(normalised image, uint8 probabilities, network labels): dark elongated slicks, long ones crossing
    the 256-px block borders, called seep 1 by the network."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.6, 0.05, (size, size)).astype(np.float32)
    mask = np.zeros((size, size), bool)
    for _ in range(n):
        y, x = rng.integers(10, size - 10, 2)
        length, angle = rng.integers(8, 160), rng.uniform(0, np.pi)
        for s in np.linspace(0, length, 2 * length):
            yy, xx = int(y + s * np.sin(angle)), int(x + s * np.cos(angle))
            if 0 <= yy < size and 0 <= xx < size:
                mask[yy, xx] = True
    mask = ndimage.binary_dilation(mask, iterations=3)
    img[mask] -= 0.3
    probs = np.zeros((K, size, size), np.float32)
    probs[1] = np.where(mask, 0.8, 0.02)
    probs[0] = 1 - probs[1]
    probs8 = (probs * 255).round().astype(np.uint8)
    return img, probs8, probs8.argmax(0).astype(np.uint8)


@pytest.fixture(scope="module")
def typer():
    """Types a blob by its size (long slicks seep 1, short ones seep 5), as a real typer partly does: a slick
    cut by a block's border looks shorter, and touching the border is a feature of its own."""
    xs, ys, areas = [], [], []
    for seed in range(6):
        img, probs, labels = slick_image(256, seed, n=30)
        comp, n = blobs_of(labels)
        area = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        xs.append(blob_features(img, probs, comp, n))
        ys.append(np.where(area > 900, 1, 5))
        areas.append(area)
    return fit_typer(np.concatenate(xs), np.concatenate(ys), np.concatenate(areas), K, rounds=40)


def test_blobs_scored_within_a_window_are_those_of_the_whole_image(typer):
    img, probs, labels = slick_image(900, 1, n=40)
    nodata = np.zeros(labels.shape, bool)
    nodata[:, :20] = True
    labels[nodata] = 0
    whole = typer.score_blobs(labels, img, probs, nodata)
    for y0, x0 in ((0, 0), (256, 512), (640, 640)):  # a corner block, an inner one, the last (narrower) one
        ys, xs = slice(y0, min(900, y0 + BLOCK)), slice(x0, min(900, x0 + BLOCK))
        a0, b0 = max(0, y0 - AROUND), max(0, x0 - AROUND)
        wy, wx = slice(a0, min(900, ys.stop + AROUND)), slice(b0, min(900, xs.stop + AROUND))
        cut = typer.score_blobs(labels[wy, wx], img[wy, wx], probs[:, wy, wx], nodata[wy, wx],
                                within=(slice(y0 - a0, ys.stop - a0), slice(x0 - b0, xs.stop - b0)),
                                shape=(900, 900), origin=(a0, b0))
        assert cut.comp.shape == (ys.stop - y0, xs.stop - x0)
        # every blob meeting the block that fits the window with the features' reach to spare is measured
        # as on the whole image, its border flag included
        comp = whole.comp[ys, xs]
        for blob in np.unique(comp[comp > 0]):
            rows, cols = np.nonzero(whole.comp == blob)
            if (rows.min() - MARGIN >= max(0, a0) or rows.min() == 0) and \
               (rows.max() + MARGIN < wy.stop or rows.max() == 899) and \
               (cols.min() - MARGIN >= max(0, b0) or cols.min() == 0) and \
               (cols.max() + MARGIN < wx.stop or cols.max() == 899):
                mine = np.unique(cut.comp[comp == blob])
                assert len(mine) == 1
                np.testing.assert_allclose(cut.proba[mine[0] - 1], whole.proba[blob - 1], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(cut.source, labels[ys, xs])
        np.testing.assert_array_equal(cut.comp > 0, whole.comp[ys, xs] > 0)


def test_a_block_held_out_is_typed_as_the_user_saw_it_on_the_whole_image(typer):
    """A reviewer who accepts a large image's typed prediction unchanged: "no adaptation" must score as perfect
    out-of-fold. Typed alone, a block cuts the long slicks at its border and types their pieces as short ones
    (session 15: the demo's first reviewed tile scored 0.75 for the prediction the user had accepted)."""
    img, probs, labels = slick_image(768, 2, n=30)
    shown = typer.apply(labels, img, probs)  # what the app showed on the whole image, accepted as it is
    assert set(np.unique(shown)) == {0, 1, 5}
    meta = make_tiny_checkpoint(name="", typer=typer.to_dict()).meta
    reviewed = TileData(img, probs, labels, None, shown, "")
    ad = fit_adaptation(meta, [reviewed], scene="S", kinds=["none", "prior"])
    assert ad.blocks == 9 and ad.cv["none"] == pytest.approx(1.0), ad.cv
    units, _ = units_of([reviewed])
    alone = [typer.score_blobs(u.labels, u.image, u.probs).labels() for u in units]
    in_place = [typed_in_place(u, typer).labels() for u in units]
    assert all(np.array_equal(p, u.truth) for p, u in zip(in_place, units))
    assert not all(np.array_equal(p, u.truth) for p, u in zip(alone, units))  # what the choice scored before


def test_without_a_typer_a_block_is_its_labels_and_a_tile_is_left_as_it_is():
    img, probs, labels = slick_image(600, 3)
    big = TileData(img, probs, labels, None, labels.copy(), "")
    units, _ = units_of([big])
    assert all(u.around is not None for u in units)
    for u in units:
        np.testing.assert_array_equal(typed_in_place(u, None), u.labels)
        relabel = typed_in_place(u, None, lambda im, pr, nd: (pr[1] > 100).astype(np.uint8) * 3)
        np.testing.assert_array_equal(relabel, (u.probs[1] > 100).astype(np.uint8) * 3)
    tile = TileData(img[:256, :256], probs[:, :256, :256], labels[:256, :256], None, labels[:256, :256], "t")
    (unit,), _ = units_of([tile])
    assert unit.around is None and typed_in_place(unit, None) is unit.labels


def test_an_edge_sliver_joins_the_block_beside_it():
    from seepview.core.adapt_units import block_spans

    assert block_spans(700) == [slice(0, 256), slice(256, 512), slice(512, 700)]  # a 188-px edge block stays
    assert block_spans(769) == [slice(0, 256), slice(256, 512), slice(512, 769)]  # a 1-px sliver joins it
    assert block_spans(100) == [slice(0, 100)]
    img, probs, labels = slick_image(513, 4)
    units, blocks = units_of([TileData(img, probs, labels, None, labels.copy(), "")])
    assert blocks == 4 and sorted(u.truth.shape for u in units) == [(256, 256), (256, 257), (257, 256), (257, 257)]


class PixelwiseNet:
    """A stand-in network whose probabilities depend on each pixel alone, so a block predicted in its
    window and the whole image predicted at once agree exactly."""

    overlap = 32

    def fit(self, image):
        return {"kind": "scale", "scale": 1 / 60000}

    def predict_labels_probs8(self, image, normalization=None):
        from seepview.core.model.normalize import normalize

        x = normalize(image, normalization)[0]
        probs = np.zeros((K, *x.shape), np.float32)
        probs[1] = np.where(x < 0.45, 0.8, 0.02)
        probs[0] = 1 - probs[1]
        return probs.argmax(0).astype(np.uint8), (probs * 255).round().astype(np.uint8)


def test_blocks_of_an_image_too_large_to_hold_are_typed_in_their_surroundings_too(typer):
    """``sampled_units`` reads each block on its own; the choice types it in its surroundings, read and
    predicted on first use, as the in-memory path does (until session 16 it typed such blocks alone)."""
    from seepview.core.adapt_units import sampled_units, tile_data

    img, _, _ = slick_image(768, 5, n=30)
    raw = (img * 60000).clip(1, 65535).astype(np.uint16)
    net = PixelwiseNet()
    whole = tile_data(net, raw, np.zeros(raw.shape, np.uint8))
    in_memory, _ = units_of([whole])
    sampled = sampled_units(net, raw, np.zeros(raw.shape, np.uint8))
    assert len(sampled) == len(in_memory) == 9 and all(callable(u.around) for u in sampled)

    def at(u):
        return u.around.origin[0] + u.around.ys.start, u.around.origin[1] + u.around.xs.start

    expected = {at(u): typed_in_place(u, typer).labels() for u in in_memory}
    alone = [typer.score_blobs(u.labels, u.image, u.probs, u.nodata).labels() for u in sampled]
    got = {}
    for u in sampled:
        typed = typed_in_place(u, typer).labels()
        assert isinstance(u.around, Around)  # read once, kept for the unit's next scoring
        got[at(u)] = typed
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert not all(np.array_equal(a, got[at(u)]) for a, u in zip(alone, sampled))  # typed alone, they differ
    untyped = sampled_units(net, raw, np.zeros(raw.shape, np.uint8))[0]
    assert typed_in_place(untyped, None) is untyped.labels and callable(untyped.around)  # nothing read


class EdgeTyper:
    """A typer that calls a blob seep 1 when it touches the image's border and seep 5 otherwise: the real
    ``Typer.score_blobs``, so only the border flag (measured in the whole image's coordinates) decides."""

    score_blobs = Typer.score_blobs

    def blob_proba(self, feats):
        edge = feats[:, feature_names(K).index("touches_edge")] > 0.5
        proba = np.zeros((len(feats), K), np.float32)
        proba[np.arange(len(feats)), np.where(edge, 1, 5)] = 1.0
        return proba


def test_a_blob_on_the_images_border_is_flagged_in_the_images_coordinates_not_the_windows():
    """The last block's window ends at the image's bottom-right corner and starts inside it: a slick along
    the image's bottom edge touches the border, one cut by the window's top does not."""
    size = 900
    img = np.random.default_rng(6).normal(0.6, 0.05, (size, size)).astype(np.float32)
    mask = np.zeros((size, size), bool)
    mask[892:, 780:] = True  # along the image's bottom and right edges, inside the last block (768..900)
    mask[300:850, 796:804] = True  # from far above the window (576..900) into the block
    mask[650:700, 650:700] = True  # inside the window, clear of every border
    img[mask] -= 0.3
    probs = np.zeros((K, size, size), np.float32)
    probs[1] = np.where(mask, 0.8, 0.02)
    probs[0] = 1 - probs[1]
    probs8 = (probs * 255).round().astype(np.uint8)
    labels = probs8.argmax(0).astype(np.uint8)
    typer = EdgeTyper()
    whole = typer.score_blobs(labels, img, probs8).labels()
    assert whole[895, 850] == 1 and whole[800, 800] == 5 and whole[675, 675] == 5
    units, _ = units_of([TileData(img, probs8, labels, None, labels.copy(), "")])
    (last,) = [u for u in units if u.around.origin == (576, 576)]
    assert last.truth.shape == (132, 132)
    np.testing.assert_array_equal(typed_in_place(last, typer).labels(), whole[768:, 768:])
