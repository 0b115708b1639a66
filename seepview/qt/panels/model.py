"""The model panel: which model is active, on which device, and prediction controls + progress."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)


class ModelPanel(QWidget):
    predict_requested = Signal()
    show_confidence_toggled = Signal(bool)
    adapt_toggled = Signal(bool)  # scene adaptation after each Mark reviewed on/off
    resume_requested = Signal()  # lift a rollback's pause on the open image's scene

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.name = QLabel("–")
        self.name.setWordWrap(True)
        self.device = QLabel("–")
        self.state = QLabel("")
        self.state.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setVisible(False)
        self.predict_button = QPushButton("Predict")
        self.predict_button.setToolTip("Run the model on this image again (Ctrl+P)")
        self.predict_button.clicked.connect(self.predict_requested)
        self.confidence = QCheckBox("Show confidence")
        self.confidence.setToolTip("Show the model's confidence as a heat map instead of the labels")
        self.confidence.toggled.connect(self.show_confidence_toggled)

        self.adapted = QLabel("–")
        self.adapted.setWordWrap(True)
        self.adapt = QCheckBox("Adapt to each scene")
        self.adapt.setToolTip("After each Mark reviewed, fit the scene's instant adaptation (seconds) in the "
                              "background; its unreviewed tiles are predicted with it. Your labels are never touched.")
        self.adapt.toggled.connect(self.adapt_toggled)
        self.paused = QLabel()
        self.paused.setWordWrap(True)
        self.paused.setVisible(False)
        self.resume = QPushButton("Resume adapting this scene")
        self.resume.setToolTip("Fit this scene's adaptation now and after each Mark reviewed, on top of the version "
                               "now in use")
        self.resume.clicked.connect(self.resume_requested)
        self.resume.setVisible(False)

        form = QFormLayout()
        form.addRow("Model:", self.name)
        form.addRow("Device:", self.device)
        form.addRow("Adapted:", self.adapted)
        buttons = QHBoxLayout()
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.confidence)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.adapt)
        layout.addWidget(self.paused)
        layout.addWidget(self.resume)
        layout.addWidget(self.progress)
        layout.addWidget(self.state)
        layout.addStretch(1)

    def set_model(self, name: str | None, version: int | None, device: str, problem: str | None = None) -> None:
        if name is None:
            self.name.setText("<i>no model</i>")
            self.name.setToolTip(problem or "")
            self.state.setText(problem or "No model: review and edit labels without predictions.")
        else:
            self.name.setText(f"<b>{name}</b> v{version}")
            self.name.setToolTip("")
            self.state.setText("")
        self.device.setText(device)
        self.predict_button.setEnabled(name is not None)
        self.confidence.setEnabled(name is not None)

    def set_paused(self, scene: str | None, version: str | None) -> None:
        """Show that the open image's ``scene`` is not adapted after reviews since a rollback to ``version``."""
        on = bool(scene and version)
        self.paused.setText(f"Paused for scene {scene} since the rollback to {version}." if on else "")
        self.paused.setVisible(on)
        self.resume.setVisible(on)

    def set_adaptation(self, summary: str | None) -> None:
        """What scene adaptation is active ("adapted on 14 tiles for scene 041870: prior, cv ...") or none."""
        self.adapted.setText(summary or "none (base model)")
        self.adapted.setToolTip(summary or "")  # the whole line, where the panel cuts it short

    def set_running(self, running: bool, text: str = "") -> None:
        self.progress.setVisible(running)
        if running:
            self.progress.setRange(0, 0)  # busy until the first progress report
        self.predict_button.setEnabled(not running and self.confidence.isEnabled())
        self.state.setText(text)

    def set_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            # a percentage: on a whole scene the steps are the network's tiles and then the typing of its slicks
            self.progress.setFormat(f"Predicting… {100 * done // total} %")
