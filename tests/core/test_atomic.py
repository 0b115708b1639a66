"""A crash mid-write never leaves a truncated mask or project.json (issue 2: "Test this")."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tifffile

from seepview.core import atomic
from seepview.core.classes import ClassTable
from seepview.core.errors import MaskError, ProjectError
from seepview.core.project import PROJECT_FILE, Project


def _project_with_image(root, shape=(64, 64)):
    project = Project.create(root / "proj", ClassTable.preset("sar-seep"))
    tifffile.imwrite(root / "100.000001.tif", np.ones(shape, np.uint16))
    return project, project.add_image(root / "100.000001.tif")


def _temps(folder):
    return [p for p in folder.rglob(".*") if p.is_file()]


@pytest.mark.parametrize("broken", ["replace", "fsync", "write"])
def test_failed_label_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, broken):
    project, entry = _project_with_image(tmp_path)
    old = np.zeros((64, 64), np.uint8)
    old[10:20, 10:20] = 3
    project.save_labels(entry, old)
    before = project.labels_path(entry).read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if broken == "write":  # die half-way through the data
        real_open = open

        class HalfFile:
            def __init__(self, fh):
                self.fh = fh

            def write(self, data):
                self.fh.write(data[: len(data) // 2])
                boom()

            def __getattr__(self, name):
                return getattr(self.fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

        def half_open(path, mode="r", *args, **kwargs):
            fh = real_open(path, mode, *args, **kwargs)
            return HalfFile(fh) if "w" in mode and ".tmp" in str(path) else fh

        monkeypatch.setattr("builtins.open", half_open)
    else:
        monkeypatch.setattr(atomic.os, broken, boom)
    with pytest.raises(MaskError, match="No space"):
        project.save_labels(entry, np.full((64, 64), 5, np.uint8))
    monkeypatch.undo()
    assert project.labels_path(entry).read_bytes() == before
    np.testing.assert_array_equal(Project.open(project.root).load_labels(entry.id), old)
    assert _temps(project.root) == []


def test_failed_project_save_keeps_old_json(tmp_path, monkeypatch):
    project, entry = _project_with_image(tmp_path)
    before = (project.root / PROJECT_FILE).read_bytes()

    def boom(*args, **kwargs):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(ProjectError, match="cannot write"):
        project.set_status(entry, "reviewed")
    monkeypatch.undo()
    assert (project.root / PROJECT_FILE).read_bytes() == before
    assert json.loads(before)["images"][0]["status"] == "unreviewed"
    assert _temps(project.root) == []


def test_sigkill_during_label_writes_leaves_a_complete_mask(tmp_path):
    """A real process saves big masks through the project API in a loop and is killed mid-write."""
    project, entry = _project_with_image(tmp_path, shape=(4096, 4096))
    script = textwrap.dedent(
        f"""
        import numpy as np
        from seepview.core.project import Project
        project = Project.open({str(project.root)!r})
        masks = [np.full((4096, 4096), v, np.uint8) for v in (1, 2)]
        i = 0
        while True:
            project.save_labels({entry.id!r}, masks[i % 2])
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    labels_dir = project.root / "labels"
    try:
        deadline = time.monotonic() + 60
        seen_temp = False
        while time.monotonic() < deadline:
            if project.labels_path(entry).exists() and list(labels_dir.glob(".*.tmp*")):
                seen_temp = True
                break  # a write is in flight right now
            time.sleep(0.001)
        assert proc.poll() is None, "writer ended early"
        assert seen_temp, "never caught a write in flight"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    mask = Project.open(project.root).load_labels(entry.id)
    assert mask.shape == (4096, 4096)
    assert (mask == mask[0, 0]).all() and mask[0, 0] in (1, 2)  # one whole mask, never a mix or a stub
    json.loads((project.root / PROJECT_FILE).read_text())  # project.json is intact too

    # A temp left by the killed writer is swept once it is old enough not to be anyone's live write.
    for tmp in labels_dir.glob(".*.tmp*"):
        os.utime(tmp, (time.time() - 7200, time.time() - 7200))
    Project.open(project.root)
    assert not list(labels_dir.glob(".*.tmp*"))


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os

    from seepview.core.atomic import atomic_write_bytes

    umask = os.umask(0o022)
    try:
        target = tmp_path / "new.bin"
        atomic_write_bytes(target, b"x")
        assert target.stat().st_mode & 0o777 == 0o644
        target.chmod(0o600)
        atomic_write_bytes(target, b"y")  # an existing file keeps its mode
        assert target.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)
