"""Image sources (TIFF layouts, photos, region reads, geo tags) and mask round trips."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import seepview.core.imageio as imageio
from seepview.core.classes import ClassTable
from seepview.core.errors import MaskError
from seepview.core.imageio import (
    GEO_TAGS,
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    GeoInfo,
    ImageSource,
    encode_mask_tiff,
    open_image,
    read_mask,
    write_mask,
)

SEED_TAGS = [256, 257, 258, 259, 262, 273, 278, 279, 284]


def _random(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.normal(100.0, 30.0, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


# --- TIFF images ---------------------------------------------------------------------------------

LAYOUTS = {
    "striped": {},
    "striped-lzw": {"compression": "lzw", "rowsperstrip": 7},
    "tiled-zlib": {"tile": (32, 32), "compression": "zlib"},
    "bigtiff-tiled": {"tile": (16, 32), "bigtiff": True},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("channels", [1, 3])
def test_tiff_dtypes_layouts_channels(tmp_path, layout, dtype, channels):
    shape = (70, 90) if channels == 1 else (70, 90, 3)
    data = _random(shape, dtype)
    path = tmp_path / "img.tif"
    kwargs = dict(LAYOUTS[layout])
    if channels == 3:
        kwargs["photometric"] = "rgb" if dtype in ("uint8", "uint16") else "minisblack"
        kwargs["planarconfig"] = "contig"
    tifffile.imwrite(path, data, **kwargs)
    with open_image(path) as src:
        assert isinstance(src, ImageSource)
        assert src.shape == (70, 90)
        assert src.channels == channels
        assert src.dtype == np.dtype(dtype)
        assert src.tiled == ("tile" in kwargs)
        assert src.bigtiff == bool(kwargs.get("bigtiff"))
        np.testing.assert_array_equal(src.read_all(), data)
        np.testing.assert_array_equal(src.read(10, 43, 17, 80), data[10:43, 17:80])
        # Regions are clipped to the image, not wrapped.
        np.testing.assert_array_equal(src.read(-5, 8, 85, 200), data[0:8, 85:90])
        assert src.read(50, 50, 0, 10).shape[:2] == (0, 10)
        info = src.info()
    assert info["shape"] == [70, 90] and info["channels"] == channels and info["dtype"] == dtype
    assert info["value_range"] == [data.min().item(), data.max().item()]
    assert info["stats_sampled"] is False
    if "tile" in kwargs:
        assert info["tile_shape"] == list(kwargs["tile"])


def test_planar_separate_and_rgba_drop_alpha(tmp_path):
    rgb = _random((3, 40, 50), np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    with open_image(tmp_path / "planar.tif") as src:
        assert src.channels == 3
        np.testing.assert_array_equal(src.read(5, 25, 10, 40), np.moveaxis(rgb, 0, -1)[5:25, 10:40])
    rgba = _random((40, 50, 4), np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb")
    with open_image(tmp_path / "rgba.tif") as src:
        assert src.channels == 3
        np.testing.assert_array_equal(src.read_all(), rgba[..., :3])


def test_complex_becomes_amplitude_with_note(tmp_path, caplog):
    rng = np.random.default_rng(1)
    slc = (rng.normal(size=(30, 40)) + 1j * rng.normal(size=(30, 40))).astype(np.complex64)
    tifffile.imwrite(tmp_path / "slc.tif", slc)
    with caplog.at_level(logging.INFO, logger="seepview.core.imageio"):
        src = open_image(tmp_path / "slc.tif")
    assert src.dtype == np.float32
    np.testing.assert_allclose(src.read_all(), np.abs(slc), rtol=1e-6)
    assert "amplitude" in src.note and "amplitude" in caplog.text
    assert "amplitude" in src.info()["note"]


@pytest.mark.parametrize("whole", [True, False])
def test_float64_is_narrowed_to_float32(tmp_path, monkeypatch, whole):
    data = _random((40, 30), np.float64)
    tifffile.imwrite(tmp_path / "f64.tif", data, tile=(16, 16))
    if not whole:
        monkeypatch.setattr(imageio, "WHOLE_READ_BYTES", 0)  # region path through zarr
    src = open_image(tmp_path / "f64.tif")
    assert src.dtype == np.float32
    region = src.read(3, 35, 2, 29)
    assert region.dtype == np.float32 and region.flags.writeable
    np.testing.assert_allclose(region, data[3:35, 2:29].astype(np.float32))


def test_nodata_defaults(tmp_path):
    tifffile.imwrite(tmp_path / "u16.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "u8.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(
        tmp_path / "f.tif", np.zeros((8, 8), np.float32), extratags=[(42113, 2, 0, "-9999", True)]
    )
    assert open_image(tmp_path / "u16.tif").nodata == 0.0  # SAR convention
    assert open_image(tmp_path / "u8.tif").nodata is None
    assert open_image(tmp_path / "f.tif").nodata == -9999.0  # GDAL_NODATA wins


def _count_decodes(monkeypatch) -> list:
    """Record every strip/tile tifffile decodes (``TiffPage.decode`` returns the per-chunk decoder)."""
    calls = []
    original = tifffile.TiffPage.__dict__["decode"]

    def decode(self):
        inner = original.__get__(self, type(self))

        def counting(*args, **kwargs):
            calls.append(1)
            return inner(*args, **kwargs)

        return counting

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(decode))
    return calls


def test_large_tiled_file_is_read_by_region(tmp_path, monkeypatch):
    """A region read decodes only the tiles under it, never the whole file."""
    data = _random((2048, 2048), np.uint16)
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, data, tile=(256, 256), compression="zlib")
    monkeypatch.setattr(imageio, "WHOLE_READ_BYTES", 2**20)  # make this file count as "large"

    def no_whole_read(*args, **kwargs):
        raise AssertionError("whole-file read")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_whole_read)
    monkeypatch.setattr(tifffile, "imread", no_whole_read)
    calls = _count_decodes(monkeypatch)
    with open_image(path) as src:
        region = src.read(300, 700, 1000, 1400)  # spans 3 x 3 tiles
        np.testing.assert_array_equal(region, data[300:700, 1000:1400])
        assert 0 < len(calls) <= 9
        assert src._zarr is not None
    assert src._zarr is None and src._tif is None  # closed cleanly


def test_large_uncompressed_file_uses_memmap(tmp_path, monkeypatch):
    data = _random((1500, 1200), np.uint16)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, data)  # one strip: a zarr chunk would be the whole image
    monkeypatch.setattr(imageio, "WHOLE_READ_BYTES", 2**20)
    with open_image(path) as src:
        np.testing.assert_array_equal(src.read(700, 760, 3, 1100), data[700:760, 3:1100])
        assert isinstance(src._zarr, np.memmap)
        rows = src.read(10, 20, 0, 1200)  # contiguous in the file: must still be a private copy
        assert type(rows) is np.ndarray and rows.flags.writeable
        rows[:] = 0
        np.testing.assert_array_equal(src.read(10, 20, 0, 1200), data[10:20])


def test_sample_and_info_on_large_file_are_sampled(tmp_path, monkeypatch):
    data = _random((1024, 768), np.uint16)
    data[:100] = 0
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, tile=(128, 128))
    monkeypatch.setattr(imageio, "WHOLE_READ_BYTES", 0)
    monkeypatch.setattr(imageio, "SAMPLE_PIXELS", 2**16)
    src = open_image(path)
    pixels, sampled = src.sample(2**16)
    assert sampled and 2**15 <= pixels.size <= 2**17
    info = src.info()
    assert info["stats_sampled"] is True
    lo, hi = info["value_range"]
    assert data.min() <= lo <= hi <= data.max()
    assert 0.0 < info["nodata_fraction"] < 0.5


@pytest.mark.parametrize(
    "layout", [{"tile": (128, 128), "compression": "zlib"}, {"rowsperstrip": 8, "compression": "lzw"}]
)
def test_sample_decodes_each_chunk_once(tmp_path, monkeypatch, layout):
    """Statistics of a large chunked file: one decode per sampled tile/strip, spread over the image."""
    data = _random((2048, 2048), np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", data, **layout)
    monkeypatch.setattr(imageio, "WHOLE_READ_BYTES", 0)
    calls = _count_decodes(monkeypatch)
    with open_image(tmp_path / "c.tif") as src:
        pixels, sampled = src.sample(2**16)
    assert sampled and 2**15 <= pixels.size <= 2**17
    assert len(calls) == 64  # windows, each exactly one chunk
    assert np.isin(pixels, data).all()


def test_source_reads_after_close_and_repr_is_printable(tmp_path):
    data = _random((20, 20), np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data)
    src = open_image(tmp_path / "a.tif")
    src.close()
    np.testing.assert_array_equal(src.read_all(), data)  # reopens lazily
    src.close()
    src.close()
    assert "TiffImage" in repr(src)


# --- photos ----------------------------------------------------------------------------------------


def test_png_rgba_becomes_rgb_and_gray_stays_single_channel(tmp_path):
    rgba = _random((30, 20, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    src = open_image(tmp_path / "a.png")
    assert src.channels == 3 and src.shape == (30, 20)
    np.testing.assert_array_equal(src.read_all(), rgba[..., :3])
    gray = _random((30, 20), np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    src = open_image(tmp_path / "g.png")
    assert src.channels == 1
    np.testing.assert_array_equal(src.read(3, 9, 2, 15), gray[3:9, 2:15])


def test_jpeg_photo(tmp_path):
    rgb = np.full((16, 24, 3), (200, 100, 50), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p.jpg", quality=95)
    src = open_image(tmp_path / "p.jpg")
    assert src.channels == 3 and src.dtype == np.uint8 and src.nodata is None
    assert np.abs(src.read_all().astype(int) - rgb).max() <= 3
    assert src.info()["format"] == "jpeg"


def test_suffix_constants():
    assert set(MASK_SUFFIXES) <= set(IMAGE_SUFFIXES)
    assert ".jpg" in IMAGE_SUFFIXES and ".jpg" not in MASK_SUFFIXES


# --- GeoTIFF ---------------------------------------------------------------------------------------

GEOKEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)


def _geo_tiff(path, transform=False):
    tags = [(34735, 3, len(GEOKEYS), GEOKEYS, True), (42113, 2, 0, "0", True)]
    if transform:
        m = (10.0, 0.5, 0, 500000.0, 0.25, -10.0, 0, 4000000.0, 0, 0, 0, 0, 0, 0, 0, 1)
        tags.append((34264, 12, 16, m, True))
    else:
        tags += [
            (33550, 12, 3, (10.0, 20.0, 0.0), True),
            (33922, 12, 6, (0, 0, 0, 500000.0, 4000000.0, 0), True),
        ]
    tifffile.imwrite(path, _random((40, 50), np.uint16), extratags=tags)


def test_geotiff_tiepoint_scale(tmp_path):
    _geo_tiff(tmp_path / "g.tif")
    geo = open_image(tmp_path / "g.tif").geo
    assert isinstance(geo, GeoInfo)
    assert geo.epsg == 32633 and geo.nodata == 0.0
    assert geo.pixel_to_map(0, 0) == (500000.0, 4000000.0)
    assert geo.pixel_to_map(3, 2) == (500030.0, 3999960.0)
    assert {code for code, *_ in geo.tags} == {33550, 33922, 34735, 42113}
    assert set(geo.to_dict()["tags"]) <= set(GEO_TAGS.values())


def test_geotiff_model_transformation(tmp_path):
    _geo_tiff(tmp_path / "g.tif", transform=True)
    geo = open_image(tmp_path / "g.tif").geo
    assert geo.pixel_to_map(2, 4) == (500000.0 + 20.0 + 2.0, 4000000.0 + 0.5 - 40.0)


def test_geo_without_transform_and_plain_tiff(tmp_path):
    tifffile.imwrite(
        tmp_path / "k.tif", np.zeros((4, 4), np.uint8), extratags=[(34735, 3, 4, (1, 1, 0, 0), True)]
    )
    geo = open_image(tmp_path / "k.tif").geo
    with pytest.raises(ValueError):
        geo.pixel_to_map(0, 0)
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((4, 4), np.uint8))
    assert open_image(tmp_path / "plain.tif").geo is None


@pytest.mark.parametrize("transform", [False, True])
def test_mask_keeps_image_georeferencing(tmp_path, transform):
    _geo_tiff(tmp_path / "g.tif", transform=transform)
    geo = open_image(tmp_path / "g.tif").geo
    mask = _random((40, 50), np.uint8) % 8
    write_mask(tmp_path / "m.tif", mask, geo=geo)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), mask)
    mask_geo = open_image(tmp_path / "m.tif").geo
    assert mask_geo.affine == geo.affine and mask_geo.epsg == geo.epsg
    assert mask_geo.tags == tuple(t for t in geo.tags if t[0] != 42113)  # image no-data is not a class
    assert mask_geo.nodata is None and geo.nodata == 0.0
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:  # an independent reader sees valid GeoTIFF keys
        assert tif.pages[0].geotiff_tags["ProjectedCSTypeGeoKey"] == 32633
    # The extratags form feeds tifffile directly.
    tifffile.imwrite(tmp_path / "x.tif", mask, extratags=geo.extratags())
    assert open_image(tmp_path / "x.tif").geo == geo


# --- masks -----------------------------------------------------------------------------------------


def _tag_layout(path):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return (
            tif.byteorder,
            tif.is_bigtiff,
            [(t.code, int(t.dtype), t.count) for t in page.tags.values()],
            page.dtype,
            page.photometric,
            page.compression,
        )


def test_seed_masks_rewrite_identically(cgg_seep, tmp_path):
    """Masks written by seepview are byte-for-byte the seed's format (same pixels, tags, layout)."""
    paths = sorted((cgg_seep / "masks").glob("*.tif"))[::25]
    assert paths
    classes = ClassTable.preset("sar-seep")
    for path in paths:
        mask = read_mask(path, classes=classes, shape=(256, 256))
        out = tmp_path / path.name
        write_mask(out, mask)
        np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(path))
        assert _tag_layout(out) == _tag_layout(path)
        assert out.read_bytes() == path.read_bytes()


