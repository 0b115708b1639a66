"""Where in this image the model is unsure: a heat strip of block scores, "next uncertain region", and
the uncertainty overlay's colour bar. The ranking is ``seepview.core.queue.rank_regions``."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from seepview.core.queue import Region, RegionMap


def lut_image(lut: np.ndarray) -> QImage:
    """A 256 x 1 RGB image of a (256, 4) LUT's colours (alpha dropped: the bar shows the hue scale)."""
    rgb = np.ascontiguousarray(np.asarray(lut, np.uint8)[:, :3])
    return QImage(rgb.tobytes(), 256, 1, 3 * 256, QImage.Format.Format_RGB888).copy()


class ColourBar(QWidget):
    """A horizontal colour scale with end labels."""

    def __init__(self, lut: np.ndarray, low: str, high: str, tip: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.bar = QLabel()
        self.bar.setFixedHeight(12)
        self.bar.setMinimumWidth(120)
        self.bar.setScaledContents(True)
        self.bar.setPixmap(QPixmap.fromImage(lut_image(lut)))
        self.bar.setToolTip(tip)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel(low))
        layout.addWidget(self.bar, 1)
        layout.addWidget(QLabel(high))


def uncertainty_bar() -> ColourBar:
    from seepview.qt.canvas import uncertainty_lut

    return ColourBar(
        uncertainty_lut(), "sure", "unsure",
        "1 − margin between the two likeliest classes: dark/transparent = sure, yellow = the model cannot decide",
    )


class HeatStrip(QWidget):
    """The block scores of one image as a small heat map (the image's aspect ratio); click a block to go there."""

    block_clicked = Signal(int, int)  # (row, column) of the block

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._grid: np.ndarray | None = None
        self._image: QImage | None = None
        self._current: tuple[int, int] | None = None
        self.setMinimumHeight(40)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Uncertain regions of this image: bright = review first. Click a block to go there.")

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(200, 90)

    def set_grid(self, grid: np.ndarray | None) -> None:
        self._grid = None if grid is None else np.asarray(grid, np.float32)
        self._current = None
        if self._grid is None or self._grid.size == 0:
            self._image = None
        else:
            from seepview.qt.canvas import confidence_lut

            g = self._grid
            span = float(g.max() - g.min())
            levels = np.zeros(g.shape, np.uint8) if span <= 0 else ((g - g.min()) / span * 255).astype(np.uint8)
            rgb = np.ascontiguousarray(confidence_lut()[levels][..., :3])
            h, w = g.shape
            self._image = QImage(rgb.tobytes(), w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        self.update()

    def set_current(self, row: int | None, col: int | None) -> None:
        self._current = None if row is None or col is None else (row, col)
        self.update()

    def _target(self) -> QRectF:
        if self._grid is None:
            return QRectF()
        h, w = self._grid.shape
        scale = min(self.width() / w, self.height() / h)
        return QRectF((self.width() - w * scale) / 2, (self.height() - h * scale) / 2, w * scale, h * scale)

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(40, 40, 40))
        if self._image is None:
            p.setPen(QColor(170, 170, 170))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "no regions (image fits one block)")
            p.end()
            return
        target = self._target()
        p.drawImage(target, self._image)
        if self._current is not None:
            h, w = self._grid.shape
            cw, ch = target.width() / w, target.height() / h
            pen = QPen(QColor(0, 200, 255), 2)
            p.setPen(pen)
            p.drawRect(QRectF(target.x() + self._current[1] * cw, target.y() + self._current[0] * ch, cw, ch))
        p.end()

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt API)
        if self._grid is None:
            return
        target = self._target()
        pos = event.position()
        if not target.contains(pos):
            return
        h, w = self._grid.shape
        col = min(w - 1, int((pos.x() - target.x()) / target.width() * w))
        row = min(h - 1, int((pos.y() - target.y()) / target.height() * h))
        self.block_clicked.emit(row, col)


class RegionsBox(QGroupBox):
    """Heat strip + "Next uncertain region" for the image on screen."""

    region_requested = Signal(object)  # Region to show

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Uncertain regions", parent)
        self._map: RegionMap | None = None
        self._region: Region | None = None
        self.strip = HeatStrip()
        self.strip.block_clicked.connect(self._clicked)
        self.info = QLabel("")
        self.info.setStyleSheet("color: gray")
        self.next_button = QPushButton("Next uncertain region")
        self.next_button.setToolTip("Pan and zoom to the next most uncertain block of this image (U)")
        self.next_button.clicked.connect(self.next_region)
        layout = QVBoxLayout(self)
        layout.addWidget(self.strip)
        row = QHBoxLayout()
        row.addWidget(self.info, 1)
        row.addWidget(self.next_button)
        layout.addLayout(row)
        self.set_regions(None)

    @property
    def regions(self) -> RegionMap | None:
        return self._map

    def set_regions(self, regions: RegionMap | None) -> None:
        """Blocks of the current image (None or a single block: nothing to navigate)."""
        useful = regions is not None and len(regions.regions) > 1
        self._map = regions if useful else None
        self._region = None
        self.strip.set_grid(regions.grid if useful else None)
        self.strip.setVisible(useful)
        self.next_button.setEnabled(useful)
        self.info.setText(f"{len(regions.regions)} blocks of {regions.block}²" if useful else "The image fits in one block.")

    def next_region(self) -> Region | None:
        if self._map is None:
            return None
        self._go(self._map.next_after(self._region))
        return self._region

    def _clicked(self, row: int, col: int) -> None:
        if self._map is None:
            return
        b = self._map.block
        self._go(self._map.region_at(row * b, col * b))

    def _go(self, region: Region | None) -> None:
        if region is None or self._map is None:
            return
        self._region = region
        rank = self._map.regions.index(region) + 1
        b = self._map.block
        self.strip.set_current(region.y0 // b, region.x0 // b)
        self.info.setText(f"region {rank} of {len(self._map.regions)} · score {region.score:.3f}")
        self.region_requested.emit(region)
