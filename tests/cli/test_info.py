"""``seepview info FILE [--json]``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from seepview.cli import main

GEOKEYS = (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32633)


def _sar_tiff(path, nodata_rows=4):
    img = np.random.default_rng(0).integers(100, 60000, (32, 48)).astype(np.uint16)
    img[:nodata_rows] = 0
    tags = [
        (33550, 12, 3, (10.0, 10.0, 0.0), True),
        (33922, 12, 6, (0, 0, 0, 500000.0, 4000000.0, 0), True),
        (34735, 3, len(GEOKEYS), GEOKEYS, True),
    ]
    tifffile.imwrite(path, img, tile=(16, 16), compression="zlib", extratags=tags)
    return img


def test_info_json_is_one_object(tmp_path, capsys):
    img = _sar_tiff(tmp_path / "scene.tif")
    assert main(["info", str(tmp_path / "scene.tif"), "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out)  # the whole output parses as one object
    assert out.count("\n") == 1
    assert info["shape"] == [32, 48] and info["channels"] == 1 and info["dtype"] == "uint16"
    assert info["value_range"] == [0, int(img.max())]
    assert info["tiled"] is True and info["tile_shape"] == [16, 16]
    assert info["compression"] != "none"
    assert info["nodata"] == 0.0
    assert abs(info["nodata_fraction"] - 4 / 32) < 1e-9
    assert info["geo"]["epsg"] == 32633
    assert info["geo"]["affine"] == [10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0]


def test_info_table(tmp_path, capsys):
    _sar_tiff(tmp_path / "scene.tif")
    assert main(["info", str(tmp_path / "scene.tif")]) == 0
    out = capsys.readouterr().out
    assert "32 x 48" in out and "uint16" in out and "tiled 16 x 16" in out
    assert "12.50% of pixels" in out and "EPSG:32633" in out


def test_info_on_real_tile(cgg_seep, capsys):
    path = sorted((cgg_seep / "images").glob("*.tif"))[0]
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [256, 256] and info["dtype"] == "uint16" and info["compression"] == "none"


def test_info_bad_file_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "bad.tif").write_text("not an image")
    assert main(["info", str(tmp_path / "bad.tif"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "bad.tif" in captured.err and "Traceback" not in captured.err


@pytest.mark.skipif(sys.platform != "linux", reason="non-UTF8 file names need a byte-oriented file system")
def test_info_subprocess_non_utf8_name(tmp_path):
    """The real entry point, with a file name that is not valid UTF-8, in both output modes."""
    name = os.fsencode(tmp_path) + b"/sc\xe8ne.tif"
    _sar_tiff(os.fsdecode(name))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    for extra in ([], ["--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "seepview", "info", name, *extra],
            capture_output=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        text = proc.stdout.decode("utf-8")
        assert "sc\\udce8ne.tif" in text or "sc\\\\udce8ne.tif" in text
        if extra:
            assert json.loads(text)["shape"] == [32, 48]
