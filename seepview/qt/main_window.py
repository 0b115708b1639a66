"""The review window: binds the canvas, tools and panels to a ``ReviewSession``.

Every user command is a row of ``ACTIONS`` (text, shortcuts, menu, handler): the menus, the toolbar
and Help → Shortcuts are all built from that one table, so a shortcut cannot be documented in one
place and bound differently in another. Handlers forward to the session or the tool controller;
anything a user can get wrong arrives as a ``SeepviewError`` and is shown in a message box.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QFileSystemWatcher, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QFileDialog,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QTableWidget,
    QTableWidgetItem,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from seepview.core.display import DisplayWindow
from seepview.core.errors import Cancelled, SeepviewError
from seepview.core.review import UnseenLabels
from seepview.core.session import PixelInfo, PredictionResult, ReviewSession
from seepview.qt.canvas import Canvas
from seepview.qt.keys import FocusKeyGuard, TypeToSearch
from seepview.qt.panels.classes import ClassesPanel
from seepview.qt.panels.files import FilesPanel
from seepview.qt.panels.model import ModelPanel
from seepview.qt.panels.view import ViewPanel
from seepview.qt.tools import ToolController
from seepview.qt.workers import WarningRelay, WorkerSet, describe_error

log = logging.getLogger(__name__)

QUEUE_DELAY_MS = 300  # the review queue is re-scored this long after the last trigger
AUTOSAVE_DELAY_MS = 3000  # labels are written this long after the last stroke (the journal has them already)
MENUS = ("File", "Edit", "Tools", "View", "Navigate", "Model", "Project", "Help")
TOOLS = ("brush", "eraser", "fill", "polygon", "picker", "accept", "reject")
# How each view mode draws the prediction at unlabeled pixels (seepview.core.review.SHOWN).
SHOWN_BY_MODE = {"prediction": "filled", "outlines": "outlines"}  # any other mode: "hidden"


@dataclass(frozen=True)
class ActionSpec:
    """One user command. ``handler`` names a MainWindow method (None: a mouse gesture, listed only)."""

    name: str
    text: str
    shortcuts: tuple[str, ...]
    menu: str
    handler: str | None
    tip: str = ""
    arg: object = None
    toolbar: bool = False
    checkable_group: str | None = None


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("open", "&Open project or images…", ("Ctrl+O",), "File", "choose_and_open", "A project folder, a folder of images or one image"),
    ActionSpec("save", "&Save labels", ("Ctrl+S",), "File", "save_current", "Write this image's labels now (edits are journaled anyway)", toolbar=True),
    ActionSpec("export", "&Export…", ("Ctrl+E",), "File", "export_results", "Masks (GeoTIFF), regions (GeoPackage/GeoJSON) and reports (CSV/HTML)"),
    ActionSpec("quit", "&Quit", ("Ctrl+Q",), "File", "close"),
    ActionSpec("undo", "&Undo", ("Ctrl+Z",), "Edit", "undo", "Undo the last stroke", toolbar=True),
    ActionSpec("redo", "&Redo", ("Ctrl+Shift+Z", "Ctrl+Y"), "Edit", "redo", "Redo", toolbar=True),
    ActionSpec("accept_all", "&Accept prediction", ("A",), "Edit", "accept_all", "Copy the whole prediction into the labels", toolbar=True),
    ActionSpec("mark_reviewed", "Mark reviewed and &next", ("Return", "Enter"), "Edit", "mark_reviewed", "Unlabeled pixels take what is shown; save; go to the next unreviewed image. Predictions shown only as outlines are filled in first: press Enter again to save", toolbar=True),
    ActionSpec("tool_brush", "&Brush", ("B",), "Tools", "set_tool", "Paint the active class", "brush", True, "tool"),
    ActionSpec("tool_eraser", "&Eraser", ("E",), "Tools", "set_tool", "Erase labels", "eraser", True, "tool"),
    ActionSpec("tool_fill", "&Fill", ("F",), "Tools", "set_tool", "Flood-fill a region of equal label", "fill", True, "tool"),
    ActionSpec("tool_polygon", "&Polygon", ("P",), "Tools", "set_tool", "Click vertices, double-click or Enter to fill", "polygon", True, "tool"),
    ActionSpec("tool_picker", "Class p&icker", ("I",), "Tools", "set_tool", "Click a pixel to make its class active", "picker", True, "tool"),
    ActionSpec("tool_accept", "Accept &component", ("Shift+A",), "Tools", "set_tool", "Click a predicted blob to accept it", "accept", True, "tool"),
    ActionSpec("tool_reject", "&Reject component", ("R",), "Tools", "set_tool", "Click a blob to clear it from the labels", "reject", True, "tool"),
    ActionSpec("brush_smaller", "Brush smaller", ("[",), "Tools", "grow_brush", arg=-1),
    ActionSpec("brush_larger", "Brush larger", ("]",), "Tools", "grow_brush", arg=+1),
    *(
        ActionSpec(f"class_{k}", f"Active class {k}", (str(k),), "Tools", "set_active_class", arg=k)
        for k in range(1, 10)
    ),
    ActionSpec("fit", "&Fit image", ("0",), "View", "fit", "Zoom to show the whole image", toolbar=True),
    ActionSpec("mode_outlines", "Labels + prediction &outlines", ("Ctrl+1",), "View", "set_mode", arg="outlines", checkable_group="mode"),
    ActionSpec("mode_labels", "&Labels", ("Ctrl+2",), "View", "set_mode", arg="labels", checkable_group="mode"),
    ActionSpec("mode_prediction", "&Prediction", ("Ctrl+3",), "View", "set_mode", arg="prediction", checkable_group="mode"),
    ActionSpec("mode_confidence", "&Confidence", ("Ctrl+4",), "View", "set_mode", arg="confidence", checkable_group="mode"),
    ActionSpec("mode_uncertainty", "&Uncertainty", ("Ctrl+5",), "View", "set_mode", arg="uncertainty", checkable_group="mode"),
    ActionSpec("zoom", "Zoom", ("Wheel",), "View", None, "Zoom at the cursor"),
    ActionSpec("pan", "Pan", ("Space+drag", "Middle-drag", "Right-drag"), "View", None, "Move the view"),
    ActionSpec("next_unreviewed", "&Next unreviewed", ("N",), "Navigate", "next_unreviewed", toolbar=True),
    ActionSpec("previous_unreviewed", "&Previous unreviewed", ("Shift+N",), "Navigate", "previous_unreviewed"),
    ActionSpec("next_region", "Next uncertain &region", ("U",), "Navigate", "next_region", "Pan and zoom to the next most uncertain block of this image"),
    ActionSpec("next_image", "Next image", ("PgDown",), "Navigate", "step_image", arg=+1),
    ActionSpec("previous_image", "Previous image", ("PgUp",), "Navigate", "step_image", arg=-1),
    ActionSpec("predict", "&Predict this image", ("Ctrl+P",), "Model", "predict", "Run the model again on this image"),
    ActionSpec("retrain", "&Retrain on my corrections", ("Ctrl+T",), "Model", "retrain", "Fine-tune the model on your labels in the background", toolbar=True),
    ActionSpec("project_folder", "Show project &folder", (), "Project", "show_project_folder", "Open the folder that holds this project's labels, predictions and models"),
    ActionSpec("shortcuts", "&Keyboard shortcuts", ("F1",), "Help", "show_shortcuts"),
    ActionSpec("about", "&About seepview", (), "Help", "show_about"),
)


def _guarded(method):
    """User errors from a handler become a message box; the window stays usable."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except SeepviewError as exc:
            self.show_error(exc)
            return None

    return wrapper