def test_mask_tiff_layout_without_real_data(tmp_path):
    mask = _random((256, 256), np.uint8)
    data = encode_mask_tiff(mask)
    assert data[:8] == b"II*\x00\x08\x00\x00\x00"
    assert len(data) == 122 + mask.size  # header + 9-tag IFD, then the pixels
    (tmp_path / "m.tif").write_bytes(data)
    order, big, tags, dtype, photometric, compression = _tag_layout(tmp_path / "m.tif")
    assert (order, big, dtype) == ("<", False, np.uint8)
    assert [code for code, _, _ in tags] == SEED_TAGS
    assert photometric == tifffile.PHOTOMETRIC.MINISBLACK and compression == tifffile.COMPRESSION.NONE
    with Image.open(tmp_path / "m.tif") as img:  # Pillow reads it as mode L, like the seed
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), mask)


def test_large_mask_is_written_in_strips(tmp_path):
    mask = _random((1100, 1000), np.uint8)
    write_mask(tmp_path / "big.tif", mask)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert len(tif.pages[0].dataoffsets) > 1
        np.testing.assert_array_equal(tif.asarray(), mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "big.tif"), mask)


masks_2d = hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24))
_hyp = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_hyp
@given(mask=masks_2d)
def test_roundtrip_tiff(tmp_path, mask):
    write_mask(tmp_path / "m.tif", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif", shape=mask.shape), mask)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m.tif").reshape(mask.shape), mask)


