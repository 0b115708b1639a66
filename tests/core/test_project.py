import json
import logging
import os

import numpy as np
import pytest
import tifffile

from seepview.core.classes import ClassTable
from seepview.core.errors import MaskError, ProjectError
from seepview.core.imageio import open_image
from seepview.core.project import PROJECT_FILE, SCHEMA_VERSION, Project, group_of


def _tif(path, shape=(32, 40), value=1000):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full(shape, value, np.uint16))
    return path


@pytest.fixture
def project(tmp_path):
    return Project.create(tmp_path / "proj", ClassTable.preset("sar-seep"))


@pytest.mark.parametrize(
    "name, group",
    [
        ("041869.000003.tif", "041869"),
        ("041869.000003", "041869"),
        ("/data/x/041869.000003.tif", "041869"),
        ("000143_jpg.rf.a72f5998fce5f52b4be66f6dfb49a6db.jpg", "000143"),
        ("IMG_0001_JPG.rf.0123abcd", "IMG_0001"),
        ("photo.png", "photo"),
        ("plain", "plain"),
    ],
)
def test_group_of(name, group):
    assert group_of(name) == group


def test_create_writes_schema_and_folders(project):
    data = json.loads((project.root / PROJECT_FILE).read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["images"] == [] and data["settings"] == {}
    assert ClassTable.from_dict(data["classes"]) == ClassTable.preset("sar-seep")
    for sub in ("labels", "predictions", "models", "journal"):
        assert (project.root / sub).is_dir()
    with pytest.raises(ProjectError, match="already exists"):
        Project.create(project.root, "sar-seep")


def test_paths_relative_inside_absolute_outside(project, tmp_path):
    outside = _tif(tmp_path / "data" / "041869.000001.tif")
    inside = _tif(project.root / "images" / "041870.000001.tif")
    e_out = project.add_image(outside)
    e_in = project.add_image(inside)
    assert e_out.path.is_absolute() and e_out.path == outside
    assert not e_in.path.is_absolute() and e_in.path.as_posix() == "images/041870.000001.tif"
    assert (e_out.group, e_in.group) == ("041869", "041870")
    copied = project.add_image(_tif(tmp_path / "data" / "photo.tif"), copy=True)
    assert copied.path.as_posix() == "images/photo.tif" and (project.root / "images/photo.tif").is_file()
    # Adding the same file twice is idempotent.
    assert project.add_image(outside) is e_out and len(project) == 3

    reopened = Project.open(project.root)
    assert [e.to_dict() for e in reopened.entries] == [e.to_dict() for e in project.entries]
    assert reopened.image_path("041870.000001") == project.root / "images" / "041870.000001.tif"
    assert reopened.image_shape("041869.000001") == (32, 40)


def test_duplicate_stems_get_deterministic_ids(project, tmp_path):
    a = _tif(tmp_path / "a" / "tile.tif")
    b = _tif(tmp_path / "b" / "tile.tif")
    c = _tif(tmp_path / "c" / "tile.tif")
    ids = [e.id for e in project.add_images([a, b, c])]
    assert ids == ["tile", "tile~2", "tile~3"]
    assert len({project.labels_path(i) for i in ids}) == 3


def test_add_image_rejects_missing_and_non_images(project, tmp_path):
    with pytest.raises(ProjectError, match="not found"):
        project.add_image(tmp_path / "nope.tif")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ProjectError, match="not a supported image"):
        project.add_image(tmp_path / "notes.txt")


def test_labels_round_trip_validation_and_status(project, tmp_path):
    entry = project.add_image(_tif(tmp_path / "s.000001.tif"))
    assert project.load_labels(entry) is None and entry.status == "unreviewed"
    mask = np.zeros((32, 40), np.uint8)
    mask[3:9, 5:20] = 7
    mask[0, 0] = 255
    project.save_labels(entry, mask)
    np.testing.assert_array_equal(project.load_labels(entry), mask)
    assert entry.status == "in_progress" and entry.status_time.endswith("+00:00")
    bad = mask.copy()
    bad[1, 1] = 9
    with pytest.raises(MaskError, match="unknown class id"):
        project.save_labels(entry, bad)
    with pytest.raises(MaskError, match="differs from image shape"):
        project.save_labels(entry, np.zeros((8, 8), np.uint8))
    # The failed saves left the good file alone.
    np.testing.assert_array_equal(Project.open(project.root).load_labels(entry.id), mask)
    assert not list(project.labels_dir.glob(".*"))


