"""The project store: one folder the user picks, holding everything seepview knows about their work.

Layout (all writes atomic via ``seepview.core.atomic``)::

    project.json             schema_version, name, classes, images, settings
    labels/<id>.tif          the user's masks (uint8 class ids, 255 = unlabeled)
    predictions/<key>/       cache per model version: <id>.labels.tif + <id>.conf.tif (uint8), optional
                             <id>.unc.tif (uncertainty) and queue.json (review-queue scores)
    models/                  model versions (owned by seepview.core.versions)
    journal/<id>/            autosave journal of committed strokes (seepview.core.journal)
    images/                  only images added with ``copy=True`` (large data is never copied)

Image paths are stored relative to the project when the image lives inside it and absolute
otherwise, so a project that only references data can sit anywhere. A project.json that is corrupt
or from a newer seepview raises ``ProjectError`` and is never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from seepview.core.atomic import atomic_path, atomic_write_text
from seepview.core.classes import ClassTable
from seepview.core.errors import ImageReadError, MaskError, ProjectError, SeepviewError
from seepview.core.imageio import IMAGE_SUFFIXES, open_image, read_mask, write_mask
from seepview.core.journal import Journal
from seepview.core.project_merge import merge_project

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PROJECT_FILE = "project.json"
STATUSES = ("unreviewed", "in_progress", "reviewed")
LABELS_DIR, PREDICTIONS_DIR, MODELS_DIR, JOURNAL_DIR, IMAGES_DIR = (
    "labels",
    "predictions",
    "models",
    "journal",
    "images",
)
_STALE_TEMP_S = 3600  # temp files without a writer pid older than this are leftovers of a killed writer
_TEMP_PID = re.compile(r"\.(\d+)\.[A-Za-z0-9_]{8}\.tmp")  # atomic.py's temp names carry the writer's pid
#: Image ids name files (labels/<id>.tif, predictions/<key>/<id>.labels.tif...): file systems allow 255
#: bytes per name, so long stems are cut and made unique with a digest.
MAX_ID_BYTES = 160
_WEIGHTS_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Roboflow appends "_<ext>.rf.<hash>" to the original photo name; augmented copies share the prefix.
_ROBOFLOW = re.compile(r"^(?P<photo>.+?)_(?:jpg|jpeg|png|bmp|tif|tiff|webp)\.rf\.", re.IGNORECASE)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a temp file of a live writer must not be swept)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or unknowable: keep the file
    return True


def group_of(name: str | os.PathLike) -> str:
    """The group (SAR scene or photo) an image belongs to; splits must never cut a group.

    Tiles of one scene, and augmented copies of one photo, share content: putting them on both sides
    of a train/validation split inflates scores. Rules, on the file name or image id:
    Roboflow ``<photo>_jpg.rf.<hash>`` -> ``<photo>``; ``<scene>.<tile>[.tif]`` -> ``<scene>``
    (prefix before the first '.'); otherwise the stem.
    """
    base = Path(name).name
    match = _ROBOFLOW.match(base)
    if match:
        return match.group("photo")
    head = base.split(".", 1)[0]
    return head or base


def _checked_key(weights_key: str) -> str:
    if not isinstance(weights_key, str) or not _WEIGHTS_KEY.match(weights_key):
        raise ProjectError(None, f"invalid weights key {weights_key!r} (letters, digits, '.', '_', '-')")
    return weights_key


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class DiskChanges:
    """What ``Project.sync`` took from another program's project.json: image ids added or changed,
    whether the class table changed, and the settings keys that changed (e.g. ``model_versions``)."""

    images: list[str]
    classes: bool
    settings: list[str]

    def __bool__(self) -> bool:
        return bool(self.images or self.classes or self.settings)


@dataclass(slots=True)
class ImageEntry:
    """One image of a project. ``path`` is as stored (relative to the root, or absolute);
    use ``Project.image_path(entry)`` for the real location. Mutated only by ``Project``."""

    id: str
    path: Path
    status: str = "unreviewed"
    status_time: str | None = None
    group: str = ""

    @property
    def scene(self) -> str:
        """The scene the app groups this image with (adaptation, tile grid, re-prediction): its group, else its
        own id (an image without a scene name is a scene of its own)."""
        return self.group or self.id

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "path": self.path.as_posix(),
            "status": self.status,
            "status_time": self.status_time,
            "group": self.group,
        }


EntryRef = ImageEntry | str


class Project:
    """A project folder. Create with ``Project.create``, reopen with ``Project.open``."""

    def __init__(self, root: Path, name: str, classes: ClassTable, entries: list[ImageEntry], settings: dict):
        # Use create()/open(); the constructor does no I/O.
        self.root = root
        self.name = name
        self._classes = classes
        self._entries = entries
        self._by_id = {e.id: e for e in entries}
        self._by_path = {e.path: e for e in entries}
        self.settings: dict[str, Any] = settings
        # One lock for every change to this object's state and for save(): the training worker records
        # settings while the GUI thread serialises them. Hold it (``with project.lock:``) around any
        # direct edit of ``settings``, or use ``update_settings``.
        self._lock = threading.RLock()
        self._meta: dict[str, tuple[tuple[int, int], Any]] = {}
        self._disk_text: str | None = None  # project.json as last read/written, to notice other writers

    @property
    def lock(self) -> threading.RLock:
        """Held around every read-modify-write of ``settings`` and ``save``: the training worker and the GUI
        thread both write ``project.json``."""
        return self._lock

    # --- lifecycle --------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, classes: ClassTable | str, name: str | None = None) -> Project:
        """Make a new project in ``root`` (created if needed; refuses an existing project)."""
        root = Path(root).absolute()
        if (root / PROJECT_FILE).exists():
            raise ProjectError(root / PROJECT_FILE, "a project already exists here")
        if root.exists() and not root.is_dir():
            raise ProjectError(root, "not a folder")
        table = classes if isinstance(classes, ClassTable) else ClassTable.from_spec(classes)
        try:
            for sub in (LABELS_DIR, PREDICTIONS_DIR, MODELS_DIR, JOURNAL_DIR):
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProjectError(root, f"cannot create project folder: {exc.strerror or exc}") from None
        project = cls(root, name or root.name, table, [], {})
        project.save()
        return project

    @classmethod
    def open(cls, root: str | os.PathLike) -> Project:
        """Load an existing project (``root`` may be the folder or its project.json)."""
        root = Path(root).absolute()
        if root.name == PROJECT_FILE and root.is_file():
            root = root.parent
        path = root / PROJECT_FILE
        if not path.is_file():
            raise ProjectError(root, "not a seepview project (no project.json)")
        text, data = cls._read(path)
        project = cls._from_dict(root, data, path)
        project._disk_text = text
        project._sweep_stale_temps()
        project._warn_outside_links()
        return project

    def _warn_outside_links(self) -> None:
        """labels/ or journal/ as a symlink out of the project: work is written there; say so."""
        for sub in (LABELS_DIR, JOURNAL_DIR, PREDICTIONS_DIR, MODELS_DIR):
            folder = self.root / sub
            if folder.is_symlink() and not self._inside(folder.resolve()):
                log.warning(
                    "%s is a symbolic link to %s, outside the project: seepview writes there",
                    folder, folder.resolve(),
                )

    @staticmethod
    def _read(path: Path) -> tuple[str, Any]:
        try:
            text = path.read_text(encoding="utf-8")
            return text, json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProjectError(path, f"cannot read project file (corrupt?): {exc}") from None

    def changed_on_disk(self) -> bool:
        """True when another program (e.g. ``seepview finetune PROJECT``) rewrote project.json since
        this object last read or wrote it; call ``reload()`` to pick up its changes."""
        try:
            return (self.root / PROJECT_FILE).read_text(encoding="utf-8") != self._disk_text
        except (OSError, UnicodeDecodeError):
            return True

    def update_settings(self, change: Callable[[dict], Any], save: bool = True) -> Any:
        """Run ``change(settings)`` under the project lock, then save; returns what ``change`` returned."""
        with self._lock:
            result = change(self.settings)
            if save:
                self.save()
            return result

    def sync(self) -> DiskChanges | None:
        """Merge a project.json rewritten by another program into this object (``project_merge``).

        Returns what changed here, or None when the file is as this object last saw it. Entry objects
        are updated in place (sessions hold them). Raises ProjectError when the file is unreadable.
        """
        path = self.root / PROJECT_FILE
        with self._lock:
            if not self.changed_on_disk():
                return None
            text, theirs = self._read(path)
            base = json.loads(self._disk_text) if self._disk_text else {}
            ours = self.to_dict()
            merged = merge_project(base, ours, theirs)
            fresh = self._from_dict(self.root, merged, path)
            changes = DiskChanges(
                images=[e.id for e in fresh._entries if e.id not in self._by_id
                        or self._by_id[e.id].to_dict() != e.to_dict()],
                classes=fresh._classes != self._classes,
                settings=sorted(k for k in {*fresh.settings, *self.settings}
                                if fresh.settings.get(k) != self.settings.get(k)),
            )
            for e in fresh._entries:
                mine = self._by_id.get(e.id)
                if mine is None:
                    self._entries.append(e)
                    self._by_id[e.id] = e
                else:
                    mine.path, mine.status, mine.status_time, mine.group = e.path, e.status, e.status_time, e.group
            self._by_path = {e.path: e for e in self._entries}
            self.name, self._classes = fresh.name, fresh._classes
            # Key by key, in place: code holding ``project.settings`` keeps the live dict, and a reader
            # without the lock never sees it empty.
            for key in [k for k in self.settings if k not in fresh.settings]:
                del self.settings[key]
            self.settings.update(fresh.settings)
            self._disk_text = text
            if merged != theirs:
                self.save()  # our side had changes the file lacks: write the merge now
            return changes

    def reload(self) -> None:
        """Re-read project.json (classes, images, statuses, settings). Entry objects are replaced."""
        path = self.root / PROJECT_FILE
        text, data = self._read(path)
        fresh = self._from_dict(self.root, data, path)
        with self._lock:
            self.name, self._classes, self.settings = fresh.name, fresh._classes, fresh.settings
            self._entries, self._by_id, self._by_path = fresh._entries, fresh._by_id, fresh._by_path
            self._disk_text = text

    @classmethod
    def _from_dict(cls, root: Path, data: Any, path: Path) -> Project:
        if not isinstance(data, dict):
            raise ProjectError(path, "project file is not a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise ProjectError(path, "project file has no integer schema_version")
        if version > SCHEMA_VERSION:
            raise ProjectError(
                path, f"written by a newer seepview (schema {version}, this version reads {SCHEMA_VERSION})"
            )
        if version < 1:
            raise ProjectError(path, f"unknown schema_version {version}")
        classes = ClassTable.from_dict(data.get("classes") or {}, path=path)
        entries: list[ImageEntry] = []
        seen: set[str] = set()
        images = data.get("images", [])
        if not isinstance(images, list):
            raise ProjectError(path, "'images' must be a JSON list")
        for number, item in enumerate(images, 1):
            if not isinstance(item, dict):
                raise ProjectError(path, f"malformed image list: image {number} is not a JSON object")
            missing = [k for k in ("id", "path") if not isinstance(item.get(k), str)]
            if missing:
                raise ProjectError(
                    path, f"malformed image list: image {number} has no {' or '.join(repr(k) for k in missing)} text"
                )
        try:
            for item in images:
                entry = ImageEntry(
                    id=str(item["id"]),
                    path=Path(item["path"]),
                    status=str(item.get("status", "unreviewed")),
                    status_time=item.get("status_time"),
                    group=str(item.get("group") or group_of(item["id"])),
                )
                if not entry.id or entry.id in (".", "..") or any(c in entry.id for c in "/\\\0"):
                    raise ProjectError(path, f"image id {entry.id!r} is not a plain file stem")
                if entry.status not in STATUSES:
                    raise ProjectError(path, f"image {entry.id!r} has unknown status {entry.status!r}")
                if entry.id in seen:
                    raise ProjectError(path, f"duplicate image id {entry.id!r}")
                seen.add(entry.id)
                entries.append(entry)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ProjectError(path, f"malformed image list ({exc})") from None
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise ProjectError(path, "'settings' must be a JSON object")
        return cls(root, str(data.get("name") or root.name), classes, entries, settings)

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "classes": self._classes.to_dict(),
            "images": [e.to_dict() for e in self._entries],
            "settings": self.settings,
        }

    def save(self) -> None:
        """Write project.json atomically (entries, statuses, classes, settings)."""
        with self._lock:
            try:
                text = json.dumps(self.to_dict(), indent=1, ensure_ascii=True)
            except (TypeError, ValueError) as exc:
                raise ProjectError(
                    self.root / PROJECT_FILE, f"settings are not JSON-serialisable: {exc}"
                ) from None
            text += "\n"
            path = self.root / PROJECT_FILE
            try:
                if self._disk_text is not None and self.changed_on_disk() and path.is_file():
                    # Another program wrote this project since we read it: merge its changes in.
                    try:
                        self.sync()  # writes the merge itself when it differs from the file
                        return
                    except ProjectError as exc:  # its file is unreadable: keep it beside ours
                        backup = path.with_name(f"{PROJECT_FILE}.{datetime.now(UTC):%Y%m%dT%H%M%S%f}.bak")
                        shutil.copyfile(path, backup)
                        log.warning("%s; it is kept in %s and replaced by this program's copy", exc, backup.name)
                atomic_write_text(path, text)
            except OSError as exc:
                raise ProjectError(path, f"cannot write: {exc.strerror or exc}") from None
            self._disk_text = text

    def _sweep_stale_temps(self) -> None:
        """Remove temp files a killed writer left behind, now: a temp whose writer process is gone is
        garbage at once (the name carries the pid); one without a pid only when over an hour old."""
        cutoff = time.time() - _STALE_TEMP_S
        candidates = [*self.root.glob(".*.tmp*"), *(self.root / LABELS_DIR).glob(".*.tmp*")]
        candidates += (self.root / JOURNAL_DIR).rglob(".*.tmp*")
        candidates += (self.root / PREDICTIONS_DIR).rglob(".*.tmp*")
        candidates += (self.root / MODELS_DIR).glob(".*.tmp*")
        for tmp in candidates:
            with contextlib.suppress(OSError):
                if not tmp.is_file():
                    continue
                found = _TEMP_PID.search(tmp.name)
                if found is not None and not _alive(int(found.group(1))) or tmp.stat().st_mtime < cutoff:
                    tmp.unlink()

    # --- classes and folders ------------------------------------------------------------------
    @property
    def classes(self) -> ClassTable:
        return self._classes

    @classes.setter
    def classes(self, table: ClassTable) -> None:
        """Replace the class table (rename/recolour/add) and save. Classes can only be added."""
        if len(table) < len(self._classes):
            raise ProjectError(self.root / PROJECT_FILE, "classes cannot be removed: labels may use them")
        self.replace_classes(table)

    def replace_classes(self, table: ClassTable) -> None:
        """Set the table without the "only add" check: for ``class_edit``, which remaps every label file."""
        with self._lock:
            self._classes = table
            self.save()

    @property
    def models_dir(self) -> Path:
        path = self.root / MODELS_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def labels_dir(self) -> Path:
        return self.root / LABELS_DIR

    # --- images ---------------------------------------------------------------------------------
    @property
    def entries(self) -> list[ImageEntry]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, image_id: EntryRef) -> ImageEntry:
        if isinstance(image_id, ImageEntry):
            return image_id
        try:
            return self._by_id[image_id]
        except KeyError:
            raise ProjectError(self.root, f"no image with id {image_id!r} in this project") from None

    def groups(self) -> dict[str, list[ImageEntry]]:
        """Entries by group (scene/photo), in project order."""
        out: dict[str, list[ImageEntry]] = {}
        for e in self._entries:
            out.setdefault(e.group, []).append(e)
        return out

    def add_image(self, path: str | os.PathLike, copy: bool = False, save: bool = True) -> ImageEntry:
        """Register an image. Adding the same file twice returns the existing entry.

        ``copy=True`` copies it into ``images/`` (for small photos only: large data stays in place).
        ``save=False`` defers the project.json write for bulk adds; call ``save()`` after.
        """
        entry = self._add(Path(path), copy)
        if save:
            self.save()
        return entry

    def add_images(self, paths, copy: bool = False) -> list[ImageEntry]:
        """Register many images with a single project.json write."""
        entries = [self._add(Path(p), copy) for p in paths]
        self.save()
        return entries

    def _add(self, path: Path, copy: bool) -> ImageEntry:
        if not path.is_file():
            raise ProjectError(path, "image not found")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ProjectError(path, f"not a supported image type ({', '.join(sorted(IMAGE_SUFFIXES))})")
        source = path.absolute()
        with self._lock:
            if copy and not self._inside(source):
                target = self.root / IMAGES_DIR / source.name
                if target.exists():
                    target = self.root / IMAGES_DIR / f"{self._unique_id(source.stem)}{source.suffix}"
                with atomic_path(target) as tmp:
                    shutil.copyfile(source, tmp)
                source = target
            stored = self._stored_path(source)
            if stored in self._by_path:
                return self._by_path[stored]
            entry = ImageEntry(
                self._unique_id(source.stem), stored, "unreviewed", None, group_of(source.name)
            )
            self._entries.append(entry)
            self._by_id[entry.id] = entry
            self._by_path[entry.path] = entry
            return entry

    def _inside(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    def _stored_path(self, path: Path) -> Path:
        if self._inside(path):
            return path.resolve().relative_to(self.root.resolve())
        return path

    def _unique_id(self, stem: str) -> str:
        """The stem, or ``stem~2``, ``stem~3``... in order of addition (deterministic). Stems longer
        than ``MAX_ID_BYTES`` are cut and end in a digest of the whole stem (file names have limits)."""
        raw = os.fsencode(stem)
        if len(raw) > MAX_ID_BYTES:
            digest = hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:10]
            stem = raw[: MAX_ID_BYTES - 11].decode("utf-8", "ignore") + "-" + digest
        if stem not in self._by_id:
            return stem
        n = 2
        while f"{stem}~{n}" in self._by_id:
            n += 1
        return f"{stem}~{n}"

    def image_path(self, entry: EntryRef) -> Path:
        entry = self.entry(entry)
        return entry.path if entry.path.is_absolute() else self.root / entry.path

    def open_image(self, entry: EntryRef):
        """The ``ImageSource`` of an entry (region reads; raises ImageReadError naming the file, and the
        project file that lists it when it is missing)."""
        entry = self.entry(entry)
        try:
            return open_image(self.image_path(entry))
        except ImageReadError as exc:
            if exc.reason.startswith("cannot open"):
                raise ImageReadError(
                    exc.path, f"{exc.reason} (image {entry.id!r} of {self.root / PROJECT_FILE})"
                ) from None
            raise

    def image_shape(self, entry: EntryRef) -> tuple[int, int]:
        return self._image_meta(self.entry(entry))[0]

    def _image_meta(self, entry: ImageEntry) -> tuple[tuple[int, int], Any]:
        """(shape, geo) of an image, read once per session from its header."""
        if entry.id not in self._meta:
            with self.open_image(entry) as source:
                self._meta[entry.id] = (tuple(source.shape[:2]), source.geo)
        return self._meta[entry.id]

    def _meta_or_none(self, entry: ImageEntry) -> tuple[tuple[int, int] | None, Any]:
        try:
            return self._image_meta(entry)
        except SeepviewError as exc:  # image offline (moved disk): labels stay usable
            log.warning("cannot check mask against its image: %s", exc)
            return None, None

    # --- review status ------------------------------------------------------------------------
    def set_status(self, entry: EntryRef, status: str, save: bool = True) -> ImageEntry:
        """Record a review status with the current UTC time (and save, unless bulk-editing)."""
        entry = self.entry(entry)
        if status not in STATUSES:
            raise ProjectError(None, f"unknown review status {status!r} (one of {', '.join(STATUSES)})")
        with self._lock:
            entry.status = status
            entry.status_time = utc_now()
            if save:
                self.save()
        return entry

    def next_unreviewed(self, after_id: EntryRef | None = None) -> ImageEntry | None:
        """The next entry after ``after_id`` (wrapping) that is not ``reviewed``; None when all are."""
        n = len(self._entries)
        if n == 0:
            return None
        start = 0
        if after_id is not None:
            start = self._entries.index(self.entry(after_id)) + 1
        for k in range(n):
            candidate = self._entries[(start + k) % n]
            if candidate.status != "reviewed" and (after_id is None or candidate is not self.entry(after_id)):
                return candidate
        return None

    def status_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for e in self._entries:
            counts[e.status] += 1
        return counts

    # --- labels ---------------------------------------------------------------------------------
    def labels_path(self, entry: EntryRef) -> Path:
        return self.root / LABELS_DIR / f"{self.entry(entry).id}.tif"

    def has_labels(self, entry: EntryRef) -> bool:
        try:
            return self.labels_path(entry).is_file()
        except OSError:  # e.g. a name too long for this file system: there is no such file
            return False

    def load_labels(self, entry: EntryRef) -> np.ndarray | None:
        """The user's mask, validated against the class table and image shape; None if never saved."""
        entry = self.entry(entry)
        path = self.labels_path(entry)
        if not self.has_labels(entry):
            return None
        return read_mask(path, classes=self._classes, shape=self._meta_or_none(entry)[0])

    def save_labels(self, entry: EntryRef, mask: np.ndarray) -> Path:
        """Validate and write the user's mask atomically, with the image's geo-referencing so the file
        is usable in GIS tools. An unreviewed image becomes in_progress."""
        entry = self.entry(entry)
        path = self.labels_path(entry)
        mask = np.asarray(mask)
        self._classes.validate_mask(mask, path)
        shape, geo = self._meta_or_none(entry)
        if shape is not None and mask.shape != shape:
            raise MaskError(path, f"mask shape {mask.shape} differs from image shape {shape}")
        write_mask(path, mask, geo=geo)
        if entry.status == "unreviewed":
            self.set_status(entry, "in_progress")
        return path

    def labelled_entries(self) -> list[ImageEntry]:
        return [e for e in self._entries if self.has_labels(e)]

    # --- journal --------------------------------------------------------------------------------
    def journal(self, entry: EntryRef) -> Journal:
        return Journal(self.root / JOURNAL_DIR / self.entry(entry).id)

    # --- prediction cache -----------------------------------------------------------------------
    def prediction_paths(self, entry: EntryRef, weights_key: str) -> tuple[Path, Path]:
        """(labels, confidence) cache files of one model version; streaming writers target these."""
        folder = self.root / PREDICTIONS_DIR / _checked_key(weights_key)
        image_id = self.entry(entry).id
        return folder / f"{image_id}.labels.tif", folder / f"{image_id}.conf.tif"

    def prediction_dir(self, weights_key: str) -> Path:
        """The cache folder of one model version (the review queue keeps its scores there)."""
        return self.root / PREDICTIONS_DIR / _checked_key(weights_key)

    def uncertainty_path(self, entry: EntryRef, weights_key: str) -> Path:
        return self.prediction_dir(weights_key) / f"{self.entry(entry).id}.unc.tif"

    def save_prediction(
        self,
        entry: EntryRef,
        weights_key: str,
        labels: np.ndarray,
        confidence: np.ndarray,
        uncertainty: np.ndarray | None = None,
    ) -> None:
        """Cache a prediction (uint8 labels + uint8 confidence 0..255, optional uint8 uncertainty).
        Labels last: labels present means the set is complete."""
        labels_path, conf_path = self.prediction_paths(entry, weights_key)
        unc_path = self.uncertainty_path(entry, weights_key)
        labels, confidence = np.asarray(labels), np.asarray(confidence)
        if uncertainty is not None and (uncertainty.dtype != np.uint8 or uncertainty.shape != labels.shape):
            raise ProjectError(
                unc_path, f"uncertainty must be uint8 {labels.shape}, got {uncertainty.dtype}{uncertainty.shape}"
            )
        if labels.dtype != np.uint8 or confidence.dtype != np.uint8 or labels.shape != confidence.shape:
            raise ProjectError(
                labels_path,
                f"prediction must be two uint8 arrays of one shape, got {labels.dtype}{labels.shape} "
                f"and {confidence.dtype}{confidence.shape}",
            )
        geo = self._meta_or_none(self.entry(entry))[1]
        with contextlib.suppress(FileNotFoundError):
            labels_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            unc_path.unlink()  # never pair a new prediction with an old uncertainty map
        write_mask(conf_path, confidence, geo=geo)
        if uncertainty is not None:
            write_mask(unc_path, np.asarray(uncertainty), geo=geo)
        write_mask(labels_path, labels, geo=geo)

    def load_uncertainty(self, entry: EntryRef, weights_key: str) -> np.ndarray | None:
        """The cached uncertainty map; None when absent (caches written before it existed) or unreadable."""
        path = self.uncertainty_path(entry, weights_key)
        if not path.is_file() or not self.prediction_paths(entry, weights_key)[0].is_file():
            return None
        try:
            return read_mask(path)
        except SeepviewError as exc:
            log.warning("ignoring unreadable uncertainty cache: %s", exc)
            return None

    def load_prediction(self, entry: EntryRef, weights_key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Cached (labels, confidence), or None when absent or unreadable (a cache is recomputed)."""
        labels_path, conf_path = self.prediction_paths(entry, weights_key)
        if not (labels_path.is_file() and conf_path.is_file()):
            return None
        try:
            labels = read_mask(labels_path, classes=self._classes)
            confidence = read_mask(conf_path)
        except SeepviewError as exc:
            log.warning("ignoring unreadable prediction cache: %s", exc)
            return None
        if labels.shape != confidence.shape:
            log.warning("ignoring prediction cache with mismatched shapes: %s", labels_path)
            return None
        return labels, confidence

    def drop_prediction(self, entry: EntryRef) -> None:
        """Forget an image's cached prediction under every model version (its labels file marks a complete
        set): it was made without evidence the user has since given, e.g. a neighbour reviewed next door."""
        image_id = self.entry(entry).id
        base = self.root / PREDICTIONS_DIR
        if base.is_dir():
            for folder in base.iterdir():
                with contextlib.suppress(OSError):
                    (folder / f"{image_id}.labels.tif").unlink(missing_ok=True)

    def clear_predictions(self, weights_key: str | None = None) -> None:
        """Drop the cache of one model version, or of all."""
        base = self.root / PREDICTIONS_DIR
        target = base if weights_key is None else base / _checked_key(weights_key)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        base.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Project({str(self.root)!r}, {len(self._entries)} images, {len(self._classes)} classes)"
