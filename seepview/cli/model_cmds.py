"""``seepview predict`` and ``seepview evaluate``: argument parsing and printing; the work is in
``seepview.core.model`` (Predictor, ConfusionMatrix).

``seepview train`` lives in ``seepview.cli.train_cmd`` (registered by the CLI dispatcher, not here).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seepview.cli.options import Bound, check_options
from seepview.core.errors import ImageReadError, MaskError, ModelError, UsageError, io_reason

log = logging.getLogger(__name__)

#: Images with more pixels than this are predicted into temporary memory maps (bounded RAM).
STREAM_PIXELS = 4096 * 4096


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict class masks for images with a model",
        description="Predict a class mask for each image. Masks get the image's stem, as .tif for TIFF "
        "inputs (GeoTIFF tags kept) and as palette .png for photos. Large scenes are streamed.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders of images")
    p.add_argument(
        "--model",
        default=None,
        help="model file (.safetensors), or sar-seep / corrosion for a shipped default "
        "(default: the shipped model matching the images' channels)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder for the masks")
    p.add_argument(
        "--confidence", action="store_true", help="also write <stem>_confidence (max probability x 255)"
    )
    p.add_argument("--json", action="store_true", help="no progress; print one JSON summary object on stdout")
    _add_runtime_options(p)
    p.set_defaults(func=run_predict)

    p = sub.add_parser(
        "evaluate",
        help="score a model against reference masks (per-class IoU, mIoU, binary IoU)",
        description="Predict every image that has a mask of the same stem and score the predictions over "
        "all pixels together (255 in a mask = unlabeled, ignored). Classes absent from both the masks and "
        "the predictions have no IoU (null) and are left out of the means.",
    )
    p.add_argument("--images", required=True, type=Path, help="folder of images")
    p.add_argument("--masks", required=True, type=Path, help="folder of masks (.tif/.png, same stems)")
    p.add_argument(
        "--model",
        default=None,
        help="model file, or a preset name for a shipped default (default: the shipped model for the data's "
        "class table: --classes, else sar-seep for 1-channel images and corrosion for photos)",
    )
    p.add_argument("--classes", default=None, help="class table: sar-seep, corrosion or a JSON file (names)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    _add_runtime_options(p)
    p.set_defaults(func=run_evaluate)

    # `seepview train` is registered from seepview.cli.train_cmd by the dispatcher (its owner's module).


def _add_runtime_options(p) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--tile", type=int, default=256, help="tile size in pixels (default 256)")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels (default 32)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per forward pass (default: 4 on CPU, 16 on a GPU)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model: ~15%% faster per tile after a 5-20 s compile "
        "(default: only for images of at least 400 tiles)",
    )


# --- shared helpers -------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal; no extra dependency)."""

    def __init__(self, label: str, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.enabled = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = label
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * done / max(total, 1))
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _resolve_model(spec: str | None, preset: str):
    """Load ``spec`` (a file, or a preset name for the shipped default), or the default for ``preset``."""
    from seepview.core.classes import PRESETS
    from seepview.core.model.checkpoint import default_model_path, load_checkpoint

    if spec is None or spec in PRESETS:
        path = default_model_path(spec or preset)
        if not path.is_file():
            raise ModelError(
                path, f"the shipped default model for {spec or preset!r} is missing; pass --model"
            )
        return load_checkpoint(path)
    return load_checkpoint(spec)


def _preset_for_image(path: Path) -> str:
    from seepview.core.imageio import open_image

    with open_image(path) as source:
        return "sar-seep" if source.channels == 1 else "corrosion"


def _make_predictor(checkpoint, args):
    from seepview.core.model.infer import Predictor

    try:
        return Predictor(
            checkpoint,
            device=args.device,
            tile=args.tile,
            overlap=args.overlap,
            batch_size=args.batch_size,
            compile=args.compile,
        )
    except ValueError as exc:
        raise ModelError(None, str(exc)) from None


