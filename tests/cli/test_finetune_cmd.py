"""``seepview finetune``: folder form and project form, one JSON object, gate and versions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from seepview.cli import main
from seepview.core.classes import ClassTable
from seepview.core.demo import make_demo_project, truth_path
from seepview.core.imageio import read_mask, write_mask
from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint
from seepview.core.project import Project
from seepview.core.versions import ModelRegistry
from tests.tiny import make_tiny_checkpoint

FAST = ["--seconds", "4", "--patch", "64", "--batch-size", "4", "--threads", "1", "--lr", "1e-2", "--replay", "0"]


def tiny():
    return make_tiny_checkpoint(poor=True)


@pytest.fixture
def demo(tmp_path):
    project = make_demo_project(tmp_path / "demo", n_images=10, size=128)
    for entry in project.entries:
        project.save_labels(entry, read_mask(truth_path(project, entry)))
        project.set_status(entry, "reviewed")
    return project


def one_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])


def _folders(demo, tmp_path, preds: bool):
    images, masks, pred_dir = tmp_path / "images", tmp_path / "masks", tmp_path / "preds"
    for folder in (images, masks, pred_dir):
        folder.mkdir(exist_ok=True)
    for entry in demo.entries:
        shutil.copy(demo.image_path(entry), images / f"{entry.id}.tif")
        truth = read_mask(truth_path(demo, entry))
        write_mask(masks / f"{entry.id}.tif", truth)
        if preds:
            write_mask(pred_dir / f"{entry.id}.tif", np.full_like(truth, 3))
    model = tmp_path / "tiny.safetensors"
    save_checkpoint(model, tiny().model, tiny().meta)
    args = ["finetune", "--model", str(model), "--images", str(images), "--masks", str(masks)]
    return args + (["--predictions", str(pred_dir)] if preds else [])


def test_folder_form_writes_a_promoted_model_and_one_json_object(demo, tmp_path, capsys):
    out = tmp_path / "new.safetensors"
    rc = main([*_folders(demo, tmp_path, preds=True), "--out", str(out), "--json", *FAST, "--promote-min-units", "5"])
    result = one_json(capsys)
    assert rc == (0 if result["promoted"] else 1)
    assert result["written"] is result["promoted"] is out.is_file()
    assert result["device"] == "cpu" and result["seconds"] > 0
    assert result["validation_units"] >= 3 and result["training_images"] >= 1
    assert result["corrected_pixels"] > 0  # every pixel that is not seep 3 was a correction
    assert set(result["before"]["per_class_iou"]) == set(ClassTable.preset("sar-seep").names)
    assert result["promoted"], result["reason"]  # a poor model (all "seep 3") is easy to beat
    new = load_checkpoint(out)
    assert new.meta.training["finetune"]["corrected_pixels"] == result["corrected_pixels"]


def test_folder_form_without_predictions_runs_the_model_to_count_corrections(demo, tmp_path, capsys):
    out = tmp_path / "new.safetensors"
    main([*_folders(demo, tmp_path, preds=False), "--out", str(out), "--json", *FAST])
    result = one_json(capsys)
    assert result["corrected_images"] == result["training_images"] > 0
    # the model calls nearly everything (but no-data) "seep 3": the corrections found by running it are nearly
    # those that masks of "seep 3" everywhere give (no-data never trains, so it counts in neither)
    main([*_folders(demo, tmp_path, preds=True), "--out", str(out), "--json", *FAST])
    given = one_json(capsys)
    assert 0.85 * given["corrected_pixels"] <= result["corrected_pixels"] <= given["corrected_pixels"]
    assert result["corrected_pixels"] > 0.5 * 128 * 128 * result["training_images"]


def test_a_wrecked_finetune_is_rejected_and_not_written(demo, tmp_path, capsys):
    out = tmp_path / "wrecked.safetensors"
    # epochs, not seconds: on a loaded machine a time budget buys too few steps to train or to wreck
    # the demo holds out 5 tiles: judged, and promotable, on those
    good = ["--thorough", "--epochs", "3", "--patch", "64", "--batch-size", "4", "--threads", "1", "--replay", "0",
            "--promote-min-units", "5"]
    base = _folders(demo, tmp_path, preds=True)
    base[base.index("--model") + 1] = str(tmp_path / "trained.safetensors")
    # first a decent model, then a fine-tune of it with a learning rate that wrecks it
    assert main([*_folders(demo, tmp_path, preds=True), "--out", str(tmp_path / "trained.safetensors"), "--json",
                 "--thorough", "--epochs", "40", "--patch", "64", "--batch-size", "4", "--threads", "1",
                 "--replay", "0", "--lr", "1e-2", "--promote-min-units", "5"]) == 0
    capsys.readouterr()
    rc = main([*base, "--out", str(out), "--json", *good, "--lr", "0.5"])
    result = one_json(capsys)
    assert rc == 1 and result["promoted"] is False and result["written"] is False
    assert result["evidence"] and "may be worse" in result["reason"]  # the gate's verdict, not the minimum's
    assert not out.exists()
    rc = main([*base, "--out", str(out), "--json", *good, "--lr", "0.5", "--keep-rejected"])
    result = one_json(capsys)
    assert rc == 1 and result["written"] is True and out.is_file()


def test_project_form_gates_and_records_version(demo, capsys):
    registry = ModelRegistry(demo)
    base = registry.ensure_base(tiny())
    rc = main(["finetune", str(demo.root), "--json", *FAST])
    result = one_json(capsys)
    assert rc == (0 if result["promoted"] else 1)
    reopened = ModelRegistry(Project.open(demo.root))
    keys = [v.key for v in reopened.versions()]
    assert keys == [base.key, result["version"]]
    assert result["active"] == reopened.active.key == (result["version"] if result["promoted"] else base.key)
    assert reopened.get(result["version"]).parent == base.key
    val_ids = Project.open(demo.root).settings["validation_ids"]
    assert result["validation_images"] == len(val_ids) >= 3

    # the same validation images next time; --reset-validation chooses again
    rc = main(["finetune", str(demo.root), "--json", "--tolerance", "1.0", "--promote-min-units", "5", *FAST])
    assert rc == 0
    again = one_json(capsys)
    assert Project.open(demo.root).settings["validation_ids"] == val_ids
    assert again["promoted"] is True and again["verdict"] == "promoted"  # tolerance 1.0 accepts anything
    rc = main(["finetune", str(demo.root), "--json", "--tolerance", "1.0", *FAST])  # the default minimum, 8 units
    held = one_json(capsys)
    assert rc == 1 and held["verdict"] == "too few units to promote" and held["ci"] is not None, held
    assert held["promote_min_units"] == 8 and not held["promoted"]
    assert ModelRegistry(Project.open(demo.root)).get(again["version"]).parent == result["active"]


def test_usage_errors_are_one_line(demo, tmp_path, capsys):
    assert main(["finetune", "--model", str(tmp_path / "x.safetensors")]) == 2
    assert "missing --images --masks --out" in capsys.readouterr().err
    assert main(["finetune", str(demo.root), "--model", "m.safetensors"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a seepview project" in err[0]


@pytest.mark.parametrize("option", [["--seconds", "-5"], ["--batch-size", "0"], ["--lr", "-1"], ["--val-fraction", "2"],
                                    ["--promote-min-units", "4"], ["--tolerance", "-1"]])
def test_bad_numbers_are_one_line_naming_the_option(demo, capsys, option):
    assert main(["finetune", str(demo.root), "--json", *option]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"seepview: error: {option[0]} must be"), err
    assert captured.out == "" and "Traceback" not in captured.err


def test_a_bad_option_changes_nothing_in_the_project(demo, capsys):
    """Refused before --reset-validation runs: the fixed validation split survives a typo."""
    from seepview.core.retrain import ensure_validation_split

    ensure_validation_split(demo)
    before = Project.open(demo.root).settings["validation_ids"]
    assert main(["finetune", str(demo.root), "--reset-validation", "--lr", "-1"]) == 2
    assert "--lr must be" in capsys.readouterr().err
    assert Project.open(demo.root).settings["validation_ids"] == before


def test_project_form_takes_tolerance_and_correction_weight_from_the_project(tmp_path):
    """The app's Retrain panel records the gate's tolerance per project; the CLI applies the same policy."""
    from seepview.cli import build_parser
    from seepview.cli.finetune_cmd import _config
    from seepview.core.retrain import RetrainConfig, project_settings, store_project_settings

    project = make_demo_project(tmp_path / "demo", n_images=2, size=32)
    store_project_settings(project, RetrainConfig(tolerance=0.02, correction_weight=4.0, budget="thorough",
                                                  promote_min_units=6))
    stored = project_settings(Project.open(project.root))
    parser = build_parser()
    plain = _config(parser.parse_args(["finetune", str(project.root)]), stored)
    assert (plain.tolerance, plain.correction_weight, plain.promote_min_units) == (0.02, 4.0, 6)
    assert type(plain.promote_min_units) is int
    more = _config(parser.parse_args(["finetune", str(project.root), "--promote-min-units", "12"]), stored)
    assert more.promote_min_units == 12
    assert plain.budget == "quick"  # how long to train is the command line's choice, not project policy
    given = _config(parser.parse_args(["finetune", str(project.root), "--tolerance", "0"]), stored)
    assert given.tolerance == 0.0
    assert _config(parser.parse_args(["finetune", str(project.root)])).tolerance == RetrainConfig.tolerance
