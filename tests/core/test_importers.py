import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from seepview.core.classes import ClassTable
from seepview.core.errors import ClassTableError, MaskError, ProjectError
from seepview.core.imageio import write_mask
from seepview.core.importers import (
    _rle_counts,
    detect_layout,
    import_any,
    import_coco,
    import_folder_pairs,
    import_images,
    import_labelme,
    import_yolo,
)
from seepview.core.project import Project


def _photo(path, shape=(40, 60)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)
    return path


def _sar(path, shape=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full(shape, 500, np.uint16))
    return path


# --- folder pairs -------------------------------------------------------------------------------------
def _pairs(root, n=4):
    masks = {}
    for i in range(n):
        name = f"{100 + i // 2:06d}.{i:06d}"
        _sar(root / "images" / f"{name}.tif")
        if i == n - 1:
            continue  # an image without a mask
        mask = np.zeros((32, 32), np.uint8)
        mask[i : i + 5, 2:9] = i + 1
        write_mask(root / "masks" / f"{name}.tif", mask)
        masks[name] = mask
    return masks


def test_folder_pairs(tmp_path):
    masks = _pairs(tmp_path / "src")
    project = import_any(tmp_path / "src", tmp_path / "proj")
    assert detect_layout(tmp_path / "src") == "folder-pairs"
    assert project.classes == ClassTable.preset("sar-seep")
    assert len(project) == 4 and len(project.groups()) == 2
    for entry in project.entries:
        assert entry.path.is_absolute() and entry.path.is_relative_to(tmp_path / "src")
        if entry.id in masks:
            np.testing.assert_array_equal(project.load_labels(entry), masks[entry.id])
            assert entry.status == "reviewed"
        else:
            assert project.load_labels(entry) is None and entry.status == "unreviewed"
    assert Project.open(tmp_path / "proj").settings["import"]["format"] == "folder-pairs"


def test_folder_pairs_bad_mask_names_file_and_cleans_up(tmp_path):
    _pairs(tmp_path / "src")
    bad = np.zeros((16, 16), np.uint8)
    write_mask(tmp_path / "src" / "masks" / "000101.000002.tif", bad)
    with pytest.raises(MaskError, match=r"000101\.000002\.tif.*16x16") as info:
        import_any(tmp_path / "src", tmp_path / "proj", classes="sar-seep")
    assert "masks" in str(info.value)
    assert not (tmp_path / "proj").exists()  # no half-built project left behind


def test_folder_pairs_unknown_id_with_given_table(tmp_path):
    _pairs(tmp_path / "src")
    with pytest.raises(MaskError, match="unknown class id"):
        import_folder_pairs(tmp_path / "src/images", tmp_path / "src/masks", tmp_path / "p", "corrosion")


def test_folder_pairs_grow_classes_without_table(tmp_path):
    _photo(tmp_path / "img" / "a.png")
    write_mask(tmp_path / "m" / "a.png", np.full((40, 60), 3, np.uint8))
    project = import_any(tmp_path / "img", tmp_path / "p", masks=tmp_path / "m")
    assert project.classes.names == ["background", "class 1", "class 2", "class 3"]


def test_destination_must_be_empty(tmp_path):
    _pairs(tmp_path / "src")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ProjectError, match="new or empty"):
        import_any(tmp_path / "src", tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


# --- YOLO --------------------------------------------------------------------------------------------
def _yolo(root, names_yaml="names:\n    - corrosion\n    - paint\nnc: 2\n"):
    root.mkdir(parents=True)
    (root / "data.yaml").write_text(names_yaml)
    _photo(root / "train/images/000001_jpg.rf.aaa.jpg")
    _photo(root / "train/images/000001_jpg.rf.bbb.jpg")
    _photo(root / "valid/images/000002_jpg.rf.ccc.jpg")
    (root / "train/labels").mkdir(parents=True)
    (root / "valid/labels").mkdir(parents=True)
    # A square polygon over the left half, class 0; a box of class 1 at the bottom right.
    (root / "train/labels/000001_jpg.rf.aaa.txt").write_text("0 0 0 0.5 0 0.5 1 0 1\n1 0.75 0.75 0.2 0.2\n")
    (root / "train/labels/000001_jpg.rf.bbb.txt").write_text("\n")
    return root


def test_yolo(tmp_path):
    src = _yolo(tmp_path / "rf")
    assert detect_layout(src) == "yolo"
    project = import_any(src, tmp_path / "p")
    assert project.classes.names == ["background", "corrosion", "paint"]
    assert [e.group for e in project.entries] == ["000001", "000001", "000002"]
    labels = project.load_labels("000001_jpg.rf.aaa")
    assert (labels[:, :30] == 1).all() and (labels[:, 31:] != 1).all()
    assert (labels == 2).sum() == 8 * 12  # 0.2 * 40 rows x 0.2 * 60 columns
    assert not project.load_labels("000001_jpg.rf.bbb").any()
    assert not project.load_labels("000002_jpg.rf.ccc").any()  # no label file: a negative
    assert project.status_counts()["reviewed"] == 3


@pytest.mark.parametrize(
    "content, match",
    [
        ("5 0 0 1 0 1 1\n", "class 5 is not in data.yaml"),
        ("0 0 0 1 0 1 1\n0 0.1 x\n", "line 2"),
        ("0 0 0 1\n", "even"),
    ],
)
def test_yolo_bad_label_file(tmp_path, content, match):
    src = _yolo(tmp_path / "rf")
    (src / "valid/labels/000002_jpg.rf.ccc.txt").write_text(content)
    with pytest.raises(MaskError, match=match) as info:
        import_yolo(src, tmp_path / "p")
    assert "000002_jpg.rf.ccc.txt" in str(info.value)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "yaml",
    [
        "names: ['corrosion', 'paint']\n",
        "names:\n  0: corrosion\n  1: paint\nnc: 2\n",
        "nc: 2\nnames: {0: corrosion, 1: 'paint'}\n",
        'train: x\nnames:\n- corrosion\n- "paint"\nval: y\n',
    ],
)
def test_yolo_yaml_forms(tmp_path, yaml):
    project = import_yolo(_yolo(tmp_path / "rf", yaml), tmp_path / "p")
    assert project.classes.names == ["background", "corrosion", "paint"]


