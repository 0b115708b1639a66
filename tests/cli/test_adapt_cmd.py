"""`seepview adapt` (issue 11): the folder form writes an adapted model that evaluate applies; bad input
is one line and exit 2."""

from __future__ import annotations

import json

import pytest

from seepview.cli import main
from seepview.core.adapt import Adaptation, adaptations_of
from seepview.core.model.checkpoint import load_checkpoint
from tests.tiny import save_varied_checkpoint, write_slick_tiles


@pytest.fixture
def sar(tmp_path):
    """Three tiles of two scenes with a dark slick each, and a tiny model that finds some seep."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_slick_tiles(images, masks)
    model = save_varied_checkpoint(tmp_path / "sar.safetensors")
    return images, masks, model


def test_adapt_folder_form_writes_a_model_with_lineage_that_evaluate_uses(sar, tmp_path, capsys):
    images, masks, model = sar
    out = tmp_path / "adapted.safetensors"
    rc = main(["adapt", "--model", str(model), "--images", str(images), "--masks", str(masks),
               "--out", str(out), "--scene", "000001", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tiles"] == 2 and report["scene"] == "000001" and "none" in report["cv"]
    ck = load_checkpoint(out)
    stored = [a.kind for a in adaptations_of(ck.meta.adaptation)]
    assert stored == ([] if report["kind"] == "none" else [report["kind"]])  # "no adaptation" stores none
    assert ck.meta.parent == "sar-seep-v0"
    assert main(["evaluate", "--images", str(images), "--masks", str(masks), "--model", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "x.safetensors"], "missing --images, --masks"),
        (["--images", "{images}", "--masks", "{masks}", "--out", "x.pt"], "--out must be a .safetensors"),
        (["--images", "{images}", "--masks", "{masks}", "--out", "{tmp}/a.safetensors", "--scene", "9"],
         "no image of scene '9'"),
    ],
)
def test_adapt_bad_input_is_one_line_and_exit_2(sar, tmp_path, capsys, extra, message):
    images, masks, model = sar
    argv = ["adapt", "--model", str(model)] + [a.format(images=images, masks=masks, tmp=tmp_path) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_the_folder_form_fits_each_scene_and_leaves_out_a_lone_tile(sar, tmp_path, capsys, monkeypatch):
    import shutil

    from seepview.core import adapt

    def fixed(meta, tiles, scene="", **kw):  # each scene its own choice: what is tested is how they are kept
        return Adaptation("main", scene, len(tiles), main_class=int(scene[-1:] or 3) + 1, cv={"none": 0.1, "main": 0.3})

    monkeypatch.setattr(adapt, "fit_adaptation", fixed)
    images, masks, model = sar
    out = tmp_path / "each.safetensors"
    argv = ["adapt", "--model", str(model), "--images", str(images), "--masks", str(masks), "--out", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [a["scene"] for a in report["adaptations"]] == ["000001"] and "000002" in report["left_out"]
    for name in ("000002.0",):  # a second tile of scene 000002: now both scenes are fitted, each on its own
        shutil.copy(images / f"{name}.tif", images / "000002.1.tif")
        shutil.copy(masks / f"{name}.tif", masks / "000002.1.tif")
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(a["scene"], a["tiles"]) for a in report["adaptations"]] == [("000001", 2), ("000002", 2)]
    assert "kind" not in report and "left_out" not in report  # no single scene's fields at the top
    stored = {a.scene: a.main_class for a in adaptations_of(load_checkpoint(out).meta.adaptation)}
    assert stored == {"000001": 2, "000002": 3}
    # names that follow no scene rule: one adaptation for every image replaces the model's, and says so
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "masks").mkdir()
    for name in ("a1", "b2"):
        shutil.copy(images / "000001.0.tif", flat / "images" / f"{name}.tif")
        shutil.copy(masks / "000001.0.tif", flat / "masks" / f"{name}.tif")
    assert main(["adapt", "--model", str(out), "--images", str(flat / "images"), "--masks", str(flat / "masks"),
                 "--out", str(tmp_path / "flat.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "000001, 000002" in report["replaced"] and "covers every image" in report["replaced"]


def test_the_project_form_says_what_became_of_the_active_model(tmp_path, capsys, monkeypatch):
    import tifffile

    from seepview.core import adapt
    from seepview.core.demo import make_demo_project
    from tests.tiny import save_tiny_checkpoint

    project = make_demo_project(tmp_path / "demo", n_images=4, size=64)
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    project.save()
    for entry in project.entries:
        if entry.group == "900001":
            project.save_labels(entry, tifffile.imread(project.root / "truth" / f"{entry.id}.tif"))
            project.set_status(entry, "reviewed")
    choice = {"kind": "main"}

    def fixed(meta, tiles, scene="", **kw):  # what is tested is the report, not the choice
        kind = choice["kind"]
        return adapt.Adaptation(kind, scene, len(tiles), main_class=2 if kind == "main" else None,
                                cv={"none": 0.1, "main": 0.3})

    monkeypatch.setattr(adapt, "fit_adaptation", fixed)
    runs = []
    for kind in ("main", "main", "none", "none"):
        choice["kind"] = kind
        assert main(["adapt", str(project.root), "--json"]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    first, same, dropped, nothing = runs
    assert first["version"] == first["active"] and "is active" in first["effect"]
    assert same["version"] is None and same["active"] == first["version"] and "already labels" in same["effect"]
    assert dropped["active"] != first["version"] and "base model is active" in dropped["effect"]
    assert nothing["active"] == dropped["active"] and "no adaptation helped" in nothing["effect"]
    assert all("resumed" not in r for r in runs)
    from seepview.core.retrain import use_version

    choice["kind"] = "main"
    assert main(["adapt", str(project.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] is not None
    base = nothing["active"]
    from seepview.core.project import Project

    _, _, paused = use_version(Project.open(project.root), base)  # the user rolls the adaptation back
    assert paused == ["900001"]
    assert main(["adapt", str(project.root), "--json"]) == 0  # an explicit adapt lifts the pause, and says so
    out = json.loads(capsys.readouterr().out)
    assert out["resumed"] == f"the app adapts scene 900001 after reviews again (paused since the rollback to {base})"


def test_predict_and_evaluate_say_which_images_the_adaptation_skips(sar, tmp_path, capsys):
    import dataclasses
    import shutil

    from seepview.core.model.checkpoint import save_checkpoint

    images, masks, model = sar
    ck = load_checkpoint(model)
    ad = Adaptation("main", "000001", 2, main_class=5, cv={"none": 0.1, "main": 0.3})
    adapted = tmp_path / "adapted.safetensors"
    save_checkpoint(adapted, ck.model, dataclasses.replace(ck.meta, adaptation=ad.to_dict()))
    shutil.copy(images / "000001.0.tif", images / "renamed_tile.tif")  # the same tile, its scene not in its name
    shutil.copy(masks / "000001.0.tif", masks / "renamed_tile.tif")
    assert main(["evaluate", "--images", str(images), "--masks", str(masks), "--model", str(adapted), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["adapted_scenes"] == ["000001"] and report["unadapted_images"] == 2  # 000002.0, renamed_tile
    assert "not applied to 2 of the 4 images" in captured.err and len(captured.err.splitlines()) == 1
    assert main(["predict", str(images / "000001.1.tif"), "--model", str(adapted), "--out", str(tmp_path / "o"),
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unadapted_images"] == 0 and "not applied" not in captured.err


def test_a_scene_with_one_large_reviewed_image_is_adapted_on_its_blocks(sar, tmp_path, capsys):
    """Before, a single image was told it needed a second one: a whole scene never counted as evidence."""
    import numpy as np
    import tifffile

    images, masks, model = sar
    rng = np.random.default_rng(0)
    big = rng.gamma(4.0, 700.0, (1100, 1200)).clip(1, 65535).astype(np.uint16)
    truth = np.zeros(big.shape, np.uint8)
    yy, xx = np.mgrid[:1100, :1200]
    for cy, cx in rng.integers(30, 1070, (30, 2)):
        slick = (yy - cy) ** 2 + (xx - cx) ** 2 < 150
        truth[slick], big[slick] = 4, big[slick] // 4
    tifffile.imwrite(images / "000009.big.tif", big)
    tifffile.imwrite(masks / "000009.big.tif", truth)
    out = tmp_path / "big.safetensors"
    argv = ["adapt", "--model", str(model), "--images", str(images), "--masks", str(masks), "--out", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    fits = {a["scene"]: a for a in report["adaptations"]}
    assert "000009" in fits and "000009" not in report.get("left_out", "")  # the lone tile of 000002 still is
    big_fit = fits["000009"]
    assert big_fit["tiles"] == 25 and "25 tile-sized blocks" in big_fit["summary"], big_fit
    assert "000002" in report["left_out"] and "or one reviewed image of at least 512 x 512 px" in report["left_out"]
