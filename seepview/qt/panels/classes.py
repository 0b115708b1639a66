"""The class palette: swatch, editable name, key, visibility and the active class; add and remove.

The panel only reports intent (rename, recolour, visibility, activation, add, remove); the session
changes the class table and the labels and persists them, and the window re-applies the overlay LUT.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from seepview.core.class_edit import default_becomes
from seepview.core.classes import ClassTable

COL_SWATCH, COL_NAME, COL_KEY, COL_VISIBLE = range(4)


def swatch_icon(rgba: tuple[int, int, int, int], size: int = 16) -> QIcon:
    """A colour chip; transparent classes (background) show a checkerboard so they read as "none"."""
    pix = QPixmap(size, size)
    pix.fill(QColor("#d0d0d0"))
    p = QPainter(pix)
    half = size // 2
    p.fillRect(0, 0, half, half, QColor("#a0a0a0"))
    p.fillRect(half, half, half, half, QColor("#a0a0a0"))
    p.fillRect(0, 0, size, size, QColor(*rgba))
    p.setPen(QColor("#303030"))
    p.drawRect(0, 0, size - 1, size - 1)
    p.end()
    return QIcon(pix)


class ClassesPanel(QWidget):
    active_changed = Signal(int)
    visibility_changed = Signal(object)  # list[bool] indexed by class id
    rename_requested = Signal(int, str)
    recolor_requested = Signal(int, object)  # (id, rgba tuple)
    add_requested = Signal(str)
    remove_requested = Signal(int)
    undo_removal_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._table: ClassTable | None = None
        self._visible: list[bool] = []
        self._updating = False
        self.view = QTableWidget(0, 4)
        self.view.setHorizontalHeaderLabels(["", "Class", "Key", "Show"])
        self.view.verticalHeader().setVisible(False)
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(COL_SWATCH, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(COL_KEY, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_VISIBLE, QHeaderView.ResizeMode.ResizeToContents)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed
        )
        self.view.itemChanged.connect(self._item_changed)
        self.view.cellDoubleClicked.connect(self._double_clicked)
        self.view.currentCellChanged.connect(self._current_changed)
        hint = QLabel("Double-click a name to rename, a swatch to recolour.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray")
        self.add_button = QPushButton("Add…")
        self.add_button.setToolTip("Add a class at the end of the table")
        self.add_button.clicked.connect(self._ask_add)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Remove the selected class; if labels use it you choose what its pixels become")
        self.remove_button.clicked.connect(self._ask_remove)
        self.undo_button = QPushButton("Undo removal")
        self.undo_button.setToolTip("Put the last removed class and its pixels back")
        self.undo_button.setEnabled(False)
        self.undo_button.clicked.connect(self.undo_removal_requested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addWidget(self.undo_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.view)
        layout.addLayout(buttons)
        layout.addWidget(hint)

    @property
    def visible(self) -> list[bool]:
        return list(self._visible)

    def set_classes(self, table: ClassTable) -> None:
        """Show ``table``; visibility and the active row are kept across edits."""
        active = self.active_class()
        self._table = table
        self._visible = (self._visible + [True] * len(table))[: len(table)]
        self._updating = True
        self.view.setRowCount(len(table))
        for info in table:
            swatch = QTableWidgetItem(swatch_icon(info.rgba), "")
            swatch.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            swatch.setToolTip("Double-click to change the colour")
            name = QTableWidgetItem(info.name)
            name.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEditable)
            key = QTableWidgetItem(info.key)
            key.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            key.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            shown = QTableWidgetItem()
            shown.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsSelectable)
            shown.setCheckState(Qt.CheckState.Checked if self._visible[info.id] else Qt.CheckState.Unchecked)
            for col, item in ((COL_SWATCH, swatch), (COL_NAME, name), (COL_KEY, key), (COL_VISIBLE, shown)):
                self.view.setItem(info.id, col, item)
        self._updating = False
        self.view.resizeRowsToContents()
        self.set_active(active if active is not None and active < len(table) else min(1, len(table) - 1))

    def set_undo_available(self, available: bool) -> None:
        self.undo_button.setEnabled(bool(available))

    def _ask_add(self) -> None:
        name, ok = QInputDialog.getText(self, "Add class", "Name of the new class:")
        if ok and name.strip():
            self.add_requested.emit(name.strip())

    def _ask_remove(self) -> None:
        row = self.active_class()
        if row is not None:
            self.remove_requested.emit(row)

    def active_class(self) -> int | None:
        row = self.view.currentRow()
        return row if row >= 0 else None

    def set_active(self, class_id: int) -> None:
        if 0 <= class_id < self.view.rowCount() and class_id != self.view.currentRow():
            self.view.setCurrentCell(class_id, COL_NAME)

    def _current_changed(self, row: int, _col: int, previous: int, _pcol: int) -> None:
        if row >= 0 and row != previous:
            self.active_changed.emit(row)

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if self._updating or self._table is None:
            return
        row, col = item.row(), item.column()
        if col == COL_NAME:
            text = item.text().strip()
            if text and text != self._table[row].name:
                self.rename_requested.emit(row, text)
            else:
                self._updating = True
                item.setText(self._table[row].name)
                self._updating = False
        elif col == COL_VISIBLE:
            self._visible[row] = item.checkState() == Qt.CheckState.Checked
            self.visibility_changed.emit(list(self._visible))

    def _double_clicked(self, row: int, col: int) -> None:
        if col != COL_SWATCH or self._table is None:
            return
        r, g, b, a = self._table[row].rgba
        color = QColorDialog.getColor(
            QColor(r, g, b, a), self, f"Colour of {self._table[row].name}", QColorDialog.ColorDialogOption.ShowAlphaChannel
        )
        if color.isValid():
            self.recolor_requested.emit(row, (color.red(), color.green(), color.blue(), color.alpha()))


class RemoveClassDialog(QDialog):
    """"Class X is used by N pixels in M images: its pixels become …" (unlabeled, or another class)."""

    def __init__(self, table: ClassTable, class_id: int, usage: dict[str, int], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"Remove class {table[class_id].name}")
        pixels, images = sum(usage.values()), len(usage)
        text = QLabel(
            f"<b>{table[class_id].name}</b> labels {pixels:,} pixel(s) in {images} image(s). Removing it rewrites "
            "those label files (a backup is kept: <i>Undo removal</i> puts them back). Later classes move up one id."
        )
        text.setWordWrap(True)
        self.becomes = QComboBox()
        for value, name in default_becomes(table, class_id):
            self.becomes.addItem(name, value)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Remove class")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(text)
        row = QHBoxLayout()
        row.addWidget(QLabel("Its pixels become:"))
        row.addWidget(self.becomes, 1)
        layout.addLayout(row)
        layout.addWidget(buttons)

    def choice(self) -> int:
        return int(self.becomes.currentData())
