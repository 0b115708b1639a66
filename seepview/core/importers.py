"""Create a project from labelled data in the layouts people already have.

Supported: a folder of images with a parallel folder of masks (the cgg-seep layout), a
Roboflow / YOLOv8-seg export, COCO polygon JSON and labelme JSON. ``import_any`` tells them apart.
Images are always left in place (absolute paths; large data is never copied); annotations become
validated uint8 masks in ``labels/``. Imported annotations are complete, so their images are marked
``reviewed`` (the retrain loop trains on every pixel of reviewed images; see issue 5). Images
without any annotation file in a labelled layout are real negatives there (YOLO, COCO) and get an
all-background mask; in the folder-pair and labelme layouts they stay unlabelled and unreviewed.

On any error the half-built destination is removed, and the error names the offending file.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from skimage import draw

from seepview.core.classes import ClassTable
from seepview.core.errors import ClassTableError, MaskError, ProjectError, SeepviewError
from seepview.core.imageio import IMAGE_SUFFIXES, MASK_SUFFIXES, open_image, read_mask
from seepview.core.project import Project, utc_now

log = logging.getLogger(__name__)

ClassSpec = ClassTable | str | os.PathLike | None
LAYOUTS = ("folder-pairs", "yolo", "coco", "labelme", "images")
_YOLO_SPLITS = ("train", "valid", "val", "test")
_BACKGROUND_NAMES = {"background", "_background_", "__background__"}
#: Without ``--classes`` a mask may add generic classes up to this many in all; an id beyond it (e.g. 200
#: in an 8-class data set) is far more likely a stray value than 190 real classes.
MAX_AUTO_CLASSES = 32
Progress = Callable[[int, int], None] | None  # progress(done, total), e.g. the CLI's bar
_progress: contextvars.ContextVar[Progress] = contextvars.ContextVar("import_progress", default=None)


def _counted(items: list) -> Iterator:
    """Iterate ``items``, reporting (done, total) to the progress callback ``import_any`` was given."""
    report = _progress.get()
    for i, item in enumerate(items):
        if report is not None:
            report(i, len(items))
        yield item
    if report is not None:
        report(len(items), len(items))


# --- helpers ---------------------------------------------------------------------------------------
def _table(classes: ClassSpec) -> ClassTable | None:
    if classes is None or isinstance(classes, ClassTable):
        return classes
    return ClassTable.from_spec(classes)


def _table_for_names(names: list[str]) -> ClassTable:
    """Background + ``names``; a preset when the names match one (its colours are chosen with care)."""
    for preset in ("corrosion", "sar-seep"):
        table = ClassTable.preset(preset)
        if [n.lower() for n in table.names[1:]] == [n.lower() for n in names]:
            return table
    return ClassTable.from_names(["background", *names])


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@contextlib.contextmanager
def _new_project(
    dest: str | os.PathLike, classes: ClassTable, source: Path, layout: str
) -> Iterator[Project]:
    """Create the project; remove it again if the import fails, so a retry starts clean."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ProjectError(dest, "import destination must be a new or empty folder")
    project = Project.create(dest, classes)
    try:
        yield project
        project.settings["import"] = {"format": layout, "source": str(source.absolute()), "time": utc_now()}
        project.save()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _store(project: Project, image: Path, mask: np.ndarray | None, mask_source: Path) -> None:
    """Register ``image``; write ``mask`` (if any) as its reviewed labels."""
    entry = project.add_image(image, save=False)
    if mask is None:
        return
    shape = project.image_shape(entry)
    if mask.shape != shape:
        raise MaskError(
            mask_source, f"mask is {mask.shape[0]}x{mask.shape[1]} but {image.name} is {shape[0]}x{shape[1]}"
        )
    project.classes.validate_mask(mask, mask_source)
    project.set_status(entry, "reviewed", save=False)
    project.save_labels(entry, mask)


def _grow_for(project: Project, mask: np.ndarray, source: Path) -> None:
    """Add generic classes when a mask uses ids beyond the table (only when no table was given)."""
    top = int(mask[mask != 255].max(initial=0))
    table = project.classes
    if top >= MAX_AUTO_CLASSES and top >= len(table):
        raise MaskError(
            source,
            f"uses class id {top} but the class table has {len(table)} classes (0-{len(table) - 1}); "
            "pass --classes with a class table JSON that names every class, or fix the mask",
        )
    if top >= len(table):
        log.warning("%s: class id %d is beyond the class table; adding generic classes up to it", source, top)
    while len(table) <= top:
        table = table.add(f"class {len(table)}")
    if table is not project.classes:
        project.classes = table


