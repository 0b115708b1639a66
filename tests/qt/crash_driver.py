"""Driven by tests/qt/test_recovery.py (not a test module): open the review window on a project,
paint strokes with real mouse events, print what was painted, then keep running until killed."""

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


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
