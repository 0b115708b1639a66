"""File → Export…: the choices of ``seepview export`` in a dialog; the work is ``core.export``.

The export runs in the window's worker set with a progress bar; afterwards the dialog lists the
files written and "Show in folder" opens their folder in the desktop's file manager.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from seepview.core.errors import Cancelled, SeepviewError

VECTOR_FORMATS = (("GeoPackage (.gpkg), in the image's CRS", ".gpkg"), ("GeoJSON (.geojson), WGS84 lon/lat", ".geojson"))
REPORT_FORMATS = (("HTML page with thumbnails (.html)", ".html"), ("CSV table (.csv)", ".csv"))


class _PathRow:
    """A check box, a path field and a Browse… button (folder or file), laid out by the dialog's grid."""

    def __init__(self, label: str, default: Path, folder: bool, parent: QWidget):
        self.check = QCheckBox(label)
        self.check.setChecked(True)
        self.path = QLineEdit(str(default))
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(self._browse)
        self._folder, self._parent = folder, parent
        self.check.toggled.connect(self.path.setEnabled)
        self.check.toggled.connect(self.browse.setEnabled)

    def add_to(self, grid: QGridLayout, row: int) -> None:
        grid.addWidget(self.check, row, 0)
        grid.addWidget(self.path, row, 1)
        grid.addWidget(self.browse, row, 2)

    def _browse(self) -> None:
        if self._folder:
            chosen = QFileDialog.getExistingDirectory(self._parent, "Masks folder", self.path.text())
        else:
            chosen, _ = QFileDialog.getSaveFileName(self._parent, "Save as", self.path.text())
        if chosen:
            self.path.setText(chosen)

    def value(self) -> Path | None:
        return Path(self.path.text()).expanduser() if self.check.isChecked() and self.path.text().strip() else None

    def set_suffix(self, suffix: str) -> None:
        text = self.path.text()
        if text:
            self.path.setText(str(Path(text).with_suffix(suffix)))