def test_review_status_persists_and_next_unreviewed(project, tmp_path):
    entries = project.add_images([_tif(tmp_path / f"s.{i:06d}.tif") for i in range(4)])
    ids = [e.id for e in entries]
    assert project.next_unreviewed().id == ids[0]
    project.set_status(ids[1], "reviewed")
    project.set_status(ids[2], "in_progress")
    assert project.next_unreviewed(ids[0]).id == ids[2]  # in_progress still needs review
    assert project.next_unreviewed(ids[3]).id == ids[0]  # wraps around
    reopened = Project.open(project.root)
    assert reopened.entry(ids[1]).status == "reviewed" and reopened.entry(ids[1]).status_time
    assert reopened.status_counts() == {"unreviewed": 2, "in_progress": 1, "reviewed": 1}
    for i in ids:
        reopened.set_status(i, "reviewed")
    assert reopened.next_unreviewed(ids[0]) is None
    with pytest.raises(ProjectError, match="unknown review status"):
        reopened.set_status(ids[0], "done")


def test_settings_and_classes_persist(project):
    project.settings["active_model"] = "v3"
    project.settings["validation_ids"] = ["a", "b"]
    project.settings["model_versions"] = [{"key": "v3", "parent": "v2"}]
    project.classes = project.classes.rename(1, "natural seep")
    reopened = Project.open(project.root / PROJECT_FILE)
    assert reopened.settings == project.settings
    assert reopened.classes[1].name == "natural seep"
    with pytest.raises(ProjectError, match="cannot be removed"):
        reopened.classes = ClassTable.preset("corrosion")
    reopened.settings["bad"] = object()
    with pytest.raises(ProjectError, match="JSON"):
        reopened.save()


def test_predictions_cache(project, tmp_path):
    entry = project.add_image(_tif(tmp_path / "s.000001.tif"))
    assert project.load_prediction(entry, "v1") is None
    labels = np.random.default_rng(0).integers(0, 8, (32, 40)).astype(np.uint8)
    conf = np.random.default_rng(1).integers(0, 256, (32, 40)).astype(np.uint8)
    project.save_prediction(entry, "v1", labels, conf)
    got_labels, got_conf = project.load_prediction(entry, "v1")
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_conf, conf)
    assert project.load_prediction(entry, "v2") is None
    with pytest.raises(ProjectError, match="invalid weights key"):
        project.save_prediction(entry, "../evil", labels, conf)
    with pytest.raises(ProjectError, match="uint8"):
        project.save_prediction(entry, "v1", labels.astype(np.int32), conf)
    project.clear_predictions("v1")
    assert project.load_prediction(entry, "v1") is None


def test_corrupt_prediction_cache_is_ignored(project, tmp_path, caplog):
    entry = project.add_image(_tif(tmp_path / "s.000001.tif"))
    labels_path, conf_path = project.prediction_paths(entry, "v1")
    labels_path.parent.mkdir(parents=True)
    labels_path.write_bytes(b"garbage")
    conf_path.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        assert project.load_prediction(entry, "v1") is None
    assert "prediction cache" in caplog.text


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "corrupt"),
        (b'{"schema_version": 1, "images": [', "corrupt"),
        (b"\xff\xfe\x00garbage", "corrupt"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"name": "x"}', "schema_version"),
        (b'{"schema_version": 99, "classes": {}}', "newer seepview"),
        (
            b'{"schema_version": 1, "classes": {"classes": [{"id": 0, "name": "bg"}]}, "images": [{"x": 1}]}',
            "malformed",
        ),
        (
            b'{"schema_version": 1, "classes": {"classes": [{"id": 0, "name": "bg"}]},'
            b' "images": [{"id": "a", "path": "a.tif", "status": "meh"}]}',
            "unknown status",
        ),
        (
            b'{"schema_version": 1, "classes": {"classes": [{"id": 0, "name": "bg"}]},'
            b' "images": [{"id": "../../etc/x", "path": "a.tif"}]}',
            "not a plain file stem",
        ),
    ],
)
def test_bad_project_file_raises_and_is_not_overwritten(tmp_path, content, match):
    root = tmp_path / "p"
    root.mkdir()
    (root / PROJECT_FILE).write_bytes(content)
    with pytest.raises(ProjectError, match=match) as info:
        Project.open(root)
    assert PROJECT_FILE in str(info.value)
    assert (root / PROJECT_FILE).read_bytes() == content


