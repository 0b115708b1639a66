"""Editing operations: exact pixels changed, the preserve-labels rule, and no mutation."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from seepview.core import editing
from seepview.core.classes import IGNORE
from seepview.core.history import LabelDocument


def _applied(labels, atom):
    out = labels.copy()
    if atom is not None:
        out[atom.slices] = atom.new
    return out


def test_dab_is_a_disk_and_does_not_mutate():
    labels = np.zeros((40, 40), np.uint8)
    atom = editing.paint_disk(labels, (20, 20), None, 5, 3)
    assert not labels.any()
    out = _applied(labels, atom)
    expected = np.zeros_like(labels)
    expected[disk((20, 20), 5.5, shape=labels.shape)] = 3
    np.testing.assert_array_equal(out, expected)
    assert atom.bbox == (15, 26, 15, 26)
    assert atom.nbytes == 2 * 11 * 11


def test_stroke_segment_leaves_no_gaps():
    labels = np.zeros((50, 200), np.uint8)
    out = _applied(labels, editing.paint_disk(labels, (25, 10), (25, 190), 2, 1))
    assert out[23:28, 10:191].all()  # continuous band, though the two points are 180 px apart
    assert not out[:22].any() and not out[29:].any()
    diagonal = _applied(labels, editing.paint_disk(labels, (0, 0), (49, 49), 0, 1))
    assert all(diagonal[i, i] for i in range(50))


def test_dab_clipped_at_edges_and_outside():
    labels = np.zeros((10, 10), np.uint8)
    atom = editing.paint_disk(labels, (0, 0), None, 3, 2)
    assert atom.bbox == (0, 4, 0, 4)
    assert editing.paint_disk(labels, (-20, -20), None, 3, 2) is None
    assert editing.paint_disk(labels, (5, 5), None, 3, 0) is None  # nothing would change


def test_preserve_labels_like_napari():
    labels = np.zeros((20, 20), np.uint8)
    labels[:, 10:] = 2
    labels[:5, :5] = 255
    paint = _applied(labels, editing.paint_disk(labels, (10, 0), (10, 19), 20, 1, preserve=True))
    assert (paint[:, :10] == 1).all()  # background and unlabeled painted
    assert (paint[:, 10:] == 2).all()  # other class kept
    labels2 = paint
    # Erasing with preserve only removes the active class.
    erased = _applied(labels2, editing.paint_disk(labels2, (10, 10), None, 30, 0, preserve=True, active=2))
    assert (erased[:, 10:] == 0).all() and (erased[:, :10] == 1).all()
    assert editing.paint_disk(labels2, (10, 10), None, 30, 0, preserve=True, active=None) is None
    # Without preserve everything under the brush changes.
    overwrite = _applied(labels, editing.paint_disk(labels, (10, 10), None, 30, 1))
    assert (overwrite == 1).all()


def test_flood_fill_contiguous_region_only():
    labels = np.zeros((30, 30), np.uint8)
    labels[:, 15] = 1  # a wall
    out = _applied(labels, editing.flood_fill(labels, (5, 5), 3))
    assert (out[:, :15] == 3).all() and (out[:, 16:] == 0).all() and (out[:, 15] == 1).all()
    assert editing.flood_fill(labels, (5, 15), 1) is None
    assert editing.flood_fill(labels, (50, 5), 1) is None


def test_flood_fill_grows_past_the_first_window():
    labels = np.zeros((1200, 1300), np.uint8)
    labels[600, :] = 2
    out = _applied(labels, editing.flood_fill(labels, (1000, 1000), 4))
    assert (out[601:] == 4).all() and (out[:600] == 0).all()


def test_flood_fill_with_intensity_tolerance():
    labels = np.zeros((20, 20), np.uint8)
    image = np.zeros((20, 20), np.uint16)
    image[:, 10:] = 500
    image[:, 12:] = 40  # close to the seed's 0 but not connected to it within tolerance
    out = _applied(labels, editing.flood_fill(labels, (3, 3), 2, image=image, tolerance=50))
    assert (out[:, :10] == 2).all() and not out[:, 10:].any()
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[:, 5:, 1] = 200
    out = _applied(labels, editing.flood_fill(labels, (0, 0), 2, image=rgb, tolerance=10))
    assert (out[:, :5] == 2).all() and not out[:, 5:].any()


def test_fill_polygon():
    labels = np.zeros((20, 20), np.uint8)
    out = _applied(labels, editing.fill_polygon(labels, [(2, 2), (2, 10), (10, 10), (10, 2)], 5))
    assert (out[2:11, 2:11] == 5).all() and out.sum() == 5 * 81
    tri = _applied(labels, editing.fill_polygon(labels, [(-10, -10), (-10, 30), (30, -10)], 1))
    assert tri[0, 0] == 1 and tri[19, 19] == 0
    assert editing.fill_polygon(labels, [(1, 1), (5, 5)], 1) is None


def test_pick():
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert editing.pick(labels, (2, 3)) == 11
    assert editing.pick(labels, (2.4, 2.6)) == 11
    assert editing.pick(labels, (9, 0)) is None


@pytest.fixture
def predicted():
    labels = np.zeros((2000, 2000), np.uint8)
    labels[10:20, 10:20] = 3  # a user label elsewhere
    pred = np.zeros_like(labels)
    pred[100:140, 100:160] = 1
    pred[139, 160:1700] = 1  # a thin diagonal-free tail running across several windows
    pred[300:310, 300:310] = 2
    pred[310, 310] = 2  # touches the blob only diagonally: 8-connected
    pred[1500:1510, 1500:1510] = 255  # no prediction
    return labels, pred


def test_accept_component_takes_the_connected_blob(predicted):
    labels, pred = predicted
    out = _applied(labels, editing.accept_component(labels, pred, (120, 120)))
    expected = labels.copy()
    expected[pred == 1] = 1
    np.testing.assert_array_equal(out, expected)
    out = _applied(labels, editing.accept_component(labels, pred, (305, 305)))
    assert out[310, 310] == 2 and (out[300:310, 300:310] == 2).all()
    assert editing.accept_component(labels, pred, (5, 5)) is None  # background
    assert editing.accept_component(labels, pred, (1505, 1505)) is None  # no prediction


def test_reject_component_clears_blob_but_keeps_other_classes(predicted):
    labels, pred = predicted
    labels[100:140, 100:160] = 1
    labels[100:105, 100:105] = 255
    labels[130:135, 150:155] = 2
    out = _applied(labels, editing.reject_component(labels, pred, (120, 120)))
    assert (out[100:105, 100:105] == 0).all()
    assert (out[130:135, 150:155] == 2).all()
    assert not (out == 1).any()
    assert (out[10:20, 10:20] == 3).all()


def test_accept_prediction_whole(predicted):
    labels, pred = predicted
    out = _applied(labels, editing.accept_prediction(labels, pred))
    expected = np.where(pred == 255, labels, pred)
    np.testing.assert_array_equal(out, expected)
    kept = _applied(
        labels, editing.accept_prediction(labels, np.where(pred == 0, 3, pred).astype(np.uint8), True)
    )
    assert (kept[10:20, 10:20] == 3).all() and (kept[:5, :5] == 3).all()
    assert editing.accept_prediction(out, pred) is None


def test_apply_through_document():
    doc = LabelDocument(np.zeros((10, 10), np.uint8))
    assert editing.apply(doc, editing.paint_disk(doc.labels, (5, 5), None, 1, 2))
    assert not editing.apply(doc, editing.paint_disk(doc.labels, (5, 5), None, 1, 2))
    assert doc.history.undo_steps == 1 and doc.labels[5, 5] == 2


def test_bad_values_and_shapes():
    labels = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError):
        editing.paint_disk(labels, (1, 1), None, 1, 256)
    with pytest.raises(ValueError):
        editing.accept_prediction(labels, np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError):
        editing.flood_fill(labels, (1, 1), 2, image=np.zeros((5, 5)), tolerance=1)


def _wedge(shape=(40, 40)):
    """A no-data wedge (upper-left triangle) beside the sea."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return yy + xx < 20


