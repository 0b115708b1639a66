"""ReviewSession: documents, autosave journal + crash recovery, review status, predictions, classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from seepview.core import session as session_mod
from seepview.core.classes import ClassTable
from seepview.core.demo import make_demo_project
from seepview.core.display import DisplayWindow
from seepview.core.errors import ModelError, ProjectError
from seepview.core.history import Atom
from seepview.core.project import Project
from seepview.core.review import UnseenLabels
from seepview.core.session import BLANK, PredictionResult, ReviewSession, project_for_path
from tests.tiny import save_tiny_checkpoint


@pytest.fixture
def project(tmp_path):
    return make_demo_project(tmp_path / "demo", n_images=3, size=64)


@pytest.fixture
def ckpt(tmp_path):
    return save_tiny_checkpoint(tmp_path / "tiny.safetensors")


def paint(document, y0, y1, x0, x1, value):
    new = np.full((y1 - y0, x1 - x0), value, np.uint8)
    document.begin_stroke()
    document.apply(Atom.from_region(document.labels, (y0, y1, x0, x1), new))
    document.end_stroke()


def test_open_gives_blank_labels_display_and_no_model(project):
    session = ReviewSession(project, load_model=False)
    first = project.entries[0].id
    opened = session.open(first)
    assert opened.document.labels.shape == (64, 64)
    assert (opened.document.labels == BLANK).all()
    assert opened.display_u8.dtype == np.uint8 and opened.display_u8.shape == (64, 64)
    assert opened.image.dtype == np.uint16
    assert opened.prediction is None and opened.recovered == 0
    assert not session.needs_prediction(first)
    with pytest.raises(ModelError):
        session.prediction_job(first)


def test_missing_default_model_is_reported_not_raised(project, monkeypatch, tmp_path):
    from seepview.core.model import checkpoint

    monkeypatch.setattr(checkpoint, "default_model_path", lambda preset: tmp_path / "absent.safetensors")
    session = ReviewSession(project)
    assert session.checkpoint is None
    assert "no shipped model" in session.model_problem


def test_active_model_from_project_settings(project, ckpt, tmp_path):
    project.settings["active_model"] = str(tmp_path / "tiny.safetensors")
    project.save()
    session = ReviewSession(Project.open(project.root))
    assert session.checkpoint is not None and session.checkpoint.meta.name == "tiny"
    assert session.weights_key.startswith("tiny-v0-")


def test_model_with_wrong_class_count_is_refused(project, tmp_path):
    three = ClassTable.from_names(["background", "c1", "c2"])
    wrong = save_tiny_checkpoint(tmp_path / "wrong.safetensors", classes=three)
    with pytest.raises(ModelError, match="3 classes"):
        ReviewSession(project, wrong)


def test_each_commit_is_journaled_and_status_becomes_in_progress(project):
    session = ReviewSession(project, load_model=False)
    entry = project.entries[0]
    doc = session.open(entry.id).document
    journal = project.journal(entry)
    assert not journal.has_entries
    paint(doc, 2, 6, 3, 9, 4)
    session.flush_journal(entry.id)  # the background writer has it on disk
    assert len(journal) == 1
    assert entry.status == "in_progress"
    assert json.loads((project.root / "project.json").read_text())["images"][0]["status"] == "in_progress"
    doc.undo()
    session.flush_journal()
    assert len(journal) == 2  # undo is a change too: replaying must end at the current labels


def test_crash_recovery_replays_the_journal(project):
    entry = project.entries[1]
    session = ReviewSession(project, load_model=False)
    doc = session.open(entry.id).document
    paint(doc, 0, 10, 0, 10, 2)
    paint(doc, 5, 20, 5, 20, 3)
    doc.undo()
    doc.redo()
    expected = doc.labels.copy()
    session.flush_journal()  # milliseconds after the last release
    assert not project.has_labels(entry)  # nothing saved: only the journal holds the strokes
    del session, doc  # "crash": no save, no close

    reopened = ReviewSession(Project.open(project.root), load_model=False)
    opened = reopened.open(entry.id)
    assert opened.recovered == 4
    np.testing.assert_array_equal(opened.document.labels, expected)
    assert reopened.project.has_labels(entry)  # recovered work is saved at once ...
    assert not reopened.project.journal(entry).has_entries  # ... and the journal cleared


def test_save_labels_clears_journal_and_dirty(project):
    session = ReviewSession(project, load_model=False)
    entry = project.entries[0]
    doc = session.open(entry.id).document
    paint(doc, 1, 4, 1, 4, 5)
    assert session.is_dirty(entry.id)
    assert session.save_labels(entry.id)
    assert not session.is_dirty(entry.id)
    assert not project.journal(entry).has_entries
    np.testing.assert_array_equal(project.load_labels(entry), doc.labels)
    assert not session.save_labels(entry.id)  # nothing new to write


def test_history_survives_switching_images(project):
    session = ReviewSession(project, load_model=False)
    a, b = project.entries[0].id, project.entries[1].id
    doc_a = session.open(a).document
    paint(doc_a, 0, 8, 0, 8, 1)
    session.open(b)
    again = session.open(a).document
    assert again is doc_a
    assert again.labels[0, 0] == 1
    again.undo()
    assert again.labels[0, 0] == BLANK


def test_evicted_documents_are_saved_first(project, monkeypatch):
    monkeypatch.setattr(session_mod, "MAX_DOCUMENTS", 2)
    session = ReviewSession(project, load_model=False)
    ids = [e.id for e in project.entries]
    paint(session.open(ids[0]).document, 0, 4, 0, 4, 6)
    paint(session.open(ids[1]).document, 0, 4, 0, 4, 6)
    session.open(ids[2])  # evicts ids[0]
    labels = project.load_labels(ids[0])
    assert labels is not None and labels[0, 0] == 6
    assert session.open(ids[0]).document.labels[0, 0] == 6


def test_mark_reviewed_without_prediction_fills_background(project):
    session = ReviewSession(project, load_model=False)
    ids = [e.id for e in project.entries]
    doc = session.open(ids[0]).document
    paint(doc, 0, 4, 0, 4, 3)
    nxt = session.mark_reviewed(ids[0])
    assert nxt == ids[1]
    saved = project.load_labels(ids[0])
    assert saved[0, 0] == 3 and saved[10, 10] == 0 and BLANK not in saved
    assert project.entry(ids[0]).status == "reviewed"
    assert not session.is_dirty(ids[0])
    doc.undo()  # the fill is one undoable step
    assert doc.labels[10, 10] == BLANK and doc.labels[0, 0] == 3


def test_mark_reviewed_accepts_the_prediction_for_unlabeled_pixels(project, ckpt):
    session = ReviewSession(project, ckpt)
    ids = [e.id for e in project.entries]
    session.open(ids[0])
    pred = np.zeros((64, 64), np.uint8)
    pred[30:40, 30:40] = 5
    session.store_prediction(PredictionResult(ids[0], session.weights_key, pred, np.full_like(pred, 200)))
    paint(session.current.document, 30, 32, 30, 32, 2)  # the user's correction wins
    session.mark_reviewed(ids[0])
    saved = project.load_labels(ids[0])
    assert saved[30, 30] == 2 and saved[35, 35] == 5 and saved[0, 0] == 0


def test_mark_reviewed_never_saves_predictions_shown_only_as_outlines(project, ckpt):
    session = ReviewSession(project, ckpt)
    ids = [e.id for e in project.entries]
    doc = session.open(ids[0]).document
    pred = np.zeros((64, 64), np.uint8)
    pred[30:40, 30:40] = 5
    session.store_prediction(PredictionResult(ids[0], session.weights_key, pred, np.full_like(pred, 200)))
    for shown in ("outlines", "hidden"):
        with pytest.raises(UnseenLabels) as err:
            session.mark_reviewed(ids[0], shown=shown)
        assert err.value.pixels == 100
    assert (doc.labels == BLANK).all() and not project.has_labels(ids[0])  # nothing changed
    assert project.entry(ids[0]).status == "unreviewed"
    with pytest.raises(ValueError, match="unknown prediction display"):
        session.mark_reviewed(ids[0], shown="outline")
    # The window's first Enter: fill them in as labels (one undoable step) and show them filled.
    assert session.fill_unlabeled(ids[0]) == 100
    assert doc.labels[35, 35] == 5 and BLANK not in doc.labels
    session.mark_reviewed(ids[0], shown="outlines")  # the second Enter saves what is now on screen
    assert project.load_labels(ids[0])[35, 35] == 5 and project.entry(ids[0]).status == "reviewed"


def test_mark_reviewed_with_only_background_predicted_needs_no_confirmation(project, ckpt):
    session = ReviewSession(project, ckpt)
    image_id = project.entries[0].id
    session.open(image_id)
    pred = np.zeros((64, 64), np.uint8)
    session.store_prediction(PredictionResult(image_id, session.weights_key, pred, np.full_like(pred, 200)))
    session.mark_reviewed(image_id, shown="outlines")  # nothing predicted: the screen shows no seep
    assert (project.load_labels(image_id) == 0).all()


def test_nodata_is_never_labelled_a_seep_when_reviewing(project, ckpt):
    session = ReviewSession(project, ckpt)
    image_id = project.entries[1].id  # the demo puts a no-data wedge on tile 1
    opened = session.open(image_id)
    assert opened.nodata is not None and opened.nodata.any()
    np.testing.assert_array_equal(opened.nodata, opened.image == 0)
    pred = np.full((64, 64), 5, np.uint8)  # e.g. a cache written by an older seepview
    session.store_prediction(PredictionResult(image_id, session.weights_key, pred, np.full_like(pred, 200)))
    session.mark_reviewed(image_id)
    saved = project.load_labels(image_id)
    assert (saved[opened.nodata] == 0).all() and (saved[~opened.nodata] == 5).all()
    assert session.open(project.entries[0].id).nodata is None  # tile 0 has no wedge


def test_an_old_cached_prediction_shows_no_seep_on_nodata(project, ckpt):
    session = ReviewSession(project, ckpt)
    entry = project.entries[1]  # the demo's tile with a no-data wedge
    stale = np.full((64, 64), 5, np.uint8)  # written by a Predictor that did not force no-data
    project.save_prediction(entry, session.weights_key, stale, np.full_like(stale, 90))
    opened = session.open(entry.id)
    assert (opened.prediction.labels[opened.nodata] == 0).all()
    assert (opened.prediction.confidence[opened.nodata] == 255).all()
    assert (opened.prediction.labels[~opened.nodata] == 5).all()


def test_sync_project_takes_in_another_programs_promotion(project, ckpt, tmp_path):
    from seepview.core.versions import ModelRegistry

    session = ReviewSession(project, ckpt)
    session.open(project.entries[0].id)
    heard = {"model": [], "status": []}
    session.model_changed.connect(heard["model"].append)
    session.status_changed.connect(heard["status"].append)
    assert session.sync_project() is None
    other = Project.open(project.root)  # `seepview finetune PROJECT` in another process
    version = ModelRegistry(other).add(save_tiny_checkpoint(tmp_path / "cli.safetensors", seed=3), promote=True)
    other.set_status(project.entries[2].id, "reviewed")
    changes = session.sync_project()
    assert "model_versions" in changes.settings and changes.images == [project.entries[2].id]
    assert session.checkpoint.meta.version == version.version and len(heard["model"]) == 1
    assert [e.id for e in heard["status"]] == [project.entries[2].id]
    assert project.entry(project.entries[2].id).status == "reviewed"


def test_all_reviewed_returns_none(project):
    session = ReviewSession(project, load_model=False)
    ids = [e.id for e in project.entries]
    for image_id in ids[:-1]:
        session.open(image_id)
        session.mark_reviewed(image_id)
    assert session.next_unreviewed(ids[-1], backwards=True) is None
    session.open(ids[-1])
    assert session.mark_reviewed(ids[-1]) is None


def test_prediction_job_runs_and_is_cached(project, ckpt):
    session = ReviewSession(project, ckpt)
    image_id = project.entries[0].id
    session.open(image_id)
    assert session.needs_prediction(image_id)
    calls = []
    result = session.prediction_job(image_id)(cancel=lambda: False, progress=lambda d, t: calls.append((d, t)))
    assert result.labels.shape == (64, 64) and result.labels.dtype == np.uint8
    assert result.labels.max() < 8 and result.confidence.dtype == np.uint8
    assert session.store_prediction(result)
    assert session.current.prediction is result
    assert not session.needs_prediction(image_id)
    # a new session finds the cache on disk
    again = ReviewSession(Project.open(project.root), ckpt)
    np.testing.assert_array_equal(again.open(image_id).prediction.labels, result.labels)


def test_prediction_never_touches_labels_and_stale_results_are_dropped(project, ckpt, tmp_path):
    session = ReviewSession(project, ckpt)
    image_id = project.entries[0].id
    doc = session.open(image_id).document
    paint(doc, 0, 64, 0, 64, 1)
    session.mark_reviewed(image_id)
    before = project.load_labels(image_id).copy()
    job = session.prediction_job(image_id)
    session.set_model(save_tiny_checkpoint(tmp_path / "other.safetensors", seed=1))
    assert not session.store_prediction(job())  # made by the previous model
    result = session.prediction_job(image_id)()
    assert session.store_prediction(result)
    np.testing.assert_array_equal(project.load_labels(image_id), before)
    np.testing.assert_array_equal(doc.labels, before)


def test_prediction_job_can_be_cancelled(project, ckpt):
    from seepview.core.errors import Cancelled

    session = ReviewSession(project, ckpt)
    image_id = project.entries[0].id
    session.open(image_id)
    with pytest.raises(Cancelled):
        session.prediction_job(image_id)(cancel=lambda: True)


def test_model_swap_notifies_and_reloads_cached_prediction(project, ckpt, tmp_path):
    session = ReviewSession(project, ckpt)
    image_id = project.entries[0].id
    session.open(image_id)
    session.store_prediction(session.prediction_job(image_id)())
    seen = []
    session.model_changed.connect(seen.append)
    other = save_tiny_checkpoint(tmp_path / "other.safetensors", seed=2)
    session.set_model(other)
    assert seen == [other]
    assert session.current.prediction is None  # the new model has no cache yet


def test_class_edits_are_persisted(project):
    session = ReviewSession(project, load_model=False)
    seen = []
    session.classes_changed.connect(seen.append)
    session.rename_class(1, "natural seep")
    session.recolor_class(2, (1, 2, 3, 255))
    reopened = Project.open(project.root)
    assert reopened.classes[1].name == "natural seep"
    assert reopened.classes[2].rgba == (1, 2, 3, 255)
    assert len(seen) == 2


def test_contrast_window_is_persisted(project):
    session = ReviewSession(project, load_model=False)
    image_id = project.entries[0].id
    opened = session.open(image_id)
    auto = opened.window
    out = session.set_contrast(DisplayWindow(auto.lo, auto.lo + 1.0))
    assert out is opened.display_u8
    again = ReviewSession(Project.open(project.root), load_model=False).open(image_id)
    assert again.window.hi == pytest.approx(auto.lo + 1.0)
    session.set_contrast(None)
    assert session.current.window == auto


def test_pixel_info(project):
    session = ReviewSession(project, load_model=False)
    opened = session.open(project.entries[0].id)
    paint(opened.document, 3, 4, 5, 6, 7)
    info = session.pixel_info(5, 3)
    assert info.value == int(opened.image[3, 5])
    assert info.label == 7 and info.label_name == "seep 7"
    assert session.pixel_info(0, 0).label_name == "unlabeled"
    assert session.pixel_info(64, 0) is None and session.pixel_info(-1, 0) is None


def test_pixel_info_geo(tmp_path):
    path = tmp_path / "geo.tif"
    data = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) + 1
    tifffile.imwrite(
        path,
        data,
        extratags=[
            (33550, 12, 3, (0.5, 0.5, 0.0), True),  # ModelPixelScale
            (33922, 12, 6, (0.0, 0.0, 0.0, 10.0, 50.0, 0.0), True),  # ModelTiepoint
            (34735, 3, 8, (1, 1, 0, 1, 2048, 0, 1, 4326), True),  # GeoKeys: EPSG:4326
        ],
    )
    project = project_for_path(path, tmp_path / "data")
    session = ReviewSession(project, load_model=False)
    session.open(project.entries[0].id)
    info = session.pixel_info(2, 4)
    assert info.geographic and info.epsg == 4326
    assert info.map_xy == pytest.approx((10.0 + 2.5 * 0.5, 50.0 - 4.5 * 0.5))


def test_project_for_path(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"s.{i}.tif", np.ones((16, 16), np.uint16))
    project = project_for_path(folder, tmp_path / "data")
    assert project.root == tmp_path / "tiles.seepview"
    assert sorted(e.id for e in project.entries) == ["s.0", "s.1"]
    assert not (project.root / "images").exists()  # referenced, not copied
    tifffile.imwrite(folder / "s.2.tif", np.ones((16, 16), np.uint16))
    assert len(project_for_path(folder, tmp_path / "data").entries) == 3  # reopened, new image added
    assert project_for_path(project.root, tmp_path / "data").root == project.root
    single = project_for_path(folder / "s.0.tif", tmp_path / "data")
    assert single.root.parent == tmp_path / "data" / "projects"
    with pytest.raises(ProjectError):
        project_for_path(tmp_path / "nothing", tmp_path / "data")


def test_autosave_failure_is_reported_not_raised(project, monkeypatch):
    from seepview.core.errors import SeepviewError
    from seepview.core.journal import Journal

    session = ReviewSession(project, load_model=False)
    errors = []
    session.autosave_failed.connect(errors.append)
    doc = session.open(project.entries[0].id).document

    def full(self, seq, bbox, values):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Journal, "_write", full)
    paint(doc, 0, 2, 0, 2, 1)  # must not raise
    assert doc.labels[0, 0] == 1
    session.flush_journal(project.entries[0].id)  # the writer's failure reaches the GUI thread here
    assert len(errors) == 1 and isinstance(errors[0], SeepviewError)
    assert "No space left" in str(errors[0])


def test_background_autosave_is_ordered_and_clears_the_journal(project):
    session = ReviewSession(project, load_model=False)
    entry = project.entries[0]
    doc = session.open(entry.id).document
    paint(doc, 0, 4, 0, 4, 1)
    job = session.autosave_job(entry.id)  # snapshot: class 1 only
    paint(doc, 10, 14, 10, 14, 2)
    assert session.save_labels(entry.id)  # a newer save lands first
    image_id, upto, state, written = job()  # the slow background write arrives late ...
    assert not written  # ... and is dropped instead of overwriting newer labels
    session.autosave_done(image_id, upto, state, written)
    assert project.load_labels(entry)[11, 11] == 2

    paint(doc, 20, 24, 20, 24, 3)
    done = session.autosave_job(entry.id)()
    assert done[3]
    session.autosave_done(*done)
    assert not project.journal(entry).has_entries
    assert not session.is_dirty(entry.id)
    assert project.load_labels(entry)[21, 21] == 3
    assert session.autosave_job(entry.id) is None  # nothing left to write


def test_autosave_keeps_dirty_when_edited_meanwhile(project):
    session = ReviewSession(project, load_model=False)
    entry = project.entries[0]
    doc = session.open(entry.id).document
    paint(doc, 0, 4, 0, 4, 1)
    job = session.autosave_job(entry.id)
    paint(doc, 10, 14, 10, 14, 2)  # after the snapshot
    session.autosave_done(*job())
    assert session.is_dirty(entry.id)
    assert project.journal(entry).has_entries  # the newer stroke is still journaled
    reopened = ReviewSession(Project.open(project.root), load_model=False).open(entry.id)
    assert reopened.document.labels[11, 11] == 2 and reopened.document.labels[1, 1] == 1
