"""``seepview queue``: one JSON list most-in-need first, cached predictions reused, broken images left out."""

import json

import numpy as np
import tifffile

from seepview.cli import main
from seepview.core.demo import make_demo_project
from seepview.core.project import Project
from tests.tiny import save_tiny_checkpoint


def _images(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        tifffile.imwrite(folder / f"img{i}.tif", rng.integers(1, 4000, (48, 64)).astype(np.uint16))
    return folder


def test_json_is_one_list_sorted_by_score(tmp_path, capsys):
    model = save_tiny_checkpoint(tmp_path / "m.safetensors")
    folder = _images(tmp_path / "imgs")
    (folder / "bad.tif").write_bytes(b"not a tiff at all")
    assert main(["queue", str(folder), "--model", str(tmp_path / "m.safetensors"), "--json"]) == 0
    out, err = capsys.readouterr()
    items = json.loads(out)  # exactly one JSON document on stdout
    assert [set(i) for i in items] == [{"id", "score"}] * 3
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
    assert {i["id"] for i in items} == {"img0", "img1", "img2"}
    assert "bad.tif" in err and "not queued" in err and "[" not in err  # no progress bar with --json
    assert model.num_classes == 8


def test_cached_predictions_are_reused_and_top_limits(tmp_path, capsys, monkeypatch):
    save_tiny_checkpoint(tmp_path / "m.safetensors")
    project = make_demo_project(tmp_path / "p", n_images=4, size=48)
    args = ["queue", str(project.root), "--model", str(tmp_path / "m.safetensors"), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    from seepview.core.model import infer

    monkeypatch.setattr(infer.Predictor, "predict", lambda *a, **k: (_ for _ in ()).throw(AssertionError("predicted")))
    assert main(args + ["--top", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == first[:2]
    # Reviewed images leave the queue.
    project = Project.open(project.root)
    project.set_status(first[0]["id"], "reviewed")
    assert main(args) == 0
    assert [i["id"] for i in json.loads(capsys.readouterr().out)] == [i["id"] for i in first[1:]]


def test_text_output_and_bad_model_is_one_line(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path / "m.safetensors")
    folder = _images(tmp_path / "imgs", 2)
    assert main(["queue", str(folder), "--model", str(tmp_path / "m.safetensors")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "image", "status"] and len(lines) == 3
    from seepview.core.classes import ClassTable

    three = ClassTable.from_names(["background", "c1", "c2"])
    wrong = save_tiny_checkpoint(tmp_path / "w.safetensors", classes=three)
    assert wrong.num_classes == 3
    assert main(["queue", str(folder), "--model", str(tmp_path / "w.safetensors"), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 classes" in err


def test_a_folder_of_only_unreadable_images_is_one_line_exit_2(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path / "m.safetensors")
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.tif").write_bytes(b"not a tiff at all")
    (folder / "b.tif").write_bytes(b"")
    assert main(["queue", str(folder), "--model", str(tmp_path / "m.safetensors")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "no image can be queued (and 1 more)" in err, err


def test_a_broken_image_is_reported_once(tmp_path, capsys, caplog):
    """The command says it; the core returns it (and logs below warning, which would print it again)."""
    import logging

    save_tiny_checkpoint(tmp_path / "m.safetensors")
    folder = _images(tmp_path / "imgs", n=2)
    (folder / "bad.tif").write_bytes(b"not a tiff at all")
    assert main(["queue", str(folder), "--model", str(tmp_path / "m.safetensors"), "--json"]) == 0
    assert capsys.readouterr().err.count("bad.tif") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "bad.tif" in r.getMessage()]
