"""Run core functions and generators off the GUI thread with superqt workers.

Core code knows nothing of Qt: a long job is either a generator (progress = what it yields, cancel =
the worker stops resuming it) or a plain function taking ``cancel`` and ``progress`` callables. This
module adapts both to superqt workers, keeps every running worker referenced until it has finished
(PySide deletes unreferenced wrappers under a running thread), and quits + waits for them on close.

Every exception reaches the UI: superqt's generator worker takes a ``RuntimeError`` (which is what torch
raises for out-of-memory and most kernel failures) for a deleted Qt object, only warns, and emits neither
``errored`` nor ``finished``. Generators therefore run inside ``_guarded``, which hands such errors on as
``WorkerError``; handlers always receive the original exception, and a job started without an error
handler reports through ``WorkerSet.failed`` (the window shows it in the status bar).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Generator

from PySide6.QtCore import QObject, Signal
from superqt.utils import FunctionWorker, GeneratorWorker, WorkerBase
from superqt.utils._qthreading import WorkerBaseSignals

log = logging.getLogger(__name__)


class TaskSignals(WorkerBaseSignals):
    progress = Signal(object)  # (done, total); object, not tuple/dict: PySide may mangle containers


class WorkerError(Exception):
    """Carries an exception superqt would swallow (a ``RuntimeError`` from a generator) to ``errored``."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


def original_error(exc: BaseException) -> BaseException:
    return exc.original if isinstance(exc, WorkerError) else exc


def _guarded(gen_fn: Callable[..., Generator]) -> Callable[..., Generator]:
    @functools.wraps(gen_fn)
    def run(*args, **kwargs):
        try:
            return (yield from gen_fn(*args, **kwargs))
        except RuntimeError as exc:
            raise WorkerError(exc) from exc

    return run


def describe_error(exc: BaseException) -> str:
    """One line for the user: a SeepviewError's own words, else the kind of failure and its message."""
    from seepview.core.errors import SeepviewError

    exc = original_error(exc)
    if isinstance(exc, SeepviewError):
        return str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "ran out of memory; close other programs or work on a smaller image"
    return f"background job failed: {type(exc).__name__}: {exc}"


PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress signals a second reach the GUI thread


class TaskWorker(WorkerBase):
    """A worker for ``fn(*args, cancel=..., progress=..., **kwargs)``: cooperative cancel via ``quit()``.

    Progress is throttled: a tiled prediction reports thousands of tiles, and each queued signal
    costs the GUI thread an event. (PySide6 6.12.0 also drops a reference to ``True`` on every
    Python-side ``emit``, which kills Python 3.11 after a few thousand emits: avoid that version.)
    """

    def __init__(self, fn: Callable, *args, **kwargs):
        super().__init__(SignalsClass=TaskSignals)
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._last_progress = 0.0

    def _progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.signals.progress.emit((done, total))

    def work(self):
        return self._fn(*self._args, cancel=lambda: self.abort_requested, progress=self._progress, **self._kwargs)


class WorkerSet(QObject):
    """Owns the workers a window started: references, cancellation, and the wait on close."""

    failed = Signal(str)  # a job without its own error handler failed: the message for the user

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._running: set[WorkerBase] = set()

    def start_task(
        self,
        fn: Callable,
        *args,
        on_returned: Callable | None = None,
        on_errored: Callable[[BaseException], None] | None = None,
        on_progress: Callable[[tuple[int, int]], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        **kwargs,
    ) -> TaskWorker:
        """Start ``fn(..., cancel, progress)`` in the thread pool; ``returned`` is not emitted if quit."""
        worker = TaskWorker(fn, *args, **kwargs)
        if on_progress is not None:
            worker.signals.progress.connect(on_progress)
        return self._start(worker, on_returned, on_errored, on_finished)

    def start_generator(
        self,
        gen_fn: Callable[..., Generator],
        *args,
        on_yielded: Callable | None = None,
        on_returned: Callable | None = None,
        on_errored: Callable[[BaseException], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        **kwargs,
    ) -> GeneratorWorker:
        """Start a generator; each yielded value arrives on the GUI thread; ``quit()`` stops at the next yield."""
        worker = GeneratorWorker(_guarded(gen_fn), *args, **kwargs)
        if on_yielded is not None:
            worker.yielded.connect(on_yielded)
        return self._start(worker, on_returned, on_errored, on_finished)

    def start_function(self, fn: Callable, *args, on_returned=None, on_errored=None, on_finished=None, **kwargs):
        """Start a plain function (no cancel): for short I/O-bound jobs only."""
        return self._start(FunctionWorker(fn, *args, **kwargs), on_returned, on_errored, on_finished)

    def _start(self, worker: WorkerBase, on_returned, on_errored, on_finished) -> WorkerBase:
        if on_returned is not None:
            worker.returned.connect(on_returned)
        if on_errored is not None:
            worker.errored.connect(lambda exc, handler=on_errored: handler(original_error(exc)))
        else:
            worker.errored.connect(self._unhandled)
        if on_finished is not None:
            worker.finished.connect(on_finished)
        worker.finished.connect(lambda w=worker: self._running.discard(w))
        self._running.add(worker)
        worker.start()
        return worker

    def _unhandled(self, exc: BaseException) -> None:
        exc = original_error(exc)
        log.error("background job failed: %s", exc, exc_info=exc)
        self.failed.emit(describe_error(exc))

    @property
    def running(self) -> int:
        return len(self._running)

    def cancel_all(self) -> None:
        for worker in list(self._running):
            worker.quit()

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Quit every worker and wait for them (queued signals are still processed by the caller's loop).

        Returns False when some did not stop in time; Python threads cannot be killed, so the caller
        only logs it.
        """
        from PySide6.QtCore import QDeadlineTimer, QThreadPool
        from PySide6.QtWidgets import QApplication

        self.cancel_all()
        deadline = QDeadlineTimer(timeout_ms)
        while self._running and not deadline.hasExpired():
            QThreadPool.globalInstance().waitForDone(50)
            QApplication.processEvents()  # deliver finished signals so _running empties
        if self._running:
            log.warning("%d background job(s) did not stop within %d ms", len(self._running), timeout_ms)
            return False
        return True


class _WarningSignals(QObject):
    warned = Signal(str)


class WarningRelay(logging.Handler):
    """Shows seepview's warnings to the user: a record logged on any thread (a channel conversion, a labels folder
    linked outside the project, a skipped image) reaches ``warned`` on the GUI thread, one line each. The CLI
    prints the same records on stderr."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(level=logging.WARNING)
        self.signals = _WarningSignals(parent)
        self.warned = self.signals.warned

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(RuntimeError):  # the window is gone
            self.signals.warned.emit((record.getMessage().splitlines() or [""])[0])

    def install(self) -> WarningRelay:
        logging.getLogger("seepview").addHandler(self)
        return self

    def remove(self) -> None:
        logging.getLogger("seepview").removeHandler(self)

