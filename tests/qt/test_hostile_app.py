"""Issue 14 in a real window: a 2-channel TIFF shows (first channel) and a prediction that cannot run
for it is reported instead of waited for; the GUI launcher never opens a typo as a path."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import tifffile
from PySide6 import QtCore

from seepview.core.model.checkpoint import save_checkpoint
from seepview.core.project import Project
from seepview.core.session import ReviewSession
from seepview.qt.main_window import MainWindow


def test_two_channel_tiff_shows_and_the_screenshot_does_not_wait(qtbot, tmp_path, tiny_checkpoint):
    from PySide6.QtWidgets import QApplication

    from seepview.qt.app import take_screenshot

    for fmt in (QtCore.QSettings.Format.NativeFormat, QtCore.QSettings.Format.IniFormat):
        QtCore.QSettings.setPath(fmt, QtCore.QSettings.Scope.UserScope, str(tmp_path / "qsettings"))
    data = np.stack([np.arange(64 * 64).reshape(64, 64) % 4000, np.full((64, 64), 9)], axis=-1).astype(np.uint16)
    tifffile.imwrite(tmp_path / "vvvh.tif", data, photometric="minisblack", planarconfig="contig")
    project = Project.create(tmp_path / "p", "sar-seep")
    project.add_image(tmp_path / "vvvh.tif")
    checkpoint = tiny_checkpoint()  # a 1-channel model: it cannot run on 2 channels
    save_checkpoint(project.models_dir / "tiny.safetensors", checkpoint.model, checkpoint.meta)
    project.settings["active_model"] = "models/tiny.safetensors"
    project.save()
    window = MainWindow(ReviewSession(project))
    qtbot.addWidget(window)
    errors = []
    window.prediction_failed.connect(errors.append)
    window.show()
    start = time.perf_counter()
    assert take_screenshot(QApplication.instance(), window, tmp_path / "s.png", timeout_s=60) == 0
    assert time.perf_counter() - start < 30  # the failed prediction ended the wait
    assert window.canvas.image_shape == (64, 64)
    assert errors and "channel" in errors[0]


def test_typo_is_not_opened_as_a_path(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "seepview", "evalute"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "seepview: error: unknown command 'evalute' (did you mean evaluate?)"