@_hyp
@given(mask=masks_2d)
def test_roundtrip_png(tmp_path, mask):
    write_mask(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "L"
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)


@_hyp
@given(data=st.data())
def test_roundtrip_palette_png(tmp_path, data):
    classes = ClassTable.preset("sar-seep")
    ids = np.array([*classes.ids, 255], np.uint8)
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24))
    mask = ids[data.draw(hnp.arrays(np.intp, shape, elements=st.integers(0, len(ids) - 1)))]
    write_mask(tmp_path / "m.png", mask, classes=classes)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "P"
        palette = np.array(img.getpalette()[: 3 * len(classes)]).reshape(-1, 3)
    np.testing.assert_array_equal(palette[1], classes[1].rgba[:3])  # colours show in other tools
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", classes=classes), mask)


def test_foreign_palette_png_reads_indices(tmp_path):
    """A palette PNG from another tool: the palette index is the class id, whatever the colours."""
    mask = np.array([[0, 1, 2], [3, 1, 0]], np.uint8)
    img = Image.frombytes("P", (3, 2), mask.tobytes())
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [9] * (252 * 3))
    img.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(
        read_mask(tmp_path / "pal.png", classes=ClassTable.preset("sar-seep")), mask
    )


def test_mask_16bit_small_values_accepted_large_rejected(tmp_path):
    ok = np.array([[0, 1], [7, 255]], np.uint16)
    tifffile.imwrite(tmp_path / "ok.tif", ok)
    assert read_mask(tmp_path / "ok.tif").dtype == np.uint8
    tifffile.imwrite(tmp_path / "bad.tif", np.array([[0, 300]], np.uint16))
    with pytest.raises(MaskError, match="uint8"):
        read_mask(tmp_path / "bad.tif")
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((2, 2), np.float32))
    with pytest.raises(MaskError, match="integer"):
        read_mask(tmp_path / "f.tif")


