"""One exception hierarchy: every failure a user can cause names the file and the reason.

The CLI prints ``str(error)`` as one line and exits 2; the GUI shows it in a message box. Nothing
else is caught broadly, so programming errors still surface as tracebacks in tests.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a regular file that can be opened, in words; None when it is one.

    Says the true reason: a symlink loop, a dangling link, a FIFO or a folder is not "no such file".
    """
    p = Path(os.fsdecode(path))
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if p.is_symlink():
            try:
                target = os.fsdecode(os.readlink(p)).encode("utf-8", "backslashreplace").decode("utf-8")
            except OSError:
                target = "?"
            return f"dangling symbolic link (its target {target} does not exist)"
        if exc.errno == errno.ENOENT:
            return "no such file"
        if exc.errno == errno.ENAMETOOLONG:
            return "file name too long"
        return (exc.strerror or str(exc)).lower()
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if not os.access(p, os.R_OK):
        return "permission denied"
    return None


def io_reason(exc: OSError) -> str:
    """An OSError as the words a user needs (strerror without Python's ``[Errno N]`` decoration)."""
    return (exc.strerror or str(exc)).lower() if isinstance(exc, OSError) else str(exc)


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


class ExportError(SeepviewError):
    """An export cannot be made as asked (output path, format, nothing to export)."""


class UsageError(SeepviewError):
    """A command-line option out of its range (named in the reason)."""


class Cancelled(SeepviewError):
    """The user cancelled a long-running operation."""

    def __init__(self, path: str | os.PathLike | None = None, reason: str = "cancelled"):
        super().__init__(path, reason)
