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
