"""Keys typed into editors and searchable lists go to them, never to the window's shortcuts.

The review window binds single keys (Enter = mark reviewed, digits = active class, 0 = fit, letters =
tools) as window shortcuts, so they work wherever the mouse left the focus. Qt offers a shortcut the
key before the focused widget sees it, and only some widgets claim keys back: Enter typed in the
class-rename editor marked the tile reviewed (and dropped the rename), and typing "0455" in the image
list fitted the view and set class 5. ``FocusKeyGuard`` claims those keys for the focused widget:

- text inputs (line edits, spin boxes, text edits, editable combo boxes, item editors) get every key
  without Ctrl/Alt/Meta, Enter and Escape included;
- widgets with the ``type_to_search`` property (the image list) get printable keys and Enter (which
  opens the row); ``TypeToSearch`` turns the typed keys into a jump to the first row whose image id
  starts with (else contains) what was typed, so "0455" finds scene 045588 even when rows show a
  review-queue score before the id.

Ctrl/Alt shortcuts (Ctrl+S, Ctrl+Z, F-keys) keep working everywhere.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QKeySequenceEdit,
    QLineEdit,
    QPlainTextEdit,
    QTextEdit,
    QWidget,
)

TYPE_TO_SEARCH = "type_to_search"  # dynamic property: set True on a widget to give it typed text
_COMMAND_MODIFIERS = (
    Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.MetaModifier
)
_ENTER = (Qt.Key.Key_Return, Qt.Key.Key_Enter)
_TEXT_INPUTS = (QLineEdit, QAbstractSpinBox, QTextEdit, QPlainTextEdit, QKeySequenceEdit)


def takes_text(widget: QWidget | None) -> bool:
    """Whether ``widget`` (or the spin box / combo box it belongs to) is a place where one types text."""
    while widget is not None:
        if isinstance(widget, _TEXT_INPUTS) or (isinstance(widget, QComboBox) and widget.isEditable()):
            return not getattr(widget, "isReadOnly", lambda: False)()
        if widget.isWindow():
            return False
        widget = widget.parentWidget()
    return False


def claims_key(widget: QWidget | None, key: int, modifiers, text: str) -> bool:
    """Whether a key pressed with ``widget`` focused belongs to it rather than to a window shortcut."""
    if widget is None or modifiers & _COMMAND_MODIFIERS:
        return False
    if takes_text(widget):
        return True
    if widget.property(TYPE_TO_SEARCH):
        return key in _ENTER or (bool(text) and text.isprintable() and not text.isspace())
    return False


class FocusKeyGuard(QObject):
    """Application event filter: accepts ``ShortcutOverride`` for keys the focused widget claims."""

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if (
            event.type() == QEvent.Type.ShortcutOverride
            and isinstance(obj, QWidget)
            and claims_key(obj, event.key(), event.modifiers(), event.text())
        ):
            event.accept()  # the widget receives the key as a normal key press
        return False

    @classmethod
    def install(cls, parent: QObject) -> FocusKeyGuard:
        """One guard for the application, owned by ``parent`` (removed when it is destroyed)."""
        guard = cls(parent)
        app = QApplication.instance()
        app.installEventFilter(guard)
        return guard


class TypeToSearch(QObject):
    """Typing into an item view jumps to the first row whose ``role`` data (the image id) starts with,
    else contains, the text typed so far (case-insensitive); a pause longer than the platform's
    keyboard input interval starts a new search. Backspace shortens the search text.

    ``finished`` is emitted after Enter (the view opens the row) or Escape, so the window can hand the
    keyboard back to the canvas, where the review keys work.
    """

    finished = Signal()

    def __init__(self, view: QAbstractItemView, role=Qt.ItemDataRole.UserRole):
        super().__init__(view)
        self.view, self.role = view, role
        self.text, self._last = "", 0.0
        view.setProperty(TYPE_TO_SEARCH, True)
        view.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if obj is not self.view or event.type() != QEvent.Type.KeyPress or event.modifiers() & _COMMAND_MODIFIERS:
            return False
        if event.key() in (*_ENTER, Qt.Key.Key_Escape):
            self.text = ""
            QTimer.singleShot(0, self.finished.emit)  # after the view has handled the key
            return False
        typed = event.text()
        now = time.monotonic()
        fresh = now - self._last > QApplication.keyboardInputInterval() / 1000.0
        if event.key() == Qt.Key.Key_Backspace and self.text and not fresh:
            self.text = self.text[:-1]
        elif typed and typed.isprintable() and not typed.isspace():
            self.text = typed if fresh else self.text + typed
        else:
            return False
        self._last = now
        self.search(self.text)
        return True

    def search(self, text: str) -> bool:
        """Make the first matching row current (prefix matches before substring ones); False if none."""
        model, needle = self.view.model(), text.casefold()
        rows = [model.index(r, 0) for r in range(model.rowCount())]
        keys = [str(i.data(self.role) or i.data(Qt.ItemDataRole.DisplayRole) or "").casefold() for i in rows]
        for match in (str.startswith, str.__contains__):
            for index, key in zip(rows, keys):
                if needle and match(key, needle):
                    self.view.setCurrentIndex(index)
                    self.view.scrollTo(index)
                    return True
        return False
