"""Issue 14's hostile inputs: each crash seen becomes one clear sentence naming the file, or correct handling."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from seepview.core.classes import ClassTable
from seepview.core.errors import ImageReadError, MaskError, ModelError, ProjectError
from seepview.core.imageio import open_image, read_mask
from seepview.core.project import MAX_ID_BYTES, Project
from seepview.core.session import ReviewSession, project_for_path

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux file-system semantics")


def _tif(path: Path, array=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full((32, 40), 500, np.uint16) if array is None else array)
    return path


@pytest.fixture
def project(tmp_path):
    project = Project.create(tmp_path / "proj", "sar-seep")
    project.add_image(_tif(tmp_path / "data" / "a.tif"))
    return project


# --- crashes seen -------------------------------------------------------------------------------
def test_two_channel_tiff_displays_its_first_channel(tmp_path):
    data = np.stack([np.arange(32 * 40).reshape(32, 40), np.full((32, 40), 7)], axis=-1).astype(np.uint16)
    project = Project.create(tmp_path / "p", "sar-seep")
    tifffile.imwrite(tmp_path / "vvvh.tif", data, photometric="minisblack", planarconfig="contig")
    project.add_image(tmp_path / "vvvh.tif")
    opened = ReviewSession(project, load_model=False).open(project.entries[0].id)
    assert opened.display_u8.shape == (32, 40) and opened.display_u8.dtype == np.uint8
    assert opened.display_u8[0, 0] < opened.display_u8[-1, -1]  # the first channel's ramp, not the flat second
    assert opened.image.shape == (32, 40, 2)  # the status bar still reports both values


@linux_only
def test_non_utf8_folder_name_gets_a_project(tmp_path):
    folder = os.fsencode(tmp_path) + b"/scenes\xff"
    os.mkdir(folder)
    _tif(Path(os.fsdecode(folder)) / "t.tif")
    project = project_for_path(os.fsdecode(folder), tmp_path / "data")
    assert len(project) == 1
    single = project_for_path(os.fsdecode(folder + b"/t.tif"), tmp_path / "data")
    assert len(single) == 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"depth": 40}, "depth must be a whole number from 1 to 8, got 40"),
        ({"base_width": 2**20}, "base_width must be a whole number from 1 to 256"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 300}, "num_classes"),
        ({"depth": "4"}, "depth must be a whole number"),
        ({"dropout": 2.0}, "dropout"),
        ({"base_width": 256, "depth": 8}, "M weights"),
    ],
)
def test_model_architecture_is_bounded_before_anything_is_built(tmp_path, monkeypatch, change, match):
    import torch
    from safetensors.torch import save as st_save

    from seepview.core.model import unet
    from seepview.core.model.checkpoint import META_KEY, load_checkpoint
    from tests.tiny import make_tiny_checkpoint

    meta = make_tiny_checkpoint(name="").meta.to_dict()
    meta["arch"].update(change)
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(st_save({"w": torch.zeros(1)}, metadata={META_KEY: json.dumps(meta)}))
    built = []
    monkeypatch.setattr(unet.UNet, "__init__", lambda *a, **k: built.append(1) or pytest.fail("built"))
    with pytest.raises(ModelError, match=match) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(str(path)) and not built


def test_very_long_stem_gets_a_short_unique_id(tmp_path):
    project = Project.create(tmp_path / "p", "sar-seep")
    a = project.add_image(_tif(tmp_path / ("x" * 250 + "a.tif")))
    b = project.add_image(_tif(tmp_path / ("x" * 250 + "b.tif")))
    assert a.id != b.id and len(os.fsencode(a.id)) <= MAX_ID_BYTES
    session = ReviewSession(Project.open(project.root), load_model=False)
    doc = session.document(a.id)
    doc.apply(doc_atom(doc, 1))
    assert session.save_labels(a.id)
    assert (Project.open(project.root).load_labels(a.id) == 1).any()


def doc_atom(doc, value):
    from seepview.core.history import Atom

    return Atom.from_region(doc.labels, (0, 2, 0, 2), np.full((2, 2), value, np.uint8))


def test_unwritable_model_file_is_a_model_error(tmp_path, monkeypatch):
    from seepview.core.model import checkpoint
    from tests.tiny import make_tiny_checkpoint

    def full(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    tiny = make_tiny_checkpoint()
    with pytest.raises(ModelError, match="cannot write the model file: no space left on device"):
        checkpoint.save_checkpoint(tmp_path / "m.safetensors", tiny.model, tiny.meta)


def test_deeply_nested_coco_json_is_a_clear_error(tmp_path):
    from seepview.core.importers import import_any

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ProjectError, match="nested too deeply"):
        import_any(tmp_path / "deep.json", tmp_path / "dest")


def test_image_too_big_to_review_is_refused_with_the_memory_it_needs(project, monkeypatch):
    from seepview.core import session as session_module

    monkeypatch.setattr(session_module, "available_memory", lambda: 10_000)
    with pytest.raises(ImageReadError, match=r"40x32 pixels: reviewing it needs about .* GiB of memory"):
        ReviewSession(project, load_model=False).open(project.entries[0].id)


# --- crash safety ---------------------------------------------------------------------------------
def test_ctrl_s_waits_for_a_running_autosave_of_the_same_image(project, monkeypatch):
    session = ReviewSession(project, load_model=False)
    image_id = project.entries[0].id
    doc = session.open(image_id).document
    doc.apply(doc_atom(doc, 1))
    job = session.autosave_job(image_id)
    doc.apply(doc_atom(doc, 2))
    spans, real = [], project.save_labels

    def slow_save(entry, mask):
        start = time.monotonic()
        time.sleep(0.2)
        real(entry, mask)
        spans.append((start, time.monotonic()))

    monkeypatch.setattr(project, "save_labels", slow_save)
    worker = threading.Thread(target=lambda: session.autosave_done(*job()))
    worker.start()
    time.sleep(0.05)  # the autosave is writing
    session.save_labels(image_id)  # Ctrl+S
    worker.join()
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 >= a1  # never two writes of one image at once
    assert (Project.open(project.root).load_labels(image_id)[:2, :2] == 2).all()  # the newer save wins


def test_temp_files_of_a_killed_writer_are_swept_at_the_next_open(project):
    labels = project.root / "labels"
    dead = labels / ".a.tif.999999999.abcdefgh.tmp.tif"  # no such pid
    live = labels / f".a.tif.{os.getpid()}.abcdefgh.tmp.tif"  # a writer that is still running
    for path in (dead, live):
        path.write_bytes(b"half written")
    Project.open(project.root)
    assert not dead.exists() and live.exists()


@linux_only
def test_labels_folder_linked_outside_the_project_is_said(project, tmp_path, caplog):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (project.root / "labels").rmdir()
    (project.root / "labels").symlink_to(outside)
    with caplog.at_level(logging.WARNING):
        Project.open(project.root)
    assert "outside the project" in caplog.text and "labels" in caplog.text


# --- true reasons ---------------------------------------------------------------------------------
@linux_only
def test_links_and_fifos_say_what_they_are(tmp_path):
    loop = tmp_path / "loop.tif"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.tif"
    dangling.symlink_to(tmp_path / "gone.tif")
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    for path, words in ((loop, "symbolic link loop"), (dangling, "dangling symbolic link"), (fifo, "named pipe")):
        with pytest.raises(ImageReadError, match=words):
            open_image(path)
        with pytest.raises(MaskError, match=words):
            read_mask(path)


def test_a_folder_given_as_model_is_not_model_file_not_found(tmp_path):
    from seepview.core.model.checkpoint import load_checkpoint

    (tmp_path / "m.safetensors").mkdir()
    with pytest.raises(ModelError, match="not a model file: a folder") as err:
        load_checkpoint(tmp_path / "m.safetensors")
    assert "not found" not in str(err.value)


def test_header_claiming_more_pixels_than_the_file_holds_is_truncated(tmp_path):
    path = _tif(tmp_path / "t.tif", np.zeros((64, 64), np.uint16))
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["ImageLength"].valueoffset
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 2] = (6400).to_bytes(2, "little")  # the header now claims 6400 rows
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match="truncated"):
        open_image(path).read_all()


def test_corrupt_lzw_data_is_said_without_codec_internals(tmp_path):
    data = np.random.default_rng(0).integers(0, 60000, (64, 64)).astype(np.uint16)
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, data, compression="lzw")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 200] = b"\xff" * 200
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError) as err:
        open_image(path).read_all()
    assert "corrupt" in str(err.value) and "Imcd" not in str(err.value) and "IMCD" not in str(err.value)


def test_pickle_refusal_is_short(tmp_path):
    import torch

    from seepview.core.model.checkpoint import load_checkpoint

    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": ClassTable.preset("sar-seep")}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="refusing to load") as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert len(str(err.value)) - len(str(tmp_path)) < 200


@pytest.mark.parametrize(
    ("counts", "match"),
    [([100, -50, 3022], "negative run length"), ([10**9], "exceeds the 32x96 image"), ([5, 5], "sum to 10")],
)
def test_rle_problems_are_named(tmp_path, counts, match):
    from seepview.core.importers import _rle_decode

    with pytest.raises(MaskError, match=match):
        _rle_decode({"size": [32, 96], "counts": counts}, (32, 96), tmp_path / "c.json")


def test_mask_dtype_error_lists_the_mask_dtypes(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((8, 8), np.float32))
    with pytest.raises(MaskError, match="integer class ids"):
        read_mask(tmp_path / "m.tif")


def test_project_file_naming_a_missing_image_is_named(project, tmp_path):
    (tmp_path / "data" / "a.tif").unlink()
    with pytest.raises(ImageReadError, match="project.json"):
        Project.open(project.root).open_image(project.entries[0].id)


def test_malformed_image_list_says_which_field(project):
    data = json.loads((project.root / "project.json").read_text())
    del data["images"][0]["path"]
    (project.root / "project.json").write_text(json.dumps(data))
    with pytest.raises(ProjectError, match=r"image 1 has no 'path'") as err:
        Project.open(project.root)
    assert "KeyError" not in str(err.value)


# --- silently wrong inputs ----------------------------------------------------------------------------
def test_stray_class_id_is_refused_with_a_hint_without_classes(tmp_path):
    from seepview.core.importers import import_folder_pairs

    _tif(tmp_path / "src" / "images" / "a.tif")
    mask = np.zeros((32, 40), np.uint8)
    mask[3, 3] = 200
    _tif(tmp_path / "src" / "masks" / "a.tif", mask)
    with pytest.raises(MaskError, match="class id 200 .*pass --classes"):
        import_folder_pairs(tmp_path / "src" / "images", tmp_path / "src" / "masks", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize(("line", "match"), [("0 0.1 0.1 nan 0.2 0.3 0.3", "finite"), ("0 0.1 0.1 5 0.2 0.3 0.3", "outside 0..1")])
def test_yolo_coordinates_must_be_finite_and_in_range(tmp_path, line, match):
    from seepview.core.importers import _yolo_mask

    (tmp_path / "a.txt").write_text(line + "\n")
    with pytest.raises(MaskError, match=match):
        _yolo_mask(tmp_path / "a.txt", (32, 40), 1)


@pytest.mark.parametrize(("poly", "match"), [([1, 1, float("inf"), 2, 3, 3], "finite"), ([1, 1, 900, 2, 3, 3], "outside")])
def test_coco_coordinates_must_be_finite_and_inside(tmp_path, poly, match):
    from seepview.core.importers import _paint_coco

    with pytest.raises(MaskError, match=match):
        _paint_coco(np.zeros((32, 40), np.uint8), {"id": 1, "category_id": 1, "segmentation": [poly]}, {1: 1},
                    tmp_path / "c.json")


def test_model_channel_conversion_warns(caplog):
    from seepview.core.model.normalize import match_channels

    with caplog.at_level(logging.WARNING):
        out = match_channels(np.zeros((4, 4), np.uint8), 3, "sar-tile.tif")
    assert out.shape == (4, 4, 3) and "1-channel image is repeated" in caplog.text
    with pytest.raises(ModelError, match="expects 1-channel"):
        match_channels(np.zeros((4, 4, 3), np.uint8), 1, "photo.png")


def test_malformed_model_version_says_what_is_missing(project):
    from seepview.core.versions import ModelRegistry

    project.settings["model_versions"] = [{"key": "sar-v1", "name": "sar"}]
    with pytest.raises(ProjectError, match="version 'sar-v1' has no version, file, created") as err:
        ModelRegistry(project).versions()
    assert "__init__" not in str(err.value) and "project.json" in str(err.value)
