"""Tool and view options: brush size, preserve labels, fill tolerance, overlay opacity, display mode,
and the contrast window over a histogram of the image."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QDoubleRangeSlider, QLabeledSlider

DISPLAY_MODES = (
    ("outlines", "Labels + prediction outlines"),
    ("labels", "Labels"),
    ("prediction", "Prediction"),
    ("confidence", "Confidence heat map"),
    ("uncertainty", "Uncertainty map"),
)
MAX_BRUSH_RADIUS = 200


class _HistogramPlot(pg.PlotWidget):
    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API); pyqtgraph's 600x480 would widen the dock
        return QSize(240, 110)


class ViewPanel(QWidget):
    brush_radius_changed = Signal(int)
    preserve_labels_changed = Signal(bool)
    fill_tolerance_changed = Signal(float)
    opacity_changed = Signal(float)
    mode_changed = Signal(str)
    contrast_changed = Signal(float, float)
    auto_contrast_requested = Signal()
    db_toggled = Signal(bool)  # the user switched linear <-> dB display

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._updating = False

        # --- tools -----------------------------------------------------------------------------
        self.brush = QLabeledSlider(Qt.Orientation.Horizontal)
        self.brush.setRange(1, MAX_BRUSH_RADIUS)
        self.brush.setValue(8)
        self.brush.setToolTip("Brush radius in image pixels ([ and ])")
        self.brush.valueChanged.connect(self._brush_changed)
        self.preserve = QCheckBox("Preserve other labels")
        self.preserve.setToolTip("Brush and fill only paint over unlabeled pixels and the active class")
        self.preserve.toggled.connect(self.preserve_labels_changed)
        self.tolerance = QDoubleSpinBox()
        self.tolerance.setRange(0.0, 1e9)
        self.tolerance.setDecimals(1)
        self.tolerance.setSpecialValueText("labels only")
        self.tolerance.setToolTip("Flood fill also stops where image intensity differs by more than this (0 = off)")
        self.tolerance.valueChanged.connect(self.fill_tolerance_changed)
        tools = QGroupBox("Tools")
        form = QFormLayout(tools)
        form.addRow("Brush size", self.brush)
        form.addRow("Fill tolerance", self.tolerance)
        form.addRow(self.preserve)

        # --- overlay ---------------------------------------------------------------------------
        self.mode = QComboBox()
        for key, text in DISPLAY_MODES:
            self.mode.addItem(text, key)
        self.mode.currentIndexChanged.connect(lambda _i: self.mode_changed.emit(self.mode.currentData()))
        self.opacity = QLabeledSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(60)
        self.opacity.valueChanged.connect(lambda v: self.opacity_changed.emit(v / 100.0))
        overlay = QGroupBox("Overlay")
        oform = QFormLayout(overlay)
        oform.addRow("Show", self.mode)
        oform.addRow("Opacity %", self.opacity)
        from seepview.qt.panels.regions import RegionsBox, uncertainty_bar

        self.uncertainty_bar = uncertainty_bar()
        self.uncertainty_bar.setVisible(False)
        oform.addRow(self.uncertainty_bar)
        self.regions = RegionsBox()  # heat strip + "next uncertain region" of the image on screen

        self.colour_bar = ConfidenceBar()
        self.colour_bar.setVisible(False)
        oform.addRow(self.colour_bar)

        # --- contrast --------------------------------------------------------------------------
        self.histogram = _HistogramPlot()
        self.histogram.setMinimumHeight(90)
        self.histogram.setMaximumHeight(130)
        self.histogram.setMenuEnabled(False)
        self.histogram.setMouseEnabled(x=False, y=False)
        self.histogram.hideAxis("left")
        self.histogram.getPlotItem().setContentsMargins(0, 0, 0, 0)
        self._curve = self.histogram.plot(stepMode="center", fillLevel=0, brush=(120, 160, 220, 150), pen=None)
        self.region = pg.LinearRegionItem(brush=(230, 159, 0, 50))
        self.region.sigRegionChangeFinished.connect(self._region_changed)
        self.histogram.addItem(self.region)
        # A plain range slider: its handle labels overlap when the handles meet, so the readouts are
        # two spin boxes in their own row (editable, and each always legible).
        self.window = QDoubleRangeSlider(Qt.Orientation.Horizontal)
        self.window.sliderReleased.connect(self._slider_changed)
        self.window.valueChanged.connect(self._slider_moved)
        self.low, self.high = QDoubleSpinBox(), QDoubleSpinBox()
        for box, tip in ((self.low, "Values at or below this are black"), (self.high, "Values at or above this are white")):
            box.setDecimals(1)
            box.setRange(-1e12, 1e12)
            box.setKeyboardTracking(False)
            box.setToolTip(tip)
            box.valueChanged.connect(self._spin_changed)
        self.db = QCheckBox("dB")
        self.db.setToolTip("Show intensity as 10·log10(value): the usual SAR display; the histogram and window follow")
        self.db.toggled.connect(self._db_toggled)
        self.auto = QPushButton("Auto")
        self.auto.setToolTip("1–99 percentile of valid pixels")
        self.auto.clicked.connect(self.auto_contrast_requested)
        contrast = QGroupBox("Contrast")
        cl = QVBoxLayout(contrast)
        cl.addWidget(self.histogram)
        cl.addWidget(self.window)
        readouts = QHBoxLayout()
        readouts.addWidget(QLabel("Low"))
        readouts.addWidget(self.low, 1)
        readouts.addWidget(QLabel("High"))
        readouts.addWidget(self.high, 1)
        cl.addLayout(readouts)
        row = QHBoxLayout()
        row.addWidget(self.db)
        row.addStretch(1)
        row.addWidget(self.auto)
        cl.addLayout(row)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(tools)
        layout.addWidget(overlay)
        layout.addWidget(contrast)
        layout.addWidget(self.regions)
        layout.addStretch(1)

    # --- updates from the window -----------------------------------------------------------------
    def set_brush_radius(self, radius: int) -> None:
        self._updating = True
        self.brush.setValue(int(radius))
        self._updating = False

    def set_mode(self, mode: str) -> None:
        index = self.mode.findData(mode)
        if index >= 0 and index != self.mode.currentIndex():
            self.mode.setCurrentIndex(index)
        self.uncertainty_bar.setVisible(mode == "uncertainty")
        self.colour_bar.setVisible(mode == "confidence")

    def set_db(self, on: bool) -> None:
        """Show the current image's display scale (no signal: the window already uses it)."""
        self._updating = True
        self.db.setChecked(bool(on))
        self._updating = False
        suffix = " dB" if on else ""
        for box in (self.low, self.high):
            box.setSuffix(suffix)

    def set_histogram(self, edges: np.ndarray, counts: np.ndarray, lo: float, hi: float) -> None:
        """Show the image histogram (sqrt counts so faint tails stay visible) and the window lo..hi."""
        self._curve.setData(edges, np.sqrt(counts.astype(float)))
        span_lo, span_hi = float(min(edges[0], lo)), float(max(edges[-1], hi))
        if span_hi <= span_lo:
            span_hi = span_lo + 1.0
        self._updating = True
        self.histogram.setXRange(span_lo, span_hi, padding=0.02)
        self.window.setRange(span_lo, span_hi)
        step = (span_hi - span_lo) / 200.0
        for box in (self.low, self.high):
            box.setSingleStep(step)
        self._set_window(lo, hi)
        self._updating = False

    def set_window(self, lo: float, hi: float) -> None:
        self._updating = True
        self._set_window(lo, hi)
        self._updating = False

    def _set_window(self, lo: float, hi: float) -> None:
        self.region.setRegion((lo, hi))
        self.window.setValue((lo, hi))
        self.low.setValue(lo)
        self.high.setValue(hi)

    # --- user input -----------------------------------------------------------------------------
    def _brush_changed(self, value: int) -> None:
        if not self._updating:
            self.brush_radius_changed.emit(int(value))

    def _region_changed(self) -> None:
        if self._updating:
            return
        lo, hi = self.region.getRegion()
        self._emit_window(lo, hi)

    def _slider_changed(self) -> None:
        if self._updating:
            return
        lo, hi = self.window.value()
        self._emit_window(lo, hi)

    def _slider_moved(self, value) -> None:
        """The readouts follow a drag; the image is re-rendered on release."""
        if self._updating:
            return
        self._updating = True
        self.low.setValue(value[0])
        self.high.setValue(value[1])
        self._updating = False

    def _spin_changed(self) -> None:
        if self._updating:
            return
        self._emit_window(self.low.value(), self.high.value())

    def _db_toggled(self, on: bool) -> None:
        if not self._updating:
            self.db_toggled.emit(bool(on))

    def _emit_window(self, lo: float, hi: float) -> None:
        if hi <= lo:
            return
        self._updating = True
        self._set_window(lo, hi)
        self._updating = False
        self.contrast_changed.emit(float(lo), float(hi))


class ConfidenceBar(QWidget):
    """The confidence heat map's colour scale (the canvas's inferno LUT), 0 % to 100 %."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        from PySide6.QtGui import QImage, QPixmap

        from seepview.qt.canvas import confidence_lut

        lut = np.ascontiguousarray(confidence_lut()[:, :3])
        self._image = QImage(lut.tobytes(), 256, 1, 3 * 256, QImage.Format.Format_RGB888).copy()
        self.bar = QLabel()
        self.bar.setFixedHeight(12)
        self.bar.setMinimumWidth(120)
        self.bar.setScaledContents(True)
        self.bar.setPixmap(QPixmap.fromImage(self._image))
        self.bar.setToolTip("Model confidence (max class probability): dark = unsure, bright = sure")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("0 %"))
        layout.addWidget(self.bar, 1)
        layout.addWidget(QLabel("100 %"))
