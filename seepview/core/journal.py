"""Autosave journal: every committed stroke is on disk before the next one starts.

Saving a full 8192² mask per stroke is too slow, so the GUI appends the *new values inside the
stroke's bounding box* here (one small compressed file per stroke, written atomically and fsynced), saves the whole labels file on a debounce, then clears the entries that save covered.
After a crash (even ``kill -9``), replaying the entries in order onto the last saved labels gives
back every committed stroke. Replay is idempotent: entries hold absolute values, not deltas, so
replaying entries that a save already covered changes nothing.

Entry file ``<seq:08d>.svj``: magic ``SVJ1``, header (codec, seq, y0, y1, x0, x1, crc32 of the
payload, payload length) as little-endian uint32/uint64, then the payload (uint8, C order),
compressed with zstd (about 8x faster than zlib on a whole-image 8192² "accept prediction", which
happens on the GUI thread) or zlib where imagecodecs lacks zstd. A torn or corrupt entry is skipped
with a warning; later entries still apply.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
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

BBox = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, like ImageSource.read


class Journal:
    """The autosave journal of one image (a folder of entry files)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

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

    @property
    def has_entries(self) -> bool:
        return bool(self._entry_files())

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest entry (0 when empty); pass it to ``clear(upto=...)``."""
        files = self._entry_files()
        return files[-1][0] if files else 0

    def __len__(self) -> int:
        return len(self._entry_files())

    def append(self, bbox: BBox, new_values: np.ndarray) -> int:
        """Durably record that ``labels[y0:y1, x0:x1]`` now equals ``new_values``; return its seq."""
        y0, y1, x0, x1 = (int(v) for v in bbox)
        values = np.ascontiguousarray(new_values)
        if values.dtype != np.uint8 or values.shape != (y1 - y0, x1 - x0) or min(y0, x0) < 0:
            raise ValueError(
                f"journal entry must be uint8 of the bbox shape {bbox}, got {values.dtype}{values.shape}"
            )
        raw = values.tobytes()
        payload = imagecodecs.zstd_encode(raw, level=1) if _CODEC == ZSTD else zlib.compress(raw, 1)
        seq = self.last_seq + 1
        header = _HEADER.pack(MAGIC, _CODEC, seq, y0, y1, x0, x1, zlib.crc32(payload), len(payload))
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / f"{seq:08d}{SUFFIX}", header + payload)
        return seq

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
        while the save ran are kept.
        """
        for seq, path in self._entry_files():
            if upto is None or seq <= upto:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if upto is None:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty; stale temps are swept by Project.open

    def __repr__(self) -> str:
        return f"Journal({str(self.folder)!r}, {len(self)} entries)"
