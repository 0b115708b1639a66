import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from seepview.core.journal import Journal


def _strokes(shape=(64, 80), n=20, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        y0, x0 = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        y1, x1 = y0 + rng.integers(1, 8), x0 + rng.integers(1, 8)
        yield (int(y0), int(y1), int(x0), int(x1)), rng.integers(0, 8, (y1 - y0, x1 - x0)).astype(np.uint8)


def test_replay_reproduces_committed_strokes(tmp_path):
    journal = Journal(tmp_path / "j")
    assert not journal.has_entries and journal.replay(np.zeros((4, 4), np.uint8)) == 0
    expected = np.zeros((64, 80), np.uint8)
    for bbox, values in _strokes():
        y0, y1, x0, x1 = bbox
        expected[y0:y1, x0:x1] = values
        journal.append(bbox, values)
    assert journal.has_entries and len(journal) == 20 and journal.last_seq == 20
    labels = np.zeros((64, 80), np.uint8)
    assert Journal(tmp_path / "j").replay(labels) == 20
    np.testing.assert_array_equal(labels, expected)
    # Idempotent: replaying onto a save that already holds the strokes changes nothing.
    assert journal.replay(labels) == 20
    np.testing.assert_array_equal(labels, expected)
    journal.clear()
    assert not journal.has_entries and not list(journal.folder.glob("*.svj"))


def test_clear_upto_keeps_strokes_made_during_a_save(tmp_path):
    journal = Journal(tmp_path / "j")
    strokes = list(_strokes(n=6))
    for bbox, values in strokes[:4]:
        journal.append(bbox, values)
    covered = journal.last_seq  # the GUI snapshots labels here and starts saving
    for bbox, values in strokes[4:]:
        journal.append(bbox, values)
    journal.clear(upto=covered)
    assert [seq for seq, _, _ in journal.entries()] == [5, 6]
    assert journal.append(*strokes[0]) == 7


def test_torn_and_corrupt_entries_are_skipped(tmp_path, caplog):
    journal = Journal(tmp_path / "j")
    for bbox, values in _strokes(n=3):
        journal.append(bbox, values)
    files = sorted(journal.folder.glob("*.svj"))
    files[1].write_bytes(files[1].read_bytes()[:-5])  # torn
    (journal.folder / "00000004.svj").write_bytes(b"SVJ1 not really")  # garbage, too short
    (journal.folder / ".00000005.svj.abc.tmp.svj").write_bytes(b"half written")  # interrupted temp
    with caplog.at_level(logging.WARNING):
        assert journal.replay(np.zeros((64, 80), np.uint8)) == 2
    assert "torn/corrupt" in caplog.text
    # An entry outside the mask (e.g. a different image) is skipped too.
    assert journal.replay(np.zeros((4, 4), np.uint8)) == 0


def test_append_validates(tmp_path):
    journal = Journal(tmp_path / "j")
    with pytest.raises(ValueError):
        journal.append((0, 2, 0, 2), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError):
        journal.append((0, 2, 0, 2), np.zeros((2, 2), np.int32))
    assert not journal.has_entries


def test_kill_9_loses_at_most_the_stroke_in_progress(tmp_path):
    """A real writer process appends strokes as fast as it can and is SIGKILLed mid-stream."""
    folder = tmp_path / "j"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from seepview.core.journal import Journal
        j = Journal({str(folder)!r})
        for i in range(1, 100000):
            # Big strokes so that the kill lands inside a write most of the time.
            j.append((0, 256, 0, 512), np.full((256, 512), i % 251, np.uint8))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and Journal(folder).last_seq < 15:
            time.sleep(0.01)
        assert proc.poll() is None, "writer ended early"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    journal = Journal(folder)
    n = journal.last_seq
    assert n >= 15
    labels = np.zeros((256, 512), np.uint8)
    assert journal.replay(labels) == n  # every committed entry is intact and readable
    assert (labels == n % 251).all()


def test_entries_of_either_codec_replay(tmp_path, monkeypatch):
    from seepview.core import journal as journal_module

    journal = Journal(tmp_path / "j")
    strokes = list(_strokes(n=4))
    for i, (bbox, values) in enumerate(strokes):
        monkeypatch.setattr(journal_module, "_CODEC", (journal_module.ZLIB, journal_module.ZSTD)[i % 2])
        journal.append(bbox, values)
    expected = np.zeros((64, 80), np.uint8)
    for (y0, y1, x0, x1), values in strokes:
        expected[y0:y1, x0:x1] = values
    labels = np.zeros((64, 80), np.uint8)
    assert journal.replay(labels) == 4
    np.testing.assert_array_equal(labels, expected)


def test_sequence_numbers_never_restart_after_a_clear(tmp_path):
    """A late clear(upto=N) must never delete a stroke made after an earlier full clear."""
    journal = Journal(tmp_path / "j")
    strokes = list(_strokes(n=6))
    for bbox, values in strokes[:3]:
        journal.append(bbox, values)
    late_upto = journal.last_seq  # an autosave snapshots here ...
    journal.clear()  # ... a Ctrl+S covers everything and clears it all first
    assert journal.append(*strokes[3]) == 4  # numbering goes on: not 1
    journal.clear(upto=late_upto)  # the late autosave finishes
    assert [seq for seq, _, _ in journal.entries()] == [4]
    # The high-water mark survives the process: a fresh object (next start) numbers on too.
    journal.clear()
    assert Journal(tmp_path / "j").last_seq == 4
    assert Journal(tmp_path / "j").append(*strokes[4]) == 5


def test_background_writer_is_flushed_by_clear_and_keeps_order(tmp_path):
    journal = Journal(tmp_path / "j")
    expected = np.zeros((64, 80), np.uint8)
    seqs = []
    for bbox, values in _strokes(n=30, seed=3):
        y0, y1, x0, x1 = bbox
        expected[y0:y1, x0:x1] = values
        seqs.append(journal.submit(bbox, values))
    assert seqs == list(range(1, 31)) and journal.last_seq == 30  # numbered at once, written later
    assert journal.flush(timeout=30)
    labels = np.zeros((64, 80), np.uint8)
    assert Journal(tmp_path / "j").replay(labels) == 30
    np.testing.assert_array_equal(labels, expected)
    for bbox, values in _strokes(n=5, seed=4):
        journal.submit(bbox, values)
    journal.clear(upto=33)  # waits for the writer: no covered entry is written after the clear
    assert [seq for seq, _, _ in journal.entries()] == [34, 35]


def test_background_write_failures_are_kept_for_the_gui(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j")

    def full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal, "_write", full)
    journal.submit((0, 2, 0, 2), np.ones((2, 2), np.uint8))
    assert journal.flush(timeout=30)
    errors = journal.take_errors()
    assert len(errors) == 1 and "No space" in str(errors[0])
    assert journal.take_errors() == []  # reported once
    assert not journal.has_entries
