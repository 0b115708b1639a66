"""A corpus of bad inputs: each gets a SeepviewError that names the file and the problem; nothing crashes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from seepview.core.classes import ClassTable
from seepview.core.errors import ImageReadError, MaskError, SeepviewError
from seepview.core.imageio import open_image, read_mask

SAR = ClassTable.preset("sar-seep")


def _good_tiff_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    return buf.getvalue()


def zero_bytes(d: Path) -> Path:
    (d / "empty.tif").write_bytes(b"")
    return d / "empty.tif"


def truncated_tiff(d: Path) -> Path:
    (d / "truncated.tif").write_bytes(_good_tiff_bytes()[:3000])
    return d / "truncated.tif"


def truncated_header(d: Path) -> Path:
    (d / "cut.tif").write_bytes(_good_tiff_bytes()[:40])
    return d / "cut.tif"


def text_named_tif(d: Path) -> Path:
    (d / "notes.tif").write_text("this is not an image\n" * 20)
    return d / "notes.tif"


def four_d_tiff(d: Path) -> Path:
    tifffile.imwrite(d / "volume.tif", np.zeros((2, 3, 16, 16), np.uint16))
    return d / "volume.tif"


def stack_tiff(d: Path) -> Path:
    tifffile.imwrite(d / "stack.tif", np.zeros((5, 16, 16), np.uint16))
    return d / "stack.tif"


def unsupported_dtype(d: Path) -> Path:
    tifffile.imwrite(d / "int64.tif", np.zeros((16, 16), np.int64))
    return d / "int64.tif"


def too_many_channels(d: Path) -> Path:
    tifffile.imwrite(d / "hyper.tif", np.zeros((16, 16, 6), np.uint16), planarconfig="contig")
    return d / "hyper.tif"


def corrupt_png(d: Path) -> Path:
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    return d / "broken.png"


def missing_file(d: Path) -> Path:
    return d / "does-not-exist.tif"


def directory(d: Path) -> Path:
    (d / "folder.tif").mkdir()
    return d / "folder.tif"


def unknown_suffix(d: Path) -> Path:
    (d / "data.xyz").write_bytes(b"random bytes here")
    return d / "data.xyz"


IMAGE_CASES = {
    zero_bytes: "empty file",
    truncated_tiff: "truncated",
    truncated_header: "not a readable TIFF",
    text_named_tif: "not a TIFF",
    four_d_tiff: "4-D",
    stack_tiff: "3-D",
    unsupported_dtype: "unsupported pixel type int64",
    too_many_channels: "6 channels",
    corrupt_png: "not a readable image",
    missing_file: "cannot open",
    directory: "not a file",
    unknown_suffix: "unsupported image type",
}


@pytest.mark.parametrize("make", IMAGE_CASES, ids=lambda f: f.__name__)
def test_bad_images(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(ImageReadError) as err:
        src = open_image(path)
        src.read_all()
    assert err.value.path == path
    assert IMAGE_CASES[make] in str(err.value)
    assert str(err.value).startswith(str(path))


def test_complex_is_not_an_error(tmp_path):
    slc = (np.ones((8, 8)) * (3 + 4j)).astype(np.complex64)
    tifffile.imwrite(tmp_path / "slc.tif", slc)
    np.testing.assert_allclose(open_image(tmp_path / "slc.tif").read_all(), 5.0)


def test_corrupt_tile_data_is_an_error_at_read_time(tmp_path):
    data = np.random.default_rng(0).integers(0, 60000, (64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "z.tif", data, tile=(32, 32), compression="zlib")
    raw = bytearray((tmp_path / "z.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "z.tif") as tif:
        offset = tif.pages[0].dataoffsets[0]
    raw[offset : offset + 40] = b"\xff" * 40  # garbage in the first deflate stream
    (tmp_path / "z.tif").write_bytes(bytes(raw))
    src = open_image(tmp_path / "z.tif")
    with pytest.raises(ImageReadError, match="cannot decode"):
        src.read_all()


# --- masks -----------------------------------------------------------------------------------------


def test_mask_with_unknown_id(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[3, 4] = 200
    tifffile.imwrite(tmp_path / "m.tif", mask)
    with pytest.raises(MaskError, match="200") as err:
        read_mask(tmp_path / "m.tif", classes=SAR)
    assert err.value.path == tmp_path / "m.tif"
    mask[3, 4] = 255  # reserved for "unlabeled": fine
    tifffile.imwrite(tmp_path / "m.tif", mask)
    assert read_mask(tmp_path / "m.tif", classes=SAR)[3, 4] == 255


def test_mask_shape_differs_from_image(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((16, 20), np.uint8))
    with pytest.raises(MaskError, match="16x20 but its image is 256x256"):
        read_mask(tmp_path / "m.tif", classes=SAR, shape=(256, 256))


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_multichannel_mask(tmp_path, suffix):
    rgb = np.zeros((8, 8, 3), np.uint8)
    path = tmp_path / f"m{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, rgb, photometric="rgb")
    else:
        Image.fromarray(rgb).save(path)
    with pytest.raises(MaskError, match="single-channel"):
        read_mask(path, classes=SAR)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.tif", b"", "empty file"),
        ("text.tif", b"hello", "not a TIFF"),
        ("broken.png", b"\x89PNG\r\n\x1a\n\x00\x00", "not a readable PNG"),
        ("mask.jpg", b"\xff\xd8\xff", "lossless"),
    ],
)
def test_unreadable_masks(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(MaskError, match=match):
        read_mask(tmp_path / name)


def test_missing_mask(tmp_path):
    with pytest.raises(MaskError, match="cannot open"):
        read_mask(tmp_path / "nope.png")


@pytest.mark.skipif(sys.platform != "linux", reason="non-UTF8 file names need a byte-oriented file system")
def test_non_utf8_file_names_give_clear_errors(tmp_path):
    name = os.fsencode(tmp_path) + b"/bad\xff\xfe.tif"
    with open(name, "wb") as fh:
        fh.write(b"not a tiff")
    for attempt in (lambda: open_image(name), lambda: read_mask(name)):
        with pytest.raises(SeepviewError) as err:
            attempt()
        text = str(err.value)
        text.encode("utf-8")  # printable: surrogates were escaped
        assert "bad" in text and "\\udcff" in text
    # A good image under such a name works.
    with open(name, "wb") as fh:
        fh.write(_good_tiff_bytes())
    assert open_image(name).shape == (64, 64)
