"""``seepview export PROJECT ...``: outputs, JSON summary, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from seepview.cli import main
from seepview.core.versions import ModelRegistry
from tests.core import export_fixtures as fx

pytest.importorskip("rasterio")


@pytest.fixture
def project(tmp_path):
    project, entry = fx.make_project(tmp_path, fx.write_utm_scene(tmp_path / "scene.tif"))
    project.set_status(entry, "reviewed")
    return project


def _no_model_lookup(monkeypatch):
    """Name the model without loading one (the registry path of ``resolve_model``)."""
    from seepview.core.export import pipeline

    monkeypatch.setattr(pipeline, "resolve_model", lambda project: ("cli-v2", "cli-v2-abcdef0123"))


def test_export_all_three_outputs(project, tmp_path, capsys, monkeypatch):
    _no_model_lookup(monkeypatch)
    args = ["export", str(project.root), "--reviewed", "--vector", str(tmp_path / "r.gpkg"),
            "--masks", str(tmp_path / "masks"), "--report", str(tmp_path / "r.html"), "--json"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert out.count("\n") == 1
    assert summary["images"] == ["scene"] and summary["regions"] == 3
    assert summary["model_version"] == "cli-v2"
    assert {p.rsplit("/", 1)[-1] for p in summary["files"]} == {"scene.tif", "r.gpkg", "r.html"}
    assert all((tmp_path / name).exists() for name in ("r.gpkg", "r.html", "masks/scene.tif"))


def test_export_text_output_names_files(project, tmp_path, capsys, monkeypatch):
    _no_model_lookup(monkeypatch)
    assert main(["export", str(project.root), "--images", "scene", "--report", str(tmp_path / "r.csv"),
                 "--severity-bands", "2,20"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("exported 1 image(s), 3 region(s)") and str(tmp_path / "r.csv") in out
    assert "2–20 %" in (tmp_path / "r.csv").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "nothing to export"),
        (["--vector", "x.shp"], ".gpkg or .geojson"),
        (["--report", "r.pdf"], ".csv or .html"),
        (["--report", "r.csv", "--images", "nope"], "no image with id 'nope'"),
        (["--report", "r.csv", "--source", "predictions"], "cached prediction"),
        (["--report", "r.csv", "--severity-bands", "5,x"], "severity bands"),
    ],
)
def test_user_errors_are_one_line_exit_2(project, tmp_path, capsys, monkeypatch, extra, message):
    _no_model_lookup(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(project.root), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seepview: error: ") and message in err and err.count("\n") == 1


def test_not_a_project_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--report", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert "not a seepview project" in err and err.count("\n") == 1


def test_model_version_from_the_registry(project, tmp_path, capsys):
    """Without stubs: a registered active model names the export and its cache is found."""
    from tests.tiny import make_tiny_checkpoint

    registry = ModelRegistry(project)
    version = registry.add(make_tiny_checkpoint(), promote=True)
    assert main(["export", str(project.root), "--report", str(tmp_path / "r.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_version"] == version.key


def test_info_names_the_gcps_of_a_grd_like_tiff(tmp_path, capsys):
    scene = fx.write_gcp_scene(tmp_path / "s1.tif")
    assert main(["info", str(scene)]) == 0
    assert "9 ground control points" in capsys.readouterr().out


def test_masks_are_never_written_over_the_projects_images(project, tmp_path, capsys, monkeypatch):
    """Mask files take the image ids as names: in the images' own folder they would replace the scenes."""
    _no_model_lookup(monkeypatch)
    image = project.image_path(project.entries[0])
    before = image.read_bytes()
    assert main(["export", str(project.root), "--masks", str(image.parent)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "would replace them" in err
    assert image.read_bytes() == before


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs Linux /proc (a folder no file can be made in)")
@pytest.mark.parametrize("option, name", [("--report", "r.csv"), ("--report", "r.html"), ("--vector", "v.gpkg"),
                                          ("--vector", "v.geojson")])
def test_an_output_folder_that_takes_no_files_is_one_line_before_any_work(project, capsys, monkeypatch, option, name):
    _no_model_lookup(monkeypatch)
    assert main(["export", str(project.root), option, f"/proc/{name}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write in its folder" in err and "Traceback" not in err
