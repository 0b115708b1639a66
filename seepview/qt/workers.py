"""Run core functions and generators off the GUI thread with superqt workers.

Core code knows nothing of Qt: a long job is either a generator (progress = what it yields, cancel =
the worker stops resuming it) or a plain function taking ``cancel`` and ``progress`` callables. This
module adapts both to superqt workers, keeps every running worker referenced until it has finished
(PySide deletes unreferenced wrappers under a running thread), and quits + waits for them on close.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator

from PySide6.QtCore import QObject, Signal
from superqt.utils import FunctionWorker, GeneratorWorker, WorkerBase
from superqt.utils._qthreading import WorkerBaseSignals

log = logging.getLogger(__name__)


class TaskSignals(WorkerBaseSignals):
    progress = Signal(object)  # (done, total); object, not tuple/dict: PySide may mangle containers


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
        worker = GeneratorWorker(gen_fn, *args, **kwargs)
        if on_yielded is not None:
            worker.yielded.connect(on_yielded)
        return self._start(worker, on_returned, on_errored, on_finished)

    def start_function(self, fn: Callable, *args, on_returned=None, on_errored=None, on_finished=None, **kwargs):
        """Start a plain function (no cancel): for short I/O-bound jobs only."""
        return self._start(FunctionWorker(fn, *args, **kwargs), on_returned, on_errored, on_finished)

    def _start(self, worker: WorkerBase, on_returned, on_errored, on_finished) -> WorkerBase:
        if on_returned is not None:
            worker.returned.connect(on_returned)
        worker.errored.connect(on_errored if on_errored is not None else _log_error)
        if on_finished is not None:
            worker.finished.connect(on_finished)
        worker.finished.connect(lambda w=worker: self._running.discard(w))
        self._running.add(worker)
        worker.start()
        return worker

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


def _log_error(exc: BaseException) -> None:
    log.error("background job failed: %s", exc, exc_info=exc)