def _fill_polygon(mask: np.ndarray, rows, cols, value: int) -> bool:
    rr, cc = draw.polygon(np.asarray(rows, float), np.asarray(cols, float), shape=mask.shape)
    mask[rr, cc] = value
    return rr.size > 0


# --- folder of images + folder of masks -------------------------------------------------------------
def masks_by_stem(masks_dir: Path) -> dict[str, Path]:
    """Mask files of a folder keyed by stem: the one pairing rule for "images + parallel masks" layouts."""
    masks: dict[str, Path] = {}
    for path in sorted(Path(masks_dir).iterdir()):
        if path.is_file() and path.suffix.lower() in MASK_SUFFIXES:
            if path.stem in masks:
                raise MaskError(path, f"two masks for one image: {masks[path.stem].name} and {path.name}")
            masks[path.stem] = path
    return masks


def import_folder_pairs(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    dest: str | os.PathLike,
    classes: ClassSpec = None,
) -> Project:
    """Images in one folder, masks with the same stem (TIFF/PNG) in another (the cgg-seep layout).

    Without ``classes``: the ``sar-seep`` table for single-channel images, else generic names;
    either grows with generic names if a mask uses a higher id.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise ProjectError(folder, "folder not found")
    images = _image_files(images_dir)
    if not images:
        raise ProjectError(images_dir, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    masks = masks_by_stem(masks_dir)
    table = _table(classes)
    grow = table is None
    if table is None:
        with open_image(images[0]) as first:
            table = (
                ClassTable.preset("sar-seep")
                if first.channels == 1
                else ClassTable.from_names(["background"])
            )
    with _new_project(dest, table, images_dir, "folder-pairs") as project:
        for image in _counted(images):
            mask_path = masks.pop(image.stem, None)
            mask = None
            if mask_path is not None:
                mask = read_mask(mask_path)
                if grow:
                    _grow_for(project, mask, mask_path)
            _store(project, image, mask, mask_path or image)
        for stem, path in masks.items():
            log.warning("%s: mask has no image named %s.* in %s; skipped", path, stem, images_dir)
    return project


# --- Roboflow / YOLOv8-seg ----------------------------------------------------------------------------
def _yaml_names(path: Path) -> list[str] | None:
    """``names`` of a YOLO data.yaml: a flow list, a block list or an id map. No YAML dependency."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProjectError(path, f"cannot read: {exc}") from None
    unquote = lambda s: s.strip().strip("'\"")  # noqa: E731
    for i, line in enumerate(lines):
        match = re.match(r"^names\s*:\s*(.*)$", line)
        if not match:
            continue
        rest = match.group(1).strip()
        if rest.startswith("["):
            return [unquote(n) for n in rest.strip("[]").split(",") if n.strip()]
        if rest.startswith("{"):  # {0: a, 1: b}
            pairs = [item.split(":", 1) for item in rest.strip("{}").split(",") if item.strip()]
            try:
                mapping = {int(k): unquote(v) for k, v in pairs}
            except ValueError:
                raise ProjectError(path, f"cannot parse 'names: {rest}'") from None
            if sorted(mapping) != list(range(len(mapping))):
                raise ProjectError(path, "class ids under 'names' must be 0..N-1")
            return [mapping[k] for k in range(len(mapping))]
        if rest and not rest.startswith("#"):
            raise ProjectError(path, f"cannot parse 'names: {rest}'")
        names: dict[int, str] = {}
        for item in lines[i + 1 :]:
            if not item.strip() or item.lstrip().startswith("#"):
                continue
            if not item[:1].isspace() and not item.startswith("-"):
                break
            entry = item.strip()
            if entry.startswith("- "):
                names[len(names)] = unquote(entry[2:])
            elif re.match(r"^\d+\s*:", entry):
                key, value = entry.split(":", 1)
                names[int(key)] = unquote(value)
            else:
                break
        if sorted(names) != list(range(len(names))):
            raise ProjectError(path, "class ids under 'names' must be 0..N-1")
        return [names[k] for k in range(len(names))]
    return None