def test_open_missing_project(tmp_path):
    with pytest.raises(ProjectError, match="not a seepview project"):
        Project.open(tmp_path)


def test_journal_lives_in_project(project, tmp_path):
    entry = project.add_image(_tif(tmp_path / "s.000001.tif"))
    journal = project.journal(entry)
    journal.append((0, 2, 0, 2), np.full((2, 2), 3, np.uint8))
    assert journal.folder.is_relative_to(project.root / "journal")
    assert project.journal(entry.id).has_entries


def test_non_utf8_file_name_round_trips(project, tmp_path):
    raw = tmp_path / "data"
    raw.mkdir()
    name = os.fsdecode(b"scene\xff.000001.tif")  # not valid UTF-8: a surrogate-escaped str
    image = _tif(raw / name)
    entry = project.add_image(image)
    project.save_labels(entry, np.ones((32, 40), np.uint8))
    json.loads((project.root / PROJECT_FILE).read_text(encoding="utf-8"))  # still strict UTF-8 JSON
    reopened = Project.open(project.root)
    again = reopened.entry(entry.id)
    assert reopened.image_path(again) == image and again.group == os.fsdecode(b"scene\xff")
    assert reopened.load_labels(again).sum() == 32 * 40


def test_labels_and_predictions_keep_image_georeferencing(project, tmp_path):
    tags = [
        (33550, 12, 3, (10.0, 20.0, 0.0), True),
        (33922, 12, 6, (0, 0, 0, 500000.0, 4000000.0, 0), True),
    ]
    tifffile.imwrite(tmp_path / "geo.tif", np.ones((32, 40), np.uint16), extratags=tags)
    entry = project.add_image(tmp_path / "geo.tif")
    project.save_labels(entry, np.zeros((32, 40), np.uint8))
    project.save_prediction(entry, "v1", np.zeros((32, 40), np.uint8), np.zeros((32, 40), np.uint8))
    for path in (project.labels_path(entry), *project.prediction_paths(entry, "v1")):
        with open_image(path) as written:
            assert written.geo is not None and written.geo.pixel_to_map(3, 2) == (500030.0, 3999960.0)


def test_concurrent_writer_is_merged_not_lost(project, tmp_path):
    entry = project.add_image(_tif(tmp_path / "s.000001.tif"))
    other = Project.open(project.root)  # e.g. `seepview finetune PROJECT` while the GUI is open
    other.settings["active_model"] = "models/v2.safetensors"
    other.save()
    assert project.changed_on_disk() and not other.changed_on_disk()
    project.set_status(entry, "reviewed")
    assert not project.changed_on_disk() and not list(project.root.glob("project.json.*.bak"))
    assert project.settings["active_model"] == "models/v2.safetensors"
    other.reload()
    assert other.entry(entry.id).status == "reviewed"
    assert other.settings["active_model"] == "models/v2.safetensors"


def _version(key, promoted=False):
    return {"key": key, "name": key.rsplit("-v", 1)[0], "version": int(key.rsplit("-v", 1)[1]),
            "file": f"{key}.safetensors", "created": "2026-01-01T00:00:00+00:00", "promoted": promoted}


