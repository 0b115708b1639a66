"""Driven by tests/qt/test_recovery.py (not a test module); runs until killed.

``crash_driver.py PROJECT N``: open the review window on a project, paint N strokes with real mouse
events, print what was painted.

``crash_driver.py --session PROJECT SEED``: the review session without a window (a fraction of the
start-up time, so the test can kill it 30+ times): paints one stroke per cell of a grid, a few dabs
each, with Ctrl+S (``save_labels``) and background autosaves (a worker thread, ``autosave_done`` back on
the main thread, as the app does) interleaved at random. Prints ``BEGUN k`` when stroke k is pressed and
``COMMITTED k`` when it is released.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")


def main(project_root: str, strokes: int) -> None:
    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtTest import QTest

    from seepview.core.project import Project
    from seepview.core.session import ReviewSession
    from seepview.qt import main_window
    from seepview.qt.app import make_application, prepare_qt
    from seepview.qt.main_window import MainWindow

    main_window.AUTOSAVE_DELAY_MS = 10**8  # exercise the journal alone: no background save of labels
    prepare_qt(offscreen=True)
    app = make_application()
    window = MainWindow(ReviewSession(Project.open(project_root), load_model=False))
    window.show()
    left, nomod = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier

    def at(x, y):
        return window.canvas.viewport_pos(x + 0.5, y + 0.5)

    def paint():
        window.set_tool("brush")
        window.set_active_class(3)
        window.tools.set_brush_radius(2)
        vp = window.canvas.viewport()
        for i in range(strokes):
            y = 8 + 10 * i
            QTest.mousePress(vp, left, nomod, at(6, y))
            QTest.mouseMove(vp, at(30, y))
            QTest.mouseMove(vp, at(50, y + 3))
            QTest.mouseRelease(vp, left, nomod, at(50, y + 3))
        # One more stroke left open: the one "in progress" when the kill comes.
        QTest.mousePress(vp, left, nomod, at(6, 60))
        QTest.mouseMove(vp, at(40, 60))
        labels = window.session.current.document.labels
        committed = int((labels[:56] == 3).sum())
        print("PAINTED", window.current_id, committed, flush=True)

    window.image_opened.connect(lambda _id: QTimer.singleShot(100, paint))
    app.exec()


CELL = 8  # the session driver's stroke k fills grid cell k (CELL x CELL pixels) with class 1 + k % 7


def cell_of(k: int, width: int) -> tuple[int, int]:
    per_row = width // CELL
    return (k // per_row) * CELL, (k % per_row) * CELL


def session_main(project_root: str, seed: int) -> None:
    import queue
    import random
    import threading
    import time

    import numpy as np

    from seepview.core.history import Atom
    from seepview.core.project import Project
    from seepview.core.session import ReviewSession

    rng = random.Random(seed)
    session = ReviewSession(Project.open(project_root), load_model=False)
    image_id = session.project.entries[0].id
    doc = session.open(image_id).document
    h, w = doc.shape
    done: queue.SimpleQueue = queue.SimpleQueue()
    jobs: queue.SimpleQueue = queue.SimpleQueue()

    def worker():  # the app's background-save worker
        while True:
            job = jobs.get()
            done.put(job())

    threading.Thread(target=worker, daemon=True).start()
    print("READY", flush=True)
    for k in range((h // CELL) * (w // CELL)):
        y, x = cell_of(k, w)
        doc.begin_stroke()
        print("BEGUN", k, flush=True)
        for part in range(4):  # dabs of one stroke, a mouse move apart
            rows = (y + 2 * part, y + 2 * part + 2, x, x + CELL)
            doc.apply(Atom.from_region(doc.labels, rows, np.full((2, CELL), 1 + k % 7, np.uint8)))
            time.sleep(rng.uniform(0, 0.004))
        doc.end_stroke()
        print("COMMITTED", k, flush=True)
        roll = rng.random()
        if roll < 0.2:
            job = session.autosave_job(image_id)
            if job is not None:
                jobs.put(job)
        elif roll < 0.3:
            session.save_labels(image_id)  # Ctrl+S
        while not done.empty():
            session.autosave_done(*done.get())
        time.sleep(rng.uniform(0, 0.003))
    print("FINISHED", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    if sys.argv[1] == "--session":
        session_main(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1], int(sys.argv[2]))
