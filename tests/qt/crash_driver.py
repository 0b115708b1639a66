"""Driven by tests/qt/test_recovery.py: open the review window on a project, paint strokes with real
mouse events, report, then idle until killed (SIGKILL). Not a test module itself."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")


def main(project_root: str, strokes: int) -> None:
    from PySide6.QtCore import QTimer

    from seepview.core.project import Project
    from seepview.core.session import ReviewSession
    from seepview.qt.app import _prepare_qt, make_application
    from seepview.qt.main_window import MainWindow

    _prepare_qt(offscreen=True)
    app = make_application()
    window = MainWindow(ReviewSession(Project.open(project_root), load_model=False))
    window.resize(1000, 700)
    window.show()

    def paint():
        from tests_qt_helpers import drag  # noqa: I001 (path set below)

        window.actions_by_name["tool_brush"].trigger()
        window.set_active_class(3)
        for i in range(strokes):
            y = 10 + 12 * i
            drag(window.canvas, [(8, y), (40, y), (56, y + 4)])
            app.processEvents()
        labels = window.session.current.document.labels
        print("PAINTED", window.current_id, int((labels == 3).sum()), flush=True)

    window.image_opened.connect(lambda _id: QTimer.singleShot(50, paint))
    app.exec()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1], int(sys.argv[2]))
