"""Display window (robust percentiles over valid pixels, dB) and the uint8 mapping."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import seepview.core.display as display
import seepview.core.imageio as imageio
from seepview.core.display import DisplayWindow, robust_window, to_uint8
from seepview.core.imageio import open_image


def _reference(values: np.ndarray, w: DisplayWindow) -> np.ndarray:
    """Straightforward float64 formula the fast paths must match."""
    v = values.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if w.db:
            v = 10.0 * np.log10(v)
        out = np.floor(np.clip((v - w.lo) * (255.0 / (w.hi - w.lo)), 0, 255) + 0.5)
    out[~np.isfinite(v)] = 0
    if w.nodata is not None:
        out[values == w.nodata] = 0
    return out.astype(np.uint8)


def _sar_like(shape=(300, 400), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.gamma(4.0, 5000.0, shape).clip(1, 65535).astype(np.uint16)
    img[:, : shape[1] // 3] = 0  # a no-data wedge
    return img


def test_window_ignores_nodata():
    img = _sar_like()
    w = robust_window(img)
    valid = img[img != 0]
    lo, hi = np.percentile(valid, [1, 99], method="inverted_cdf")
    assert (w.lo, w.hi) == (lo, hi)
    assert w.nodata == 0.0 and not w.db
    # Counting the wedge would pull the low end to 0.
    assert robust_window(img, nodata=None).lo == 0.0


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(np.uint16, st.tuples(st.integers(1, 40), st.integers(1, 40))),
    pmin=st.floats(0, 49),
    pmax=st.floats(51, 100),
)
def test_integer_percentiles_are_exact(values, pmin, pmax):
    w = robust_window(values, pmin=pmin, pmax=pmax, nodata=None)
    lo, hi = np.percentile(values, [pmin, pmax], method="inverted_cdf")
    if hi > lo:
        assert (w.lo, w.hi) == (lo, hi)
    else:  # flat: a unit window centred on the value
        assert (w.lo, w.hi) == (lo - 0.5, lo + 0.5)


def test_float_window_skips_nan_inf_and_nodata():
    rng = np.random.default_rng(3)
    img = rng.normal(0.0, 1.0, (200, 200)).astype(np.float32)
    img[:10] = np.nan
    img[10:20] = np.inf
    img[20:60] = -9999.0
    w = robust_window(img, nodata=-9999.0)
    ref = np.percentile(img[60:], [1, 99])
    np.testing.assert_allclose((w.lo, w.hi), ref, rtol=1e-5)


def test_db_window_and_mapping():
    img = _sar_like()
    w = robust_window(img, db=True)
    valid = img[img > 0].astype(np.float64)
    np.testing.assert_allclose((w.lo, w.hi), np.percentile(10 * np.log10(valid), [1, 99]), rtol=1e-9)
    np.testing.assert_array_equal(to_uint8(img, w), _reference(img, w))
    f = img.astype(np.float32)
    assert np.abs(to_uint8(f, w).astype(int) - _reference(img, w)).max() <= 1


def test_window_from_source_uses_its_nodata_and_samples(tmp_path, monkeypatch):
    img = _sar_like((1024, 1024))
    tifffile.imwrite(tmp_path / "s.tif", img, tile=(128, 128))
    src = open_image(tmp_path / "s.tif")
    assert src.nodata == 0.0
    full = robust_window(img)
    assert robust_window(src) == full  # small: read whole

    calls = []
    original = src.sample
    monkeypatch.setattr(src, "sample", lambda n=None: calls.append(n) or original(n))
    monkeypatch.setattr(display, "SAMPLE_PIXELS", 2**17)
    monkeypatch.setattr(imageio, "WHOLE_READ_BYTES", 0)
    sampled = robust_window(src)
    assert calls == [2**17]
    assert abs(sampled.lo - full.lo) < 0.05 * full.lo and abs(sampled.hi - full.hi) < 0.05 * full.hi


def test_large_array_window_uses_a_strided_sample(monkeypatch):
    img = _sar_like((900, 900))
    monkeypatch.setattr(display, "SAMPLE_PIXELS", 10_000)
    seen = []
    original = display._percentiles
    monkeypatch.setattr(display, "_percentiles", lambda v, a, b: seen.append(v.size) or original(v, a, b))
    robust_window(img)
    assert seen and seen[0] <= 10_000


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_lut_path_matches_reference(dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    img = rng.integers(info.min, info.max, (64, 80), endpoint=True).astype(dtype)
    img[0, :5] = 0
    w = DisplayWindow(float(info.min) / 2 + 3, float(info.max) / 2)
    out = to_uint8(img, w)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, _reference(img, w))
    assert (out[0, :5] == 0).all()  # no-data stays 0


def test_float_path_matches_reference_and_nodata_nan_are_zero():
    rng = np.random.default_rng(2)
    img = rng.normal(5.0, 2.0, (50, 60)).astype(np.float32)
    img[0, 0], img[0, 1], img[0, 2] = np.nan, -np.inf, 0.0
    w = DisplayWindow(1.0, 9.0)
    out = to_uint8(img, w)
    assert out[0, 0] == out[0, 1] == out[0, 2] == 0
    assert np.abs(out.astype(int) - _reference(img, w)).max() <= 1


def test_banded_threaded_path_equals_single_pass(monkeypatch):
    img = _sar_like((700, 500))
    w = robust_window(img)
    monkeypatch.setattr(display, "_CHUNK_PIXELS", 10_000)  # many bands, thread pool
    np.testing.assert_array_equal(to_uint8(img, w), _reference(img, w))
    f = img.astype(np.float32)
    assert np.abs(to_uint8(f, w).astype(int) - _reference(img, w)).max() <= 1


def test_out_buffer_is_filled_and_checked():
    img = _sar_like((60, 70))
    w = robust_window(img)
    buf = np.full(img.shape, 7, np.uint8)
    assert to_uint8(img, w, out=buf) is buf
    np.testing.assert_array_equal(buf, _reference(img, w))
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb_buf = np.ones_like(rgb)
    assert to_uint8(rgb, DisplayWindow(0.0, 255.0, nodata=None), out=rgb_buf) is rgb_buf and not rgb_buf.any()
    with pytest.raises(ValueError):
        to_uint8(img, w, out=np.empty((5, 5), np.uint8))


def test_rgb_photo_passes_through_and_multichannel_uint16_is_mapped():
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    w = robust_window(rgb)
    assert (w.lo, w.hi, w.nodata) == (0.0, 255.0, None)
    assert to_uint8(rgb, w) is rgb
    rgb16 = rgb.astype(np.uint16) * 200
    w16 = DisplayWindow(0.0, 51000.0, nodata=None)
    out = to_uint8(rgb16, w16)
    assert out.shape == rgb.shape
    np.testing.assert_array_equal(out, _reference(rgb16, w16))


def test_default_window_and_degenerate_images():
    img = _sar_like((40, 40))
    np.testing.assert_array_equal(to_uint8(img), to_uint8(img, robust_window(img)))
    flat = np.full((10, 10), 7, np.uint16)
    w = robust_window(flat)
    assert w.lo < 7 < w.hi
    empty = np.zeros((10, 10), np.uint16)  # all no-data
    assert (to_uint8(empty, robust_window(empty)) == 0).all()


def test_manual_window_validation_and_dict_round_trip():
    with pytest.raises(ValueError):
        DisplayWindow(5.0, 5.0)
    with pytest.raises(ValueError):
        DisplayWindow(0.0, float("nan"))
    w = DisplayWindow(-3.5, 20.0, db=True, nodata=None)
    assert DisplayWindow.from_dict(w.to_dict()) == w
