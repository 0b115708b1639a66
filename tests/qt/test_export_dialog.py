"""File → Export…, the Project menu, the dB toggle and the confidence colour bar, on a GCP scene."""

from __future__ import annotations

import numpy as np
import pytest

from seepview.core.session import ReviewSession, project_for_path
from seepview.qt.main_window import MainWindow
from tests.core import export_fixtures as fx

pytest.importorskip("rasterio")


@pytest.fixture
def window(qtbot, tmp_path):
    project, _entry = fx.make_project(tmp_path, fx.write_gcp_scene(tmp_path / "s1.tif"))
    window = MainWindow(ReviewSession(project, load_model=False))
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.image_opened, timeout=10_000):
        window.show()
    return window


def test_export_dialog_writes_files_and_shows_their_folder(window, qtbot, tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr("seepview.qt.export_dialog.QDesktopServices.openUrl", lambda url: opened.append(url))
    window.actions_by_name["export"].trigger()
    dialog = window.export_dialog
    assert dialog.isVisible() and dialog.scope.currentData() == "current"  # one image: that one
    out = tmp_path / "out"
    dialog.masks.path.setText(str(out / "masks"))
    dialog.vector_format.setCurrentIndex(1)  # GeoJSON
    dialog.vector.path.setText(str(out / "regions.geojson"))
    dialog.report.check.setChecked(False)
    dialog.bands.setText("2, 8")
    with qtbot.waitSignal(dialog.finished_export, timeout=60_000):
        dialog.export_button.click()
    assert (out / "masks" / "s1.tif").is_file() and (out / "regions.geojson").is_file()
    assert str(out / "regions.geojson") in dialog.status.text()
    assert dialog.show_button.isVisible()
    dialog.show_button.click()
    assert [u.toLocalFile() for u in opened] == [str(out)]
    assert window.session.project.settings["export"]["severity_bands"] == [2.0, 8.0]  # kept in the project


def test_export_dialog_reports_errors_in_the_dialog(window, qtbot, tmp_path):
    window.export_results()
    dialog = window.export_dialog
    dialog.vector.path.setText(str(tmp_path / "regions.shp"))
    with qtbot.waitSignal(dialog.failed, timeout=30_000) as blocker:
        dialog.export_button.click()
    assert ".gpkg or .geojson" in blocker.args[0] and "Export failed" in dialog.status.text()
    dialog.bands.setText("5, 1")
    with qtbot.waitSignal(dialog.failed, timeout=5_000):
        dialog.export_button.click()
    assert "severity bands" in dialog.status.text()


def test_db_toggle_rewindows_and_is_remembered(window, qtbot):
    session, panel = window.session, window.view_panel
    linear = session.current.window
    assert not linear.db and not panel.db.isChecked()
    panel.db.setChecked(True)
    window_db = session.current.window
    assert window_db.db and window_db.hi < 60  # dB of uint16 intensities: tens, not thousands
    assert panel.low.value() == pytest.approx(window_db.lo, abs=0.05) and panel.low.suffix() == " dB"
    lo, hi = panel.region.getRegion()
    assert (lo, hi) == pytest.approx((window_db.lo, window_db.hi))
    edges = panel._curve.getData()[0]
    assert edges.max() < 60  # the histogram is in dB too
    image = session.current.image.astype(float)
    valid = image > 0
    expected = np.clip((10 * np.log10(image[valid]) - window_db.lo) / (window_db.hi - window_db.lo), 0, 1) * 255
    assert np.abs(session.current.display_u8[valid].astype(float) - expected).max() <= 1.01
    window.actions_by_name["mode_confidence"].trigger()
    assert panel.colour_bar.isVisibleTo(panel)
    window.actions_by_name["mode_labels"].trigger()
    assert not panel.colour_bar.isVisibleTo(panel)
    saved = session.project.settings["display_windows"][session.current.entry.id]
    assert saved["db"] is True
    panel.auto.click()  # automatic contrast stays in dB
    assert session.current.window.db


def test_status_bar_shows_lonlat_from_gcps(window):
    window._hovered(123, 45)
    lon, lat = fx.gcp_lonlat(123.5, 45.5)
    assert window.status_map.text() == f"lon {lon:.6f}  lat {lat:.6f}"


def test_project_menu_names_the_automatic_project_of_an_opened_scene(qtbot, tmp_path):
    from seepview.core.paths import user_data_dir

    scene = fx.write_gcp_scene(tmp_path / "scene.tif")
    project = project_for_path(scene, user_data_dir())
    window = MainWindow(ReviewSession(project, load_model=False))
    qtbot.addWidget(window)
    texts = [a.text() for a in window.menus["Project"].actions()]
    assert texts[0] == f"Automatic project: {project.root}"
    assert str(user_data_dir()) in texts[0]
