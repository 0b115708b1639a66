"""`seepview predict` / `seepview evaluate` end to end on small synthetic data and a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from seepview.cli import main
from seepview.core import paths
from seepview.core.classes import ClassTable
from seepview.core.imageio import read_mask
from seepview.core.model.checkpoint import load_checkpoint
from seepview.core.model.infer import Predictor
from seepview.core.model.metrics import ConfusionMatrix
from seepview.core.model.normalize import PHOTO_NORMALIZATION, SAR_NORMALIZATION
from tests.tiny import save_varied_checkpoint, write_slick_tiles


def _model(path, in_channels, preset, norm):
    return save_varied_checkpoint(path, in_channels, preset, norm)


@pytest.fixture
def sar(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_slick_tiles(images, masks, unlabeled_row=True)
    (images / "000003.0.tif").write_bytes((images / "000002.0.tif").read_bytes())  # no mask: skipped
    model = _model(tmp_path / "sar.safetensors", 1, "sar-seep", SAR_NORMALIZATION)
    return images, masks, model


def test_predict_writes_masks_with_same_stem_and_format(sar, tmp_path, capsys):
    images, _, model = sar
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(images / "000001.0.tif"),
            str(images / "000002.0.tif"),
            "--model",
            str(model),
            "--out",
            str(out),
            "--confidence",
            "--tile",
            "32",
            "--overlap",
            "8",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "000001.0.tif",
        "000001.0_confidence.tif",
        "000002.0.tif",
        "000002.0_confidence.tif",
    ]
    labels = read_mask(out / "000001.0.tif")
    expected = Predictor(load_checkpoint(model), tile=32, overlap=8).predict(
        tifffile.imread(images / "000001.0.tif")
    )
    np.testing.assert_array_equal(labels, expected.labels)
    np.testing.assert_array_equal(read_mask(out / "000001.0_confidence.tif"), expected.confidence)
    assert capsys.readouterr().out == ""


def test_predict_photos_to_png_from_a_folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a_jpg.rf.1", "b_jpg.rf.2"):
        Image.fromarray(rng.integers(0, 255, size=(40, 30, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    Image.fromarray(rng.integers(0, 255, size=(40, 30, 3), dtype=np.uint8)).save(photos / "c.jpg")
    model = _model(tmp_path / "c.safetensors", 3, "corrosion", PHOTO_NORMALIZATION)
    out = tmp_path / "out"
    assert main(["predict", str(photos), "--model", str(model), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_jpg.rf.1.png", "b_jpg.rf.2.png", "c.png"]
    mask = read_mask(out / "c.png")
    assert mask.shape == (40, 30) and mask.max() <= 1


def test_evaluate_json_is_exactly_one_object_and_matches_hand_scoring(sar, capsys):
    images, masks, model = sar
    rc = main(
        [
            "evaluate",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--model",
            str(model),
            "--json",
            "--tile",
            "32",
            "--overlap",
            "8",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the whole of stdout is one JSON document
    assert isinstance(result, dict)
    assert set(result) == {
        "miou",
        "miou_foreground",
        "binary_iou",
        "pixel_accuracy",
        "per_class_iou",
        "confusion",
        "n_images",
        "seen_groups",
        "seconds",
    }
    assert result["seen_groups"] == {"trained": [], "validated": []}  # the test model records no groups
    assert result["n_images"] == 3
    assert list(result["per_class_iou"]) == ClassTable.preset("sar-seep").names
    predictor = Predictor(load_checkpoint(model), tile=32, overlap=8)
    cm = ConfusionMatrix(8)
    for name in ("000001.0", "000001.1", "000002.0"):
        cm.update(
            predictor.predict(tifffile.imread(images / f"{name}.tif")).labels,
            tifffile.imread(masks / f"{name}.tif"),
        )
    expected = cm.metrics(ClassTable.preset("sar-seep").names)
    assert result["confusion"] == expected["confusion"]
    assert sum(map(sum, result["confusion"])) == 3 * 47 * 56  # the unlabeled row is ignored
    assert result["miou"] == pytest.approx(expected["miou"])
    assert result["binary_iou"] == pytest.approx(expected["binary_iou"])


def test_evaluate_table_and_default_model(sar, tmp_path, monkeypatch, capsys):
    images, masks, model = sar
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "sar-seep.safetensors").write_bytes(model.read_bytes())
    monkeypatch.setattr(paths, "models_dir", lambda: shipped)
    assert main(["evaluate", "--images", str(images), "--masks", str(masks)]) == 0
    out = capsys.readouterr().out
    assert "seep 5" in out and "mIoU" in out and "binary IoU" in out and "images: 3" in out


def test_errors_are_one_line_and_exit_2(sar, tmp_path, capsys):
    images, masks, model = sar
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(model.read_bytes()[:100])
    assert main(["evaluate", "--images", str(images), "--masks", str(masks), "--model", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seepview: error:") and "broken.safetensors" in err and "\n" not in err
    photo_model = _model(tmp_path / "c.safetensors", 3, "corrosion", PHOTO_NORMALIZATION)
    assert (
        main(["evaluate", "--images", str(images), "--masks", str(masks), "--model", str(photo_model)]) == 2
    )
    # Grey images are fed to an RGB model as three equal channels; the 2-class table then rejects id 5.
    assert "unknown class id(s) 5" in capsys.readouterr().err
    bad = tmp_path / "badmasks"
    bad.mkdir()
    tifffile.imwrite(bad / "000001.0.tif", np.full((48, 56), 9, np.uint8))
    assert main(["evaluate", "--images", str(images), "--masks", str(bad), "--model", str(model)]) == 2
    assert "unknown class id" in capsys.readouterr().err
    assert main(["predict", str(images / "000001.0.tif"), "--model", str(model), "--out", str(images)]) == 2
    assert "overwrite an input image" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope.tif"), "--model", str(model), "--out", str(tmp_path)]) == 2
    assert "nope.tif: no such file" in capsys.readouterr().err


def test_evaluate_on_real_cgg_seep_tiles(cgg_seep, tmp_path, capsys):
    """Real file formats (uint16 I;16 images, uint8 masks); a subset linked, never copied into the repo."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    names = sorted(p.name for p in (cgg_seep / "images").glob("*.tif"))[:2]
    for name in names:
        (images / name).symlink_to(cgg_seep / "images" / name)
        (masks / name).symlink_to(cgg_seep / "masks" / name)
    model = _model(tmp_path / "sar.safetensors", 1, "sar-seep", SAR_NORMALIZATION)
    assert (
        main(["evaluate", "--images", str(images), "--masks", str(masks), "--model", str(model), "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == 2
    import tifffile

    nodata = sum(int((tifffile.imread(images / n) == 0).sum()) for n in names)  # scored nowhere
    assert sum(map(sum, result["confusion"])) == 2 * 256 * 256 - nodata


def test_predict_of_an_image_too_large_for_its_scratch_disk_is_one_line(sar, tmp_path, capsys, monkeypatch):
    import shutil

    import seepview.core.model.infer as infer
    from seepview.core.model.typer import fit_typer
    from tests.core.model.test_typer import training_set
    from tests.tiny import save_tiny_checkpoint

    images, _, _ = sar
    x, y, a, _ = training_set(0, 20)
    model = tmp_path / "typed.safetensors"
    save_tiny_checkpoint(model, typer=fit_typer(x, y, a, 8, rounds=10).to_dict())
    monkeypatch.setattr(infer, "REFINE_MAX_PIXELS", 0)  # every image streams its stage 2
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    out = tmp_path / "out"
    rc = main(["predict", str(images / "000001.0.tif"), "--model", str(model), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert "000001.0.tif" in err[0] and f"scratch disk in {out}" in err[0] and "free some space there" in err[0]
    assert list(out.iterdir()) == []


def test_predict_reserves_the_disk_of_a_whole_scenes_output_maps(sar, tmp_path, capsys, monkeypatch):
    """Above STREAM_PIXELS the outputs are memory maps; their space is reserved before the network writes
    them (a sparse map's page written on a full disk is a SIGBUS), so a full disk is one line and exit 2."""
    import errno
    import os

    import seepview.cli.model_cmds as cmds

    images, masks, model = sar
    monkeypatch.setattr(cmds, "STREAM_PIXELS", 0)  # every image gets memory-mapped outputs
    reserved = []
    real = os.posix_fallocate

    def reserve(fd, offset, size):
        reserved.append(size)
        return real(fd, offset, size)

    monkeypatch.setattr(os, "posix_fallocate", reserve)
    out = tmp_path / "ok"
    assert main(["predict", str(images / "000001.0.tif"), "--model", str(model), "--out", str(out),
                 "--confidence"]) == 0
    h, w = tifffile.imread(images / "000001.0.tif").shape
    assert reserved == [h * w, h * w]
    direct = tmp_path / "direct"
    monkeypatch.setattr(cmds, "STREAM_PIXELS", 10**12)
    assert main(["predict", str(images / "000001.0.tif"), "--model", str(model), "--out", str(direct)]) == 0
    assert np.array_equal(read_mask(out / "000001.0.tif"), read_mask(direct / "000001.0.tif"))
    capsys.readouterr()

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cmds, "STREAM_PIXELS", 0)
    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "full"
    rc = main(["predict", str(images / "000001.0.tif"), "--model", str(model), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert "000001.0.tif" in err[0] and "no space left on device" in err[0] and f"disk in {out}" in err[0]
    assert list(out.iterdir()) == []
