"""`seepview train` end to end: demo data as folder pairs, a project folder, a YOLO export, errors, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio

from seepview.cli import main
from seepview.core.demo import make_demo_project, truth_path
from seepview.core.model.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "2", "--base-width", "4", "--depth", "2", "--patch", "32", "--batch-size", "4",
        "--patches-per-epoch", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_project(tmp_path_factory.mktemp("demo") / "demo", n_images=6, size=64)


def test_train_on_demo_folder_pairs(demo, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    scenes = sorted({e.group for e in demo.entries})
    rc = main(["train", "--images", str(demo.root / "images"), "--masks", str(demo.root / "truth"),
               "--classes", "sar-seep", "--out", str(out), "--val-groups", scenes[0], "--json", *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)  # exactly one JSON object on stdout
    assert result["out"] == str(out) and len(result["history"]) == 2
    assert "val mIoU" in captured.err and f"groups: {scenes[0]}" in captured.err
    ckpt = load_checkpoint(out)
    assert ckpt.in_channels == 1 and ckpt.num_classes == 8 and ckpt.model.base_width == 4
    assert ckpt.meta.training["val_groups"] == [scenes[0]]
    assert ckpt.meta.normalization["kind"] == "percentile"
    assert ckpt.meta.metrics["miou"] == result["metrics"]["miou"]
    # Fine-tuning replays the base data from here, so the location must be recorded.
    assert ckpt.meta.training["data"] == {"images": str((demo.root / "images").resolve()),
                                          "masks": str((demo.root / "truth").resolve())}


def test_fine_tune_a_project_folder(demo, tmp_path, capsys):
    # A project with user labels: copy the demo truth into labels/ for four images.
    for entry in demo.entries[:4]:
        from seepview.core.imageio import read_mask

        demo.save_labels(entry, read_mask(truth_path(demo, entry)))
    base = tmp_path / "base.safetensors"
    assert main(["train", "--images", str(demo.root), "--out", str(base), *FAST]) == 0
    tuned = tmp_path / "tuned.safetensors"
    assert main(["train", "--images", str(demo.root), "--init", str(base), "--out", str(tuned), *FAST]) == 0
    parent, child = load_checkpoint(base), load_checkpoint(tuned)
    assert child.meta.parent == parent.meta.fingerprint
    assert child.meta.training["train_samples"] + child.meta.training["val_samples"] == 4


def test_train_on_a_yolo_export(tmp_path, capsys):
    src = tmp_path / "yolo"
    (src / "train" / "images").mkdir(parents=True)
    (src / "train" / "labels").mkdir()
    (src / "data.yaml").write_text("names: ['corrosion']\nnc: 1\n")
    rng = np.random.default_rng(0)
    for i in range(4):
        name = f"photo{i}_jpg.rf.{i:032x}"
        skio.imsave(src / "train" / "images" / f"{name}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8),
                    check_contrast=False)
        (src / "train" / "labels" / f"{name}.txt").write_text("0 0.1 0.1 0.6 0.1 0.6 0.7 0.1 0.7\n")
    out = tmp_path / "c.safetensors"
    assert main(["train", "--images", str(src), "--out", str(out), "--val-fraction", "0.25", *FAST]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.in_channels == 3 and ckpt.classes.names == ["background", "corrosion"]
    assert ckpt.meta.normalization["kind"] == "scale"
    assert len(ckpt.meta.training["val_groups"]) == 1 and ckpt.meta.training["val_groups"][0].startswith("photo")


def test_errors_are_one_line(demo, tmp_path, capsys):
    args = ["train", "--images", str(demo.root / "images"), "--masks", str(demo.root / "truth"), *FAST]
    assert main([*args, "--out", str(tmp_path / "m.pt")]) == 2
    assert main([*args, "--out", str(tmp_path / "m.safetensors"), "--val-groups", "nowhere"]) == 2
    assert main(["train", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("seepview: error: ") for line in err)
    assert "safetensors" in err[0] and "nowhere" in err[1] and "missing" in err[2]
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_train_under_torchrun(demo, tmp_path):
    out = tmp_path / "ddp.safetensors"
    scenes = sorted({e.group for e in demo.entries})
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "seepview", "train", "--images", str(demo.root / "images"), "--masks", str(demo.root / "truth"),
           "--classes", "sar-seep", "--out", str(out), "--val-groups", scenes[0], *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("seepview: saved") == 1  # rank 0 alone reports and saves
    assert load_checkpoint(out).meta.training["world_size"] == 2


def test_loss_choices_match_the_core():
    from seepview.cli.train_cmd import LOSS_CHOICES
    from seepview.core.model.losses import LOSS_NAMES

    assert LOSS_CHOICES == LOSS_NAMES