def test_write_mask_rejects_bad_arrays_and_suffixes(tmp_path):
    with pytest.raises(MaskError, match="uint8"):
        write_mask(tmp_path / "a.tif", np.zeros((4, 4), np.int32))
    with pytest.raises(MaskError, match="2-D"):
        write_mask(tmp_path / "a.tif", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(MaskError, match="lossless|not .jpg|.jpg"):
        write_mask(tmp_path / "a.jpg", np.zeros((4, 4), np.uint8))
    with pytest.raises(MaskError, match="unknown class"):
        write_mask(tmp_path / "a.png", np.full((4, 4), 9, np.uint8), classes=ClassTable.preset("corrosion"))
    assert not list(tmp_path.iterdir())


def test_failed_write_keeps_previous_mask(tmp_path, monkeypatch):
    old = np.ones((8, 8), np.uint8)
    write_mask(tmp_path / "m.png", old)
    before = (tmp_path / "m.png").read_bytes()

    def crash_midway(self, fp, *args, **kwargs):
        with open(fp, "wb") as fh:
            fh.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", crash_midway)
    with pytest.raises(MaskError, match="No space left"):
        write_mask(tmp_path / "m.png", np.zeros((8, 8), np.uint8))
    assert (tmp_path / "m.png").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


@pytest.mark.skipif(sys.platform != "linux", reason="non-UTF8 file names need a byte-oriented file system")
def test_non_utf8_names(tmp_path):
    base = os.fsencode(tmp_path)
    mask = _random((6, 7), np.uint8)
    for suffix in (b".tif", b".png"):
        name = base + b"/m\xff\xfe" + suffix
        write_mask(name, mask)
        np.testing.assert_array_equal(read_mask(name), mask)
        np.testing.assert_array_equal(read_mask(os.fsdecode(name)), mask)
    tifffile.imwrite(os.fsdecode(base + b"/i\xe9.tif"), mask)
    src = open_image(base + b"/i\xe9.tif")
    np.testing.assert_array_equal(src.read_all(), mask)
    assert "\\udce9" in src.info()["path"] or "\\xe9" in src.info()["path"]


def test_a_tiff_cut_off_after_its_header_says_so_without_python_internals(tmp_path):
    from seepview.core.errors import ImageReadError
    from seepview.core.imageio import open_image

    path = tmp_path / "header-only.tif"
    path.write_bytes(b"II*\x00")  # a little-endian TIFF header, nothing after it
    with pytest.raises(ImageReadError, match="truncated or damaged") as info:
        open_image(path)
    assert "unpack" not in str(info.value) and "buffer" not in str(info.value)
