"""Starting the review app: ``seepview [PATH]`` and ``seepview --screenshot OUT.png [PATH]``.

Qt set-up happens here and only here: the binding choice for pyqtgraph, application name and
organisation (they key QSettings), and the last-resort handler that turns a ``SeepviewError`` raised
in any slot into a message box instead of a crash.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

SCREENSHOT_TIMEOUT_S = 120.0
SCREENSHOT_SIZE = (1400, 900)

log = logging.getLogger(__name__)


def prepare_qt(offscreen: bool) -> None:
    """Choose the platform and pyqtgraph's binding before any Qt import (scripts and benchmarks too)."""
    if offscreen:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")
    import pyqtgraph as pg
    import PySide6.QtWidgets  # noqa: F401  (must come before pyqtgraph picks a binding)

    pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)


def make_application():
    """The QApplication (existing one reused), named so QSettings lands in seepview's own file."""
    from PySide6.QtWidgets import QApplication

    from seepview import __version__

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "seepview"])
    app.setApplicationName("seepview")
    app.setOrganizationName("seepview")
    app.setApplicationVersion(__version__)
    return app


def open_session(path: str | os.PathLike | None):
    """The ReviewSession for PATH (or the demo); raises SeepviewError for anything unusable."""
    from seepview.core.paths import user_data_dir
    from seepview.core.session import ReviewSession, resolve_project

    return ReviewSession(resolve_project(path, user_data_dir()))


class _App:
    """Keeps the current window and replaces it when the user opens another project."""

    def __init__(self):
        self.window = None

    def show(self, session) -> None:
        from seepview.qt.main_window import MainWindow

        old = self.window
        self.window = MainWindow(session)
        self.window.open_requested.connect(self.open_path)
        self.window.show()
        if old is not None:
            old.close()
            old.deleteLater()

    def open_path(self, path: str) -> None:
        from seepview.core.errors import SeepviewError

        try:
            session = open_session(path)
        except SeepviewError as exc:
            self.window.show_error(exc)
            return
        self.show(session)


def _install_excepthook() -> None:
    """A SeepviewError escaping a slot is shown to the user; anything else is logged with its traceback
    and reported, but the app keeps running (Qt would otherwise abort on some platforms)."""
    from PySide6.QtWidgets import QApplication, QMessageBox

    from seepview.core.errors import SeepviewError

    def hook(exc_type, exc, tb):
        if isinstance(exc, SeepviewError):
            text = str(exc)
        else:
            traceback.print_exception(exc_type, exc, tb)
            text = f"Internal error: {exc_type.__name__}: {exc}\n\nDetails were written to the terminal."
        if headless():  # nobody could close a modal box
            print(f"seepview: error: {text.splitlines()[0]}", file=sys.stderr)
            return
        parent = QApplication.activeWindow()
        QMessageBox.warning(parent, "seepview", text)

    sys.excepthook = hook


def headless() -> bool:
    """True when no user can answer a dialog: an offscreen/minimal Qt platform, or Linux without a display."""
    if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal", "vnc"):
        return True
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_app(path: str | os.PathLike | None = None, screenshot: str | os.PathLike | None = None) -> int:
    """Run the GUI; returns the process exit code. Without a display errors are printed, never shown in a
    dialog nobody can close."""
    if screenshot is None and headless() and not os.environ.get("QT_QPA_PLATFORM"):
        print(
            "seepview: error: no display (DISPLAY and WAYLAND_DISPLAY are unset); use "
            "seepview --screenshot OUT.png [PATH], or set QT_QPA_PLATFORM=offscreen",
            file=sys.stderr,
        )
        return 2
    prepare_qt(offscreen=screenshot is not None)
    app = make_application()
    from PySide6.QtWidgets import QMessageBox

    from seepview.core.errors import SeepviewError

    try:
        session = open_session(path)
    except SeepviewError as exc:
        if screenshot is not None or headless():
            print(f"seepview: error: {exc}", file=sys.stderr)
        else:
            QMessageBox.critical(None, "seepview", f"Cannot open this:\n\n{exc}")
        return 2
    holder = _App()
    holder.show(session)
    if screenshot is not None:
        return take_screenshot(app, holder.window, Path(screenshot))
    _install_excepthook()
    return app.exec()


def take_screenshot(app, window, out: Path, timeout_s: float = SCREENSHOT_TIMEOUT_S) -> int:
    """Wait until the first image and its prediction are shown (or there is no model), save a PNG."""
    from PySide6.QtCore import QEventLoop, QTimer

    window.resize(*SCREENSHOT_SIZE)
    loop = QEventLoop()
    state = {"timed_out": False, "failed": None}

    def check():
        session = window.session
        current = session.current
        if current is None:
            return
        if session.checkpoint is None or current.prediction is not None:
            QTimer.singleShot(200, loop.quit)  # let the canvas paint the overlay

    def failed(message):
        state["failed"] = message
        loop.quit()

    def timed_out():
        state["timed_out"] = True
        loop.quit()

    window.prediction_shown.connect(lambda _id: check())
    window.image_opened.connect(lambda _id: check())
    window.prediction_failed.connect(failed)
    window.error_shown.connect(failed)  # e.g. the first image cannot be read: do not wait for nothing
    QTimer.singleShot(int(timeout_s * 1000), timed_out)
    QTimer.singleShot(0, check)
    loop.exec()
    if state["timed_out"]:
        print(f"seepview: no prediction after {timeout_s:.0f} s; saving the window as it is", file=sys.stderr)
    if state["failed"]:
        print(f"seepview: warning: {state['failed']}", file=sys.stderr)
    app.processEvents()
    ok = window.grab().save(str(out), "PNG")
    window.close()
    if not ok:
        print(f"seepview: error: {out}: cannot write the screenshot", file=sys.stderr)
        return 2
    print(out)
    return 0