def test_yolo_single_class_uses_preset(tmp_path):
    src = _yolo(tmp_path / "rf", "names: ['Corrosion']\n")
    (src / "train/labels/000001_jpg.rf.aaa.txt").write_text("0 0 0 0.5 0 0.5 1 0 1\n")
    project = import_yolo(src, tmp_path / "p", classes=None)
    assert project.classes == ClassTable.preset("corrosion")


# --- COCO --------------------------------------------------------------------------------------------
def _coco_rle_string(counts):
    """pycocotools' compressed RLE encoding (test-side encoder, written from its spec)."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((x == 0 and not ch & 0x10) or (x == -1 and ch & 0x10))
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def test_rle_string_round_trip():
    counts = [5, 3, 100, 7, 2, 1, 40, 0, 9, 300]
    assert _rle_counts(_coco_rle_string(counts), None) == counts


def _coco(root, extra_ann=None):
    _photo(root / "a.jpg", (20, 30))
    _photo(root / "b.jpg", (20, 30))
    rle = np.zeros((20, 30), bool)
    rle[2:4, 5:7] = True
    flat = rle.T.ravel()  # column-major runs
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, flat.astype(int), -1]) != 0))
    counts = ([0] if flat[0] else []) + runs.tolist()
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 30, "height": 20}, {"id": 2, "file_name": "b.jpg"}],
        "categories": [
            {"id": 0, "name": "rust-dataset", "supercategory": "none"},
            {"id": 1, "name": "rust", "supercategory": "rust-dataset"},
            {"id": 2, "name": "dent", "supercategory": "rust-dataset"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": {"size": [20, 30], "counts": counts}},
            {"id": 3, "image_id": 1, "category_id": 2, "segmentation": [], "bbox": [20, 10, 5, 5]},
            {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 1,
             "segmentation": {"size": [20, 30], "counts": _coco_rle_string(counts)}},
        ] + (extra_ann or []),
    }  # fmt: skip
    path = root / "_annotations.coco.json"
    path.write_text(json.dumps(doc))
    return path, rle


def test_coco(tmp_path):
    path, rle = _coco(tmp_path / "coco")
    assert detect_layout(path) == "coco" and detect_layout(tmp_path / "coco") == "coco"
    project = import_any(tmp_path / "coco", tmp_path / "p")
    assert project.classes.names == ["background", "rust", "dent"]  # the unused parent is dropped
    a = project.load_labels("a")
    assert (a[0:10, 0:10][~rle[0:10, 0:10]] == 1).all()  # the later RLE paints over the polygon
    assert (a[rle] == 2).all() and (a[10:15, 20:25] == 2).all()
    assert (a == 1).sum() == 100 - rle[0:10, 0:10].sum()
    b = project.load_labels("b")
    np.testing.assert_array_equal(b == 1, rle)


def test_coco_errors(tmp_path):
    path, _ = _coco(
        tmp_path / "c1", [{"id": 9, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, 3]]}]
    )
    with pytest.raises(MaskError, match="annotation 9"):
        import_coco(path, tmp_path / "p1")
    path, _ = _coco(tmp_path / "c2")
    with pytest.raises(ClassTableError, match="'rust' is not in the class table"):
        import_coco(path, tmp_path / "p2", classes="corrosion")
    (tmp_path / "c2" / "b.jpg").unlink()
    with pytest.raises(ProjectError, match="'b.jpg' not found"):
        import_coco(path, tmp_path / "p3")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ProjectError, match="broken.json: cannot read JSON"):
        import_any(tmp_path / "broken.json", tmp_path / "p4")


# --- labelme -------------------------------------------------------------------------------------------
def _labelme(root):
    _photo(root / "img" / "x.png", (20, 30))
    doc = {
        "imagePath": "img/x.png",
        "imageHeight": 20,
        "imageWidth": 30,
        "shapes": [
            {"label": "rust", "shape_type": "polygon", "points": [[0, 0], [9, 0], [9, 9], [0, 9]]},
            {"label": "crack", "shape_type": "rectangle", "points": [[20, 10], [24, 14]]},
            {"label": "rust", "shape_type": "circle", "points": [[25, 3], [27, 3]]},
            {"label": "crack", "shape_type": "line", "points": [[0, 19], [29, 19]]},
        ],
    }
    (root / "x.json").write_text(json.dumps(doc))
    return root


def test_labelme(tmp_path):
    src = _labelme(tmp_path / "lm")
    assert detect_layout(src) == "labelme"
    project = import_any(src, tmp_path / "p")
    assert project.classes.names == ["background", "crack", "rust"]
    labels = project.load_labels("x")
    assert (labels[0:10, 0:10] == 2).all() and (labels[10:15, 20:25] == 1).all()
    assert labels[3, 25] == 2 and not labels[19].any()  # circle filled, a line has no area
    assert project.entry("x").path == (src / "img" / "x.png").resolve()


def test_labelme_unknown_label_with_table(tmp_path):
    src = _labelme(tmp_path / "lm")
    with pytest.raises(ClassTableError, match=r"x\.json.*'rust'"):
        import_labelme(src / "x.json", tmp_path / "p", classes="corrosion")


# --- images only / detection ----------------------------------------------------------------------------
def test_images_only_and_undetectable(tmp_path):
    _sar(tmp_path / "imgs" / "100.000001.tif")
    _sar(tmp_path / "imgs" / "100.000002.tif")
    assert detect_layout(tmp_path / "imgs") == "images"
    project = import_images(tmp_path / "imgs", tmp_path / "p")
    assert project.status_counts() == {"unreviewed": 2, "in_progress": 0, "reviewed": 0}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProjectError, match="cannot tell the layout"):
        import_any(tmp_path / "empty", tmp_path / "p2")


# --- real data ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_import_real_cgg_seep(cgg_seep, tmp_path):
    project = import_any(cgg_seep, tmp_path / "cgg")
    assert len(project) == 628
    assert len(project.groups()) == 13
    assert project.classes == ClassTable.preset("sar-seep")
    reopened = Project.open(tmp_path / "cgg")
    for entry in reopened.entries:
        assert entry.path == cgg_seep / "images" / f"{entry.id}.tif"  # left in place
        original = tifffile.imread(cgg_seep / "masks" / f"{entry.id}.tif")
        np.testing.assert_array_equal(reopened.load_labels(entry), original)
    assert not (tmp_path / "cgg" / "images").exists()


@pytest.mark.slow
def test_import_real_corrosion(corrosion_roboflow, tmp_path):
    project = import_any(corrosion_roboflow, tmp_path / "rf")
    assert len(project) == 58
    assert len(project.groups()) == 24
    assert project.classes.names == ["background", "corrosion"]
    for entry in project.entries:
        assert entry.path.is_relative_to(corrosion_roboflow)
        labels = project.load_labels(entry)
        label_file = entry.path.parent.parent / "labels" / f"{entry.id}.txt"
        if label_file.read_text().strip():
            assert (labels == 1).any()


def test_default_classes_one_rule_for_photos_and_sar():
    from pathlib import Path

    from seepview.core.importers import default_classes

    assert default_classes([Path("a.jpg"), Path("b.PNG")]).names == ["background", "corrosion"]
    assert default_classes([Path("scene.tif")]).names[1] == "seep 1"
    assert default_classes([Path("a.jpg"), Path("scene.tif")]).names[1] == "seep 1"


def test_an_image_folder_skips_unreadable_files_and_refuses_when_none_can_be_read(tmp_path, caplog):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.tif").write_bytes(b"not a tiff")
    (bad / "b.tif").write_bytes(b"")
    with pytest.raises(ProjectError, match="none of the 2 images"):
        import_images(bad, tmp_path / "p1")
    assert not (tmp_path / "p1").exists()
    tifffile.imwrite(bad / "good.tif", np.ones((16, 16), np.uint16))
    project = import_images(bad, tmp_path / "p2")
    assert [e.id for e in project.entries] == ["good"]
    assert "a.tif" in caplog.text and "not imported" in caplog.text
