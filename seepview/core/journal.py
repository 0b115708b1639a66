"""Autosave journal: every committed stroke reaches the disk within milliseconds of its release.

Saving a full 8192² mask per stroke is too slow, so the GUI records the *new values inside the
stroke's bounding box* here (one small compressed file per stroke, written atomically and fsynced),
saves the whole labels file on a debounce, then clears the entries that save covered. After a crash
(even ``kill -9``), replaying the entries in order onto the last saved labels gives back every
committed stroke. Replay is idempotent: entries hold absolute values, not deltas, so replaying
entries that a save already covered changes nothing.

``submit`` hands an entry to one background writer thread (compress + fsync cost up to ~250 ms for a
long stroke on an 8192² image: not on the GUI thread); ``flush`` waits for it. ``clear`` flushes
first, so an entry a save covers is never written after the save deleted its older siblings.

Sequence numbers are monotonic for the life of the project: a clear records the high-water mark in
``HIGH_WATER`` inside the folder before it deletes entries, so numbering never restarts and a late
``clear(upto=N)`` can never delete a newer stroke.

Entry file ``<seq:08d>.svj``: magic ``SVJ1``, header (codec, seq, y0, y1, x0, x1, crc32 of the
payload, payload length) as little-endian uint32/uint64, then the payload (uint8, C order),
compressed with zstd (about 8x faster than zlib on a whole-image 8192² "accept prediction", which
happens on the GUI thread) or zlib where imagecodecs lacks zstd. A torn or corrupt entry is skipped
with a warning; later entries still apply.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import struct
import threading
import zlib
from pathlib import Path

import imagecodecs
import numpy as np

from seepview.core.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

MAGIC = b"SVJ1"
_HEADER = struct.Struct("<4sIIIIIIIQ")  # magic, codec, seq, y0, y1, x0, x1, crc32, payload length
ZLIB, ZSTD = 1, 2
_CODEC = ZSTD if imagecodecs.ZSTD.available else ZLIB
SUFFIX = ".svj"
HIGH_WATER = "HIGH_WATER"  # the largest sequence number ever used in this folder (text)

BBox = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, like ImageSource.read


class Journal:
    """The autosave journal of one image (a folder of entry files)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._next: int | None = None  # next sequence number to hand out (read from disk lazily)
        self._pending = 0  # submitted entries not yet on disk
        self._errors: list[Exception] = []  # background write failures not yet reported

    def _entry_files(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        out = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            if path.name.startswith("."):
                continue  # a temp file of an interrupted write
            with contextlib.suppress(ValueError):
                out.append((int(path.stem), path))
        return sorted(out)

    def _disk_high_water(self) -> int:
        try:
            return int((self.folder / HIGH_WATER).read_text(encoding="ascii").strip() or 0)
        except (OSError, ValueError):
            return 0

    def _take_seq(self) -> int:
        """The next sequence number (caller holds the lock): above every entry and the recorded mark."""
        if self._next is None:
            files = self._entry_files()
            self._next = max(files[-1][0] if files else 0, self._disk_high_water()) + 1
        seq = self._next
        self._next += 1
        return seq

    @property
    def has_entries(self) -> bool:
        return self._pending > 0 or bool(self._entry_files())

    @property
    def last_seq(self) -> int:
        """The newest sequence number handed out (written or pending; 0 when none ever was); pass it to
        ``clear(upto=...)``."""
        with self._lock:
            if self._next is None:
                files = self._entry_files()
                return max(files[-1][0] if files else 0, self._disk_high_water())
            return self._next - 1

    def __len__(self) -> int:
        return len(self._entry_files()) + self._pending

    @staticmethod
    def _checked(bbox: BBox, new_values: np.ndarray) -> tuple[BBox, np.ndarray]:
        y0, y1, x0, x1 = (int(v) for v in bbox)
        values = np.ascontiguousarray(new_values)
        if values.dtype != np.uint8 or values.shape != (y1 - y0, x1 - x0) or min(y0, x0) < 0:
            raise ValueError(
                f"journal entry must be uint8 of the bbox shape {bbox}, got {values.dtype}{values.shape}"
            )
        return (y0, y1, x0, x1), values

    def _write(self, seq: int, bbox: BBox, values: np.ndarray) -> None:
        y0, y1, x0, x1 = bbox
        raw = values.tobytes()
        payload = imagecodecs.zstd_encode(raw, level=1) if _CODEC == ZSTD else zlib.compress(raw, 1)
        header = _HEADER.pack(MAGIC, _CODEC, seq, y0, y1, x0, x1, zlib.crc32(payload), len(payload))
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / f"{seq:08d}{SUFFIX}", header + payload)

    def append(self, bbox: BBox, new_values: np.ndarray) -> int:
        """Durably record, now, that ``labels[y0:y1, x0:x1]`` equals ``new_values``; return its seq."""
        bbox, values = self._checked(bbox, new_values)
        self.flush()  # keep file order = seq order
        with self._lock:
            seq = self._take_seq()
        self._write(seq, bbox, values)
        return seq

    def submit(self, bbox: BBox, new_values: np.ndarray) -> int:
        """Record an entry from the background writer and return its seq at once (the GUI's path).

        ``new_values`` must not be modified afterwards (the document hands over a fresh copy). A
        failed write is kept for ``take_errors``/``flush``: it must reach the user, but not from the
        writer thread.
        """
        bbox, values = self._checked(bbox, new_values)
        with self._lock:
            seq = self._take_seq()
            self._pending += 1
        _writer().put((self, seq, bbox, values))
        return seq

    def _written(self, seq: int, bbox: BBox, values: np.ndarray) -> None:
        """Writer thread: write one submitted entry and account for it."""
        try:
            self._write(seq, bbox, values)
        except Exception as exc:  # noqa: BLE001 (disk full, MemoryError...: reported, never kills the writer)
            log.error("%s: journal entry %d not written: %s", self.folder, seq, exc)
            with self._lock:
                self._errors.append(exc)
        finally:
            with self._lock:
                self._pending -= 1
                self._done.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted entry is on disk; False if ``timeout`` ran out first."""
        with self._lock:
            return self._done.wait_for(lambda: self._pending == 0, timeout)

    def take_errors(self) -> list[Exception]:
        """Background write failures since the last call (each is reported once)."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def entries(self):
        """Yield ``(seq, bbox, values)`` of every readable entry, oldest first."""
        for seq, path in self._entry_files():
            try:
                data = path.read_bytes()
                magic, codec, _seq, y0, y1, x0, x1, crc, length = _HEADER.unpack_from(data)
                payload = data[_HEADER.size : _HEADER.size + length]
                if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                    raise ValueError("bad magic, length or checksum")
                if codec not in (ZLIB, ZSTD):
                    raise ValueError(f"unknown codec {codec}")
                raw = imagecodecs.zstd_decode(payload) if codec == ZSTD else zlib.decompress(payload)
                values = np.frombuffer(raw, dtype=np.uint8).reshape(y1 - y0, x1 - x0)
            except (OSError, struct.error, ValueError, zlib.error, imagecodecs.ZstdError) as exc:
                log.warning("%s: skipping torn/corrupt journal entry (%s)", path, exc)
                continue
            yield seq, (y0, y1, x0, x1), values

    def replay(self, labels: np.ndarray) -> int:
        """Apply all entries in order to ``labels`` in place; return how many were applied."""
        applied = 0
        height, width = labels.shape[:2]
        for seq, (y0, y1, x0, x1), values in self.entries():
            if y1 > height or x1 > width:
                log.warning(
                    "%s: entry %d lies outside a %dx%d mask; skipped", self.folder, seq, height, width
                )
                continue
            labels[y0:y1, x0:x1] = values
            applied += 1
        return applied

    def clear(self, upto: int | None = None) -> None:
        """Delete entries with seq <= ``upto`` (all when None) once a labels save covers them.

        Pass the ``last_seq`` read *before* snapshotting the labels you saved, so strokes committed
        while the save ran are kept. Pending background writes are flushed first, and the high-water
        mark is recorded before anything is deleted, so later entries always get higher numbers.
        """
        self.flush()
        files = self._entry_files()
        top = files[-1][0] if files else 0
        if files and top > self._disk_high_water():
            try:
                atomic_write_bytes(self.folder / HIGH_WATER, f"{top}\n".encode("ascii"))
            except OSError as exc:  # this process still numbers on from memory; only a restart could reuse
                log.warning("%s: cannot record the journal's high-water mark: %s", self.folder, exc)
        with self._lock:
            if self._next is None or self._next <= top:
                self._next = max(top, self._disk_high_water()) + 1
        for seq, path in files:
            if upto is None or seq <= upto:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def __repr__(self) -> str:
        return f"Journal({str(self.folder)!r}, {len(self)} entries)"


_queue: queue.SimpleQueue | None = None
_queue_lock = threading.Lock()


def _writer() -> queue.SimpleQueue:
    """The one background journal writer (FIFO, so each journal's entries land in seq order)."""
    global _queue
    with _queue_lock:
        if _queue is None:
            _queue = queue.SimpleQueue()
            threading.Thread(target=_drain, args=(_queue,), name="seepview-journal", daemon=True).start()
        return _queue


def _drain(q: queue.SimpleQueue) -> None:
    while True:
        journal, seq, bbox, values = q.get()
        journal._written(seq, bbox, values)


@atexit.register
def _wait_at_exit() -> None:
    """A normal interpreter exit waits (briefly) for queued entries; only a kill can lose them."""
    if _queue is None:
        return
    done = threading.Event()
    _queue.put((_Sentinel(done), 0, (0, 0, 0, 0), None))
    done.wait(10.0)


class _Sentinel:
    def __init__(self, event: threading.Event):
        self.event = event

    def _written(self, *_args) -> None:
        self.event.set()
