"""One exception hierarchy: every failure a user can cause names the file and the reason.

The CLI prints ``str(error)`` as one line and exits 2; the GUI shows it in a message box. Nothing
else is caught broadly, so programming errors still surface as tracebacks in tests.
"""

from __future__ import annotations

import os
from pathlib import Path


class SeepviewError(Exception):
    """Base class: ``path`` (may be None) and a human-readable ``reason``."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else Path(path)
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path is None:
            return self.reason
        # os.fsdecode with surrogateescape keeps non-UTF8 names printable instead of crashing.
        name = os.fsdecode(self.path).encode("utf-8", "backslashreplace").decode("utf-8")
        return f"{name}: {self.reason}"

    def __reduce__(self):  # keep pickling (multiprocessing, workers) working with two args
        return (type(self), (self.path, self.reason))


class ImageReadError(SeepviewError):
    """An image file cannot be read or has an unsupported layout/dtype."""


class MaskError(SeepviewError):
    """A mask is unreadable, has the wrong shape/channels, or holds unknown class ids."""


class ClassTableError(SeepviewError):
    """A class table file or edit is invalid."""


class ProjectError(SeepviewError):
    """A project folder or project.json is missing, corrupt or inconsistent."""


class ModelError(SeepviewError):
    """A model file is corrupt, unsafe, or does not match the data."""


class TrainingError(SeepviewError):
    """Training failed (NaN loss, out of memory, crashed worker); the current model is untouched."""


class Cancelled(SeepviewError):
    """The user cancelled a long-running operation."""

    def __init__(self, path: str | os.PathLike | None = None, reason: str = "cancelled"):
        super().__init__(path, reason)
