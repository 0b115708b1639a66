"""Issue 14's CLI manners: typos, --help, --out checks, progress and summaries, the trained-groups warning."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tifffile
import torch

from seepview.cli import main
from seepview.cli.model_cmds import Progress
from tests.tiny import save_tiny_checkpoint


@pytest.fixture
def data(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for name in ("sceneA.0", "sceneA.1", "sceneB.0"):
        tifffile.imwrite(images / f"{name}.tif", rng.integers(20000, 50000, (40, 48)).astype(np.uint16))
        tifffile.imwrite(masks / f"{name}.tif", np.zeros((40, 48), np.uint8))
    model = tmp_path / "m.safetensors"
    save_tiny_checkpoint(model, name="t", training={"train_groups": ["sceneA"], "val_groups": ["sceneC"]})
    return images, masks, model


@pytest.mark.parametrize(("word", "said"), [("evalute", "did you mean evaluate?"), ("predcit", "did you mean predict?"),
                                            ("frobnicate", "no file or folder has that name")])
def test_unknown_command_is_one_line_exit_2(word, said, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([word]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"unknown command {word!r}" in err and said in err


def test_help_documents_the_gui_forms(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "seepview PATH" in out and "--screenshot OUT.png" in out


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_predict_out_that_cannot_be_a_folder_is_one_line(data, tmp_path, capsys, kind):
    images, _, model = data
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "taken" if kind == "file" else tmp_path / "taken" / "sub"
    assert main(["predict", str(images), "--model", str(model), "--out", str(out), "--tile", "32", "--overlap", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "Traceback" not in err


def test_predict_json_is_quiet_and_summarises(data, tmp_path, capsys):
    images, _, model = data
    out = tmp_path / "out"
    assert main(["predict", str(images), "--model", str(model), "--out", str(out), "--json", "--tile", "32",
                 "--overlap", "8"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["images"] == 3 and summary["overlap"] == 8 and len(summary["masks"]) == 3
    assert captured.err == ""


def test_evaluate_warns_about_groups_the_model_trained_on(data, capsys):
    images, masks, model = data
    assert main(["evaluate", "--images", str(images), "--masks", str(masks), "--model", str(model), "--json",
                 "--tile", "32", "--overlap", "8"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["seen_groups"] == {"trained": ["sceneA"], "validated": []}
    assert "2 of the 3 images belong to groups (scenes) the model was trained on (sceneA)" in captured.err


def test_import_json_is_quiet_and_summarises(data, tmp_path, capsys):
    images, masks, _ = data
    assert main(["import", str(images), str(tmp_path / "proj"), "--masks", str(masks), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 3 and captured.err == ""


def test_demo_size_is_bounded(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "d"), "--size", "200000"]) == 2
    assert "--size 32 to 8192" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_progress_bar_draws_on_a_terminal_only():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = Progress("import", stream=tty)
    bar(3, 3)
    bar.close()
    assert "import [" in tty.getvalue() and "3/3" in tty.getvalue()
    quiet = Tty()
    Progress("import", stream=quiet, quiet=True)(3, 3)
    assert quiet.getvalue() == ""


def test_hostile_model_architecture_exits_2_naming_the_file(data, tmp_path, capsys):
    from safetensors.torch import save as st_save

    from seepview.core.model.checkpoint import META_KEY, load_checkpoint

    images, _, model = data
    meta = load_checkpoint(model).meta.to_dict()
    meta["arch"]["base_width"] = 2**20
    hostile = tmp_path / "hostile.safetensors"
    hostile.write_bytes(st_save({"w": torch.zeros(1)}, metadata={META_KEY: json.dumps(meta)}))
    assert main(["predict", str(images), "--model", str(hostile), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(hostile) in err and "base_width" in err


def test_a_folder_as_model_exits_2_saying_so(data, tmp_path, capsys):
    images, _, _ = data
    (tmp_path / "models").mkdir()
    assert main(["predict", str(images), "--model", str(tmp_path / "models"), "--out", str(tmp_path / "o")]) == 2
    assert "not a model file: a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, said", [
    (["demo", "DIR", "--seed", "-1"], "--seed must be a whole number from 0 to 4294967295, got -1"),
    (["train", "--images", "I", "--out", "o.safetensors", "--batch-size", "0"], "--batch-size must be a whole number"),
    (["train", "--images", "I", "--out", "o.safetensors", "--patch", "-1"], "--patch must be"),
    (["train", "--images", "I", "--out", "o.safetensors", "--lr", "nan"], "--lr must be a number above 0"),
    (["train", "--images", "I", "--out", "o.safetensors", "--depth", "12"], "--depth must be a whole number from 1 to 8"),
    (["train", "--images", "I", "--out", "o.safetensors", "--val-fraction", "2"], "--val-fraction must be"),
    (["train", "--images", "I", "--out", "o.safetensors", "--seconds", "inf"], "--seconds must be a number > 0"),
    (["train", "--images", "I", "--out", "o.safetensors", "--rare-fraction", "-1"], "--rare-fraction must be"),
    (["predict", "x.tif", "--out", "OUT", "--tile", "1", "--overlap", "0"], "--tile must be a whole number from 32"),
    (["evaluate", "--images", "I", "--masks", "M", "--batch-size", "0"], "--batch-size must be"),
    (["predict", "x.tif", "--out", "OUT", "--tile", "32", "--overlap", "64"], "--overlap must be smaller than --tile"),
])
def test_out_of_range_numbers_are_one_line_naming_the_option_before_any_work(argv, said, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(tmp_path / a) if a in ("DIR", "I", "M", "OUT") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "Traceback" not in err, err
    assert not (tmp_path / "DIR").exists() and not (tmp_path / "OUT").exists()


@pytest.mark.parametrize("command", [["train", "--images", "I"], ["adapt", "--images", "I", "--masks", "M"]])
def test_an_out_under_a_file_is_one_line_before_any_work(command, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    argv = [str(tmp_path / a) if a in ("I", "M") else a for a in command]
    assert main([*argv, "--out", str(tmp_path / "afile" / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afile is a file, not a folder" in err, err


def test_a_demo_under_a_file_names_the_folder_given(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["demo", str(tmp_path / "afile" / "demo")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "afile" / "demo") + ":" in err and ".building" not in err, err


def test_evaluate_with_no_matching_masks_is_one_line(tmp_path, capsys, caplog):
    import numpy as np
    import tifffile

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("a", "b", "c"):
        tifffile.imwrite(images / f"{name}.tif", np.ones((8, 8), np.uint16))
    tifffile.imwrite(masks / "other.tif", np.zeros((8, 8), np.uint8))
    assert main(["evaluate", "--images", str(images), "--masks", str(masks)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no masks share a file stem" in err, err
    assert "skipped" not in caplog.text  # the per-image lines are not printed before the error either


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path, capsys, monkeypatch):
    """``seepview info ... | head -c 1``: the pipe closes under our output; that is not an error to report.
    A pipe that breaks elsewhere is one: one line, exit 2."""
    import io
    import os
    import sys

    import numpy as np
    import tifffile

    from seepview.cli import io_cmds

    image = tmp_path / "000001.0.tif"
    tifffile.imwrite(image, np.ones((16, 16), np.uint16))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left

    class ClosedPipe(io.TextIOBase):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return write_end

    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", ClosedPipe())
        assert main(["info", str(image), "--json"]) == 1
    os.close(write_end)
    assert capsys.readouterr().err == ""

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(io_cmds, "run_info", broken)
    monkeypatch.setattr(sys, "stdout", open(tmp_path / "out.txt", "w"))  # noqa: SIM115 - a healthy stdout
    assert main(["info", str(image)]) == 2
    assert capsys.readouterr().err.strip() == "seepview: error: Broken pipe"
