"""The resource locator: shipped folders from a checkout and from an installed (non-editable) wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from seepview.core import paths

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("resources", "models")


def test_checkout_locates_shipped_folders():
    assert paths.shipped_dir("resources") == REPO / "resources"
    assert paths.resources_dir() == REPO / "resources"
    assert (paths.resources_dir() / "README.md").is_file()
    assert paths.models_dir() == REPO / "models"


def test_unknown_folder_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        paths.shipped_dir("nonexistent")


def test_user_data_dir_is_created_under_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    path = paths.user_data_dir()
    assert path.is_dir() and tmp_path in path.parents


def _copy_source(dst: Path) -> dict[str, list[str]]:
    """Copy what the wheel is built from; return the shipped files it must contain.

    Built from a copy so helpers editing the checkout at the same time cannot break the build. An
    empty shipped folder (git keeps no empty folders) gets a marker file, so the build config and
    the locator are tested for both folders either way.
    """
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    shutil.copytree(
        REPO / "seepview", dst / "seepview", ignore=shutil.ignore_patterns("__pycache__", "_data")
    )
    expected = {}
    for name in SHIPPED:
        src = REPO / name
        shutil.copytree(src, dst / name) if src.is_dir() else (dst / name).mkdir()
        files = sorted(str(p.relative_to(dst / name)) for p in (dst / name).rglob("*") if p.is_file())
        if not files:
            (dst / name / "MARKER.txt").write_text("test marker\n")
            files = ["MARKER.txt"]
        expected[name] = files
    return expected


@pytest.mark.slow
def test_installed_wheel_locates_shipped_folders(tmp_path):
    src, wheels, target, elsewhere = (tmp_path / n for n in ("src", "wheels", "target", "elsewhere"))
    for d in (src, wheels, elsewhere):
        d.mkdir()
    expected = _copy_source(src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("seepview-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name, files in expected.items():
        for f in files:
            assert f"seepview/_data/{name}/{f}" in names, f"{name}/{f} missing from the wheel"
    install = subprocess.run(
        [*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    probe = (
        "import json, seepview; from seepview.core import paths; "
        "print(json.dumps([seepview.__file__, str(paths.shipped_dir('resources')), str(paths.shipped_dir('models'))]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    package_file, resources, models = (Path(p) for p in json.loads(run.stdout))
    data = target.resolve() / "seepview" / "_data"
    assert package_file.resolve().is_relative_to(target.resolve())  # the wheel, not the checkout
    assert resources.resolve() == data / "resources"
    assert models.resolve() == data / "models"
    for name, files in expected.items():
        for f in files:
            assert (data / name / f).is_file()
