"""Training in a spawned child process: a crash, an out-of-memory kill or ``kill -9`` of the child becomes
a ``TrainingError`` and the app survives. The child runs the same ``runner.retrain_core`` and streams its
events back through a queue."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue as queue_mod
import shutil
import tempfile
import time
from pathlib import Path

from seepview.core.errors import SeepviewError, TrainingError
from seepview.core.jobs import drive
from seepview.core.retrain.runner import RetrainEvent, RetrainOutcome, retrain_core
from seepview.core.retrain.settings import UNCHANGED

CANCEL_GRACE_S = 1.5  # a child that has not stopped this long after cancel is terminated


def child_main(q, stop, root: str, current_path: str, config, split, out_path: str, clicked_at: float | None = None):
    """Entry point of the spawned training process: run ``retrain_core`` and stream its events."""
    from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint
    from seepview.core.project import Project

    try:
        if config.nice > 0 and hasattr(os, "nice"):
            os.nice(config.nice)
        project = Project.open(root)
        current = load_checkpoint(current_path)
        gen = retrain_core(project, current, config, stop.is_set, split, clicked_at=clicked_at)
        outcome: RetrainOutcome = drive(gen, lambda event: q.put(("event", event)))
        has_candidate = outcome.candidate is not None
        if has_candidate:
            save_checkpoint(out_path, outcome.candidate.model, outcome.candidate.meta)
        q.put(("result", dataclasses.replace(outcome, candidate=None), has_candidate))
    except SeepviewError as exc:
        q.put(("error", type(exc).__name__, None if exc.path is None else str(exc.path), exc.reason))
    except BaseException as exc:  # the process boundary: whatever happened, tell the parent in words
        q.put(("error", "TrainingError", None, f"training process failed: {type(exc).__name__}: {exc}. {UNCHANGED}"))


def retrain_in_child(project, current, config, cancel, split, clicked_at=None):
    """Generator: start the child, relay its events, return its ``RetrainOutcome`` (or raise its error)."""
    from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="seepview-retrain-"))
    current_path, out_path = tmp / "current.safetensors", tmp / "candidate.safetensors"
    save_checkpoint(current_path, current.model, current.meta)
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    stop = ctx.Event()
    child_config = dataclasses.replace(config, process=False)
    proc = ctx.Process(
        target=child_main,
        args=(q, stop, str(project.root), str(current_path), child_config, split, str(out_path), clicked_at),
        name="seepview-retrain",
        daemon=True,
    )
    t0 = time.perf_counter()
    proc.start()
    cancelled_at = None
    try:
        yield RetrainEvent("prepare", f"training process started (pid {proc.pid})", pid=proc.pid)
        while True:
            if cancelled_at is None and cancel():
                stop.set()
                cancelled_at = time.perf_counter()
            if cancelled_at is not None and time.perf_counter() - cancelled_at > CANCEL_GRACE_S:
                proc.terminate()
                proc.join(2)
                return RetrainOutcome(None, None, time.perf_counter() - t0, "cpu", True)
            try:
                msg = q.get(timeout=0.1)
            except queue_mod.Empty:
                if proc.is_alive():
                    continue
                msg = _drain(q)
                if msg is None:
                    code = proc.exitcode
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    raise TrainingError(None, f"the training process stopped unexpectedly ({how}). {UNCHANGED}") from None
            if msg[0] == "event":
                yield msg[1]
            else:
                return _finish(msg, out_path, load_checkpoint)
    finally:
        if proc.is_alive():
            stop.set()
            proc.join(1.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
        q.close()
        q.cancel_join_thread()
        shutil.rmtree(tmp, ignore_errors=True)


def _drain(q):
    """The first message still queued by a child that has exited, or None (it died silently)."""
    try:
        return q.get(timeout=0.5)
    except queue_mod.Empty:
        return None


def _finish(msg, out_path: Path, load_checkpoint) -> RetrainOutcome:
    from seepview.core import errors

    if msg[0] == "error":
        _, kind, path, reason = msg
        cls = getattr(errors, kind, TrainingError)
        if not (isinstance(cls, type) and issubclass(cls, SeepviewError)):
            cls = TrainingError
        raise cls(path, reason)
    _, outcome, has_candidate = msg
    if has_candidate:
        outcome.candidate = load_checkpoint(out_path)
    return outcome
