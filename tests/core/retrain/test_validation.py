"""The gate's validation split: fixed per project, tiles of every scene, blocks of large images, user overrides."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from seepview.core.demo import make_demo_project
from seepview.core.project import Project
from seepview.core.retrain import (
    ensure_validation_split,
    reset_validation,
    set_validation,
    validation_ids,
    validation_split,
)
from seepview.core.retrain.validation import MIN_UNITS


def _tile_project(tmp_path, scenes=3, per_scene=20, name="p"):
    project = Project.create(tmp_path / name, "sar-seep")
    folder = tmp_path / f"{name}-images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for s in range(scenes):
        for t in range(per_scene):
            path = folder / f"{100000 + s}.{t:06d}.tif"
            tifffile.imwrite(path, rng.integers(1, 60000, (32, 32), dtype=np.uint16))
            entry = project.add_image(path)
            project.save_labels(entry, np.zeros((32, 32), np.uint8))
            project.set_status(entry, "reviewed")
    return project


def test_split_holds_out_tiles_of_every_scene_and_every_scene_trains(tmp_path):
    project = _tile_project(tmp_path)
    # a fixed salt: with the default random one, 60 tiles hold out 10 % or fewer in about 1 run of 300
    split = ensure_validation_split(project, 0.25, salt="test-split")
    assert not split.blocks
    by_scene = {}
    for e in project.entries:
        by_scene.setdefault(e.group, []).append(e.id in split.whole)
    assert len(by_scene) == 3
    for scene, held in by_scene.items():
        assert 0 < sum(held) < len(held), scene  # every scene is judged and every scene trains
    assert 0.1 < len(split.whole) / len(project.entries) < 0.45


def test_split_is_fixed_once_recorded_and_independent_of_order(tmp_path):
    project = _tile_project(tmp_path, scenes=2, per_scene=15)
    first = ensure_validation_split(project, 0.2).whole
    reopened = Project.open(project.root)
    reopened._entries.reverse()  # same images, other order
    assert ensure_validation_split(reopened, 0.9).whole == first  # recorded fraction and salt win
    assert set(Project.open(project.root).settings["validation_ids"]) == first
    # a tile reviewed later joins by the same rule; none of the earlier ones moves into validation
    more = tmp_path / "later.tif"
    tifffile.imwrite(more, np.ones((32, 32), np.uint16))
    entry = reopened.add_image(more)
    reopened.save_labels(entry, np.zeros((32, 32), np.uint8))
    reopened.set_status(entry, "reviewed")
    assert ensure_validation_split(reopened).whole - {entry.id} <= first


def test_only_reviewed_images_are_validation(tmp_path):
    project = _tile_project(tmp_path, scenes=1, per_scene=10)
    for e in project.entries:
        project.set_status(e, "in_progress")
    assert validation_split(project).units() == []


def test_one_scene_project_is_topped_up_to_the_minimum(tmp_path):
    project = _tile_project(tmp_path, scenes=1, per_scene=8)
    split = ensure_validation_split(project, 0.01)  # the hash alone would hold out nothing
    assert len(split.whole) == MIN_UNITS
    assert len(project.entries) - len(split.whole) >= 1  # something still trains


def test_large_image_is_split_into_blocks(tmp_path):
    project = Project.create(tmp_path / "scene", "sar-seep")
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, np.ones((2048, 1536), np.uint16))
    entry = project.add_image(path)
    project.save_labels(entry, np.zeros((2048, 1536), np.uint8))
    project.set_status(entry, "reviewed")
    split = ensure_validation_split(project, 0.25)
    blocks = split.blocks[entry.id]
    assert entry.id not in split.whole and 1 <= len(blocks) < 12  # 4 x 3 blocks of 512
    assert all((y1 - y0, x1 - x0) == (512, 512) for y0, y1, x0, x1 in blocks)
    ignore = split.training_ignore(entry.id, (2048, 1536))
    assert ignore.any() and not ignore.all()
    assert validation_ids(project) == {entry.id}


def test_user_can_force_an_image_in_or_out(tmp_path):
    from seepview.core.retrain.validation import _rank

    project = _tile_project(tmp_path, scenes=1, per_scene=12)
    split = ensure_validation_split(project, 0.25, salt="s1")
    # held out by the rule itself, not as a top-up filler (a filler may give its place to a forced tile)
    held = next(i for i in sorted(split.whole) if _rank("s1", i) < 0.25)
    free = next(e.id for e in project.entries if e.id not in split.whole)
    set_validation(project, held, False)
    set_validation(project, free, True)
    again = validation_split(Project.open(project.root))
    assert held not in again.whole and free in again.whole
    set_validation(project, held, None)  # back to the rule
    assert held in validation_split(project).whole
    with pytest.raises(Exception, match="nope"):
        set_validation(project, "nope", True)


def test_reset_draws_a_new_split(tmp_path):
    project = _tile_project(tmp_path, scenes=2, per_scene=30)
    first = ensure_validation_split(project, 0.3).whole
    reset_validation(project)
    assert "validation" not in Project.open(project.root).settings
    assert ensure_validation_split(project, 0.3).whole != first  # a new salt


def test_demo_project_split(tmp_path):
    demo = make_demo_project(tmp_path / "demo", n_images=6, size=32)
    assert ensure_validation_split(demo).units() == []  # nothing reviewed yet


def test_a_given_salt_makes_the_split_of_a_fresh_project_repeatable(tmp_path):
    def held(root, salt):
        project = make_demo_project(root, n_images=12, size=32)
        for entry in project.entries:
            project.save_labels(entry, np.zeros((32, 32), np.uint8))
            project.set_status(entry, "reviewed")
        return sorted(ensure_validation_split(project, 0.4, salt=salt).image_ids)

    first = held(tmp_path / "a", "seed-0")
    assert first == held(tmp_path / "b", "seed-0")  # another folder, same images, same seed: same held-out set
    assert any(held(tmp_path / f"c{i}", f"seed-{i}") != first for i in range(1, 6))  # the seed matters