DISK_SYNC_DELAY_MS = 300  # after project.json changes on disk: lets the other writer finish its burst
WARM_UP_DELAY_MS = 3000  # ms after the window is built: training.prepare_for_training


class MainWindow(QMainWindow):
    """The review window for one session (one project)."""

    image_opened = Signal(str)
    prediction_shown = Signal(str)  # image id; the screenshot mode and tests wait for it
    prediction_failed = Signal(str)
    open_requested = Signal(str)  # a path the user chose: the app makes a new session for it
    error_shown = Signal(str)

    def __init__(self, session: ReviewSession, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.workers = WorkerSet(self)
        self.workers.failed.connect(lambda message: self.statusBar().showMessage(f"⚠ {message}", 15_000))
        self._warnings = WarningRelay(self).install()
        self._warnings.warned.connect(lambda message: self.statusBar().showMessage(f"⚠ {message}", 15_000))
        self._prediction_worker = None
        self._prediction_started = 0.0
        self._visible: list[bool] | None = None
        self._opacity = 0.6
        self._mode = "outlines"
        self._closing = False
        self._adapt_from = None  # the model the running scene-adaptation fit started from (one at a time)
        self._adapt_pending: str | None = None
        self._close_guards: list = []  # before the panels: the training panel registers one
        self._unsubscribe_commits = None
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(lambda: self.autosave(self.current_id))
        self._queue_worker = None  # the running review-queue scoring job
        self._queue_again = False  # a trigger arrived while it ran
        self._regions_for = None  # the prediction whose uncertain regions are (being) ranked
        self._queue_timer = QTimer(self)
        self._queue_timer.setSingleShot(True)
        self._queue_timer.setInterval(QUEUE_DELAY_MS)
        self._queue_timer.timeout.connect(self._start_queue)
        self._update_title()
        self.setDockNestingEnabled(True)

        self.canvas = Canvas()
        self.canvas.setMinimumSize(320, 240)  # docks may never squeeze the image away
        self.setCentralWidget(self.canvas)
        self.tools = ToolController(self.canvas)

        self.files_panel = FilesPanel()
        self.classes_panel = ClassesPanel()
        self.view_panel = ViewPanel()
        self.model_panel = ModelPanel()
        self.docks: dict[str, QDockWidget] = {}
        self.actions_by_name: dict[str, QAction] = {}
        self.menus: dict[str, QMenu] = {}
        self.add_dock(self.files_panel, "Images", Qt.DockWidgetArea.LeftDockWidgetArea)
        self.add_dock(self.classes_panel, "Classes", Qt.DockWidgetArea.RightDockWidgetArea)
        self.add_dock(self.view_panel, "Tool and view options", Qt.DockWidgetArea.RightDockWidgetArea)
        self.add_dock(self.model_panel, "Model", Qt.DockWidgetArea.LeftDockWidgetArea)
        self.training_panel = self._make_training_panel()

        self.toolbar = QToolBar("Main")
        self.toolbar.setObjectName("toolbar_main")
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.addToolBar(self.toolbar)
        self._build_actions()
        self._describe_project()
        self._key_guard = FocusKeyGuard.install(self)  # editors and the image list keep their keys
        # project.json rewritten by another program (`seepview finetune PROJECT`): merge it in, soon after
        # it happens and whenever the window is activated (atomic writes replace the file: watch the folder).
        self._disk_timer = QTimer(self)
        self._disk_timer.setSingleShot(True)
        self._disk_timer.setInterval(DISK_SYNC_DELAY_MS)
        self._disk_timer.timeout.connect(self.sync_project)
        self._disk_watch = QFileSystemWatcher([str(session.project.root)], self)
        self._disk_watch.directoryChanged.connect(lambda _path: self._disk_timer.start())
        self._search = TypeToSearch(self.files_panel.list)  # typing in the list jumps to a matching image id
        self._search.finished.connect(self.canvas.view.setFocus)  # Enter/Esc in the list: review keys again
        self._build_status_bar()
        self._connect()

        self.files_panel.set_entries(session.entries())
        self.classes_panel.set_classes(session.classes)
        self._show_model()
        self.actions_by_name["tool_brush"].trigger()
        self.set_mode(self._mode)
        self.tools.set_brush_radius(self.view_panel.brush.value())
        self.canvas.set_opacity(self._opacity)
        self._apply_lut()
        self.resize(1400, 900)
        self._restore_ui_state()
        add_recent_project(str(session.project.root))
        first = session.next_unreviewed() or (session.entries()[0].id if session.entries() else None)
        if first is not None:
            QTimer.singleShot(0, lambda: self.open_image(first))
        self.refresh_queue()

    # --- construction --------------------------------------------------------------------------
    def add_dock(self, widget: QWidget, title: str, area=Qt.DockWidgetArea.RightDockWidgetArea) -> QDockWidget:
        """Add a panel as a dock (the training panel arrives this way); its state persists by title."""
        dock = QDockWidget(title, self)
        dock.setObjectName("dock_" + "".join(c if c.isalnum() else "_" for c in title.lower()))
        dock.setWidget(widget)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
            | QDockWidget.DockWidgetFeature.DockWidgetClosable
        )
        self.addDockWidget(area, dock)
        self.docks[title] = dock
        if "View" in self.menus:
            self.menus["View"].addAction(dock.toggleViewAction())
        return dock

    def _make_training_panel(self):
        """The retrain dock: it trains in this window's workers and hands promoted models to the session."""
        from seepview.core.retrain import prepare_for_training
        from seepview.qt.panels.training import TrainingPanel

        panel = TrainingPanel(self.session, self.workers)
        panel.visible_ids = self.files_panel.visible_ids
        panel.model_promoted.connect(self._use_model)
        self.image_opened.connect(panel.show_image)
        panel.validation_changed.connect(self.files_panel.set_validation)
        panel.refresh_versions()  # shows the held-out images in the file list now
        self.add_close_guard(panel.confirm_stop)
        dock = self.add_dock(panel, "Retrain", Qt.DockWidgetArea.RightDockWidgetArea)
        options = self.docks["Tool and view options"]
        self.tabifyDockWidget(options, dock)
        options.raise_()
        QTimer.singleShot(
            WARM_UP_DELAY_MS, lambda: None if self._closing else self.workers.start_function(prepare_for_training)
        )
        return panel

    @_guarded
    def _use_model(self, checkpoint) -> None:
        self.session.set_model(checkpoint)  # GUI thread: the swap is one assignment; views follow the event

    def retrain(self) -> None:
        dock = self.docks["Retrain"]
        dock.show()
        dock.raise_()
        self.training_panel.start()

    def menu(self, name: str) -> QMenu:
        """A top-level menu by name ("Model" is where the retrain action goes)."""
        return self.menus[name]

    def _build_actions(self) -> None:
        bar = self.menuBar()
        for name in MENUS:
            self.menus[name] = bar.addMenu("&" + name)
        groups: dict[str, QActionGroup] = {}
        last_menu = None
        for spec in ACTIONS:
            if spec.handler is None:
                continue
            action = QAction(spec.text, self)
            action.setObjectName("action_" + spec.name)
            action.setShortcuts([QKeySequence(s) for s in spec.shortcuts])
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            tip = spec.tip or spec.text.replace("&", "")
            if spec.shortcuts:
                tip += f" ({', '.join(spec.shortcuts)})"
            action.setToolTip(tip)
            action.setStatusTip(tip)
            handler = getattr(self, spec.handler)
            if spec.checkable_group:
                action.setCheckable(True)
                groups.setdefault(spec.checkable_group, QActionGroup(self)).addAction(action)
            if spec.arg is None:
                action.triggered.connect(lambda _checked=False, h=handler: h())
            else:
                action.triggered.connect(lambda _checked=False, h=handler, a=spec.arg: h(a))
            menu = self.menus[spec.menu]
            if last_menu == spec.menu and spec.name in ("tool_brush", "brush_smaller", "class_1", "mode_outlines"):
                menu.addSeparator()
            menu.addAction(action)
            last_menu = spec.menu
            if spec.toolbar or spec.checkable_group == "tool":
                self.toolbar.addAction(action)
            self.actions_by_name[spec.name] = action
            if spec.name == "open":
                self.recent_menu = menu.addMenu("Open &recent")
                self.recent_menu.aboutToShow.connect(self._fill_recent)
        self.menus["View"].addSeparator()
        for dock in self.docks.values():
            self.menus["View"].addAction(dock.toggleViewAction())

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.status_pixel = QLabel()
        self.status_class = QLabel()
        self.status_map = QLabel()
        self.status_image = QLabel()
        for label in (self.status_pixel, self.status_class, self.status_map):
            label.setMinimumWidth(120)
            bar.addPermanentWidget(label)
        bar.addPermanentWidget(self.status_image)

    def _connect(self) -> None:
        s = self.session
        s.status_changed.connect(self._status_changed)
        s.classes_changed.connect(self._classes_changed)
        s.model_changed.connect(self._model_changed)
        s.prediction_stored.connect(self._prediction_stored)
        s.autosave_failed.connect(self.show_error)
        self.canvas.hovered.connect(self._hovered)
        self.files_panel.image_selected.connect(self.open_image)
        self.files_panel.next_unreviewed_requested.connect(self.next_unreviewed)
        self.files_panel.previous_unreviewed_requested.connect(self.previous_unreviewed)
        self.classes_panel.active_changed.connect(self._active_class_changed)
        self.classes_panel.visibility_changed.connect(self._visibility_changed)
        self.classes_panel.rename_requested.connect(self._rename_class)
        self.classes_panel.recolor_requested.connect(self._recolor_class)
        self.classes_panel.add_requested.connect(self._add_class)
        self.classes_panel.remove_requested.connect(self._remove_class)
        self.classes_panel.undo_removal_requested.connect(self._undo_class_removal)
        s.queue_changed.connect(self._queue_changed)
        self.view_panel.regions.region_requested.connect(self._show_region)
        self.tools.class_picked.connect(self.classes_panel.set_active)
        self.tools.brush_radius_changed.connect(self.view_panel.set_brush_radius)
        self.tools.tool_changed.connect(self._tool_changed)
        self.view_panel.brush_radius_changed.connect(self.tools.set_brush_radius)
        self.view_panel.preserve_labels_changed.connect(self.tools.set_preserve_labels)
        self.view_panel.fill_tolerance_changed.connect(self.tools.set_fill_tolerance)
        self.view_panel.opacity_changed.connect(self._set_opacity)
        self.view_panel.mode_changed.connect(self.set_mode)
        self.view_panel.contrast_changed.connect(self._contrast_changed)
        self.view_panel.auto_contrast_requested.connect(self._auto_contrast)
        self.view_panel.db_toggled.connect(self._db_toggled)
        self.model_panel.predict_requested.connect(self.predict)
        self.model_panel.adapt.setChecked(_adapt_enabled())
        self.model_panel.adapt_toggled.connect(lambda on: QSettings().setValue(ADAPT_SETTING, bool(on)))
        self.model_panel.resume_requested.connect(self._resume_adaptation)
        self.model_panel.show_confidence_toggled.connect(
            lambda on: self.set_mode("confidence" if on else "outlines")
        )

    # --- errors ---------------------------------------------------------------------------------
    def show_error(self, exc: BaseException) -> None:
        log.warning("%s", exc)
        self.statusBar().showMessage(str(exc), 10_000)
        self.error_shown.emit(str(exc))
        if self._closing:
            return
        box = QMessageBox(QMessageBox.Icon.Warning, "seepview", str(exc), QMessageBox.StandardButton.Ok, self)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()  # not exec(): never a nested event loop under a running worker

    # --- images ---------------------------------------------------------------------------------
    @property
    def current_id(self) -> str | None:
        current = self.session.current
        return current.entry.id if current is not None else None

    @_guarded
    def open_image(self, image_id: str) -> None:
        """Show an image at once; its prediction follows from a background worker when not cached."""
        if image_id == self.current_id:
            return
        self.tools.finish()
        previous = self.current_id
        opened = self.session.open(image_id)  # may raise: then the current image stays as it was
        self._cancel_prediction()
        self.autosave(previous)
        if self._unsubscribe_commits is not None:
            self._unsubscribe_commits()
        self._unsubscribe_commits = opened.document.subscribe_commit(lambda _b, _v: self._edited())
        self.canvas.set_image(opened.display_u8)
        self.canvas.set_document(opened.document)
        self._show_prediction(opened.prediction)
        self.canvas.fit()
        edges, counts = opened.histogram()
        self.view_panel.set_histogram(edges, counts, opened.window.lo, opened.window.hi)
        self.view_panel.set_db(opened.window.db)
        self.view_panel.db.setEnabled(opened.image.ndim == 2)  # dB is for intensities, not photos
        self.files_panel.set_current(image_id)
        self._show_adaptation()  # another scene may have another adaptation, or none
        h, w = opened.shape
        self.status_image.setText(f"{image_id}  {w}×{h}  {opened.image.dtype}")
        if opened.recovered:
            self.statusBar().showMessage(
                f"Recovered {opened.recovered} unsaved edit(s) of {image_id} from the autosave journal", 10_000
            )
        self._update_title()
        note = ""
        if opened.prediction is not None:  # a cached prediction: say if reviewed neighbours typed its slicks
            note = _neighbour_note(self.session.neighbour_sides(image_id, opened.prediction.labels))
        self.model_panel.state.setText(f"Cached prediction{note}" if note else "")  # never the last tile's line
        self.image_opened.emit(image_id)
        if self.session.needs_prediction(image_id):
            self._start_prediction(image_id)

    def _show_prediction(self, prediction: PredictionResult | None) -> None:
        opened = self.session.current
        labels = prediction.labels if prediction is not None else None
        confidence = prediction.confidence if prediction is not None else None
        self.canvas.set_prediction(labels, confidence, prediction.uncertainty if prediction is not None else None)
        self._update_regions(prediction)
        self.tools.set_context(opened.document, opened.image, labels, opened.nodata)
        has = prediction is not None
        self.actions_by_name["accept_all"].setEnabled(has)
        self.actions_by_name["tool_accept"].setEnabled(has)

    def autosave(self, image_id: str | None) -> None:
        """Write an image's labels in the background (debounced after strokes; on leaving an image)."""
        if image_id is None:
            return
        job = self.session.autosave_job(image_id)
        if job is not None:
            self.workers.start_task(job, on_returned=self._autosaved, on_errored=self._autosave_error)

    def _edited(self) -> None:
        self._autosave_timer.start()
        self._update_title()

    def _autosaved(self, done) -> None:
        self.session.autosave_done(*done)
        self._update_title()

    def _update_title(self) -> None:
        """Project and image in the title; Qt's ``[*]`` shows '*' while the image has edits not yet in its label
        file (they are in the autosave journal already, so a crash loses nothing)."""
        image = f" — {self.current_id}" if self.current_id else ""
        self.setWindowTitle(f"{self.session.project.name}{image}[*] — seepview")
        self.setWindowModified(bool(self.current_id) and self.session.is_dirty(self.current_id))

    def _autosave_error(self, exc: BaseException) -> None:
        # The journal still holds every stroke; a failed background write loses nothing yet.
        self.show_error(exc if isinstance(exc, SeepviewError) else SeepviewError(None, f"autosave failed: {exc!r}"))

    def step_image(self, delta: int) -> None:
        ids = [e.id for e in self.session.entries()]
        if not ids:
            return
        index = ids.index(self.current_id) if self.current_id in ids else -delta
        self.open_image(ids[(index + delta) % len(ids)])

    def next_unreviewed(self) -> None:
        nxt = self.session.next_unreviewed(self.current_id)
        if nxt is None:
            self.statusBar().showMessage("All images are reviewed.", 5000)
        else:
            self.open_image(nxt)

    def previous_unreviewed(self) -> None:
        prev = self.session.next_unreviewed(self.current_id, backwards=True)
        if prev is None:
            self.statusBar().showMessage("No other unreviewed image.", 5000)
        else:
            self.open_image(prev)

    # --- editing --------------------------------------------------------------------------------
    def undo(self) -> None:
        if self.session.current is not None:
            self.session.current.document.undo()

    def redo(self) -> None:
        if self.session.current is not None:
            self.session.current.document.redo()

    def accept_all(self) -> None:
        if self.session.current is not None and self.session.current.prediction is not None:
            self.tools.accept_all()

    @_guarded
    def mark_reviewed(self) -> None:
        image_id = self.current_id
        if image_id is None:
            return
        self.tools.finish()  # a stroke still held down belongs to this image
        try:
            nxt = self.session.mark_reviewed(image_id, shown=SHOWN_BY_MODE.get(self._mode, "hidden"))
        except UnseenLabels as exc:
            # Saving now would turn outline-only (or hidden) predictions into labels: fill them in
            # first, as labels on screen, and let a second Enter save what the reviewer then sees.
            self.session.fill_unlabeled(image_id)
            if self._mode not in ("labels", "outlines"):
                self.set_mode("labels")
            self.statusBar().showMessage(
                f"{exc.pixels} predicted pixel(s) are now filled in as labels. Check them, then press Enter "
                "again to mark reviewed (Ctrl+Z takes them back).", 20_000
            )
            return
        self._update_title()
        paused = self._adapt_after_review(image_id)
        self.statusBar().showMessage(f"{image_id} reviewed and saved{self._no_grid_note(image_id)}{paused}.", 8000)
        if nxt is None:
            self.statusBar().showMessage(f"{image_id} reviewed. All images are reviewed{paused}.", 10_000)
        else:
            self.open_image(nxt)
        # its grid neighbours' predictions were dropped (scene_grid): predict them again with this tile's labels
        entry = self.session.project.entry(image_id)
        self.training_panel.start_repredict(group=entry.scene)

    def _no_grid_note(self, image_id: str) -> str:
        """Why a review changes nothing next door: the scene's tile grid was read and none was found."""
        from seepview.core.scene_grid import cached_grid

        entry = self.session.project.entry(image_id)
        scene = entry.scene
        if sum(e.scene == scene for e in self.session.project.entries) < 2:
            return ""
        if cached_grid(self.session.project, scene) is None:
            return " · no tile grid found for this scene: its neighbours are not typed from it"
        return ""

    def _adapt_after_review(self, image_id: str) -> str:
        """Issue 11: re-fit the scene adaptation of ``image_id``'s scene in the background (seconds).

        One fit at a time: a review made while one runs is fitted right after it, with all reviewed tiles.
        Returns a note for the status bar when the scene is paused since a rollback (nothing is fitted)."""
        ckpt = self.session.checkpoint
        if ckpt is None or not self.model_panel.adapt.isChecked():
            return ""
        from seepview.core.adapt import paused_scenes

        scene = self.session.project.entry(image_id).scene
        paused = paused_scenes(self.session.project).get(scene)
        if paused is not None:
            return f" · adapting scene {scene} is paused since the rollback to {paused}"  # Resume: the Model panel
        if self._adapting:
            self._adapt_pending = image_id
            return ""
        from seepview.core.adapt import scene_adaptation_job

        self._adapt_from = ckpt
        job = scene_adaptation_job(self.session.project, ckpt, image_id)
        self.workers.start_task(job, on_returned=self._adaptation_done, on_errored=self._adaptation_failed)
        return ""

    def _adaptation_failed(self, exc) -> None:
        self.statusBar().showMessage(f"Scene adaptation failed: {describe_error(exc)}", 10_000)
        self._adaptation_finished()

    @property
    def _adapting(self) -> bool:
        return self._adapt_from is not None

    def _adaptation_finished(self) -> None:
        self._adapt_from = None
        pending, self._adapt_pending = self._adapt_pending, None
        if pending is not None and not self._closing:
            self._adapt_after_review(pending)

    def _adaptation_done(self, result) -> None:
        used, ad, _version = result
        try:
            if self._closing or ad is None:
                return
            if self.session.checkpoint is not self._adapt_from:  # a rollback or promotion meanwhile wins
                return
            if used is not None:  # a new adaptation, or back to the base model
                self.session.set_model(used)  # the tile on screen is re-predicted with it at once ...
                self.training_panel.start_repredict(group=ad.scene)  # ... then the scene's other unreviewed tiles
                self.training_panel.refresh_versions()  # a version with lineage: it can be rolled back
            self._show_adaptation()  # "adapted on 14 tiles ..." for the open image's scene
            current = self.session.current
            if used is None and ad.kind == "none" and current is not None and current.entry.scene == ad.scene:
                self.model_panel.set_adaptation(ad.summary())  # nothing changed: why this scene stays unadapted
            self.statusBar().showMessage(ad.summary(), 8000)
        finally:
            self._adaptation_finished()

    @_guarded
    def save_current(self) -> None:
        if self.current_id is not None:
            self.tools.finish()
            saved = self.session.save_labels(self.current_id)
            self._update_title()
            self.statusBar().showMessage("Labels saved." if saved else "Nothing to save.", 3000)

    def set_tool(self, tool: str) -> None:
        self.tools.set_tool(tool)

    def _tool_changed(self, tool: str) -> None:
        action = self.actions_by_name.get(f"tool_{tool}")
        if action is not None and not action.isChecked():
            action.setChecked(True)

    def grow_brush(self, step: int) -> None:
        self.tools.grow_brush(step)

    def set_active_class(self, class_id: int) -> None:
        if class_id < len(self.session.classes):
            self.classes_panel.set_active(class_id)

    def _active_class_changed(self, class_id: int) -> None:
        self.tools.set_active_class(class_id)

    # --- view -----------------------------------------------------------------------------------
    def fit(self) -> None:
        self.canvas.fit()

    def set_mode(self, mode: str) -> None:
        self._mode = mode
        self.canvas.set_mode(mode)
        self.view_panel.set_mode(mode)
        action = self.actions_by_name.get(f"mode_{mode}")
        if action is not None and not action.isChecked():
            action.setChecked(True)
        confidence = self.model_panel.confidence
        confidence.blockSignals(True)
        confidence.setChecked(mode == "confidence")
        confidence.blockSignals(False)

    def _set_opacity(self, opacity: float) -> None:
        self._opacity = opacity
        self.canvas.set_opacity(opacity)

    def _apply_lut(self) -> None:
        self.canvas.set_lut(self.session.classes.lut(1.0, self._visible))

    def _visibility_changed(self, visible: list[bool]) -> None:
        self._visible = visible
        self._apply_lut()

    @_guarded
    def _rename_class(self, class_id: int, name: str) -> None:
        self.session.rename_class(class_id, name)

    @_guarded
    def _recolor_class(self, class_id: int, rgba) -> None:
        self.session.recolor_class(class_id, tuple(rgba))

    def _classes_changed(self, table) -> None:
        self.classes_panel.set_classes(table)
        self._visible = self.classes_panel.visible  # one flag per class, also after adding or removing
        self._apply_lut()

    @_guarded
    def _add_class(self, name: str) -> None:
        self.session.add_class(name)

    @_guarded
    def _remove_class(self, class_id: int) -> None:
        """Ask what the pixels of a used class become, then remove it (undoable from the panel)."""
        from seepview.core.classes import IGNORE
        from seepview.qt.panels.classes import RemoveClassDialog

        if class_id == 0:
            raise SeepviewError(None, "the background class cannot be removed")
        self.tools.finish()
        usage = self.session.class_usage(class_id)
        if not usage:
            self._do_remove_class(class_id, IGNORE)
            return
        dialog = RemoveClassDialog(self.session.classes, class_id, usage, self)
        dialog.accepted.connect(lambda: self._do_remove_class(class_id, dialog.choice()))
        self.remove_dialog = dialog
        dialog.open()  # not exec(): never a nested event loop under a running worker

    @_guarded
    def _do_remove_class(self, class_id: int, becomes: int) -> None:
        name = self.session.classes[class_id].name
        self.session.remove_class(class_id, becomes)
        self.classes_panel.set_undo_available(True)
        self.statusBar().showMessage(f"Removed class {name}. 'Undo removal' in the Classes panel puts it back.", 10_000)

    @_guarded
    def _undo_class_removal(self) -> None:
        self.session.undo_remove_class()
        self.classes_panel.set_undo_available(False)
        self.statusBar().showMessage("Class removal undone.", 5000)

    @_guarded
    def _contrast_changed(self, lo: float, hi: float) -> None:
        current = self.session.current
        if current is None:
            return
        old = current.window
        display = self.session.set_contrast(DisplayWindow(lo, hi, old.db, old.nodata))
        self.canvas.set_image(display)

    @_guarded
    def _auto_contrast(self) -> None:
        if self.session.current is None:
            return
        display = self.session.set_contrast(None)
        self.canvas.set_image(display)
        window = self.session.current.window
        self.view_panel.set_window(window.lo, window.hi)

    @_guarded
    def _db_toggled(self, on: bool) -> None:
        """Linear <-> dB: a fresh automatic window in the new scale; histogram and readouts follow."""
        current = self.session.current
        if current is None:
            return
        self.canvas.set_image(self.session.set_db(on))
        edges, counts = current.histogram()
        self.view_panel.set_histogram(edges, counts, current.window.lo, current.window.hi)
        self.view_panel.set_db(current.window.db)

    # --- status bar -----------------------------------------------------------------------------
    def _hovered(self, x: int, y: int) -> None:
        info = self.session.pixel_info(x, y)
        if info is None:
            for label in (self.status_pixel, self.status_class, self.status_map):
                label.clear()
            return
        self.status_pixel.setText(format_pixel(info))
        self.status_class.setText(format_class(info))
        self.status_map.setText(format_map(info))

    # --- model and prediction -------------------------------------------------------------------
    def _show_model(self) -> None:
        ckpt = self.session.checkpoint
        if ckpt is None:
            self.model_panel.set_model(None, None, self.session.device, self.session.model_problem)
        else:
            self.model_panel.set_model(ckpt.meta.name or "model", ckpt.meta.version, self.session.device)
            self._show_adaptation()
        self.actions_by_name["predict"].setEnabled(ckpt is not None)

    def _show_adaptation(self) -> None:
        """The Model panel's "Adapted" line: the adaptation of the open image's scene, and how many other
        scenes have one (a project keeps one per scene)."""
        from seepview.core.adapt import describe_adaptations, paused_scenes

        ckpt = self.session.checkpoint
        current = self.session.current
        scene = current.entry.scene if current is not None else None
        self.model_panel.set_adaptation(describe_adaptations(ckpt.meta.adaptation, scene) if ckpt else None)
        self.model_panel.set_paused(scene, paused_scenes(self.session.project).get(scene) if scene else None)

    @_guarded
    def _resume_adaptation(self) -> None:
        """The Model panel's Resume: adapt the open image's scene after reviews again, and fit it now."""
        from seepview.core.adapt import resume_adaptation

        current = self.session.current
        if current is None:
            return
        scene = current.entry.scene
        resume_adaptation(self.session.project, scene)
        self._show_adaptation()
        reviewed = [e for e in self.session.project.entries if e.status == "reviewed" and e.scene == scene]
        if not self.model_panel.adapt.isChecked():
            note = "it is fitted after reviews once “Adapt to each scene” is on"
        elif reviewed:
            self._adapt_after_review(reviewed[-1].id)
            note = "fitting it now from its reviewed tiles (it needs 2, or one large image)"
        else:
            note = "it is fitted after its next review"
        self.statusBar().showMessage(f"Adapting scene {scene} resumed: {note}.", 10_000)

    def _model_changed(self, _checkpoint) -> None:
        """A swapped model (retrain/rollback): drop the running job, show its cache or predict again."""
        self._cancel_prediction()
        self._show_model()
        self.refresh_queue()
        current = self.session.current
        if current is None:
            return
        self._show_prediction(current.prediction)
        if self.session.needs_prediction(current.entry.id):
            self._start_prediction(current.entry.id)

    @_guarded
    def predict(self) -> None:
        if self.current_id is not None:
            self._start_prediction(self.current_id)

    def _start_prediction(self, image_id: str) -> None:
        self._cancel_prediction()
        job = self.session.prediction_job(image_id)
        self._prediction_started = time.perf_counter()
        self.model_panel.set_running(True, f"Predicting {image_id}…")
        worker = self.workers.start_task(
            job,
            on_returned=self._prediction_done,
            on_errored=self._prediction_error,
            on_progress=lambda p: self.model_panel.set_progress(*p),
        )
        self._prediction_worker = worker
        worker.finished.connect(lambda w=worker: self._prediction_finished(w))

    def _cancel_prediction(self) -> None:
        if self._prediction_worker is not None:
            self._prediction_worker.quit()
            self._prediction_worker = None
            self.model_panel.set_running(False)

    def _prediction_finished(self, worker) -> None:
        if worker is self._prediction_worker:
            self._prediction_worker = None
            self.model_panel.set_running(False, self.model_panel.state.text())

    @_guarded
    def _prediction_done(self, result: PredictionResult) -> None:
        if self._closing:
            return
        if self.session.store_prediction(result) and result.image_id == self.current_id:
            seconds = time.perf_counter() - self._prediction_started
            self.model_panel.set_running(False, f"Predicted in {seconds:.1f} s{_neighbour_note(result.neighbours)}")

    def _prediction_stored(self, result: PredictionResult) -> None:
        """Any stored prediction of the image on screen is shown (this window's job or a re-predict)."""
        self.refresh_queue()
        if self._closing or result.image_id != self.current_id:
            return
        if result.neighbours and self._prediction_worker is None:  # a background re-predict: say why it changed
            self.model_panel.state.setText(f"Re-predicted{_neighbour_note(result.neighbours)}")
        self._show_prediction(result)
        self.prediction_shown.emit(result.image_id)

    def _prediction_error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            return
        self.model_panel.set_running(False, f"Prediction failed: {exc}")
        self.prediction_failed.emit(str(exc))
        if isinstance(exc, SeepviewError):
            self.show_error(exc)
        else:
            log.error("prediction failed", exc_info=exc)
            self.show_error(SeepviewError(None, f"prediction failed: {exc!r}"))

    def _status_changed(self, entry) -> None:
        self._queue_changed()  # a reviewed image leaves the queue
        self.training_panel.show_validation()  # ... and may join the held-out set

    # --- review queue ---------------------------------------------------------------------------
    def refresh_queue(self) -> None:
        """Re-score the queue in the background soon (debounced: re-predictions after a retrain come in bursts)."""
        if not self._closing:
            self._queue_timer.start()

    def _start_queue(self) -> None:
        if self._closing:
            return
        if self._queue_worker is not None:
            self._queue_again = True
            return
        job = self.session.queue_job()
        if job is None:
            self._queue_changed()
            return
        worker = self.workers.start_task(job, on_returned=self._queue_done, on_errored=self._queue_error)
        self._queue_worker = worker
        worker.finished.connect(lambda w=worker: self._queue_finished(w))

    def _queue_done(self, result) -> None:
        if not self._closing:
            self.session.queue_done(result)

    def _queue_error(self, exc: BaseException) -> None:
        if not isinstance(exc, Cancelled):
            log.warning("review queue not updated: %s", exc)
            self.statusBar().showMessage(f"Review queue not updated: {exc}", 8000)

    def _queue_finished(self, worker) -> None:
        if worker is self._queue_worker:
            self._queue_worker = None
            if self._queue_again:
                self._queue_again = False
                self.refresh_queue()

    def _queue_changed(self) -> None:
        queue = self.session.queue
        self.files_panel.set_queue(self.session.queue_order(), queue.scores, queue.broken, queue.stale)

    def _update_regions(self, prediction: PredictionResult | None) -> None:
        """Rank the blocks of a scene larger than one block (in a worker: 16k x 12k takes about a second)."""
        from seepview.core.queue import BLOCK, rank_regions

        self._regions_for = prediction
        self.view_panel.regions.set_regions(None)
        if prediction is None or max(prediction.labels.shape) <= BLOCK:
            return
        self.workers.start_task(
            rank_regions, prediction.labels, prediction.confidence, prediction.uncertainty,
            on_returned=lambda regions, p=prediction: self._regions_ready(p, regions),
        )

    def _regions_ready(self, prediction, regions) -> None:
        if prediction is self._regions_for and not self._closing:
            self.view_panel.regions.set_regions(regions)

    def next_region(self) -> None:
        if self.view_panel.regions.next_region() is None:
            self.statusBar().showMessage("This image has no regions to step through (it fits in one block).", 5000)

    def _show_region(self, region) -> None:
        self.canvas.show_region(region.y0, region.y1, region.x0, region.x1)

    def sync_project(self) -> None:
        """Merge what another program wrote to project.json (``ReviewSession.sync_project``) and show it."""
        if self._closing:
            return
        try:
            changes = self.session.sync_project()
        except SeepviewError as exc:  # caught mid-write or corrupt: the next save keeps it aside
            log.warning("%s", exc)
            return
        if not changes:
            return
        if changes.images:
            self.files_panel.set_entries(self.session.entries())
        if {"model_versions", "active_model"} & set(changes.settings):
            self.training_panel.refresh_versions()
        from seepview.core.adapt import PAUSED_KEY

        if PAUSED_KEY in changes.settings:  # e.g. `seepview adapt PROJECT` lifted a rollback's pause
            self._show_adaptation()
        self.statusBar().showMessage("Another program changed this project; its changes are merged in.", 8000)

    def changeEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        if event.type() == QEvent.Type.ActivationChange and self.isActiveWindow() and not self._closing:
            self._disk_timer.start()
        super().changeEvent(event)

    # --- help -----------------------------------------------------------------------------------
    def show_shortcuts(self) -> None:
        ShortcutsDialog(self).open()

    def show_about(self) -> None:
        from seepview import __version__

        QMessageBox.about(
            self,
            "About seepview",
            f"<b>seepview {__version__}</b><br>Review and correct segmentation masks; retrain the model on "
            "your corrections.",
        )

    # --- export and the project's place -----------------------------------------------------------
    @_guarded
    def export_results(self) -> None:
        from seepview.qt.export_dialog import ExportDialog

        self.tools.finish()
        self.session.save_all()  # export reads label files: make them current first
        self.export_dialog = ExportDialog(self.session, self.workers, self.current_id, self)
        self.export_dialog.open()

    def _describe_project(self) -> None:
        """The Project menu names where the project lives, also the automatic one made for an opened scene."""
        from seepview.core.paths import user_data_dir

        root = self.session.project.root
        try:
            automatic = root.resolve().is_relative_to(user_data_dir().resolve())
        except OSError:
            automatic = False
        text = f"{'Automatic project' if automatic else 'Project'}: {root}"
        info = QAction(text, self)
        info.setObjectName("action_project_location")
        info.setEnabled(False)
        info.setToolTip("Labels, predictions and models of these images are kept here")
        menu = self.menus["Project"]
        menu.insertAction(menu.actions()[0] if menu.actions() else None, info)
        menu.insertSeparator(self.actions_by_name["project_folder"])
        self.project_location = text

    def show_project_folder(self) -> None:
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices

        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.session.project.root)))

    # --- projects and UI state ------------------------------------------------------------------
    def choose_and_open(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a project or a folder of images")
        if path:
            self.open_requested.emit(path)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in recent_projects():
            self.recent_menu.addAction(path, lambda p=path: self.open_requested.emit(p))
        if self.recent_menu.isEmpty():
            self.recent_menu.addAction("(none)").setEnabled(False)

    def _restore_ui_state(self) -> None:
        settings = QSettings()
        geometry = settings.value("window/geometry")
        state = settings.value("window/state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is None or not self.restoreState(state):
            left = [self.docks["Images"], self.docks["Model"]]
            right = [self.docks["Classes"], self.docks["Tool and view options"]]
            self.resizeDocks(left + right, [230, 230, 340, 340], Qt.Orientation.Horizontal)
            self.resizeDocks(left, [560, 240], Qt.Orientation.Vertical)
            self.resizeDocks(right, [300, 500], Qt.Orientation.Vertical)

    def _save_ui_state(self) -> None:
        settings = QSettings()
        settings.setValue("window/geometry", self.saveGeometry())
        settings.setValue("window/state", self.saveState())
        add_recent_project(str(self.session.project.root))

    def add_close_guard(self, guard) -> None:
        """``guard() -> bool`` is asked before closing (e.g. "stop training?"); False keeps the window."""
        self._close_guards.append(guard)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        if not all(guard() for guard in self._close_guards):
            event.ignore()
            return
        self._closing = True
        self._warnings.remove()
        self._autosave_timer.stop()
        self._queue_timer.stop()
        self._cancel_prediction()
        self.workers.shutdown()
        try:
            self.session.close()
        except SeepviewError as exc:
            # The journal still holds the edits; they are replayed on the next start.
            log.error("could not save labels on close (kept in the autosave journal): %s", exc)
        self._save_ui_state()
        super().closeEvent(event)


class ShortcutsDialog(QDialog):
    """Every command with its shortcuts, read from ``ACTIONS`` (the same table that binds them)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        self.resize(560, 640)
        rows = [spec for spec in ACTIONS if spec.shortcuts]
        table = QTableWidget(len(rows), 3)
        table.setHorizontalHeaderLabels(["Menu", "Command", "Shortcut"])
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for row, spec in enumerate(rows):
            for col, text in enumerate((spec.menu, spec.text.replace("&", ""), "  or  ".join(spec.shortcuts))):
                item = QTableWidgetItem(text)
                if spec.tip:
                    item.setToolTip(spec.tip)
                table.setItem(row, col, item)
        table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        table.resizeColumnsToContents()
        table.resizeRowsToContents()
        table.setAlternatingRowColors(True)
        self.table = table
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(table)
        layout.addWidget(buttons)


# --- status bar text (plain functions: tested without a window) ---------------------------------
def format_pixel(info: PixelInfo) -> str:
    value = info.value
    if isinstance(value, tuple):
        text = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"x {info.x}  y {info.y}  value {text}"


def format_class(info: PixelInfo) -> str:
    text = f"label: {info.label_name}"
    if info.predicted is not None:
        text += f"  model: {info.predicted_name or info.predicted} ({info.confidence:.0%})"
    return text


def format_map(info: PixelInfo) -> str:
    if info.map_xy is None:
        return ""
    a, b = info.map_xy
    if info.geographic:
        return f"lon {a:.6f}  lat {b:.6f}"
    crs = f"EPSG:{info.epsg}  " if info.epsg else ""
    return f"{crs}E {a:.2f}  N {b:.2f}"


MAX_RECENT = 10
ADAPT_SETTING = "model/adapt_after_review"


def _adapt_enabled() -> bool:
    value = QSettings().value(ADAPT_SETTING, True)
    return value not in (False, "false", "0", 0)


def recent_projects() -> list[str]:
    value = QSettings().value("recent_projects", [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in (value or [])]


def add_recent_project(path: str) -> None:
    paths = [path] + [p for p in recent_projects() if p != path]
    QSettings().setValue("recent_projects", paths[:MAX_RECENT])


def _neighbour_note(neighbours) -> str:
    """" · slicks continuing from the reviewed tile below take its classes" (or "" when none did)."""
    where = {"up": "above", "down": "below", "left": "to the left", "right": "to the right"}
    sides = [where.get(s, s) for s in neighbours]
    if not sides:
        return ""
    one = len(sides) == 1
    return (f" · slicks continuing from the reviewed tile{'' if one else 's'} {' and '.join(sides)} "
            f"take {'its' if one else 'their'} classes")