class ExportDialog(QDialog):
    """Choose images, source and outputs; run the export in ``workers``; say where the files are."""

    finished_export = Signal(object)  # ExportResult; tests wait for it
    failed = Signal(str)

    def __init__(self, session, workers, current_id: str | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Export results")
        self.session, self.workers = session, workers
        self.result = None
        self._worker = None
        self._folder: Path | None = None
        project = session.project
        out = project.root / "export"
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in project.name) or "export"

        # --- which images, from where --------------------------------------------------------------
        self.scope = QComboBox()
        self.scope.addItem(f"All images ({len(project)})", "all")
        reviewed = project.status_counts().get("reviewed", 0)
        self.scope.addItem(f"Reviewed images ({reviewed})", "reviewed")
        if current_id is not None:
            self.scope.addItem(f"This image ({current_id})", "current")
            self.scope.setCurrentIndex(2 if len(project) == 1 else 0)
        self._current_id = current_id
        self.source_labels = QRadioButton("My labels")
        self.source_predictions = QRadioButton("Model predictions (cached)")
        self.source_labels.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.source_labels)
        group.addButton(self.source_predictions)
        source_row = QHBoxLayout()
        source_row.addWidget(self.source_labels)
        source_row.addWidget(self.source_predictions)
        source_row.addStretch(1)
        what = QGroupBox("Images")
        wf = QFormLayout(what)
        wf.addRow("Export", self.scope)
        wf.addRow("Masks from", source_row)

        # --- outputs ------------------------------------------------------------------------------
        self.masks = _PathRow("Masks (GeoTIFF / PNG)", out / "masks", True, self)
        self.vector = _PathRow("Regions", out / f"{name}-regions.gpkg", False, self)
        self.vector_format = QComboBox()
        for text, suffix in VECTOR_FORMATS:
            self.vector_format.addItem(text, suffix)
        self.vector_format.currentIndexChanged.connect(lambda _i: self.vector.set_suffix(self.vector_format.currentData()))
        self.report = _PathRow("Report", out / f"{name}-report.html", False, self)
        self.report_format = QComboBox()
        for text, suffix in REPORT_FORMATS:
            self.report_format.addItem(text, suffix)
        self.report_format.currentIndexChanged.connect(lambda _i: self.report.set_suffix(self.report_format.currentData()))
        from seepview.core.export.report import severity_bands

        try:
            bands = severity_bands(project.settings)
        except SeepviewError:
            bands = (1.0, 5.0)
        self.bands = QLineEdit(", ".join(f"{b:g}" for b in bands))
        self.bands.setToolTip("Coverage thresholds in percent, e.g. 1, 5 gives < 1 %, 1–5 %, ≥ 5 %; kept in the project")
        outputs = QGroupBox("Outputs")
        grid = QGridLayout(outputs)
        self.masks.add_to(grid, 0)
        self.vector.add_to(grid, 1)
        grid.addWidget(self.vector_format, 2, 1)
        self.report.add_to(grid, 3)
        grid.addWidget(self.report_format, 4, 1)
        grid.addWidget(QLabel("Severity bands (%)"), 5, 0)
        grid.addWidget(self.bands, 5, 1)
        grid.setColumnStretch(1, 1)

        # --- progress and result ------------------------------------------------------------------
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.show_button = self.buttons.addButton("Show in folder", QDialogButtonBox.ButtonRole.ActionRole)
        self.show_button.setVisible(False)
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.export_button.clicked.connect(self.start)
        self.show_button.clicked.connect(self.show_in_folder)
        self.close_button.clicked.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(what)
        layout.addWidget(outputs)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)
        self.resize(640, self.sizeHint().height())

    # --- running --------------------------------------------------------------------------------
    def options(self):
        """The dialog's choices as ``ExportOptions`` (raises SeepviewError for bad severity bands)."""
        from seepview.core.export import ExportOptions
        from seepview.core.export.report import parse_bands

        scope = self.scope.currentData()
        bands = parse_bands(self.bands.text())
        checkpoint = self.session.checkpoint
        version = f"{checkpoint.meta.name or 'model'}-v{int(checkpoint.meta.version)}" if checkpoint else None
        return ExportOptions(
            vector=self.vector.value(),
            masks=self.masks.value(),
            report=self.report.value(),
            images=[self._current_id] if scope == "current" else None,
            reviewed_only=scope == "reviewed",
            source="predictions" if self.source_predictions.isChecked() else "labels",
            weights_key=self.session.weights_key or "none",
            model_version=version,
            severity_bands=bands,
        )

    def start(self) -> None:
        from seepview.core.export import export_project

        try:
            options = self.options()
            for path in (options.vector, options.report):
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
        except SeepviewError as exc:
            self._failed(exc)
            return
        except OSError as exc:
            self._failed(SeepviewError(None, f"cannot create the output folder: {exc.strerror or exc}"))
            return
        project = self.session.project
        with project.lock:
            if options.severity_bands != tuple(project.settings.get("export", {}).get("severity_bands", ())):
                project.settings.setdefault("export", {})["severity_bands"] = list(options.severity_bands)
                project.save()  # the inspector's bands are the project's from now on
        self.export_button.setEnabled(False)
        self.show_button.setVisible(False)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.status.setText("Exporting…")
        self._worker = self.workers.start_task(
            export_project,
            project,
            options,
            on_returned=self._done,
            on_errored=self._failed,
            on_progress=self._progress,
        )
        self._worker.finished.connect(lambda: self.export_button.setEnabled(True))

    def _progress(self, value) -> None:
        done, total = value
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def _done(self, result) -> None:
        self.result = result
        self.export_button.setEnabled(True)  # now, not at the worker's later ``finished``
        self.progress.setVisible(False)
        self._folder = result.folder()
        where = "<br>".join(f"<code>{f}</code>" for f in result.files)
        message = result.message()
        self.status.setText(f"{message[:1].upper()}{message[1:]}. Files:<br>{where}")
        self.show_button.setVisible(self._folder is not None)
        self.finished_export.emit(result)

    def _failed(self, exc: BaseException) -> None:
        self.export_button.setEnabled(True)
        self.progress.setVisible(False)
        text = "Export cancelled." if isinstance(exc, Cancelled) else f"Export failed: {exc}"
        self.status.setText(text)
        self.failed.emit(str(exc))

    def show_in_folder(self) -> None:
        if self._folder is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self._folder)))

    def reject(self) -> None:
        if self._worker is not None:
            self._worker.quit()  # cooperative: the export stops at its next strip
        super().reject()
