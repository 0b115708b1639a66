"""kill -9 while editing loses at most the stroke in progress: a real app process is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from seepview.core.demo import make_demo_project
from seepview.core.project import Project
from seepview.core.session import BLANK, ReviewSession

DRIVER = Path(__file__).with_name("crash_driver.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_kill_9_loses_at_most_the_stroke_in_progress(tmp_path):
    project = make_demo_project(tmp_path / "demo", n_images=2, size=96)
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "PYTHONPATH": str(REPO),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(project.root), "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("PAINTED") or not line:
                break
        assert line.startswith("PAINTED"), f"driver did not paint: {line!r} {proc.stderr.read()[-2000:]}"
        _, image_id, committed = line.split()
        os.kill(proc.pid, signal.SIGKILL)  # no close event, no save: only the journal survives
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    reopened = Project.open(project.root)
    assert not reopened.has_labels(image_id)  # nothing had been saved the normal way
    assert reopened.journal(image_id).has_entries

    opened = ReviewSession(reopened, load_model=False).open(image_id)
    labels = opened.document.labels
    assert opened.recovered == 4
    assert int(committed) > 0
    assert int((labels[:56] == 3).sum()) == int(committed)  # every finished stroke is back
    assert (labels[56:] == BLANK).all()  # the stroke in progress is the only loss
    assert np.isin(labels, (3, BLANK)).all()


KILLS = 30


def _fresh_project(root: Path, size: int = 128) -> Project:
    import tifffile

    root.mkdir(parents=True)
    tifffile.imwrite(root / "tile.tif", np.full((size, size), 1000, np.uint16))
    project = Project.create(root / "project", "sar-seep")
    project.add_image(root / "tile.tif")
    return project


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_30_random_kills_while_stroking_and_saving_lose_only_the_stroke_in_progress(tmp_path):
    """A real process strokes with Ctrl+S and background autosaves interleaved; SIGKILL lands at a random
    moment, 30 times. Each time every stroke released before the last press is back, pixel-exact; the
    stroke in progress is the only loss; no temp file survives the next open."""
    import random

    from tests.qt.crash_driver import CELL, cell_of

    rng = random.Random(14)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    recovered_total, lost_released = 0, 0
    for run in range(KILLS):
        project = _fresh_project(tmp_path / f"run{run}")
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), "--session", str(project.root), str(run)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        try:
            assert proc.stdout.readline().startswith("READY"), proc.stderr.read()[-2000:]
            time.sleep(rng.uniform(0.02, 0.6))  # a random moment while it strokes and saves
            os.kill(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        begun = [int(line.split()[1]) for line in out.splitlines() if line.startswith("BEGUN")]
        committed = [int(line.split()[1]) for line in out.splitlines() if line.startswith("COMMITTED")]
        assert begun, f"run {run}: killed before the first stroke"
        must = set(begun[:-1])  # released before the last press: durable by then
        reopened = Project.open(project.root)  # sweeps temps of the killed writer
        leftovers = [p for d in ("labels", "journal") for p in (reopened.root / d).rglob(".*.tmp*")]
        assert leftovers == [], f"run {run}: temp files survived the next open: {leftovers}"
        labels = ReviewSession(reopened, load_model=False).open(reopened.entries[0].id).document.labels
        h, w = labels.shape
        present = set()
        for k in range(max(begun) + 1):
            y, x = cell_of(k, w)
            cell = labels[y : y + CELL, x : x + CELL]
            if (cell == 1 + k % 7).all():
                present.add(k)
            else:  # never half a stroke
                assert (cell == BLANK).all(), f"run {run}: stroke {k} partly recovered"
        assert must <= present, f"run {run}: lost released strokes {sorted(must - present)}"
        assert present <= set(committed), f"run {run}: the stroke in progress came back"
        assert present == set(range(len(present))), f"run {run}: a hole in the recovered strokes"
        rest = labels.copy()
        for k in present:
            y, x = cell_of(k, w)
            rest[y : y + CELL, x : x + CELL] = BLANK
        assert (rest == BLANK).all(), f"run {run}: pixels no stroke painted"
        recovered_total += len(present)
        lost_released += len(set(committed) - present)
    assert recovered_total > KILLS  # the kills landed after real work, not only at start-up
    assert lost_released <= KILLS  # at most the one released in the last few ms, per kill
