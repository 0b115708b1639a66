"""Input normalisation: percentile over valid pixels with no-data kept at 0, and plain scaling."""

from __future__ import annotations

import numpy as np
import pytest

from seepview.core.display import DisplayWindow
from seepview.core.errors import ModelError
from seepview.core.model.normalize import (
    PHOTO_NORMALIZATION,
    SAR_NORMALIZATION,
    fit_normalization,
    is_fitted,
    match_channels,
    normalize,
    validate_spec,
)


def _sar():
    img = np.arange(1, 10001, dtype=np.uint16).reshape(100, 100) * 3
    img[:20, :20] = 0  # no-data
    return img


def test_percentile_fit_ignores_nodata_and_maps_to_unit_range():
    img = _sar()
    fitted = fit_normalization(img, SAR_NORMALIZATION)
    assert is_fitted(fitted) and not is_fitted(SAR_NORMALIZATION)
    valid = img[img != 0]
    assert fitted["lo"] == pytest.approx(np.percentile(valid, 1), rel=0.01)
    assert fitted["hi"] == pytest.approx(np.percentile(valid, 99), rel=0.01)
    out = normalize(img, fitted)
    assert out.shape == (1, 100, 100) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert (out[0, :20, :20] == 0).all()
    mid = img[50, 50]
    assert out[0, 50, 50] == pytest.approx((mid - fitted["lo"]) / (fitted["hi"] - fitted["lo"]), abs=1e-6)


def test_unfitted_spec_fits_on_the_array_itself_and_fitted_constants_are_reused():
    img = _sar()
    np.testing.assert_array_equal(
        normalize(img, SAR_NORMALIZATION), normalize(img, fit_normalization(img, SAR_NORMALIZATION))
    )
    # Constants from a whole scene applied to a crop differ from fitting the crop alone.
    scene_fit = fit_normalization(img, SAR_NORMALIZATION)
    crop = img[60:, 60:]
    assert not np.allclose(normalize(crop, scene_fit), normalize(crop, SAR_NORMALIZATION))
    win = DisplayWindow(0.0, 30000.0)
    assert normalize(img, SAR_NORMALIZATION, window=win)[0, 99, 99] == pytest.approx(1.0)


def test_scale_for_photos_is_channels_first():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 1] = 255
    out = normalize(rgb, PHOTO_NORMALIZATION)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    assert out[1].min() == pytest.approx(1.0) and out[0].max() == 0.0
    assert fit_normalization(rgb, PHOTO_NORMALIZATION) == PHOTO_NORMALIZATION


def test_validate_spec_rejects_garbage():
    with pytest.raises(ModelError):
        validate_spec({"kind": "zscore"})
    with pytest.raises(ModelError):
        validate_spec({"kind": "percentile", "pmin": 99, "pmax": 1})
    with pytest.raises(ModelError):
        validate_spec({"kind": "scale"})
    assert validate_spec(SAR_NORMALIZATION) == SAR_NORMALIZATION


def test_match_channels():
    grey = np.zeros((3, 4), np.uint8)
    assert match_channels(grey, 3).shape == (3, 4, 3)
    assert match_channels(np.zeros((3, 4, 4), np.uint8), 3).shape == (3, 4, 3)
    assert match_channels(grey, 1) is grey
    with pytest.raises(ModelError, match="x.png.*expects 1-channel"):
        match_channels(np.zeros((3, 4, 3), np.uint8), 1, "x.png")
