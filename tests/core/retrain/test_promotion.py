"""After the gate: re-prediction order and jobs; making a version active."""

from __future__ import annotations

import threading

from seepview.core.errors import ImageReadError
from seepview.core.retrain import repredict, repredict_order, use_version
from seepview.core.versions import ModelRegistry, weights_key


def test_repredict_order_current_visible_then_nearest_unreviewed(demo):
    ids = [e.id for e in demo.entries]
    demo.set_status(ids[3], "reviewed")
    demo.set_status(ids[5], "in_progress")
    order = repredict_order(demo, current_id=ids[2], visible_ids=[ids[6], ids[3]])
    assert order[:2] == [ids[2], ids[6]]
    assert ids[3] not in order and ids[5] not in order  # labels of reviewed/edited images are theirs
    assert order[2:] == [ids[4], ids[7], ids[8], ids[9], ids[0], ids[1]]
    assert repredict_order(demo, ids[2], needs=lambda i: i != ids[2])[0] == ids[4]


def test_repredict_order_keeps_one_scene_for_a_scene_adaptation(demo):
    ids = [e.id for e in demo.entries]
    for i, e in enumerate(demo.entries):
        e.group = "A" if i < 4 else "B"  # two scenes: 0-3 and 4-9
    demo.set_status(ids[1], "reviewed")
    order = repredict_order(demo, current_id=ids[5], visible_ids=[ids[2], ids[6]], group="A")
    assert order == [ids[2], ids[0], ids[3]]  # scene A only: the visible tile, then onward from the current one
    assert repredict_order(demo, current_id=ids[0], group="B") == ids[4:]


def test_repredict_runs_jobs_in_order_and_skips_unreadable_images():
    calls = []

    def job(name, fail=False):
        def run(cancel=None):
            calls.append(name)
            if fail:
                raise ImageReadError(name, "truncated TIFF")
            return name.upper()

        return run

    jobs = [("a", job("a")), ("b", job("b", fail=True)), ("c", job("c"))]
    assert list(repredict(jobs)) == ["A", "C"] and calls == ["a", "b", "c"]
    stop = threading.Event()
    gen = repredict(jobs, cancel=stop.is_set)
    assert next(gen) == "A"
    stop.set()
    assert list(gen) == []


def test_use_version_makes_it_active_and_returns_its_weights(demo, tiny_checkpoint):
    registry = ModelRegistry(demo)
    base = registry.ensure_base(tiny_checkpoint(0))
    other = registry.add(tiny_checkpoint(1), promote=True)
    version, checkpoint, paused = use_version(demo, base.key)
    assert paused == []  # neither has a scene adaptation
    assert version.key == base.key and ModelRegistry(demo).active.key == base.key
    assert weights_key(checkpoint) == base.weights_key != other.weights_key
