"""The training panel: "Retrain on my corrections", live progress, the gate's verdict, model versions.

Thin on purpose: the loop is ``seepview.core.retrain.retrain_and_record`` (run in the window's worker
wrapper, optionally in a child process); thread policy, promotion and re-prediction order are
``seepview.core.retrain`` too. The panel never swaps the model itself: it emits ``model_promoted(checkpoint)``
and the window calls ``ReviewSession.set_model`` on the GUI thread; then the panel re-predicts unreviewed
images in the background (labels are never touched).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import threading
import time
from collections.abc import Callable

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from seepview.core import retrain
from seepview.core.errors import SeepviewError
from seepview.core.model.metrics import miou_binary_score
from seepview.core.retrain import policy
from seepview.core.versions import ModelRegistry
from seepview.qt.workers import describe_error

log = logging.getLogger(__name__)

GOOD = QColor(0, 140, 70)
BAD = QColor(200, 40, 30)
PLOT_INTERVAL_MS = 150  # redraw the curves at most this often (steps can arrive much faster)


#: What "Promote anyway" does, for each verdict it is offered on.
_PROMOTE_TIPS = {
    "rejected": "Use the rejected model even though it may be worse on the held-out validation data",
    "too few units to promote": "Use the new model: it passed on the held-out validation data, but on too few "
                                "units for an automatic promotion",
    "not enough evidence": "Use the new model without a verdict: there was too little held-out data to judge it",
    "promoted": "",
}


class TrainingPanel(QWidget):
    """Binds a ``ReviewSession`` to the retrain loop. The window binds Ctrl+T to ``start``."""

    model_promoted = Signal(object)  # Checkpoint: the window swaps it in (ReviewSession.set_model)
    prediction_ready = Signal(object)  # PredictionResult stored by the background re-predict
    finished = Signal(object)  # RetrainOutcome, or the exception that stopped training (UI already reset)
    validation_changed = Signal(object)  # set of image ids holding validation data (the file list marks them)

    def __init__(self, session, workers=None, parent: QWidget | None = None):
        super().__init__(parent)
        from seepview.qt.workers import WorkerSet

        self.session = session
        self.workers = workers if workers is not None else WorkerSet(self)
        self.visible_ids: Callable[[], list[str]] = list  # the window may give the file list's visible rows
        self.config_overrides: dict = {}  # RetrainConfig fields to force (tests, benchmarks, power users)
        self._worker = None
        self._image_id: str | None = None
        self._split = None  # the project's current ValidationSplit, once its rule is recorded
        self._repredict_worker = None
        self._repredict_group: str | None = None  # the running re-predict's scene (None = all)
        self._repredict_pending = _NOTHING  # a re-predict asked for while one ran: its scene (None = all)
        self._cancel = threading.Event()
        self._started = 0.0
        self._outcome = None
        self._result = None  # RetrainOutcome or the exception, for the ``finished`` signal
        self._rejected_version = None
        self._steps: list[float] = []
        self._losses: list[float] = []
        self._val_x: list[float] = []
        self._val_y: list[float] = []
        self._plot_dirty = False

        # --- controls
        self.retrain_button = QPushButton("Retrain on my corrections")
        self.retrain_button.setToolTip(
            "Fine-tune the current model on your labels (Ctrl+T). Training uses a snapshot: keep editing."
        )
        self.retrain_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop training; the current model stays as it is")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.budget = QComboBox()
        self.budget.addItem("Quick", "quick")
        self.budget.addItem("Thorough", "thorough")
        # may be narrower than its longest item, so the row (with the seconds box) fits a narrow dock
        self.budget.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.budget.setMinimumContentsLength(6)
        self.budget.setToolTip("Quick: a fixed time budget. Thorough: more epochs, stops when validation stalls.")
        self.seconds = QSpinBox()
        self.seconds.setRange(10, 3600)
        self.seconds.setSingleStep(30)
        self.seconds.setSuffix(" s")
        self.seconds.setValue(int(retrain.RetrainConfig.seconds))
        self.seconds.setToolTip("Quick budget, from the click to the verdict (evaluation and saving included)")
        self.budget.currentIndexChanged.connect(
            lambda *_: self.seconds.setEnabled(self.budget.currentData() == "quick")
        )
        self.tolerance = QDoubleSpinBox()
        self.tolerance.setRange(0.0, 0.2)
        self.tolerance.setValue(retrain.TOLERANCE)
        self.tolerance.setSingleStep(0.005)
        self.tolerance.setDecimals(3)
        self.tolerance.setToolTip(
            "The new model is promoted only if, on the held-out validation data, the low end of the 90% "
            "bootstrap interval of its score difference (score = mean of mIoU and binary seep IoU) is above "
            "minus this"
        )
        self.promote_min_units = QSpinBox()
        self.promote_min_units.setRange(retrain.MIN_UNITS, 10_000)
        self.promote_min_units.setValue(retrain.RetrainConfig.promote_min_units)
        self.promote_min_units.setSuffix(" held-out units")
        self.promote_min_units.setToolTip(
            "A new model is promoted automatically only when the gate judged it on at least this many held-out "
            "tiles or blocks; on fewer, a pass is shown and you may promote it by hand. On 5-7 tiles of one scene "
            "the gate passed fine-tunes that were worse elsewhere in the scene"
        )
        self.correction_weight = QDoubleSpinBox()
        self.correction_weight.setRange(1.0, 10.0)
        self.correction_weight.setSingleStep(0.5)
        self.correction_weight.setDecimals(1)
        self.correction_weight.setSuffix("×")
        self.correction_weight.setValue(retrain.CORRECTION_WEIGHT)
        self.correction_weight.setToolTip(
            "Loss weight of pixels you changed from the model's prediction, relative to pixels you left as they were"
        )
        self.process = QCheckBox("Train in a separate process")
        self.process.setToolTip("Isolates training: a crash or out-of-memory kill cannot take the app down")
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.progress.setValue(0)
        self.state = QLabel("")
        self.state.setWordWrap(True)

        # --- live curves: loss per step (left axis), validation mIoU per epoch (right axis)
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMinimumHeight(140)
        self.plot.setLabel("left", "loss")
        self.plot.setLabel("bottom", "step")
        self.plot.addLegend(offset=(-5, 5))
        self.loss_curve = self.plot.plot([], [], pen=pg.mkPen((0, 114, 178), width=1.5), name="loss")
        item = self.plot.getPlotItem()
        self._miou_view = pg.ViewBox()
        item.showAxis("right")
        item.getAxis("right").setLabel("selection score")
        item.scene().addItem(self._miou_view)
        item.getAxis("right").linkToView(self._miou_view)
        self._miou_view.setXLink(item)
        self._miou_view.setYRange(0, 1)
        self.miou_curve = pg.PlotDataItem(
            [], [], pen=pg.mkPen((213, 94, 0), width=2), symbol="o", symbolSize=5, symbolBrush=(213, 94, 0)
        )
        self._miou_view.addItem(self.miou_curve)
        # Thorough runs only: the score (mean of mIoU and binary IoU, the gate's metric) on the training images
        # held back to choose the epoch; the gate's own data is never looked at during training.
        item.legend.addItem(self.miou_curve, "selection score")
        item.vb.sigResized.connect(self._sync_views)
        self._plot_timer = QTimer(self)
        self._plot_timer.setInterval(PLOT_INTERVAL_MS)
        self._plot_timer.timeout.connect(self._redraw)

        # --- the gate's verdict
        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["class", "before", "after", "Δ IoU"])
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setVisible(False)
        self.promote_button = QPushButton("Promote anyway")
        self.promote_button.setToolTip(_PROMOTE_TIPS["rejected"])
        self.promote_button.setVisible(False)
        self.promote_button.clicked.connect(self.promote_rejected)

        # --- the fixed validation set (shown, and changeable on purpose only)
        self.validation = QLabel("")
        self.validation.setWordWrap(True)
        self.reset_validation_button = QPushButton("Choose again…")
        self.reset_validation_button.setToolTip(
            "Draw a new validation set at the next retrain (CLI: seepview finetune PROJECT --reset-validation). "
            "Scores of older versions are then no longer comparable."
        )
        self.reset_validation_button.clicked.connect(self.reset_validation)
        self.hold_out = QCheckBox("Hold out this image for validation")
        self.hold_out.setToolTip(
            "Validation images judge every new model and are never trained on. Reviewed tiles are held out by a "
            "fixed rule; tick or untick to decide for this image yourself."
        )
        self.hold_out.toggled.connect(self._hold_out_toggled)

        # --- versions
        self.versions = QTreeWidget()
        self.versions.setHeaderLabels(["version", "parent", "learned from", "val mIoU", "data", "created"])
        self.versions.setRootIsDecorated(False)
        self.versions.setAlternatingRowColors(True)
        self.versions.setMinimumHeight(90)
        self.versions.itemDoubleClicked.connect(lambda *_: self.rollback_selected())
        self.rollback_button = QPushButton("Use selected version")
        self.rollback_button.setToolTip("Roll back (or forward) to the selected model version")
        self.rollback_button.clicked.connect(self.rollback_selected)

        settings = QFormLayout()
        budget_row = QHBoxLayout()
        budget_row.addWidget(self.budget, 1)
        budget_row.addWidget(self.seconds)
        settings.addRow("Budget:", budget_row)
        settings.addRow("Tolerance:", self.tolerance)
        settings.addRow("Auto-promote from:", self.promote_min_units)
        settings.addRow("Correction weight:", self.correction_weight)
        settings.addRow("", self.process)
        buttons = QHBoxLayout()
        buttons.addWidget(self.retrain_button, 1)
        buttons.addWidget(self.cancel_button)
        # Everything sits in a scroll area: in a short dock it scrolls instead of squeezing the plot and the
        # wrapped verdict on top of each other.
        content = QWidget()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(buttons)
        layout.addLayout(settings)
        layout.addWidget(self.progress)
        layout.addWidget(self.state)
        # The verdict and what it rests on sit right under the status line; the curves below them.
        layout.addWidget(self.verdict)
        layout.addWidget(self.promote_button)
        validation_row = QHBoxLayout()
        validation_row.addWidget(self.validation, 1)
        validation_row.addWidget(self.reset_validation_button)
        layout.addLayout(validation_row)
        layout.addWidget(self.hold_out)
        layout.addWidget(self.table, 2)
        layout.addWidget(self.plot, 2)
        layout.addWidget(QLabel("<b>Model versions</b>"))
        layout.addWidget(self.versions, 2)
        layout.addWidget(self.rollback_button)
        self._load_settings()
        self.refresh_versions()

    # --- public API ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _chosen(self) -> retrain.RetrainConfig:
        """What the user set in the panel (threads limited so the GUI keeps a core)."""
        return retrain.RetrainConfig(
            budget=self.budget.currentData(),
            seconds=float(self.seconds.value()),
            tolerance=float(self.tolerance.value()),
            promote_min_units=int(self.promote_min_units.value()),
            correction_weight=float(self.correction_weight.value()),
            threads=policy.gui_threads(),
            nice=policy.GUI_NICE,
            process=self.process.isChecked(),
        )

    def config(self) -> retrain.RetrainConfig:
        """The settings the next retrain runs with: the panel's, then ``config_overrides``."""
        return dataclasses.replace(self._chosen(), **self.config_overrides)

    def _load_settings(self) -> None:
        """Show the project's recorded retrain choices (``retrain.project_settings``)."""
        setters = {
            "budget": lambda v: self.budget.setCurrentIndex(max(0, self.budget.findData(v))),
            "seconds": lambda v: self.seconds.setValue(round(v)),
            "tolerance": self.tolerance.setValue,
            "promote_min_units": self.promote_min_units.setValue,
            "correction_weight": self.correction_weight.setValue,
            "process": self.process.setChecked,
        }
        for name, value in retrain.project_settings(self.session.project).items():
            setters[name](value)

    def start(self) -> None:
        """Snapshot the corrections and retrain in the background (no-op while running)."""
        if self.running:
            return
        current = self.session.checkpoint
        if current is None:
            self._say(self.session.model_problem or "No model to retrain: open a project with a model.")
            return
        try:
            self.session.save_all()  # the snapshot reads labels from disk: flush what is on screen
            retrain.store_project_settings(self.session.project, self._chosen())  # before the worker exists
        except SeepviewError as exc:
            self._say(str(exc))
            return
        self._reset_view()
        self._cancel.clear()
        self._started = time.perf_counter()
        self.retrain_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.progress.setFormat("preparing…")
        self._say("Collecting your corrections…")
        self._plot_timer.start()
        self._worker = self.workers.start_generator(
            retrain.retrain_and_record,
            self.session.project,
            current,
            self.config(),
            self._cancel.is_set,
            on_yielded=self._on_event,
            on_returned=self._on_returned,
            on_errored=self._on_error,
            on_finished=self._on_finished,
        )

    def cancel(self) -> None:
        """Ask training to stop; it ends within a step (a child process is killed after a grace)."""
        if self.running:
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self._say("Cancelling…")

    def confirm_stop(self) -> bool:
        """For the window's closeEvent: True when closing may go on (asks first if training runs)."""
        if not self.running:
            return True
        answer = QMessageBox.question(
            self, "Training is running", "Stop training and close? The current model stays as it is.",
        )
        if answer != QMessageBox.StandardButton.Yes:
            return False
        self.stop_and_wait()
        return True

    def stop_and_wait(self, timeout_s: float = 5.0) -> None:
        """Cancel and wait (processing events) until the worker has finished."""
        from PySide6.QtWidgets import QApplication

        self.cancel()
        self._repredict_pending = _NOTHING
        if self._repredict_worker is not None:
            self._repredict_worker.quit()
        deadline = time.perf_counter() + timeout_s
        while (self.running or self._repredict_worker is not None) and time.perf_counter() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)

    def reset_validation(self) -> None:
        if self.running:
            return
        answer = QMessageBox.question(
            self, "Choose new validation images?",
            "The next retrain will reserve a new validation set. Scores of older versions will no longer be "
            "comparable with new ones. Continue?",
        )
        if answer == QMessageBox.StandardButton.Yes:
            retrain.reset_validation(self.session.project)
            self.refresh_versions()

    def show_validation(self) -> None:
        """Show the held-out set (called again whenever a review status changes: a reviewed tile may join it)."""
        project = self.session.project
        info = project.settings.get(retrain.VALIDATION_INFO_KEY) or {}
        if info.get("version") != 2 and not self.running and any(e.status == "reviewed" for e in project.entries):
            try:  # fix the rule (its salt) once there is something to hold out, so the user sees it at once
                retrain.ensure_validation_split(project)
            except SeepviewError as exc:
                log.warning("cannot record the validation split: %s", exc)
            info = project.settings.get(retrain.VALIDATION_INFO_KEY) or {}
        if info.get("version") != 2:
            self._split = None
            self.validation.setText("Validation: held out automatically from the tiles you mark reviewed.")
            self.validation.setToolTip("")
            self.validation_changed.emit(set())
        else:
            split = self._split = retrain.validation_split(project)
            self.validation_changed.emit(split.image_ids)
            self.validation.setText(
                f"Validation: {split.describe()} held out (about {split.fraction:.0%} of reviewed tiles, and blocks "
                "of large images); never trained on."
            )
            self.validation.setToolTip("\n".join(u.name for u in split.units()) or "nothing held out yet")
        self.reset_validation_button.setEnabled(info.get("version") == 2)
        self._show_hold_out()

    def show_image(self, image_id: str | None) -> None:
        """The window opened ``image_id``: show whether it is held out for validation."""
        self._image_id = image_id
        self._show_hold_out()

    def _show_hold_out(self) -> None:
        image_id = self._image_id
        self.hold_out.blockSignals(True)
        try:
            split = self._split  # computed by show_validation: opening an image does not recompute it
            if image_id is None or split is None:
                self.hold_out.setEnabled(False)
                self.hold_out.setChecked(False)
                return
            self.hold_out.setEnabled(not self.running)
            self.hold_out.setChecked(image_id in split.image_ids)
            blocks = split.blocks.get(image_id)
            self.hold_out.setText(
                f"Hold out this image for validation ({len(blocks)} block(s))" if blocks and image_id not in split.whole
                else "Hold out this image for validation"
            )
        finally:
            self.hold_out.blockSignals(False)

    def _hold_out_toggled(self, checked: bool) -> None:
        image_id = self._image_id
        if image_id is None or self.running:
            return
        try:
            retrain.set_validation(self.session.project, image_id, checked)
        except SeepviewError as exc:
            self._say(str(exc))
        self.show_validation()

    def refresh_versions(self) -> None:
        """Show the registry: one row per version, the active one bold, lineage in the columns."""
        self.show_validation()
        self.versions.clear()
        registry = ModelRegistry(self.session.project)
        try:
            versions, active = registry.versions(), registry.active
        except SeepviewError as exc:
            self._say(str(exc))
            return
        for v in reversed(versions):
            miou = (v.metrics or {}).get("miou")
            row = QTreeWidgetItem([
                f"{v.key}{'  ✓ active' if active and v.key == active.key else ''}",
                v.parent or "–",
                _learned_from(v),
                "–" if miou is None else f"{miou:.3f}",
                v.fingerprint[:8] or "–",
                v.created.replace("T", " ")[:16],
            ])
            per_class = (v.metrics or {}).get("per_class_iou") or {}
            tip = "\n".join(f"{k}: {'–' if x is None else f'{x:.3f}'}" for k, x in per_class.items())
            row.setToolTip(0, tip or v.note or v.key)
            row.setData(0, Qt.ItemDataRole.UserRole, v.key)
            if active and v.key == active.key:
                font = row.font(0)
                font.setBold(True)
                row.setFont(0, font)
            self.versions.addTopLevelItem(row)
        for col in range(self.versions.columnCount()):
            self.versions.resizeColumnToContents(col)

    def rollback_selected(self) -> None:
        item = self.versions.currentItem()
        if item is None or self.running:
            return
        self._use_version(item.data(0, Qt.ItemDataRole.UserRole))

    def promote_rejected(self) -> None:
        if self._rejected_version is not None:
            self._use_version(self._rejected_version)
            self._rejected_version = None
            self.promote_button.setVisible(False)

    # --- worker callbacks (GUI thread) -----------------------------------------------------------
    def _on_event(self, event) -> None:
        kind = event.kind
        if kind == "step":
            self._steps.append(event.step)
            self._losses.append(event.loss)
            self._plot_dirty = True
            if self.progress.maximum() != event.steps and event.steps:
                self.progress.setRange(0, event.steps)
            self.progress.setValue(min(event.step, self.progress.maximum()))
            eta = f" · ETA {event.eta_s:.0f} s" if event.eta_s is not None else ""
            self.progress.setFormat(f"step {event.step} · epoch {event.epoch}{eta}")
        elif kind == "epoch":
            score = miou_binary_score(event.val)
            if score is not None:
                self._val_x.append(event.step)
                self._val_y.append(score)
                self._plot_dirty = True
            self._say(f"Epoch {event.epoch}: loss {event.loss:.3f}"
                      + (f", selection score {score:.3f}" if score is not None else ""))
        elif kind == "done":
            self.progress.setRange(0, 0)
            self.progress.setFormat("scoring…")
        elif kind in ("prepare", "evaluate"):
            self._say(event.message)
        elif kind == "gate":
            self._show_decision(event.decision)

    def _on_returned(self, outcome) -> None:
        if isinstance(outcome, BaseException):  # superqt returns (not raises) RuntimeErrors
            self._on_error(outcome)
            return
        self._outcome = self._result = outcome
        seconds = time.perf_counter() - self._started
        if outcome is None or outcome.cancelled:
            self._say("Cancelled. The current model is unchanged.")
            return
        decision, version = outcome.decision, outcome.version
        self.refresh_versions()
        if decision.promote:
            self._say(f"Promoted {version.key} after {seconds:.0f} s on {outcome.device}.")  # why: the verdict below
            self._swap(outcome.candidate)
        else:
            self._rejected_version = version.key
            self.promote_button.setVisible(True)
            self._say(f"Kept the current model after {seconds:.0f} s on {outcome.device}; "
                      f"the candidate is stored as {version.key}.")

    def _on_error(self, exc: BaseException) -> None:
        message = describe_error(exc)
        if not isinstance(exc, SeepviewError):
            log.error("retrain failed", exc_info=exc)
        self._say(f"⚠ {message}")
        self.state.setStyleSheet("color: rgb(200, 40, 30);")
        self._result = exc

    def _on_finished(self) -> None:
        self._worker = None
        self._plot_timer.stop()
        self._redraw()
        self.retrain_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self._outcome is not None and not self._outcome.cancelled else 0)
        self.progress.setFormat("done" if self._outcome is not None and not self._outcome.cancelled else "stopped")
        self.show_validation()
        self.finished.emit(self._result)

    # --- helpers -----------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        self.state.setStyleSheet("")
        self.state.setText(text)

    def _reset_view(self) -> None:
        self._outcome = self._result = None
        self._rejected_version = None
        self._steps, self._losses, self._val_x, self._val_y = [], [], [], []
        self.loss_curve.setData([], [])
        self.miou_curve.setData([], [])
        self.table.setVisible(False)
        self.verdict.setText("")
        self.promote_button.setVisible(False)

    def _sync_views(self) -> None:
        self._miou_view.setGeometry(self.plot.getPlotItem().vb.sceneBoundingRect())
        self._miou_view.linkedViewChanged(self.plot.getPlotItem().vb, self._miou_view.XAxis)

    def _redraw(self) -> None:
        if not self._plot_dirty:
            return
        self._plot_dirty = False
        self.loss_curve.setData(self._steps, self._losses)
        self.miou_curve.setData(self._val_x, self._val_y)

    def _show_decision(self, decision) -> None:
        if decision is None:
            return
        colour = "rgb(0,140,70)" if decision.promote else "rgb(200,40,30)" if decision.evidence else "rgb(190,120,0)"
        verdict = {"promoted": "promoted", "rejected": "not promoted", "not enough evidence": "not judged",
                   "too few units to promote": "not promoted automatically"}[decision.verdict]
        self.promote_button.setToolTip(_PROMOTE_TIPS[decision.verdict])
        self.verdict.setText(f"<b style='color:{colour}'>New model {verdict}</b>: {html.escape(decision.reason)}")
        rows = list(decision.rows)
        self.table.setRowCount(len(rows) + 2)
        summary = [retrain.ClassRow("mIoU", decision.miou_before, decision.miou_after),
                   retrain.ClassRow("score", decision.score_before, decision.score_after)]
        rows = rows + summary[:1]
        for i, r in enumerate(rows + summary[1:]):
            cells = [r.name, _fmt(r.before), _fmt(r.after), "–" if r.delta is None else f"{r.delta:+.3f}"]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if j == 3 and r.delta is not None and abs(r.delta) >= 0.0005:
                    item.setForeground(QBrush(GOOD if r.delta > 0 else BAD))
                if i >= len(rows) - 1:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(i, j, item)
        self.table.setVisible(True)

    def _use_version(self, key: str) -> None:
        try:
            version, checkpoint, paused = retrain.use_version(self.session.project, key)
        except SeepviewError as exc:
            self._say(str(exc))
            return
        self.refresh_versions()
        if paused:
            scenes = ", ".join(paused)
            self._say(f"Now using {version.key}. Scene adaptation after reviews is paused for scene "
                      f"{scenes}, so the next review does not undo this rollback; resume it in the Model panel.")
        else:
            self._say(f"Now using {version.key}.")
        self._swap(checkpoint)

    def _swap(self, checkpoint) -> None:
        """Hand the model to the window (GUI thread swap), then re-predict unreviewed images."""
        self.model_promoted.emit(checkpoint)
        self.start_repredict()

    def start_repredict(self, group: str | None = None) -> None:
        """Re-predict unreviewed images (only scene ``group``'s when given) with the session's model in the
        background: the visible ones first. Labels are never touched. A re-predict still running made its
        jobs with the model before: it is stopped, and this one starts when it has (covering both scenes)."""
        session = self.session
        if self._repredict_worker is not None:
            wanted = {self._repredict_group, group} | ({self._repredict_pending} - {_NOTHING})
            self._repredict_pending = wanted.pop() if len(wanted) == 1 else None  # one scene, or all
            self._repredict_worker.quit()
            return
        if session.checkpoint is None:
            return
        current = session.current.entry.id if session.current is not None else None
        # the window re-predicts the image on screen itself when the model changes
        order = retrain.repredict_order(session.project, current, self.visible_ids(),
                                         needs=lambda i: i != current and session.needs_prediction(i), group=group)
        if not order:
            return
        jobs = [(i, session.prediction_job(i)) for i in order]
        self._repredict_group = group
        self._repredict_worker = self.workers.start_generator(
            retrain.repredict, jobs, on_yielded=self._store_prediction, on_finished=self._repredict_done,
            on_errored=self._repredict_failed,
        )

    def _store_prediction(self, result) -> None:
        if self.session.store_prediction(result):
            self.prediction_ready.emit(result)

    def _repredict_failed(self, exc: BaseException) -> None:
        log.warning("re-predict stopped: %s", exc)
        self._say(f"⚠ re-predicting the other images stopped: {describe_error(exc)}")
        self.state.setStyleSheet("color: rgb(200, 40, 30);")

    def _repredict_done(self) -> None:
        self._repredict_worker = None
        pending, self._repredict_pending = self._repredict_pending, _NOTHING
        if pending is not _NOTHING:
            self.start_repredict(pending)


_NOTHING = object()  # no re-predict pending


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _learned_from(v) -> str:
    """The version list's "learned from": a fine-tune's images and corrected pixels, a scene adaptation's
    reviewed tiles (versions stored before session 14 held its tiles as images and no pixels)."""
    if v.learned_from:
        return v.learned_from
    if v.note.startswith(("adapted", "not adapted")) and not v.corrected_pixels:
        return f"{v.images} tiles reviewed" if v.images else "–"
    return f"{v.images} img, {v.corrected_pixels:,} px corrected" if v.images else "–"
