"""The file list: every image of the project with its review status and queue score, a status filter,
a name filter, the sort order ("needs review most" follows ``seepview.core.queue``) and navigation."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from seepview.core.project import STATUSES, ImageEntry

STATUS_COLORS = {"unreviewed": "#9e9e9e", "in_progress": "#e69f00", "reviewed": "#009e73"}
STATUS_TEXT = {"unreviewed": "Unreviewed", "in_progress": "In progress", "reviewed": "Reviewed"}
_ID_ROLE = Qt.ItemDataRole.UserRole
SORTS = (("queue", "Needs review most"), ("name", "Project order"))


def status_icon(status: str, size: int = 12) -> QIcon:
    """A filled dot (reviewed), ring with dot (in progress) or hollow ring (unreviewed): not colour alone."""
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    color = QColor(STATUS_COLORS[status])
    p.setPen(color)
    p.setBrush(color if status == "reviewed" else Qt.BrushStyle.NoBrush)
    p.drawEllipse(1, 1, size - 3, size - 3)
    if status == "in_progress":
        p.setBrush(color)
        p.drawEllipse(size // 2 - 2, size // 2 - 2, 4, 4)
    p.end()
    return QIcon(pix)


def error_icon(size: int = 12) -> QIcon:
    """A red disc with a white "!": the badge of an image that cannot be read (status-icon sized)."""
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor("#d55e00"))
    p.drawEllipse(0, 0, size - 1, size - 1)
    p.setPen(QColor("white"))
    font = p.font()
    font.setPixelSize(size - 2)
    font.setBold(True)
    p.setFont(font)
    p.drawText(pix.rect(), Qt.AlignmentFlag.AlignCenter, "!")
    p.end()
    return QIcon(pix)


class FilesPanel(QWidget):
    image_selected = Signal(str)
    next_unreviewed_requested = Signal()
    previous_unreviewed_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._icons = {s: status_icon(s) for s in STATUSES}
        self._entries: list[ImageEntry] = []
        self._current: str | None = None
        self._validation: set[str] = set()  # held out for the retrain gate
        self._order: list[str] = []  # queue order (ids), from the session
        self._scores: dict[str, float] = {}
        self._broken: dict[str, str] = {}
        self._stale: set[str] = set()
        self._error_icon = error_icon()

        self.filter = QComboBox()
        self.filter.addItem("All images", None)
        for status in STATUSES:
            self.filter.addItem(self._icons[status], STATUS_TEXT[status], status)
        self.filter.currentIndexChanged.connect(self._refill)
        self.sort = QComboBox()
        for key, text in SORTS:
            self.sort.addItem(text, key)
        self.sort.setToolTip(
            "Needs review most: unreviewed images by how much the model doubts them (score = uncertainty in and "
            "around predicted seeps plus overall); reviewed images follow"
        )
        self.sort.currentIndexChanged.connect(self._refill)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Filter by name…")
        self.search.setClearButtonEnabled(True)
        self.search.setToolTip("Show only images whose name contains this text (case-insensitive)")
        self.search.textChanged.connect(self._refill)
        self.list = QListWidget()
        self.list.setUniformItemSizes(True)
        self.list.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # Roboflow names are long
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.itemActivated.connect(self._activated)
        self.list.itemClicked.connect(self._activated)
        self.summary = QLabel()
        self.previous_button = QPushButton("◀ Previous")
        self.previous_button.setToolTip("Previous image in the review queue (Shift+N)")
        self.previous_button.clicked.connect(self.previous_unreviewed_requested)
        self.next_button = QPushButton("Next ▶")
        self.next_button.setToolTip("Next image in the review queue (N)")
        self.next_button.clicked.connect(self.next_unreviewed_requested)

        nav = QHBoxLayout()
        nav.addWidget(self.previous_button)
        nav.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        top.addWidget(self.sort, 1)
        layout.addLayout(top)
        layout.addWidget(self.search)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.summary)
        layout.addLayout(nav)

    def set_entries(self, entries: list[ImageEntry]) -> None:
        self._entries = list(entries)
        self._refill()

    def update_entry(self, entry: ImageEntry) -> None:
        """Refresh one image's status (the filter may hide or show it)."""
        self._refill()

    def set_queue(self, order: list[str], scores: dict[str, float], broken: dict[str, str], stale=()) -> None:
        """The review queue (ids most in need first), every known score, unreadable images (with why)."""
        self._order, self._scores, self._broken, self._stale = list(order), dict(scores), dict(broken), set(stale)
        self._refill()

    def set_validation(self, ids) -> None:
        """Images held out for the retrain gate: marked in the list so the user sees what judges new models."""
        ids = set(ids)
        if ids != self._validation:
            self._validation = ids
            self._refill()

    def listed_ids(self) -> list[str]:
        """Ids in the order the list shows them (after filters and sorting)."""
        return [self.list.item(row).data(_ID_ROLE) for row in range(self.list.count())]

    def _sorted(self) -> list[ImageEntry]:
        if self.sort.currentData() != "queue" or not self._order:
            return list(self._entries)
        rank = {image_id: i for i, image_id in enumerate(self._order)}
        last = len(rank)
        # Queued first (by rank); then the rest (reviewed, broken) in project order.
        return sorted(self._entries, key=lambda e: rank.get(e.id, last))

    def _label(self, entry: ImageEntry) -> str:
        score = self._scores.get(entry.id)
        name = f"{entry.id}  [validation]" if entry.id in self._validation else entry.id
        if score is None:
            return name
        return f"{score:.3f}{'~' if entry.id in self._stale else ' '} {name}"

    def visible_ids(self) -> list[str]:
        """Ids of the rows scrolled into view (re-prediction after a retrain starts with these)."""
        viewport = self.list.viewport().rect()
        out = []
        for row in range(self.list.count()):
            item = self.list.item(row)
            if self.list.visualItemRect(item).intersects(viewport):
                out.append(item.data(_ID_ROLE))
        return out

    def set_current(self, image_id: str) -> None:
        self._current = image_id
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(_ID_ROLE) == image_id:
                self.list.blockSignals(True)
                self.list.setCurrentItem(item)
                self.list.blockSignals(False)
                self.list.scrollToItem(item)
                return
        self.list.clearSelection()

    def _refill(self) -> None:
        wanted = self.filter.currentData()
        needle = self.search.text().strip().lower()
        self.list.blockSignals(True)
        self.list.clear()
        for entry in self._sorted():
            if wanted is not None and entry.status != wanted:
                continue
            if needle and needle not in entry.id.lower():
                continue
            broken = self._broken.get(entry.id)
            icon = self._error_icon if broken else self._icons[entry.status]
            item = QListWidgetItem(icon, self._label(entry))
            item.setData(_ID_ROLE, entry.id)
            tip = f"{entry.id} — {STATUS_TEXT[entry.status]}" + (f" ({entry.status_time})" if entry.status_time else "")
            if entry.id in self._scores:
                tip += f"\nreview score {self._scores[entry.id]:.4f}" + (
                    " (previous model; updating)" if entry.id in self._stale else "")
            if entry.id in self._validation:
                tip += "\nheld out for validation: it judges every new model and is never trained on"
                font = item.font()
                font.setItalic(True)
                item.setFont(font)
            if broken:
                tip += f"\ncannot be read: {broken} (not in the review queue)"
                item.setForeground(QColor("#d55e00"))
            item.setToolTip(tip)
            self.list.addItem(item)
        self.list.blockSignals(False)
        reviewed = sum(e.status == "reviewed" for e in self._entries)
        self.summary.setText(f"{reviewed} of {len(self._entries)} reviewed")
        if self._current is not None:
            self.set_current(self._current)

    def _activated(self, item: QListWidgetItem) -> None:
        image_id = item.data(_ID_ROLE)
        if image_id != self._current:
            self.image_selected.emit(image_id)
