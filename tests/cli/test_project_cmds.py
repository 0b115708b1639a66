import json
import subprocess
import sys

import numpy as np
import tifffile

from seepview.cli import main
from seepview.core.imageio import write_mask
from seepview.core.paths import user_data_dir
from seepview.core.project import Project


def test_demo_into_dir(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "d"), "--images", "2", "--size", "64"]) == 0
    assert "created demo project with 2 images" in capsys.readouterr().out
    project = Project.open(tmp_path / "d")
    assert len(project) == 2 and len(list((tmp_path / "d" / "truth").glob("*.tif"))) == 2
    # A second run leaves the existing project alone.
    assert main(["demo", str(tmp_path / "d"), "--images", "4"]) == 0
    assert "already exists" in capsys.readouterr().out
    assert len(Project.open(tmp_path / "d")) == 2


def test_demo_default_dir_is_user_data(capsys):
    assert main(["demo", "--images", "1", "--size", "32"]) == 0
    assert len(Project.open(user_data_dir() / "demo")) == 1


def test_demo_into_busy_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    assert main(["demo", str(tmp_path / "busy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "new or empty folder" in err


def _pairs(root):
    (root / "images").mkdir()
    (root / "m").mkdir()
    for i in range(3):
        tifffile.imwrite(root / "images" / f"777.{i:06d}.tif", np.ones((16, 16), np.uint16))
        write_mask(root / "m" / f"777.{i:06d}.tif", np.full((16, 16), i, np.uint8))


def test_import_json_summary(tmp_path, capsys):
    _pairs(tmp_path)
    args = ["import", str(tmp_path / "images"), str(tmp_path / "p"), "--masks", str(tmp_path / "m")]
    assert main([*args, "--json", "--classes", "sar-seep"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 3 and summary["labelled"] == 3 and summary["groups"] == 1
    assert summary["format"] == "folder-pairs" and summary["classes"][1] == "seep 1"


def test_import_errors_exit_2(tmp_path, capsys):
    _pairs(tmp_path)
    args = ["import", str(tmp_path / "images"), str(tmp_path / "p"), "--masks", str(tmp_path / "m")]
    assert main([*args, "--classes", "corrosion"]) == 2
    err = capsys.readouterr().err
    assert "unknown class id(s) 2" in err and "777.000002.tif" in err
    assert not (tmp_path / "p").exists()
    assert main(["import", str(tmp_path / "nothing"), str(tmp_path / "p")]) == 2
    assert "not found" in capsys.readouterr().err


def test_import_console_entry(tmp_path):
    _pairs(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "seepview", "import", str(tmp_path / "images"), str(tmp_path / "p"),
         "--masks", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "imported 3 images (3 labelled, 1 groups)" in out.stdout
