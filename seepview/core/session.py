"""The review session: everything "reviewing a project" means, without a window.

The Qt layer shows what this object holds and forwards user intent to it; the same object drives
tests and scripts. It owns:

- the project and the active model (``project.settings["active_model"]``, else the shipped default
  for the project's class table; none is fine: the app then reviews without predictions);
- one ``LabelDocument`` per visited image, kept in a small LRU so undo history survives switching
  images and back (an evicted document is saved first, so nothing is lost, only its history);
- autosave: every committed stroke goes to the image's journal through its background writer (on disk
  milliseconds after the release, off the GUI thread); the next press waits for that write, so
  ``kill -9`` loses at most the stroke in progress (or one released a few milliseconds before); ``save_labels`` writes the mask atomically, then
  clears the journal entries it covers; saves of one image are serialised (Ctrl+S, mark reviewed and
  eviction wait for a running autosave); ``open`` replays a journal left by a crash;
- predictions: ``prediction_job`` returns a plain function the GUI runs in a worker,
  ``store_prediction`` caches the result in the project. Predictions live beside the labels and
  never overwrite them.

Blank labels are 255 ("unlabeled"), not 0: an untouched pixel is "no decision yet". Retraining
ignores 255, so partial corrections train correctly, and "accept prediction" simply copies the
prediction into the labels. ``mark_reviewed`` turns the remaining unlabeled pixels into what the
reviewer was looking at (the prediction, or background when there is none): marking an image
reviewed means "what is shown is right", and it refuses when the prediction was not shown filled
(``seepview.core.review``). No-data pixels are never a seep: ``OpenedImage.nodata`` goes to the tools.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from seepview.core.classes import IGNORE, PRESETS, ClassTable
from seepview.core.display import DisplayWindow, displayable, robust_window, to_uint8
from seepview.core.errors import Cancelled, ImageReadError, ModelError, SeepviewError
from seepview.core.history import Atom, LabelDocument
from seepview.core.imageio import ImageSource, available_memory
from seepview.core.importers import default_classes
from seepview.core.journal import Journal
from seepview.core.nodata import nodata_mask, nodata_value
from seepview.core.project import ImageEntry, Project
from seepview.core.queue import ReviewQueue
from seepview.core.review import UnseenLabels, check_shown, review_fill
from seepview.core.versions import active_model_path, active_reference, weights_key

log = logging.getLogger(__name__)

BLANK = IGNORE  # value of a never-labelled pixel
MAX_DOCUMENTS = 8  # visited images whose undo history is kept
MAX_DOCUMENT_BYTES = 1 << 30  # ... unless their label maps exceed this together
#: Bytes per pixel a reviewed image holds beyond its own pixels: display rendering (up to RGB), labels,
#: prediction + confidence, the canvas's RGBA overlay and a whole-image undo step.
REVIEW_BYTES_PER_PIXEL = 3 + 1 + 2 + 4 + 2
JOURNAL_WAIT_S = 2.0  # the longest a press waits for the previous stroke's journal write (a stalled disk)
GEOGRAPHIC_EPSG = {4326, 4258, 4269, 4230, 4979}  # axes are lon/lat


class Event:
    """A minimal observer list: the Qt layer connects widgets, tests connect plain functions."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., Any]] = []

    def connect(self, callback: Callable[..., Any]) -> None:
        self._callbacks.append(callback)

    def disconnect(self, callback: Callable[..., Any]) -> None:
        self._callbacks.remove(callback)

    def emit(self, *args: Any) -> None:
        for callback in list(self._callbacks):
            callback(*args)


@dataclass
class PredictionResult:
    """A model's output for one image, tagged with the model that made it (stale results are dropped)."""

    image_id: str
    weights_key: str
    labels: np.ndarray  # uint8 class ids
    confidence: np.ndarray  # uint8, 0..255 = max softmax probability
    cached: bool = False  # already written to the project's prediction cache
    uncertainty: np.ndarray | None = None  # uint8, 255 = the two likeliest classes tie (None: old cache)
    neighbours: tuple[str, ...] = ()  # sides of the reviewed tiles whose labels typed slicks crossing an edge


