"""Where training runs and how hard it may push: torch threads, CPU priority, start-up preparation.

The GUI and the CLI share this so that a retrain from the panel behaves like one from ``seepview finetune``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

GUI_NICE = 5  # training yields the CPU to the GUI (higher starves it under outside load)


def gui_threads() -> int:
    """Torch threads while the GUI runs: leave one core to the GUI (1 on a 2-core machine)."""
    return max(1, (os.cpu_count() or 2) - 1)


def prepare_for_training() -> None:
    """Run once in the background soon after start-up, so the first retrain click does not hitch the canvas.

    Imports what training's first step needs (~2 s, part of it holding the GIL), then ``gc.freeze()``: torch,
    Qt and numpy leave ~360 000 long-lived objects, and every full collection walks them all, a 130-260 ms
    pause of every thread, the GUI's included. Frozen objects are skipped; new garbage is still collected.
    """
    import gc

    from seepview.core.retrain.runner import warm_up

    warm_up()
    gc.freeze()


def _lower_priority(nice: int):
    """Lower this thread's CPU priority (Linux: threads are tasks with their own nice value); returns a
    function restoring it, or None. With 1 torch thread the compute runs in this very thread."""
    if nice <= 0 or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        old = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, old + nice))
    except OSError as exc:
        log.info("cannot lower the training thread's priority: %s", exc)
        return None

    def restore() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, old)
        except OSError:  # unprivileged users may not raise priority again: the pooled thread stays low
            log.info("training thread keeps its lowered priority")

    return restore


@contextlib.contextmanager
def training_thread(nice: int = 0):
    """Run training in this thread at lower priority; afterwards give prediction torch's threads back
    (``train`` limits torch's process-wide pool)."""
    import torch

    threads = torch.get_num_threads()
    restore = _lower_priority(nice)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if restore is not None:
            restore()