def test_merge_unions_model_versions_and_keeps_newest_status(project, tmp_path):
    a = project.add_image(_tif(tmp_path / "s.000001.tif"), save=False)
    b = project.add_image(_tif(tmp_path / "s.000002.tif"), save=False)
    project.settings["model_versions"] = [_version("m-v1", promoted=True)]
    project.settings["active_model"] = "models/m-v1.safetensors"
    project.save()
    cli = Project.open(project.root)
    # The CLI registers and promotes v2, and (later than the app) reviews b.
    with cli.lock:
        cli.settings["model_versions"].append(_version("m-v2", promoted=True))
        cli.settings["active_model"] = "models/m-v2.safetensors"
        cli.settings["retrain"] = {"tolerance": 0.01}
    cli.entry(b.id).status, cli.entry(b.id).status_time = "reviewed", "2026-01-02T00:00:09+00:00"
    cli.save()
    # Meanwhile the app registered v3 of its own, reviewed a, and had also touched b (earlier).
    project.settings["model_versions"].append(_version("m-v3"))
    project.settings["display_windows"] = {a.id: {"lo": 1, "hi": 2}}
    project.entry(a.id).status, project.entry(a.id).status_time = "reviewed", "2026-01-02T00:00:05+00:00"
    project.entry(b.id).status, project.entry(b.id).status_time = "in_progress", "2026-01-02T00:00:01+00:00"
    project.save()

    on_disk = json.loads((project.root / PROJECT_FILE).read_text())
    for data in (on_disk, project.to_dict()):
        settings = data["settings"]
        assert [v["key"] for v in settings["model_versions"]] == ["m-v1", "m-v3", "m-v2"]
        assert settings["active_model"] == "models/m-v2.safetensors"  # only the CLI changed it
        assert settings["retrain"] == {"tolerance": 0.01} and a.id in settings["display_windows"]
        statuses = {e["id"]: e["status"] for e in data["images"]}
        assert statuses == {a.id: "reviewed", b.id: "reviewed"}  # b: the CLI's decision is newer
    assert project.entry(b.id) is b and b.status == "reviewed"  # entries are updated in place
    assert not project.changed_on_disk()


def test_sync_reports_what_another_program_changed(project, tmp_path):
    project.add_image(_tif(tmp_path / "s.000001.tif"))
    assert project.sync() is None
    cli = Project.open(project.root)
    added = cli.add_image(_tif(tmp_path / "s.000002.tif"))
    cli.update_settings(lambda s: s.setdefault("model_versions", []).append(_version("m-v1")))
    changes = project.sync()
    assert changes and changes.images == [added.id] and changes.settings == ["model_versions"]
    assert not changes.classes and project.entry(added.id).status == "unreviewed"
    assert project.sync() is None


def test_unreadable_concurrent_file_is_kept_as_backup(project, tmp_path, caplog):
    entry = project.add_image(_tif(tmp_path / "s.000001.tif"))
    (project.root / PROJECT_FILE).write_text("{ truncated")
    with caplog.at_level(logging.WARNING):
        project.set_status(entry, "reviewed")
    (backup,) = project.root.glob("project.json.*.bak")
    assert backup.read_text() == "{ truncated" and "kept in" in caplog.text
    assert Project.open(project.root).entry(entry.id).status == "reviewed"


def test_settings_writes_from_threads_never_corrupt_the_file(project):
    import threading

    errors = []

    def writer(n):
        try:
            for i in range(40):
                project.update_settings(lambda s, i=i: s.setdefault(f"w{n}", {}).__setitem__(str(i), i))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = json.loads((project.root / PROJECT_FILE).read_text())
    assert all(len(data["settings"][f"w{n}"]) == 40 for n in range(3))


def test_sync_updates_the_settings_dict_in_place(project):
    held = project.settings  # e.g. a worker that looked the dict up before another program wrote
    held["mine"] = 1
    project.save()
    other = Project.open(project.root)
    other.update_settings(lambda s: s.update(theirs=2))
    project.sync()
    assert project.settings is held and held == {"mine": 1, "theirs": 2}
