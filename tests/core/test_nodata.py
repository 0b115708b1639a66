"""No-data detection: one helper that predictions, editing, metrics and training agree on."""

from __future__ import annotations

import numpy as np

from seepview.core.classes import IGNORE
from seepview.core.model.metrics import ConfusionMatrix
from seepview.core.model.normalize import PHOTO_NORMALIZATION, SAR_NORMALIZATION
from seepview.core.nodata import ignore_nodata, nodata_mask, nodata_value


class _Source:
    def __init__(self, nodata):
        self.nodata = nodata


def test_value_prefers_the_image_then_the_model_spec():
    assert nodata_value(_Source(-9999.0), SAR_NORMALIZATION) == -9999.0
    assert nodata_value(_Source(None), SAR_NORMALIZATION) == 0.0
    assert nodata_value(None, SAR_NORMALIZATION) == 0.0
    assert nodata_value(None, PHOTO_NORMALIZATION) is None
    assert nodata_value() is None


def test_mask_grey_multichannel_and_nan():
    grey = np.array([[0, 5], [0, 0]], np.uint16)
    np.testing.assert_array_equal(nodata_mask(grey, 0), [[True, False], [True, True]])
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 1, 0] = 9  # one channel has data: the pixel has data
    np.testing.assert_array_equal(nodata_mask(rgb, 0), [[True, False, True]])
    flt = np.array([[np.nan, 1.0]], np.float32)
    np.testing.assert_array_equal(nodata_mask(flt, float("nan")), [[True, False]])
    assert nodata_mask(grey, None) is None


def test_ignore_nodata_sets_255_without_touching_the_input():
    mask = np.array([[1, 2], [3, 0]], np.uint8)
    nd = np.array([[True, False], [False, False]])
    out = ignore_nodata(mask, nd)
    assert out[0, 0] == IGNORE and (out.ravel()[1:] == [2, 3, 0]).all() and mask[0, 0] == 1
    assert ignore_nodata(mask, np.zeros((2, 2), bool)) is mask and ignore_nodata(mask, None) is mask


def test_metrics_ignore_nodata_like_unlabeled():
    true = np.array([[0, 1], [1, 0]], np.uint8)
    pred = np.array([[1, 1], [1, 0]], np.uint8)  # a false seep at (0, 0), which is no-data
    nd = np.array([[True, False], [False, False]])
    with_nd = ConfusionMatrix(2).update(pred, true, nodata=nd).metrics()
    as_255 = ConfusionMatrix(2).update(pred, ignore_nodata(true, nd)).metrics()
    plain = ConfusionMatrix(2).update(pred, true).metrics()
    assert with_nd["binary_iou"] == as_255["binary_iou"] == 1.0 and with_nd["n_pixels"] == 3
    assert plain["binary_iou"] < 1.0