def _output_folder(out: Path) -> Path:
    """``--out``: an existing folder or one that can be made; one clear line otherwise."""
    if out.exists() and not out.is_dir():
        raise MaskError(out, "--out must be a folder for the masks, and this is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MaskError(out, f"cannot create the output folder: {io_reason(exc)}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise MaskError(out, "the output folder is not writable")
    return out


def warn_seen_groups(checkpoint, images: list[Path]) -> dict[str, list[str]]:
    """Groups (scenes) of ``images`` the model or its ancestors trained or validated on (``meta.training``);
    warns on stderr, because scores on them are optimistic. Returns ``{"trained": [...], "validated": [...]}``."""
    from seepview.core.project import group_of
    from seepview.core.retrain.runner import seen_groups

    groups = {group_of(p.name) for p in images}
    seen = {how: sorted(groups & set(names)) for how, names in seen_groups(checkpoint.meta).items()}
    for how, names in seen.items():
        if names:
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            n = sum(group_of(p.name) in set(names) for p in images)
            print(
                f"seepview: warning: {n} of the {len(images)} images belong to groups (scenes) the model was "
                f"{how} on ({shown}): their scores are optimistic",
                file=sys.stderr,
            )
    return seen


def note_unadapted(checkpoint, images: list[Path]) -> dict:
    """A model adapted to some scenes applies each adaptation to its own scene only (``adapt.adaptation_for``,
    the scene read from the file name): say on stderr how many ``images`` get none. Returns
    ``{"adapted_scenes": [...], "unadapted_images": n}`` for the JSON output ({} for an unadapted model)."""
    from seepview.core.adapt import adaptation_for, adaptations_of
    from seepview.core.project import group_of

    ads = adaptations_of(checkpoint.meta.adaptation)
    scenes = [a.scene or "every scene" for a in ads]
    if not scenes:
        return {}
    n = sum(adaptation_for(ads, group_of(p.name)).kind == "none" for p in images)
    if n:
        shown = ", ".join(scenes[:6]) + (f" and {len(scenes) - 6} more" if len(scenes) > 6 else "")
        print(f"seepview: note: the model's scene adaptation ({shown}) is not applied to {n} of the {len(images)} "
              "images: their names place them in other scenes (the typer still runs)", file=sys.stderr)
    return {"adapted_scenes": scenes, "unadapted_images": n}


def _image_files(inputs: list[Path]) -> list[Path]:
    from seepview.core.imageio import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageReadError(item, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise ImageReadError(item, "no such file or folder")
    return files


# --- predict ------------------------------------------------------------------------------------------
def _mask_suffix(image: Path) -> str:
    from seepview.core.imageio import TIFF_SUFFIXES

    return ".tif" if image.suffix.lower() in TIFF_SUFFIXES else ".png"


def _outputs(tmp: Path, shape: tuple[int, int], confidence: bool, image: Path):
    """uint8 label (and confidence) arrays; memory maps in ``tmp`` for whole scenes (bounded RAM).

    A map's disk space is reserved first (``posix_fallocate``): writing a page of a sparse map on a full
    disk kills the process with SIGBUS, with no message, halfway through a scene."""

    def make(name: str):
        if shape[0] * shape[1] <= STREAM_PIXELS:
            return np.empty(shape, np.uint8)
        path, size = tmp / name, shape[0] * shape[1]
        try:
            f = open(path, "wb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise MaskError(image, f"cannot write the {name} of this image in {tmp.parent}: {io_reason(exc)}") from None
        try:
            with f:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(f.fileno(), 0, size)
                else:
                    f.truncate(size)
        except OSError as exc:
            maps = 2 if confidence else 1
            raise MaskError(image, f"predicting this {shape[1]} x {shape[0]} image needs {maps * size / 1e9:.1f} GB of "
                                   f"disk in {tmp.parent} for its {'labels and confidence' if confidence else 'labels'}"
                                   f": {io_reason(exc)}") from None
        return np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)

    return make("labels"), make("confidence") if confidence else None


RUNTIME_BOUNDS = {"--tile": Bound(32, 8192, whole=True), "--overlap": Bound(0, 4096, whole=True),
                  "--batch-size": Bound(1, 1024, whole=True)}


def _check_runtime(args) -> None:
    check_options(args, RUNTIME_BOUNDS)
    if args.overlap >= args.tile:
        raise UsageError(None, f"--overlap must be smaller than --tile (got {args.overlap} and {args.tile})")


def run_predict(args) -> int:
    from seepview.core.imageio import open_image, write_mask

    _check_runtime(args)
    files = _image_files(args.inputs)
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise MaskError(f, f"same name as {stems[f.stem]}: their masks would overwrite each other")
        stems[f.stem] = f
    checkpoint = _resolve_model(args.model, _preset_for_image(files[0]) if args.model is None else "")
    predictor = _make_predictor(checkpoint, args)
    classes = checkpoint.classes
    _output_folder(args.out)
    adapted = note_unadapted(checkpoint, files)
    inputs = {f.resolve() for f in files}
    quiet = getattr(args, "json", False)
    total_start, pixels, written = time.perf_counter(), 0, []
    for i, image_path in enumerate(files, 1):
        suffix = _mask_suffix(image_path)
        mask_path = args.out / f"{image_path.stem}{suffix}"
        conf_path = args.out / f"{image_path.stem}_confidence{suffix}"
        for target in (mask_path, conf_path):
            if target.resolve() in inputs:
                raise MaskError(target, "output would overwrite an input image; choose another --out")
        started = time.perf_counter()
        bar = Progress(f"[{i}/{len(files)}] {image_path.name}", quiet=quiet)
        with (
            open_image(image_path) as source,
            tempfile.TemporaryDirectory(dir=args.out, prefix=".predict-") as tmp,
        ):
            h, w = source.shape
            labels, conf = _outputs(Path(tmp), (h, w), args.confidence, image_path)
            try:
                predictor.predict_to(source, labels, conf, progress=bar, scratch=args.out)
            finally:
                bar.close()
            geo = source.geo if suffix == ".tif" else None
            write_mask(mask_path, labels, geo=geo, classes=classes if suffix == ".png" else None)
            if args.confidence:
                write_mask(conf_path, conf, geo=geo)
            del labels, conf  # release the memory maps before the temporary folder goes
        pixels += h * w
        written.append(str(mask_path))
        if not quiet:
            print(
                f"seepview: {image_path.name} -> {mask_path} ({time.perf_counter() - started:.1f} s)",
                file=sys.stderr,
            )
    seconds = time.perf_counter() - total_start
    summary = {"images": len(files), "pixels": pixels, "seconds": round(seconds, 2), "out": str(args.out),
               "masks": written, "model": checkpoint.meta.name, "tile": predictor.tile, "overlap": predictor.overlap,
               **adapted}
    if quiet:
        print(json.dumps(summary))
    else:
        print(
            f"predicted {len(files)} image(s), {pixels / 1e6:.1f} Mpx in {seconds:.1f} s "
            f"({pixels / 1e6 / max(seconds, 1e-9):.2f} Mpx/s) into {args.out}",
            file=sys.stderr,
        )
    return 0


# --- evaluate -----------------------------------------------------------------------------------------
def _pairs(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs by file stem; images without a mask are skipped with a warning."""
    from seepview.core.importers import masks_by_stem

    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise MaskError(folder, "folder not found")
    masks = masks_by_stem(masks_dir)
    pairs, unmatched = [], []
    for image in _image_files([images_dir]):
        mask = masks.get(image.stem)
        if mask is None:
            unmatched.append(image)
        else:
            pairs.append((image, mask))
    if not pairs:  # one line: not one per image and then the error
        raise MaskError(masks_dir, f"no masks share a file stem with the images in {images_dir}")
    for image in unmatched:
        log.warning("%s: no mask with this stem in %s; skipped", image, masks_dir)
    return pairs


def run_evaluate(args) -> int:
    _check_runtime(args)
    from seepview.core.classes import PRESETS, ClassTable
    from seepview.core.imageio import open_image, read_mask
    from seepview.core.model.metrics import ConfusionMatrix
    from seepview.core.nodata import nodata_mask, nodata_value

    pairs = _pairs(args.images, args.masks)
    table = ClassTable.from_spec(args.classes) if args.classes else None
    preset = args.classes if args.classes in PRESETS else _preset_for_image(pairs[0][0])
    if args.model is None and table is not None and args.classes not in PRESETS:
        raise ModelError(
            None, "--classes is a file, so there is no shipped default model for it; pass --model"
        )
    checkpoint = _resolve_model(args.model, preset)
    if table is None:
        table = checkpoint.classes
    elif len(table) != checkpoint.num_classes:
        raise ModelError(
            args.model, f"the model predicts {checkpoint.num_classes} classes but --classes has {len(table)}"
        )
    predictor = _make_predictor(checkpoint, args)
    seen = warn_seen_groups(checkpoint, [image for image, _ in pairs])
    adapted = note_unadapted(checkpoint, [image for image, _ in pairs])
    started = time.perf_counter()
    cm = ConfusionMatrix(len(table))
    bar = Progress("evaluate", quiet=args.json)
    bar(0, len(pairs))
    try:
        for i, (image_path, mask_path) in enumerate(pairs, 1):
            with open_image(image_path) as source:
                mask = read_mask(mask_path, table, shape=tuple(source.shape))
                # No-data pixels are scored nowhere (like unlabeled 255): they are never a seep.
                nodata = nodata_mask(source.read_all(), nodata_value(source, checkpoint.normalization))
                cm.update(predictor.predict(source).labels, mask, nodata=nodata)
            bar(i, len(pairs))
    finally:
        bar.close()
    m = cm.metrics(table.names)
    if args.json:
        keys = ("miou", "miou_foreground", "binary_iou", "pixel_accuracy", "per_class_iou", "confusion")
        print(json.dumps({**{k: m[k] for k in keys}, "n_images": len(pairs), "seen_groups": seen, **adapted,
                          "seconds": round(time.perf_counter() - started, 2)}))
    else:
        print(format_report(m, len(pairs)))
        print(f"scored in {time.perf_counter() - started:.1f} s")
    return 0


def _f(value) -> str:
    return "    -" if value is None else f"{value:5.3f}"


def format_report(m: dict, n_images: int) -> str:
    """The per-class table and summary that ``seepview evaluate`` prints."""
    width = max(12, *(len(n) for n in m["per_class"]))
    lines = [f"{'class':<{width}}    IoU     F1   prec    rec  true px  pred px"]
    for name, c in m["per_class"].items():
        lines.append(
            f"{name:<{width}}  {_f(c['iou'])}  {_f(c['f1'])}  {_f(c['precision'])}  {_f(c['recall'])}"
            f"  {c['support']:7d}  {c['predicted']:7d}"
        )
    lines += [
        "",
        f"mIoU (classes present):  {_f(m['miou'])}",
        f"mIoU foreground:         {_f(m['miou_foreground'])}",
        f"binary IoU (any class):  {_f(m['binary_iou'])}",
        f"pixel accuracy:          {_f(m['pixel_accuracy'])}  (near 1 for all-background on rare classes)",
        f"images: {n_images}, pixels scored: {m['n_pixels']:,} (255 in masks ignored)",
    ]
    return "\n".join(lines)