def test_brush_and_polygon_never_paint_a_class_into_nodata():
    labels = np.full((40, 40), IGNORE, np.uint8)
    nd = _wedge()
    painted = _applied(labels, editing.paint_disk(labels, (5, 5), (30, 30), 6, 3, nodata=nd))
    assert not (painted[nd] == 3).any() and (painted[~nd] == 3).sum() > 100
    filled = _applied(labels, editing.fill_polygon(labels, [(0, 0), (0, 39), (39, 39), (39, 0)], 2, nodata=nd))
    assert (filled[nd] == IGNORE).all() and (filled[~nd] == 2).all()
    # The eraser may clean an old wrong label out of no-data.
    labels[2, 2] = 3
    erased = _applied(labels, editing.paint_disk(labels, (2, 2), None, 0, editing.ERASE, nodata=nd))
    assert erased[2, 2] == editing.BACKGROUND


def test_flood_fill_does_not_flood_the_nodata_wedge():
    labels = np.zeros((40, 40), np.uint8)  # reviewed: sea and wedge are both background
    nd = _wedge()
    filled = _applied(labels, editing.flood_fill(labels, (35, 35), 4, nodata=nd))
    assert (filled[~nd] == 4).all() and (filled[nd] == 0).all()
    # The bug this guards against: without the mask the wedge went with the sea.
    assert (_applied(labels, editing.flood_fill(labels, (35, 35), 4))[nd] == 4).all()
    # A fill started in the wedge stays there, and paints no class into it.
    assert editing.flood_fill(labels, (1, 1), 4, nodata=nd) is None
    # "Labels only" with an intensity tolerance obeys the border too.
    image = np.where(nd, 0, 100).astype(np.uint16)
    tol = _applied(labels, editing.flood_fill(labels, (35, 35), 4, image=image, tolerance=1000, nodata=nd))
    assert (tol[nd] == 0).all() and (tol[~nd] == 4).all()


def test_accepting_a_prediction_puts_background_in_nodata():
    labels = np.full((40, 40), IGNORE, np.uint8)
    prediction = np.ones((40, 40), np.uint8)  # an old cache calls everything a seep
    nd = _wedge()
    out = _applied(labels, editing.accept_prediction(labels, prediction, nodata=nd))
    assert (out[nd] == 0).all() and (out[~nd] == 1).all()
    comp = _applied(labels, editing.accept_component(labels, prediction, (30, 30), nodata=nd))
    assert (comp[nd] == IGNORE).all() and (comp[~nd] == 1).all()