@dataclass
class OpenedImage:
    """What the window needs to show one image. ``image`` is the raw pixel data (status bar values,
    fill tolerance); ``display_u8`` its contrast-windowed rendering."""

    entry: ImageEntry
    source: ImageSource
    image: np.ndarray
    display_u8: np.ndarray
    window: DisplayWindow
    document: LabelDocument
    prediction: PredictionResult | None
    recovered: int = 0  # journal entries replayed after a crash
    nodata: np.ndarray | None = None  # bool (H, W): no-data pixels, never a seep (None: the image has none)

    @property
    def shape(self) -> tuple[int, int]:
        return self.document.labels.shape[:2]

    def histogram(self, bins: int = 256, max_pixels: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of valid pixel values, in the window's units (dB when it is dB), from a
        strided sample: for the contrast panel, so cost does not grow with image size."""
        step = max(1, int(np.ceil(np.sqrt(self.image.shape[0] * self.image.shape[1] / max_pixels))))
        values = np.asarray(self.image[::step, ::step], dtype=np.float64).ravel()
        valid = np.isfinite(values)
        if self.window.nodata is not None:
            valid &= values != self.window.nodata
        if self.window.db:
            valid &= values > 0
        values = values[valid]
        if self.window.db:
            values = 10.0 * np.log10(values)
        if values.size == 0:
            return np.linspace(self.window.lo, self.window.hi, bins + 1), np.zeros(bins, np.int64)
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            hi = lo + 1.0
        counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
        return edges, counts


@dataclass
class PixelInfo:
    """What the status bar says about the pixel under the cursor."""

    x: int
    y: int
    value: Any  # scalar, or a tuple for multi-channel images
    label: int
    label_name: str
    predicted: int | None = None
    predicted_name: str | None = None
    confidence: float | None = None  # 0..1
    map_xy: tuple[float, float] | None = None
    geographic: bool = False  # map_xy is (lon, lat)
    epsg: int | None = None


@dataclass
class _Slot:
    """A cached document and the journal its commits go to."""

    document: LabelDocument
    journal: Journal


def preset_for(classes: ClassTable) -> str | None:
    """The class preset a table derives from (names first, then class count), for the default model."""
    for name in PRESETS:
        if ClassTable.preset(name).names == classes.names:
            return name
    for name in PRESETS:
        if len(ClassTable.preset(name)) == len(classes):
            return name
    return None


def _checked_classes(checkpoint, classes: ClassTable):
    if checkpoint.num_classes != len(classes):
        raise ModelError(
            None,
            f"model {checkpoint.meta.name or ''} predicts {checkpoint.num_classes} classes but the project "
            f"has {len(classes)}",
        )
    return checkpoint


def load_active_model(project) -> tuple:
    """(checkpoint or None, why there is none): the model a project uses, for the app and every command.

    The active model (``active_model_path``: ``project.settings["active_model"]``, a registered version or a
    file), else the shipped default for the project's class table; a model whose class count does not match
    the project's is unusable. An unusable active model falls back to the default with a logged warning (the
    CLI prints it, the app shows it in the status bar); the reason is returned only when no model is left.
    """
    from seepview.core.model.checkpoint import default_model_path, load_checkpoint

    problem = None
    path = active_model_path(project)
    if path is not None:
        try:
            return _checked_classes(load_checkpoint(path), project.classes), None
        except SeepviewError as exc:
            log.warning("active model unusable, falling back to the default: %s", exc)
            problem = str(exc)
    preset = preset_for(project.classes)
    if preset is None:
        return None, problem or "no default model for this class table"
    try:
        path = default_model_path(preset)
        if not path.is_file():
            return None, problem or f"no shipped model for '{preset}'"
        return _checked_classes(load_checkpoint(path), project.classes), None
    except SeepviewError as exc:
        log.warning("default model unusable: %s", exc)
        return None, str(exc)


class ReviewSession:
    """Reviewing one project: documents, autosave, status, model and predictions (see module doc)."""

    def __init__(self, project: Project, checkpoint=None, *, device: str | None = None, load_model: bool = True):
        self.project = project
        self.current: OpenedImage | None = None
        self.model_problem: str | None = None  # why there is no model, for the model panel
        self._docs: OrderedDict[str, _Slot] = OrderedDict()
        self._generations = itertools.count(1)  # label snapshots, in the order they were taken
        self._written: dict[str, int] = {}  # newest snapshot generation on disk, per image
        # bumped when a reviewed neighbour's labels change: a prediction started before is stale
        self._evidence: dict[str, int] = {}
        self._save_locks: dict[str, threading.RLock] = {}  # one per image: its saves never overlap
        self._locks_guard = threading.Lock()
        self._checkpoint = None
        self._weights_key: str | None = None
        self._predictor = None
        self._device = device
        # Observers (called on the thread that made the change: the GUI thread in the app).
        self.model_changed = Event()  # (checkpoint | None)
        self.classes_changed = Event()  # (ClassTable)
        self.status_changed = Event()  # (ImageEntry)
        self.prediction_stored = Event()  # (PredictionResult): whoever ran the job, views refresh
        self.queue = ReviewQueue()  # review order: scores of cached predictions (seepview.core.queue)
        self.queue_changed = Event()  # (): scores or broken images changed
        self.autosave_failed = Event()  # (SeepviewError): the stroke is in memory but not on disk
        if checkpoint is None and load_model:
            checkpoint = self._resolve_model()
        if checkpoint is not None:
            self.set_model(checkpoint)

    # --- model ------------------------------------------------------------------------------
    def _resolve_model(self):
        checkpoint, self.model_problem = load_active_model(self.project)
        return checkpoint

    def _checked(self, checkpoint):
        return _checked_classes(checkpoint, self.project.classes)

    @property
    def checkpoint(self):
        return self._checkpoint

    @property
    def weights_key(self) -> str | None:
        return self._weights_key

    @property
    def device(self) -> str:
        if self._device is None:
            from seepview.core.model.infer import select_device

            self._device = str(select_device())
        return self._device

    def set_model(self, checkpoint) -> None:
        """Swap the active model in one step (call on the GUI thread). Jobs made with the old model
        still finish, but ``store_prediction`` drops their stale results."""
        if checkpoint is not None:
            self._checked(checkpoint)
            key = weights_key(checkpoint)
        else:
            key = None
        self._checkpoint, self._weights_key, self._predictor = checkpoint, key, None
        self.queue.mark_stale()  # old scores order the queue until the new model's arrive
        if checkpoint is not None:
            self.model_problem = None
        if self.current is not None:
            self.current.prediction = _without_nodata(self._cached_prediction(self.current.entry), self.current.nodata)
        self.model_changed.emit(checkpoint)

    def _get_predictor(self):
        if self._predictor is None:
            from seepview.core.model.infer import Predictor

            self._predictor = Predictor(self._checkpoint, device=self.device)
        return self._predictor

    # --- images ---------------------------------------------------------------------------------
    @property
    def classes(self) -> ClassTable:
        return self.project.classes

    def entries(self, status: str | None = None) -> list[ImageEntry]:
        return [e for e in self.project.entries if status is None or e.status == status]

    def open(self, image_id: str) -> OpenedImage:
        """Load an image for review: pixels, contrast, labels (with crash recovery) and cached prediction."""
        entry = self.project.entry(image_id)
        try:
            source = self.project.open_image(entry)
        except SeepviewError as exc:  # kept out of the queue, shown with an error badge
            self.queue.mark_broken(entry.id, exc.reason)
            self.queue_changed.emit()
            raise
        _check_fits_in_memory(source)
        image = source.read_all()
        window = self._saved_window(entry) or _auto_window(image, source)
        display = displayable(to_uint8(image, window))
        slot, recovered = self._slot(entry, tuple(source.shape[:2]))
        nodata = self._nodata_of(image, source)
        prediction = _without_nodata(self._cached_prediction(entry), nodata)
        opened = OpenedImage(entry, source, image, display, window, slot.document, prediction, recovered, nodata)
        if self.current is not None and self.current.source is not source:
            self.current.source.close()
        self.current = opened
        return opened

    def document(self, image_id: str) -> LabelDocument:
        """The live labels of an image (opened from disk if not cached)."""
        entry = self.project.entry(image_id)
        slot, _ = self._slot(entry, self.project.image_shape(entry))
        return slot.document

    def _slot(self, entry: ImageEntry, shape: tuple[int, int]) -> tuple[_Slot, int]:
        slot = self._docs.get(entry.id)
        if slot is not None:
            self._docs.move_to_end(entry.id)
            return slot, 0
        labels = self.project.load_labels(entry)
        if labels is None:
            labels = np.full(shape, BLANK, dtype=np.uint8)
        journal = self.project.journal(entry)
        recovered = 0
        if journal.has_entries:
            recovered = journal.replay(labels)
            if recovered:
                log.info("%s: recovered %d unsaved stroke(s) from the autosave journal", entry.id, recovered)
                upto = journal.last_seq
                self.project.save_labels(entry, labels)
                journal.clear(upto)
                self.status_changed.emit(entry)
        document = LabelDocument(labels)
        slot = _Slot(document, journal)
        document.subscribe_commit(lambda bbox, values, e=entry, s=slot: self._on_commit(e, s, bbox, values))
        # The previous change is on disk before the next one starts: a kill loses at most the change
        # in progress. Costs nothing at human speed (the write takes milliseconds).
        document.subscribe_begin(lambda s=slot: s.journal.flush(timeout=JOURNAL_WAIT_S))
        self._docs[entry.id] = slot
        self._evict()
        return slot, recovered

    def _on_commit(self, entry: ImageEntry, slot: _Slot, bbox, values) -> None:
        # The background writer compresses and fsyncs; the release costs the GUI thread a queue put.
        try:
            slot.journal.submit(bbox, values)
        except OSError as exc:  # the journal folder is unreadable
            self._autosave_failed(slot, exc)
        self._report_journal_errors(slot)
        if entry.status == "unreviewed":
            self.project.set_status(entry, "in_progress")
            self.status_changed.emit(entry)

    def _autosave_failed(self, slot: _Slot, exc: BaseException) -> None:
        """Disk full, folder gone: keep editing, but say so loudly (on the caller's, i.e. GUI, thread)."""
        reason = getattr(exc, "strerror", None) or exc
        error = SeepviewError(slot.journal.folder, f"autosave failed: {reason}")
        log.error("%s", error)
        self.autosave_failed.emit(error)

    def _report_journal_errors(self, slot: _Slot) -> None:
        for exc in slot.journal.take_errors():
            self._autosave_failed(slot, exc)

    def flush_journal(self, image_id: str | None = None) -> None:
        """Wait until the journal writer has every committed stroke (of one image, or of all) on disk,
        and report any write that failed."""
        slots = [self._docs[image_id]] if image_id in self._docs else [] if image_id else list(self._docs.values())
        for slot in slots:
            slot.journal.flush()
            self._report_journal_errors(slot)

    def _save_lock(self, image_id: str) -> threading.RLock:
        with self._locks_guard:
            return self._save_locks.setdefault(image_id, threading.RLock())

    def _evict(self) -> None:
        def total() -> int:
            return sum(s.document.labels.nbytes for s in self._docs.values())

        current_id = self.current.entry.id if self.current is not None else None
        while len(self._docs) > 1 and (len(self._docs) > MAX_DOCUMENTS or total() > MAX_DOCUMENT_BYTES):
            victim = next(k for k in self._docs if k != current_id)
            self.save_labels(victim)
            del self._docs[victim]

    # --- saving and review status -------------------------------------------------------------
    def is_dirty(self, image_id: str) -> bool:
        slot = self._docs.get(image_id)
        return bool(slot and slot.document.dirty)

    def save_labels(self, image_id: str) -> bool:
        """Write an image's labels atomically if they changed; then drop the journal entries covered."""
        slot = self._docs.get(image_id)
        if slot is None or not slot.document.dirty:
            return False
        self._force_save(self.project.entry(image_id))
        self.status_changed.emit(self.project.entry(image_id))
        return True

    def autosave_job(self, image_id: str) -> Callable[..., tuple] | None:
        """A background save of an image's labels (the debounced autosave), or None if clean.

        The labels are snapshotted now; the job writes them off the GUI thread and returns what
        ``autosave_done`` needs. Writes are ordered by snapshot generation, so a slow background
        write can never overwrite a newer save (Ctrl+S, mark reviewed) that finished first.
        """
        slot = self._docs.get(image_id)
        if slot is not None:
            self._report_journal_errors(slot)
        if slot is None or not slot.document.dirty or slot.document.in_stroke:
            return None
        entry = self.project.entry(image_id)
        labels = slot.document.labels.copy()
        upto, state, generation = slot.journal.last_seq, slot.document.history.state_id, next(self._generations)

        def job(cancel=None, progress=None) -> tuple:
            written = self._write_labels(entry, labels, generation)
            return image_id, upto, state, written

        return job

    def autosave_done(self, image_id: str, upto: int, state: int, written: bool) -> None:
        """GUI thread, after ``autosave_job``: drop the journal entries the write covered."""
        slot = self._docs.get(image_id)
        if slot is None or not written:
            return  # evicted (saved synchronously then) or superseded by a newer save
        slot.journal.clear(upto)
        if slot.document.history.state_id == state and not slot.document.in_stroke:
            slot.document.mark_saved()
        self.status_changed.emit(self.project.entry(image_id))

    def _write_labels(self, entry: ImageEntry, labels: np.ndarray, generation: int) -> bool:
        with self._save_lock(entry.id):
            if self._written.get(entry.id, 0) >= generation:
                return False
            self.project.save_labels(entry, labels)
            self._written[entry.id] = generation
        if entry.status == "reviewed":  # an edit of a reviewed tile is new evidence next door
            # an autosave worker may read the scene's grid; the GUI thread only a small scene's
            self._neighbours_stale(entry, read=threading.current_thread() is not threading.main_thread())
        return True

    def save_all(self) -> int:
        return sum(self.save_labels(image_id) for image_id in list(self._docs))

    def sync_project(self):
        """Take in what another program (``seepview finetune PROJECT``) wrote to project.json, merged
        rather than overwritten (``Project.sync``): observers hear of changed classes and statuses,
        and a model the other program promoted becomes this session's model. Returns the
        ``DiskChanges`` (None when nothing changed on disk)."""
        before = active_reference(self.project)
        changes = self.project.sync()
        if not changes:
            return changes
        if changes.classes:
            self.classes_changed.emit(self.project.classes)
        for image_id in changes.images:
            self.status_changed.emit(self.project.entry(image_id))
        if active_reference(self.project) != before:
            path = active_model_path(self.project)
            if path is not None:
                from seepview.core.model.checkpoint import load_checkpoint

                try:
                    checkpoint = self._checked(load_checkpoint(path))
                except SeepviewError as exc:
                    log.warning("the model another program made active is unusable: %s", exc)
                else:
                    if weights_key(checkpoint) != self._weights_key:
                        self.set_model(checkpoint)
        return changes

    def _nodata_of(self, image: np.ndarray, source: ImageSource) -> np.ndarray | None:
        spec = self._checkpoint.normalization if self._checkpoint is not None else None
        mask = nodata_mask(image, nodata_value(source, spec))
        return mask if mask is not None and mask.any() else None

    def _review_fill(self, image_id: str) -> tuple[np.ndarray | None, int]:
        entry = self.project.entry(image_id)
        current = self.current if self.current is not None and self.current.entry.id == image_id else None
        if current is not None:
            nodata = current.nodata
        else:
            with self.project.open_image(entry) as source:
                nodata = self._nodata_of(source.read_all(), source)
        prediction = self._cached_prediction(entry)
        labels = self.document(image_id).labels
        return review_fill(labels, prediction.labels if prediction is not None else None, nodata)

    def fill_unlabeled(self, image_id: str) -> int:
        """Give unlabeled pixels what marking reviewed would (the prediction, background on no-data)
        as one undoable step, so the window can show them filled first; returns how many took a class."""
        new, predicted = self._review_fill(image_id)
        if new is not None:
            document = self.document(image_id)
            # Not replace_all: on images <= 256² its atom aliases the live array.
            h, w = new.shape
            document.apply(Atom.from_region(document.labels, (0, h, 0, w), new))
        return predicted

    def mark_reviewed(self, image_id: str, shown: str = "filled") -> str | None:
        """Accept what is shown (unlabeled pixels take the prediction, else background), save, mark
        reviewed; return the id of the next unreviewed image (None when all are done).

        ``shown``: how the prediction is drawn at unlabeled pixels (``review.SHOWN``). Unless "filled",
        raises ``UnseenLabels`` (and changes nothing) when a predicted class would become a label:
        call ``fill_unlabeled``, show the labels, and mark reviewed again.
        """
        check_shown(shown)
        entry = self.project.entry(image_id)
        document = self.document(image_id)
        if shown != "filled":
            _, predicted = self._review_fill(image_id)
            if predicted:
                raise UnseenLabels(image_id, predicted)
        self.fill_unlabeled(image_id)
        if document.dirty or not self.project.has_labels(entry):
            self._force_save(entry)
        self.project.set_status(entry, "reviewed")
        self._neighbours_stale(entry)
        self.status_changed.emit(entry)
        return self.next_unreviewed(entry.id)

    def _neighbours_stale(self, entry, read: bool = False) -> None:
        """A reviewed tile is evidence for the slicks that continue into its unreviewed grid neighbours:
        their cached predictions are dropped (and any prediction of them already running is discarded) so
        they are predicted again with it (``scene_grid``). On the GUI thread (``read=False``) a grid not read
        yet is read only for a scene of small tiles (``scene_grid.SMALL_SCENE``); an autosave worker reads it."""
        from seepview.core.scene_grid import project_neighbours

        try:
            for nb in project_neighbours(self.project, entry.id, read=read).values():
                if self.project.entry(nb).status != "reviewed":
                    with self._locks_guard:  # bumped from the GUI thread and from autosave workers
                        self._evidence[nb] = self._evidence.get(nb, 0) + 1
                    self.project.drop_prediction(nb)
        except (SeepviewError, OSError) as exc:  # the review itself is saved; say why neighbours may lag
            log.warning("could not refresh the neighbours of %s: %s", entry.id, exc)

    def _force_save(self, entry: ImageEntry) -> None:
        slot = self._docs[entry.id]
        with self._save_lock(entry.id):  # a running autosave of this image finishes first
            upto = slot.journal.last_seq
            self._write_labels(entry, slot.document.labels, next(self._generations))
            slot.journal.clear(upto)  # flushes the writer first
        self._report_journal_errors(slot)
        slot.document.mark_saved()

    def next_unreviewed(self, after_id: str | None = None, backwards: bool = False) -> str | None:
        """The next image to review: in queue order once images are scored, else in project order."""
        if self.queue.scores:
            return self.queue.next_after(self.project.entries, after_id, backwards)
        entries = self.project.entries
        if backwards:
            ids = [e.id for e in entries]
            start = ids.index(after_id) if after_id in ids else 0
            for k in range(1, len(ids) + 1):
                candidate = entries[(start - k) % len(ids)]
                if candidate.status != "reviewed" and candidate.id != after_id:
                    return candidate.id
            return None
        following = self.project.next_unreviewed(after_id=after_id)
        return following.id if following is not None else None

    def close(self) -> None:
        """Save every edited image (the journal already holds them; this makes the files current)."""
        self.save_all()
        self.flush_journal()
        if self.current is not None:
            self.current.source.close()

    # --- contrast --------------------------------------------------------------------------------
    def _saved_window(self, entry: ImageEntry) -> DisplayWindow | None:
        saved = self.project.settings.get("display_windows", {}).get(entry.id)
        if not saved:
            return None
        try:
            return DisplayWindow.from_dict(saved)
        except (TypeError, ValueError, KeyError):
            return None

    def set_contrast(self, window: DisplayWindow | None) -> np.ndarray:
        """Re-render the current image with ``window`` (None = automatic) and remember it in the project."""
        current = self._require_current()
        automatic = window is None
        if window is None:  # automatic, in the scale (linear or dB) shown now; dB is remembered
            window = _auto_window(current.image, current.source, db=current.window.db)
        with self.project.lock:  # the training worker may be writing settings too
            windows = self.project.settings.setdefault("display_windows", {})
            if window.db or not automatic:
                windows[current.entry.id] = window.to_dict()
            else:
                windows.pop(current.entry.id, None)
            self.project.save()
        current.window = window
        current.display_u8 = displayable(to_uint8(current.image, window))
        return current.display_u8

    def set_db(self, db: bool) -> np.ndarray:
        """Show the current image linear or in dB (10·log10, the usual SAR display), auto-windowed in that scale."""
        current = self._require_current()
        return self.set_contrast(_auto_window(current.image, current.source, db=db))

    # --- classes ---------------------------------------------------------------------------------
    def rename_class(self, class_id: int, name: str) -> ClassTable:
        return self._set_classes(self.project.classes.rename(class_id, name))

    def recolor_class(self, class_id: int, rgba: tuple[int, int, int, int]) -> ClassTable:
        return self._set_classes(self.project.classes.recolor(class_id, rgba))

    def add_class(self, name: str) -> ClassTable:
        return self._set_classes(self.project.classes.add(name))

    def class_usage(self, class_id: int) -> dict[str, int]:
        """{image id: pixels} of a class over saved labels and open documents (is it used?)."""
        from seepview.core.class_edit import class_usage

        return class_usage(self.project, class_id, {i: s.document.labels for i, s in self._docs.items()})

    def remove_class(self, class_id: int, becomes: int) -> ClassTable:
        """Remove a class from the table and every label (its pixels become ``becomes``: a class id of
        the current table, or 255). Open documents are remapped in place and lose their undo history
        (its steps hold the old ids); ``undo_remove_class`` reverts the whole removal."""
        from seepview.core.class_edit import removal_lut, remove_class

        lut = removal_lut(len(self.project.classes), class_id, becomes)
        self.save_all()
        self._class_removal = remove_class(self.project, class_id, becomes)
        self._reset_documents(lambda _id, labels: lut[labels])
        if self._checkpoint is not None and self._checkpoint.num_classes != len(self.project.classes):
            self._removed_model = self._checkpoint
            self.model_problem = (
                f"the model predicts {self._checkpoint.num_classes} classes but the project now has "
                f"{len(self.project.classes)}: undo the class removal or use a model for the new classes"
            )
            self.set_model(None)
        self.classes_changed.emit(self.project.classes)
        return self.project.classes

    @property
    def can_undo_class_removal(self) -> bool:
        return getattr(self, "_class_removal", None) is not None

    def undo_remove_class(self) -> ClassTable:
        """Put back the class table, label files and open documents from before ``remove_class``."""
        from seepview.core.class_edit import undo_removal

        removal = getattr(self, "_class_removal", None)
        if removal is None:
            raise SeepviewError(None, "no class removal to undo")
        undo_removal(self.project, removal)
        self._class_removal = None
        shape = {i: s.document.labels.shape for i, s in self._docs.items()}
        self._reset_documents(
            lambda image_id, labels: self.project.load_labels(image_id)
            if self.project.has_labels(image_id) else np.full(shape[image_id], BLANK, np.uint8)
        )
        model = getattr(self, "_removed_model", None)
        self._removed_model = None
        if model is not None and self._checkpoint is None:
            self.set_model(model)
        self.classes_changed.emit(self.project.classes)
        return self.project.classes

    def _reset_documents(self, new_labels) -> None:
        """Rewrite every open document's labels in place (the canvas wraps the array) without history."""
        for image_id, slot in self._docs.items():
            document = slot.document
            document.labels[...] = new_labels(image_id, document.labels)
            document.history.clear()
            document.mark_saved()
            h, w = document.labels.shape
            document._notify((0, h, 0, w))  # views repaint the whole image

    def _set_classes(self, table: ClassTable) -> ClassTable:
        self.project.classes = table  # saves project.json
        self.classes_changed.emit(table)
        return table

    # --- predictions -----------------------------------------------------------------------------
    def _cached_prediction(self, entry: ImageEntry) -> PredictionResult | None:
        if self._weights_key is None:
            return None
        if self.current is not None and self.current.entry.id == entry.id:
            pred = self.current.prediction
            if pred is not None and pred.weights_key == self._weights_key:
                return pred
        cached = self.project.load_prediction(entry, self._weights_key)
        if cached is None:
            return None
        uncertainty = self.project.load_uncertainty(entry, self._weights_key)
        return PredictionResult(entry.id, self._weights_key, cached[0], cached[1], uncertainty=uncertainty)

    def neighbour_sides(self, image_id: str, labels) -> tuple[str, ...]:
        """Sides where ``labels`` (a shown prediction) continue a reviewed neighbour's slick with its class,
        for telling the user why; () when the scene has no grid the GUI thread may read (``gui_grid``)."""
        from seepview.core.scene_grid import SceneGrid, gui_grid, project_edges, sides_used

        entry = self.project.entry(image_id)
        if labels is None or not isinstance(gui_grid(self.project, entry.scene), SceneGrid):
            return ()
        return sides_used(labels, project_edges(self.project, entry.id), len(self.project.classes))

    def needs_prediction(self, image_id: str) -> bool:
        """Whether the active model has no cached prediction of the image (a file check: this runs on the
        GUI thread for a whole scene after each review; an unreadable cache is found when it is opened)."""
        if self._checkpoint is None or self._weights_key is None:
            return False
        if self.current is not None and self.current.entry.id == image_id and self.current.prediction is not None \
                and self.current.prediction.weights_key == self._weights_key:
            return False
        return not self.project.prediction_paths(image_id, self._weights_key)[0].is_file()

    def prediction_job(self, image_id: str) -> Callable[..., PredictionResult]:
        """A function ``job(cancel=None, progress=None) -> PredictionResult`` to run off the GUI thread.

        It captures the model and pixels now, so a model swap or image switch while it runs cannot
        mix them up. It writes the project's prediction cache itself (files only: compressing two
        8192² masks would stall the GUI thread) and touches no session state; ``store_prediction``
        then adopts the result on the GUI thread.
        """
        if self._checkpoint is None:
            raise ModelError(None, self.model_problem or "no model is loaded")
        entry = self.project.entry(image_id)
        predictor, key = self._get_predictor(), self._weights_key
        pixels = self.current.image if self.current is not None and self.current.entry.id == entry.id else None
        path = self.project.image_path(entry)
        project = self.project

        evidence_now = self._evidence  # read by the job: bumped on the GUI thread when a neighbour is reviewed
        num_classes = len(self.project.classes)

        def job(cancel: Callable[[], bool] | None = None, progress=None) -> PredictionResult:
            from seepview.core.imageio import open_image
            from seepview.core.scene_grid import project_edges, sides_used

            data = pixels if pixels is not None else open_image(path)
            for _attempt in range(3):  # a neighbour reviewed meanwhile: predict again with its labels
                before = evidence_now.get(entry.id, 0)
                edges = project_edges(project, entry.id)  # reviewed neighbours' labels along the edges
                result = predictor.predict(data, cancel=cancel, progress=progress, edges=edges)
                if cancel is not None and cancel():
                    raise Cancelled()
                fresh = evidence_now.get(entry.id, 0) == before
                if fresh:
                    break
            if fresh:  # when the evidence kept changing it is shown but not cached: the next open predicts it
                project.save_prediction(entry, key, result.labels, result.confidence, result.uncertainty)
                if evidence_now.get(entry.id, 0) != before:  # a review landed while the files were written
                    project.drop_prediction(entry)
            return PredictionResult(
                entry.id, key, result.labels, result.confidence, cached=True, uncertainty=result.uncertainty,
                neighbours=sides_used(result.labels, edges, num_classes) if edges else (),
            )

        return job

    def store_prediction(self, result: PredictionResult) -> bool:
        """Cache a finished prediction; False (and nothing stored) if the model changed meanwhile."""
        if result.weights_key != self._weights_key:
            log.info("dropping a prediction of %s made by a model that is no longer active", result.image_id)
            return False
        entry = self.project.entry(result.image_id)
        if not result.cached:
            self.project.save_prediction(
                entry, result.weights_key, result.labels, result.confidence, result.uncertainty
            )
            result.cached = True
        if self.current is not None and self.current.entry.id == entry.id:
            self.current.prediction = result
        self.prediction_stored.emit(result)
        return True

    # --- review queue ----------------------------------------------------------------------------
    def queue_job(self, ids=None) -> Callable[..., tuple] | None:
        """A background job scoring the active model's cached predictions (None without a model);
        hand its result to ``queue_done`` on the GUI thread."""
        if self._weights_key is None:
            return None
        from seepview.core.queue import queue_job

        return queue_job(self.project, self._weights_key, ids)

    def queue_done(self, result: tuple) -> bool:
        """Adopt scores from ``queue_job``; False (dropped) when they belong to a replaced model."""
        key, scores, broken = result
        if key != self._weights_key:
            return False
        self.queue.update(scores, broken)
        self.queue_changed.emit()
        return True

    def queue_order(self) -> list[str]:
        """Ids to review, most in need first (reviewed and broken images are not queued)."""
        return self.queue.order(self.project.entries)

    # --- status bar ------------------------------------------------------------------------------
    def _class_name(self, label: int) -> str:
        if label == BLANK:
            return "unlabeled"
        return self.classes[label].name if label < len(self.classes) else f"unknown {label}"

    def pixel_info(self, x: int, y: int) -> PixelInfo | None:
        current = self.current
        if current is None:
            return None
        h, w = current.shape
        if not (0 <= x < w and 0 <= y < h):
            return None
        raw = current.image[y, x]
        value = tuple(v.item() for v in raw) if np.ndim(raw) else raw.item()
        label = int(current.document.labels[y, x])
        info = PixelInfo(x, y, value, label, self._class_name(label))
        if current.prediction is not None:
            info.predicted = int(current.prediction.labels[y, x])
            info.predicted_name = self._class_name(info.predicted)
            info.confidence = float(current.prediction.confidence[y, x]) / 255.0
        geo = current.source.geo
        if geo is not None and geo.locatable:  # affine, or GCPs interpolated (Sentinel-1 GRD)
            info.map_xy = geo.pixel_to_map(x + 0.5, y + 0.5)  # the pixel's centre (PixelIsArea)
            info.epsg = geo.epsg
            info.geographic = geo.epsg in GEOGRAPHIC_EPSG
        return info

    def _require_current(self) -> OpenedImage:
        if self.current is None:
            raise SeepviewError(None, "no image is open")
        return self.current

    def __repr__(self) -> str:
        return f"ReviewSession({self.project!r}, model={self._weights_key})"


def _check_fits_in_memory(source: ImageSource) -> None:
    """Refuse, with the figure, an image whose review would not fit in memory (a deflate bomb, a whole
    100 000² scene): the review holds it whole. ``seepview predict`` streams such scenes instead."""
    h, w = source.shape
    need = h * w * (source.channels * np.dtype(source.dtype).itemsize + REVIEW_BYTES_PER_PIXEL)
    free = available_memory()
    if free is not None and need > 0.8 * free:
        raise ImageReadError(
            source.path,
            f"{w}x{h} pixels: reviewing it needs about {need / 2**30:.1f} GiB of memory, more than the "
            f"{free / 2**30:.1f} GiB available; cut it into tiles (seepview predict streams whole scenes)",
        )


def _without_nodata(prediction: PredictionResult | None, nodata: np.ndarray | None) -> PredictionResult | None:
    """A cached prediction with background on no-data pixels (caches written before the Predictor did that)."""
    if prediction is None or nodata is None or not prediction.labels[nodata].any():
        return prediction
    labels, confidence = prediction.labels.copy(), prediction.confidence.copy()
    labels[nodata], confidence[nodata] = 0, 255
    return replace(prediction, labels=labels, confidence=confidence)


def _auto_window(image: np.ndarray, source: ImageSource, db: bool = False) -> DisplayWindow:
    # The pixels are in memory already: no second read through the source. Without a no-data tag,
    # robust_window's default for arrays (0, the SAR convention) applies.
    if source.nodata is not None:
        return robust_window(image, nodata=source.nodata, db=db)
    return robust_window(image, db=db)


DEMO_FOLDER = "demo"


def resolve_project(path: str | os.PathLike | None, data_dir: Path) -> Project:
    """What ``seepview [PATH]`` opens: PATH (see ``project_for_path``) or, without one, the demo
    project in ``data_dir``, created on first run."""
    if path is not None:
        return project_for_path(path, data_dir)
    from seepview.core.demo import make_demo_project
    from seepview.core.project import PROJECT_FILE

    root = data_dir / DEMO_FOLDER
    if (root / PROJECT_FILE).is_file():
        return Project.open(root)
    log.info("creating the demo project in %s", root)
    return make_demo_project(root)


def project_for_path(path: str | os.PathLike, data_dir: Path) -> Project:
    """Turn what the user opened into a project: a project folder, a folder of images or one image.

    A folder of images gets a project beside it (``<folder>.seepview``) when that is writable, else in
    ``data_dir``; images are referenced, never copied. A single image gets a project in ``data_dir``
    named after it. Reopening the same path reuses its project.
    """
    from seepview.core.errors import ProjectError
    from seepview.core.imageio import IMAGE_SUFFIXES
    from seepview.core.project import PROJECT_FILE

    path = Path(path).absolute()
    if path.is_dir() and (path / PROJECT_FILE).is_file():
        return Project.open(path)
    if path.is_file() and path.name == PROJECT_FILE:
        return Project.open(path.parent)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ProjectError(path, "no images in this folder (and it is not a seepview project)")
        beside = path.parent / f"{path.name}.seepview"
        digest = hashlib.sha1(os.fsencode(path), usedforsecurity=False).hexdigest()[:8]
        fallback = data_dir / "projects" / f"{path.name}-{digest}"
        for root in (beside, fallback):
            if (root / PROJECT_FILE).is_file():
                project = Project.open(root)
                known = {project.image_path(e).resolve() for e in project.entries}
                new = [p for p in images if p.resolve() not in known]
                if new:
                    project.add_images(new)
                return project
        root = beside if os.access(path.parent, os.W_OK) else fallback
        project = Project.create(root, default_classes(images), name=path.name)
        project.add_images(images)
        return project
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ProjectError(path, f"not an image seepview reads ({', '.join(sorted(IMAGE_SUFFIXES))})")
        digest = hashlib.sha1(os.fsencode(path), usedforsecurity=False).hexdigest()[:8]
        root = data_dir / "projects" / f"{path.stem}-{digest}"
        if (root / PROJECT_FILE).is_file():
            return Project.open(root)
        project = Project.create(root, default_classes([path]), name=path.stem)
        project.add_image(path)
        return project
    raise ProjectError(path, "no such file or folder")