def _yolo_mask(label_path: Path, shape: tuple[int, int], n_classes: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    h, w = shape
    try:
        text = label_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MaskError(label_path, f"cannot read YOLO label file: {exc}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            cls = int(tokens[0])
            coords = np.array([float(t) for t in tokens[1:]])
        except ValueError:
            raise MaskError(label_path, f"line {lineno}: expected 'class x y x y ...' numbers") from None
        if not 0 <= cls < n_classes:
            raise MaskError(
                label_path, f"line {lineno}: class {cls} is not in data.yaml (0..{n_classes - 1})"
            )
        if not np.isfinite(coords).all():
            raise MaskError(label_path, f"line {lineno}: coordinates must be finite numbers (found NaN or inf)")
        if coords.size and (coords.min() < -0.01 or coords.max() > 1.01):
            raise MaskError(
                label_path,
                f"line {lineno}: coordinate {coords.min() if coords.min() < -0.01 else coords.max():g} is "
                "outside 0..1 (YOLO coordinates are fractions of the image size)",
            )
        coords = np.clip(coords, 0.0, 1.0)  # rounding noise at the edges
        if coords.size == 4:  # a detection box: cx cy w h
            cx, cy, bw, bh = coords
            xs = np.array([cx - bw / 2, cx + bw / 2, cx + bw / 2, cx - bw / 2])
            ys = np.array([cy - bh / 2, cy - bh / 2, cy + bh / 2, cy + bh / 2])
        elif coords.size >= 6 and coords.size % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
        else:
            raise MaskError(
                label_path, f"line {lineno}: a polygon needs an even number (>= 6) of coordinates"
            )
        # Normalised edges -> pixel-index coordinates (pixel centres at integers).
        _fill_polygon(mask, ys * h - 0.5, xs * w - 0.5, cls + 1)
    return mask


def import_yolo(source: str | os.PathLike, dest: str | os.PathLike, classes: ClassSpec = None) -> Project:
    """A YOLOv8-seg export: ``data.yaml`` names, ``<split>/images`` + ``<split>/labels/*.txt``.

    YOLO class k becomes seepview class k + 1 (0 is background). An image without a label file
    has no objects: it gets an all-background mask.
    """
    source = Path(source)
    names = _yaml_names(source / "data.yaml") if (source / "data.yaml").is_file() else None
    table = _table(classes)
    if table is None:
        if names is None:
            raise ProjectError(source, "no data.yaml with class names; pass the classes explicitly")
        table = _table_for_names(names)
    n_classes = len(table) - 1 if names is None else len(names)
    if n_classes > len(table) - 1:
        raise ClassTableError(
            source / "data.yaml", f"{n_classes} YOLO classes but the class table has {len(table) - 1}"
        )
    splits = [source / s for s in _YOLO_SPLITS if (source / s / "images").is_dir()]
    splits += sorted(
        p for p in source.iterdir() if p.is_dir() and p not in splits and (p / "images").is_dir()
    )
    if (source / "images").is_dir():
        splits.insert(0, source)
    if not splits:
        raise ProjectError(source, "no '<split>/images' folders: not a YOLO export")
    with _new_project(dest, table, source, "yolo") as project:
        for split, image in _counted([(s, i) for s in splits for i in _image_files(s / "images")]):
            entry = project.add_image(image, save=False)
            label_path = split / "labels" / f"{image.stem}.txt"
            mask = np.zeros(project.image_shape(entry), np.uint8)
            if label_path.is_file():
                mask = _yolo_mask(label_path, mask.shape, n_classes)
            _store(project, image, mask, label_path)
    return project


# --- COCO -----------------------------------------------------------------------------------------------
def _rle_counts(counts, path: Path) -> list[int]:
    """Run lengths of a COCO RLE: a list already, or the compressed string of pycocotools."""
    if isinstance(counts, list):
        try:
            return [int(c) for c in counts]
        except (TypeError, ValueError, OverflowError):
            raise MaskError(path, "RLE 'counts' must be whole numbers") from None
    if not isinstance(counts, str):
        raise MaskError(path, "RLE 'counts' must be a list or a string")
    out: list[int] = []
    pos = 0
    data = counts.encode("ascii")
    while pos < len(data):
        value = shift = 0
        while True:
            if pos >= len(data):
                raise MaskError(path, "truncated compressed RLE string")
            c = data[pos] - 48
            pos += 1
            value |= (c & 0x1F) << (5 * shift)
            shift += 1
            if not c & 0x20:
                if c & 0x10:
                    value |= -1 << (5 * shift)
                break
        if len(out) > 2:
            value += out[-2]
        out.append(value)
    return out


def _rle_decode(rle: dict, shape: tuple[int, int], path: Path) -> np.ndarray:
    h, w = (int(v) for v in rle.get("size", shape))
    if (h, w) != tuple(shape):
        raise MaskError(path, f"RLE size {h}x{w} differs from the image {shape[0]}x{shape[1]}")
    counts = _rle_counts(rle.get("counts"), path)
    if min(counts, default=0) < 0:
        raise MaskError(path, f"RLE has a negative run length ({min(counts)})")
    if max(counts, default=0) > h * w:
        raise MaskError(path, f"RLE run length {max(counts)} exceeds the {h}x{w} image ({h * w} pixels)")
    if sum(counts) != h * w:
        raise MaskError(path, f"RLE run lengths sum to {sum(counts)}, expected {h * w} ({h}x{w})")
    values = np.zeros(len(counts), np.uint8)
    values[1::2] = 1  # runs alternate background, foreground, starting with background
    return np.repeat(values, counts).reshape((w, h)).T.astype(bool)  # column-major


def _coco_classes(data: dict, table: ClassTable | None, path: Path) -> tuple[ClassTable, dict[int, int]]:
    cats = sorted(data.get("categories") or [], key=lambda c: c["id"])
    used = {a.get("category_id") for a in data["annotations"]}
    supers = {c.get("supercategory") for c in cats}
    # Roboflow puts the dataset name as an unused parent category: drop unused parents.
    cats = [c for c in cats if c["id"] in used or c["name"] not in supers]
    names = [str(c["name"]) for c in cats if str(c["name"]).lower() not in _BACKGROUND_NAMES]
    if table is None:
        table = _table_for_names(names)
    by_name = {n.lower(): i for i, n in enumerate(table.names)}
    mapping = {}
    for c in cats:
        name = str(c["name"]).lower()
        target = 0 if name in _BACKGROUND_NAMES else by_name.get(name)
        if target is None:
            raise ClassTableError(
                path, f"category {c['name']!r} is not in the class table ({', '.join(table.names)})"
            )
        mapping[int(c["id"])] = target
    return table, mapping


def import_coco(
    json_path: str | os.PathLike,
    dest: str | os.PathLike,
    classes: ClassSpec = None,
    image_root: str | os.PathLike | None = None,
) -> Project:
    """COCO instance JSON with polygon (or RLE) segmentations; categories map to classes by name.

    Image files are looked up under ``image_root`` (default: the JSON's folder, then its
    ``images/``). Later annotations paint over earlier ones.
    """
    path = Path(json_path)
    data = _load_json(path)
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations")
    ):
        raise ProjectError(path, "not COCO JSON (needs 'images' and 'annotations' lists)")
    try:
        table, mapping = _coco_classes(data, _table(classes), path)
        by_image: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        images = [(int(im["id"]), str(im["file_name"])) for im in data["images"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProjectError(path, f"malformed COCO JSON: {_what(exc)}") from None
    roots = [Path(image_root)] if image_root else [path.parent, path.parent / "images"]
    with _new_project(dest, table, path, "coco") as project:
        for image_id, file_name in _counted(images):
            image = next((r / file_name for r in roots if (r / file_name).is_file()), None)
            if image is None:
                raise ProjectError(path, f"image {file_name!r} not found under {', '.join(map(str, roots))}")
            entry = project.add_image(image, save=False)
            mask = np.zeros(project.image_shape(entry), np.uint8)
            for ann in by_image.get(image_id, []):
                _paint_coco(mask, ann, mapping, path)
            _store(project, image, mask, path)
    return project


def _paint_coco(mask: np.ndarray, ann: dict, mapping: dict[int, int], path: Path) -> None:
    try:
        value = mapping[int(ann["category_id"])]
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            mask[_rle_decode(seg, mask.shape, path)] = value
            return
        if not seg and ann.get("bbox"):  # a box-only annotation
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            seg = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
        for poly in seg or []:
            xy = np.asarray(poly, float)
            if xy.size < 6 or xy.size % 2:
                raise MaskError(
                    path, f"annotation {ann.get('id')}: a polygon needs an even number >= 6 of values"
                )
            _check_pixel_coords(xy[0::2], xy[1::2], mask.shape, path, f"annotation {ann.get('id')}")
            # COCO coordinates are continuous with pixel centres at +0.5.
            _fill_polygon(mask, xy[1::2] - 0.5, xy[0::2] - 0.5, value)
    except (KeyError, TypeError, ValueError) as exc:
        raise MaskError(path, f"malformed annotation {ann.get('id')}: {_what(exc)}") from None


def _what(exc: Exception) -> str:
    """A parsing exception as words: ``KeyError('path')`` is "no 'path' field"."""
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} field" if exc.args else "a field is missing"
    return str(exc) or type(exc).__name__


def _check_pixel_coords(xs: np.ndarray, ys: np.ndarray, shape: tuple[int, int], path: Path, what: str) -> None:
    """Polygon coordinates in pixels must be finite and inside the image (a pixel of slack at the edges)."""
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise MaskError(path, f"{what}: coordinates must be finite numbers (found NaN or inf)")
    h, w = shape
    if xs.size and (xs.min() < -1 or xs.max() > w + 1 or ys.min() < -1 or ys.max() > h + 1):
        raise MaskError(
            path,
            f"{what}: a point lies outside the {w}x{h} image (x {xs.min():g}..{xs.max():g}, y {ys.min():g}..{ys.max():g})",
        )


# --- labelme -----------------------------------------------------------------------------------------
def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ProjectError(path, "cannot read JSON: nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProjectError(path, f"cannot read JSON: {exc}") from None


def _labelme_mask(doc: dict, shape: tuple[int, int], by_name: dict[str, int], path: Path) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for i, shape_doc in enumerate(doc.get("shapes") or []):
        try:
            label = str(shape_doc["label"])
            kind = shape_doc.get("shape_type") or "polygon"
            pts = np.asarray(shape_doc["points"], float).reshape(-1, 2)
        except KeyError as exc:
            raise MaskError(path, f"shape {i}: malformed (no {exc.args[0]!r})") from None
        except (TypeError, ValueError) as exc:
            raise MaskError(path, f"shape {i}: malformed ({exc})") from None
        _check_pixel_coords(pts[:, 0], pts[:, 1], shape, path, f"shape {i}")
        value = 0 if label.lower() in _BACKGROUND_NAMES else by_name.get(label.lower())
        if value is None:
            raise ClassTableError(path, f"shape {i}: label {label!r} is not in the class table")
        # labelme draws with pixel centres at integer coordinates.
        if kind == "polygon" and len(pts) >= 3:
            _fill_polygon(mask, pts[:, 1], pts[:, 0], value)
        elif kind == "rectangle" and len(pts) == 2:
            (x0, y0), (x1, y1) = pts
            _fill_polygon(mask, [y0, y0, y1, y1], [x0, x1, x1, x0], value)
        elif kind == "circle" and len(pts) == 2:
            (cx, cy), (px, py) = pts
            rr, cc = draw.disk((cy, cx), float(np.hypot(px - cx, py - cy)), shape=mask.shape)
            mask[rr, cc] = value
        else:
            log.warning("%s: shape %d (%s with %d points) has no area; skipped", path, i, kind, len(pts))
    return mask


def import_labelme(source: str | os.PathLike, dest: str | os.PathLike, classes: ClassSpec = None) -> Project:
    """labelme JSON files (one file, or a folder of them): polygon, rectangle and circle shapes.

    Without ``classes`` the labels found (sorted by name) become classes 1..N.
    """
    source = Path(source)
    files = [source] if source.is_file() else sorted(source.glob("*.json"))
    docs = []
    for path in files:
        doc = _load_json(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list) or "imagePath" not in doc:
            if source.is_file():
                raise ProjectError(path, "not a labelme file (needs 'shapes' and 'imagePath')")
            continue
        docs.append((path, doc))
    if not docs:
        raise ProjectError(source, "no labelme JSON files found")
    table = _table(classes)
    if table is None:
        labels = {str(s.get("label")) for _, d in docs for s in d["shapes"] if isinstance(s, dict)}
        table = _table_for_names(sorted(n for n in labels if n.lower() not in _BACKGROUND_NAMES))
    by_name = {n.lower(): i for i, n in enumerate(table.names)}
    with _new_project(dest, table, source, "labelme") as project:
        for path, doc in _counted(docs):
            image = (path.parent / str(doc["imagePath"]).replace("\\", "/")).resolve()
            if not image.is_file():
                raise ProjectError(path, f"its image {doc['imagePath']!r} is not at {image}")
            entry = project.add_image(image, save=False)
            _store(project, image, _labelme_mask(doc, project.image_shape(entry), by_name, path), path)
    return project


# --- plain images ------------------------------------------------------------------------------------
def default_classes(images: list[Path]) -> ClassTable:
    """The preset for unannotated images: photos (JPEG/PNG/...) are corrosion inspections, TIFFs are SAR."""
    photo = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    if images and all(Path(p).suffix.lower() in photo for p in images):
        return ClassTable.preset("corrosion")
    return ClassTable.preset("sar-seep")


def import_images(folder: str | os.PathLike, dest: str | os.PathLike, classes: ClassSpec = None) -> Project:
    """A folder of images with no annotations yet: everything starts unreviewed."""
    from seepview.core.errors import SeepviewError

    folder = Path(folder)
    images = _image_files(folder) if folder.is_dir() else []
    if not images:
        raise ProjectError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    readable, problems = [], []
    for image in images:  # a header read each: a broken file is named now, not when it is first opened
        try:
            with open_image(image):
                pass
            readable.append(image)
        except SeepviewError as exc:
            problems.append(exc)
    if not readable:
        raise ProjectError(problems[0].path, f"{problems[0].reason}; none of the {len(images)} images in "
                                             f"{folder} can be read, so no project was made")
    for exc in problems:
        log.warning("%s (not imported)", exc)
    images = readable
    with _new_project(dest, _table(classes) or default_classes(images), folder, "images") as project:
        for image in _counted(images):
            _store(project, image, None, image)
    return project


# --- detection -----------------------------------------------------------------------------------------
def detect_layout(source: str | os.PathLike) -> str:
    """Which of ``LAYOUTS`` ``source`` is; ProjectError when none fits."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".json":
        data = _load_json(source)
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            return "coco"
        if isinstance(data, dict) and "shapes" in data:
            return "labelme"
        raise ProjectError(source, "JSON is neither COCO (images/annotations) nor labelme (shapes)")
    if not source.is_dir():
        found = "is a file" if source.exists() else "not found"
        raise ProjectError(source, f"{found} (expected a folder or a COCO/labelme JSON file)")
    if (source / "data.yaml").is_file() or any(
        (source / s / "images").is_dir() and (source / s / "labels").is_dir() for s in ("", *_YOLO_SPLITS)
    ):
        return "yolo"
    if (source / "images").is_dir() and (source / "masks").is_dir():
        return "folder-pairs"
    kinds = set()
    for path in sorted(source.glob("*.json")):
        with contextlib.suppress(SeepviewError):
            kinds.add(detect_layout(path))
    if "coco" in kinds:
        return "coco"
    if "labelme" in kinds:
        return "labelme"
    if _image_files(source):
        return "images"
    raise ProjectError(
        source,
        "cannot tell the layout: expected images/ + masks/, a YOLO export (data.yaml), "
        "COCO or labelme JSON, or a folder of images",
    )


def _coco_file(source: Path) -> Path:
    if source.is_file():
        return source
    for path in sorted(source.glob("*.json")):
        with contextlib.suppress(SeepviewError):
            if detect_layout(path) == "coco":
                return path
    raise ProjectError(source, "no COCO JSON file in this folder")


def import_any(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    classes: ClassSpec = None,
    masks: str | os.PathLike | None = None,
    progress: Progress = None,
) -> Project:
    """Detect the layout of ``source`` and import it into a new project at ``dest``.

    ``progress(done, total)`` is called as images are imported (the CLI draws its bar with it).

    ``masks`` names the mask folder explicitly when it is not ``source/masks`` (then ``source`` is
    the image folder itself).
    """
    token = _progress.set(progress)
    try:
        return _import_any(Path(source), dest, classes, masks)
    finally:
        _progress.reset(token)


def _import_any(source: Path, dest, classes: ClassSpec, masks) -> Project:
    if masks is not None:
        return import_folder_pairs(source, masks, dest, classes)
    layout = detect_layout(source)
    importers: dict[str, Callable[[], Project]] = {
        "folder-pairs": lambda: import_folder_pairs(source / "images", source / "masks", dest, classes),
        "yolo": lambda: import_yolo(source, dest, classes),
        "coco": lambda: import_coco(_coco_file(source), dest, classes),
        "labelme": lambda: import_labelme(source, dest, classes),
        "images": lambda: import_images(source, dest, classes),
    }
    return importers[layout]()
