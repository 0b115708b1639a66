"""``export_project``: masks, vectors and reports of a project's images, image by image.

Per image: one strip pass (``masks.stream_mask``) makes the scratch rasters and pixel counts; the
polygoniser reads them (``vectors``) when vectors or a report are asked for; the COG/PNG is copied
out last. Scratch files live in a temporary folder that is removed whatever happens. Everything
the user can get wrong is checked before the first image is read, and raises one ``ExportError``.
The GUI runs this in a worker (``cancel``/``progress`` callables, like every long core job).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seepview.core.atomic import unwritable
from seepview.core.errors import ExportError, SeepviewError
from seepview.core.export import report as rep
from seepview.core.export.georef import Georef, read_georef
from seepview.core.export.masks import class_tags, deliver_mask, stream_mask, strip_rows
from seepview.core.export.vectors import VectorWriter, iter_regions, mean_confidence, measure
from seepview.core.imageio import TIFF_SUFFIXES, TiffImage

log = logging.getLogger(__name__)

SOURCES = ("labels", "predictions")


@dataclass
class ExportOptions:
    """What to export. Any subset of ``vector``, ``masks`` (a folder) and ``report`` (.csv/.html)."""

    vector: Path | None = None
    masks: Path | None = None
    report: Path | None = None
    images: list[str] | None = None  # ids; None = every image (that has the source)
    reviewed_only: bool = False
    source: str = "labels"
    weights_key: str | None = None  # prediction cache folder; None = the project's active model
    model_version: str | None = None  # its readable name (``sar-seep-v3``)
    severity_bands: tuple[float, ...] | None = None  # None = the project's settings


@dataclass
class ExportResult:
    files: list[Path] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image id, why)
    regions: int = 0
    seconds: float = 0.0
    summaries: list = field(default_factory=list)

    def message(self) -> str:
        text = f"exported {len(self.images)} image(s), {self.regions} region(s) in {self.seconds:.1f} s"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} ({self.skipped[0][0]}: {self.skipped[0][1]}" + (
                ", …)" if len(self.skipped) > 1 else ")"
            )
        return text

    def folder(self) -> Path | None:
        """The one folder that holds everything written ("Show in folder" opens it)."""
        import os

        parents = [str(p.parent) for p in self.files]
        return Path(os.path.commonpath(parents)) if parents else None


def resolve_model(project) -> tuple[str | None, str | None]:
    """(readable version, weights key: the prediction cache folder) of the project's active model, without
    torch when the registry knows it; otherwise the model is loaded once to name its cache."""
    from seepview.core.versions import ModelRegistry, weights_key

    active = ModelRegistry(project).active
    if active is not None and active.weights_key:
        return active.key, active.weights_key
    from seepview.core.session import load_active_model

    ckpt, _ = load_active_model(project)
    if ckpt is None:
        return None, None
    return f"{ckpt.meta.name or 'model'}-v{int(ckpt.meta.version)}", weights_key(ckpt)


def _check_outputs(options: ExportOptions) -> None:
    if options.source not in SOURCES:
        raise ExportError(None, f"--source must be labels or predictions, not {options.source!r}")
    if not (options.vector or options.masks or options.report):
        raise ExportError(None, "nothing to export: give a vector file, a masks folder and/or a report file")
    from seepview.core.export.vectors import VECTOR_SUFFIXES

    for path, suffixes, what in (
        (options.vector, VECTOR_SUFFIXES, "vector output must be .gpkg or .geojson"),
        (options.report, rep.REPORT_SUFFIXES, "report must be .csv or .html"),
    ):
        if path is None:
            continue
        if path.suffix.lower() not in suffixes:
            raise ExportError(path, f"{what}, not {path.suffix or 'no suffix'}")
        if not path.parent.is_dir():
            raise ExportError(path, "its folder does not exist")
        if path.is_dir():
            raise ExportError(path, "is a folder; give a file name")
        _check_writable(path.parent, path)
    if options.masks is not None and options.masks.exists() and not options.masks.is_dir():
        raise ExportError(options.masks, "masks output must be a folder, and this is a file")


def _check_writable(folder: Path, named: Path) -> None:
    """Fail before the first image, not after minutes of work, when ``folder`` takes no new file."""
    why = unwritable(folder / "probe")
    if why is not None:
        raise ExportError(named, f"cannot write in its folder: {why}")


def _check_masks_folder(project, folder: Path, jobs) -> None:
    """Mask files are named after the image ids: refuse a folder where they would replace the project's own
    images (a mask written over the radar scene it came from) or its labels."""
    target = folder.resolve()
    for entry, mask_path, _conf in jobs:
        image = project.image_path(entry).resolve()
        if image.parent == target or Path(mask_path).resolve().parent == target:
            raise ExportError(folder, "is where the project's images or labels are; masks written there "
                                      "would replace them. Choose another folder")


def plan(project, options: ExportOptions):
    """The (entry, mask path, confidence path) triples to export, and the images skipped with why."""
    if options.images:
        entries = [project.entry(i) for i in dict.fromkeys(options.images)]
    else:
        entries = project.entries
    if options.reviewed_only:
        entries = [e for e in entries if e.status == "reviewed"]
    if not entries:
        raise ExportError(project.root, "no images to export" + (" (none is reviewed)" if options.reviewed_only else ""))
    key = options.weights_key
    if key is None:
        version, key = resolve_model(project)
        options.model_version = options.model_version or version
    jobs, skipped = [], []
    for entry in entries:
        conf = None
        if key is not None:
            pred_labels, pred_conf = project.prediction_paths(entry, key)
            conf = pred_conf if pred_labels.is_file() and pred_conf.is_file() else None
        if options.source == "labels":
            mask = project.labels_path(entry)
            if not mask.is_file():
                skipped.append((entry.id, "no labels saved"))
                continue
        else:
            if conf is None:
                skipped.append((entry.id, "no cached prediction of the active model"))
                continue
            mask = pred_labels
        jobs.append((entry, mask, conf))
    if not jobs:
        what = "labels" if options.source == "labels" else "a cached prediction of the active model"
        raise ExportError(project.root, f"none of the {len(entries)} selected image(s) has {what}")
    return jobs, skipped


def export_project(
    project,
    options: ExportOptions,
    cancel: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Export as ``options`` says; returns what was written. Raises ExportError / SeepviewError."""
    cancel = cancel or (lambda: False)
    progress = progress or (lambda done, total: None)
    start = time.perf_counter()
    options.vector = Path(options.vector) if options.vector else None
    options.masks = Path(options.masks) if options.masks else None
    options.report = Path(options.report) if options.report else None
    _check_outputs(options)
    bands = rep.check_bands(options.severity_bands) if options.severity_bands else rep.severity_bands(project.settings)
    jobs, skipped = plan(project, options)
    if options.masks is not None:
        _check_masks_folder(project, options.masks, jobs)
    classes = project.classes
    shapes = [project.image_shape(e) for e, _m, _c in jobs]
    georefs = [read_georef(project.image_path(e), s) for (e, _m, _c), s in zip(jobs, shapes)]
    want_regions = options.vector is not None or options.report is not None
    html = options.report is not None and options.report.suffix.lower() != ".csv"
    total = sum(-(-h // strip_rows(w)) + 2 for h, w in shapes) + 1
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        progress(min(done, total), total)

    tags = class_tags(classes, options.source, options.model_version)
    writer = None
    if options.vector is not None:
        meta = {"seepview_source": options.source, "seepview_model": options.model_version or "",
                "seepview_classes": tags["SEEPVIEW_CLASSES"]}  # fmt: skip
        try:
            writer = VectorWriter(options.vector, georefs, meta)
        except SeepviewError as exc:
            raise ExportError(exc.path, exc.reason) from None
    if options.masks is not None:
        try:
            options.masks.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(options.masks, f"cannot create folder: {exc.strerror or exc}") from None
        _check_writable(options.masks, options.masks)
    result = ExportResult(skipped=skipped)
    progress(0, total)
    try:
        with tempfile.TemporaryDirectory(prefix="seepview-export-") as work:
            for (entry, mask_path, conf_path), georef in zip(jobs, georefs):
                summary = _export_one(
                    project, entry, mask_path, conf_path, georef, Path(work), tags, options, writer,
                    want_regions, html, step, cancel,
                )  # fmt: skip
                result.summaries.append(summary)
                result.images.append(entry.id)
                result.files += [Path(f) for f in summary.files]
        if writer is not None:
            result.files.append(writer.finish(georefs[0]))
            result.regions = writer.count
        else:
            result.regions = int(sum(int(s.regions.sum()) for s in result.summaries))
        if options.report is not None:
            title = f"{project.name}: inspection report"
            try:
                if html:
                    rep.write_html(options.report, result.summaries, classes, options.model_version, bands, title,
                                   options.source)  # fmt: skip
                else:
                    rep.write_csv(options.report, result.summaries, classes, options.model_version, bands)
            except OSError as exc:
                raise ExportError(options.report, f"cannot write the report: {exc.strerror or exc}") from None
            result.files.append(options.report)
        step()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    result.seconds = time.perf_counter() - start
    return result


def _export_one(project, entry, mask_path, conf_path, georef: Georef, work: Path, tags, options, writer,
                want_regions, html, step, cancel) -> rep.ImageSummary:  # fmt: skip
    classes = project.classes
    n = len(classes)
    with project.open_image(entry) as image:
        scratch = stream_mask(mask_path, image, classes, georef, work, tags, step, cancel)
        regions = np.zeros(n, np.int64)
        area = np.zeros(n) if georef.located else None
        if want_regions:
            confidence = TiffImage(conf_path) if conf_path is not None else None
            try:
                for geoms, ids in iter_regions(scratch, cancel=cancel):
                    m = measure(geoms, georef)
                    regions += np.bincount(ids, minlength=n)[:n]
                    if area is not None:
                        area += np.bincount(ids, weights=m["area"], minlength=n)[:n]
                    if writer is not None:
                        k = len(ids)
                        fields = {
                            "image_id": np.full(k, entry.id, dtype=object),
                            "class_id": ids,
                            "class_name": np.array([classes[i].name for i in ids], dtype=object),
                            "pixels": m["pixels"],
                            "area": m["area"],
                            "perimeter": m["perimeter"],
                            "major_axis": m["major_axis"],
                            "unit": np.full(k, m["unit"], dtype=object),
                            "mean_confidence": mean_confidence(geoms, confidence),
                            "model_version": np.full(k, options.model_version, dtype=object),
                            "review_status": np.full(k, entry.status, dtype=object),
                        }
                        writer.write(georef, m["geometry"], fields)
            finally:
                if confidence is not None:
                    confidence.close()
        step()
        summary = rep.ImageSummary(
            entry.id, entry.status, tuple(image.shape), georef.crs_text() if georef.located else "not georeferenced",
            scratch.valid, scratch.counts, regions, area, georef.pixel_area_m2(),
        )  # fmt: skip
        if html:
            summary.thumbnail_png = rep.thumbnail(image, scratch.class_path, classes, _window(project, entry, image))
    if options.masks is not None:
        as_png = project.image_path(entry).suffix.lower() not in TIFF_SUFFIXES
        dest = options.masks / f"{entry.id}{'.png' if as_png else '.tif'}"
        summary.files.append(str(deliver_mask(scratch, dest, classes, as_png)))
    for path in (scratch.class_path, scratch.foreground_path):
        path.unlink(missing_ok=True)
    step()
    return summary


def _window(project, entry, image):
    """The display window the user chose for this image, else the automatic one."""
    from seepview.core.display import DisplayWindow, robust_window

    saved = project.settings.get("display_windows", {}).get(entry.id)
    if saved:
        try:
            return DisplayWindow.from_dict(saved)
        except (TypeError, ValueError, KeyError):
            pass
    return robust_window(image) if image.channels == 1 else DisplayWindow(0, 255, nodata=None)
