"""The project's recorded retrain choices."""

from __future__ import annotations

from seepview.core.demo import make_demo_project
from seepview.core.project import Project
from seepview.core.retrain import SETTINGS_KEY, RetrainConfig, project_settings, store_project_settings


def test_project_settings_round_trip_and_bad_values_are_dropped(tmp_path, caplog):
    project = make_demo_project(tmp_path / "demo", n_images=2, size=32)
    assert project_settings(project) == {}
    store_project_settings(project, RetrainConfig(seconds=90, tolerance=0.01, correction_weight=3.0, process=True,
                                                  promote_min_units=6))
    again = Project.open(project.root)
    assert project_settings(again) == {"budget": "quick", "seconds": 90.0, "tolerance": 0.01,
                                       "correction_weight": 3.0, "process": True, "promote_min_units": 6}
    stamp = (project.root / "project.json").stat().st_mtime_ns
    store_project_settings(again, RetrainConfig(seconds=90, tolerance=0.01, correction_weight=3.0, process=True,
                                                promote_min_units=6))
    assert (project.root / "project.json").stat().st_mtime_ns == stamp  # unchanged: not rewritten
    again.settings[SETTINGS_KEY] = {"budget": "forever", "seconds": -5, "tolerance": "x", "correction_weight": 2,
                                    "process": "yes", "promote_min_units": 2.5}
    assert project_settings(again) == {"correction_weight": 2.0}
    assert "ignoring retrain setting budget='forever'" in caplog.text
    for bad in (True, 0, 4, "8", 8.0):  # a whole number of units (>= 5, what judging needs), not a flag/float/text
        again.settings[SETTINGS_KEY] = {"promote_min_units": bad}
        assert project_settings(again) == {}, bad
    again.settings[SETTINGS_KEY] = ["not", "a", "dict"]
    assert project_settings(again) == {}


def test_stored_infinities_are_dropped_and_unknown_keys_survive(tmp_path, caplog):
    """A hand-edited Infinity is not a setting; a later version's key is kept when this version stores its own."""
    project = make_demo_project(tmp_path / "demo", n_images=2, size=32)
    project.settings[SETTINGS_KEY] = {"seconds": float("inf"), "tolerance": float("inf"), "from_the_future": 3}
    assert project_settings(project) == {}
    store_project_settings(project, RetrainConfig(tolerance=0.01))
    stored = Project.open(project.root).settings[SETTINGS_KEY]
    assert stored["from_the_future"] == 3 and stored["tolerance"] == 0.01
