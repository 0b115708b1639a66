"""The one worker wrapper: every exception, RuntimeError included, reaches the UI; warnings reach the status bar."""

from __future__ import annotations

import logging

import pytest

from seepview.core.errors import TrainingError
from seepview.qt.workers import WarningRelay, WorkerSet, describe_error


def _gen(exc):
    yield 1
    raise exc


@pytest.mark.parametrize("exc", [RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"),
                                 TrainingError(None, "loss became nan"), ValueError("bad")])
def test_generator_errors_reach_the_handler_and_finish(qtbot, exc):
    workers = WorkerSet()
    errors, finished, yielded = [], [], []
    workers.start_generator(_gen, exc, on_yielded=yielded.append, on_errored=errors.append,
                            on_finished=lambda: finished.append(True))
    qtbot.waitUntil(lambda: bool(finished), timeout=5_000)
    assert yielded == [1] and errors == [exc]  # the original exception, not a wrapper
    assert workers.running == 0


def test_an_unhandled_error_is_reported_through_failed(qtbot):
    workers = WorkerSet()
    with qtbot.waitSignal(workers.failed, timeout=5_000) as failed:
        workers.start_generator(_gen, RuntimeError("a kernel failed"))
    assert "a kernel failed" in failed.args[0] and "RuntimeError" in failed.args[0]
    assert "out of memory" in describe_error(RuntimeError("CUDA out of memory"))
    assert describe_error(TrainingError("x.tif", "broken")) == "x.tif: broken"


def test_warnings_logged_on_any_thread_reach_the_window(qtbot):
    relay = WarningRelay().install()
    try:
        with qtbot.waitSignal(relay.warned, timeout=5_000) as warned:
            workers = WorkerSet()
            workers.start_function(lambda: logging.getLogger("seepview.core.x").warning("labels/ is a link\nmore"))
        assert warned.args[0] == "labels/ is a link"
    finally:
        relay.remove()
