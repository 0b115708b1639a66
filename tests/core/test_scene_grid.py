"""Tile grids of a scene and what reviewed neighbours say across tile edges (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from seepview.core.adapt import Adaptation, _apply
from seepview.core.model.typer import Blobs
from seepview.core.scene_grid import (
    Edges,
    edge_votes,
    infer_grid,
    project_edges,
    project_grid,
    project_neighbours,
    tile_index,
)

TILE = 48


def scene_field(rows, width, seed=0):
    """A smooth positive uint16 field (rows*TILE, width*TILE): neighbouring tiles continue each other."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    f = gaussian_filter(rng.normal(size=(rows * TILE, width * TILE)), 6)
    f = (f - f.min()) / (f.max() - f.min())
    speckle = rng.gamma(8.0, 1 / 8.0, f.shape)  # SAR-like multiplicative noise
    return (2000 + 30000 * f * speckle).clip(1, 65535).astype(np.uint16)


def cut(field, width, scene="777001", skip=()):
    """{name: tile} of ``field`` on a row-major grid ``width`` wide, leaving out indices in ``skip``."""
    rows = field.shape[0] // TILE
    out = {}
    for i in range(rows * width):
        if i in skip:
            continue
        r, c = divmod(i, width)
        out[f"{scene}.{i:06d}"] = field[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
    return out


def test_tile_names_parse_and_others_do_not():
    assert tile_index("041870.000023") == ("041870", 23)
    assert tile_index("041870.000023.tif") == ("041870", 23)
    assert tile_index("harbour_photo") is None and tile_index("a.b.c") is None


@pytest.mark.parametrize("width", [6, 7])
def test_the_grid_width_is_read_from_the_pixels(width):
    tiles = cut(scene_field(4, width), width, skip={3, 10, 17})  # gaps, as in the CGG scenes
    grid = infer_grid({n: Edges.of(t) for n, t in tiles.items()})
    assert grid is not None and grid.width == width
    nb = grid.neighbours("777001.000008")
    assert nb["left"] == "777001.000007" and nb["up"] == f"777001.{8 - width:06d}"
    # a tile at the grid's left edge has no left neighbour, even though index - 1 exists
    assert "left" not in grid.neighbours(f"777001.{width:06d}")


def test_tiles_that_do_not_continue_each_other_get_no_grid():
    field = scene_field(4, 6)
    tiles = cut(field, 6)
    rng = np.random.default_rng(1)
    shuffled = dict(zip(tiles, [tiles[k] for k in rng.permutation(list(tiles))]))
    assert infer_grid({n: Edges.of(t) for n, t in shuffled.items()}) is None
    # names that are not <scene>.<index> give no grid, however well the pixels fit
    assert infer_grid({f"{n}b": Edges.of(t) for n, t in tiles.items()}) is None


def test_a_blob_continuing_a_labelled_slick_gets_its_votes_within_tolerance():
    comp = np.zeros((10, 10), np.int32)
    comp[2:5, 7:10] = 1  # touches the right edge at rows 2-4
    comp[7:9, 3:6] = 2  # touches no edge
    right = np.zeros(10, np.uint8)
    right[6] = 3  # two rows below the blob's last edge row: within TOLERANCE (2)
    votes = edge_votes(comp, 2, {"right": right}, 8)
    assert votes[0].argmax() == 3 and votes[0].sum() > 0 and votes[1].sum() == 0
    right[:] = 0
    right[8] = 3  # four rows away: not the same slick
    assert edge_votes(comp, 2, {"right": right}, 8).sum() == 0
    right[3] = 255  # unlabelled pixels never vote
    assert edge_votes(comp, 2, {"right": right}, 8).sum() == 0


def test_votes_beat_the_typer_and_a_prior_moves_types_not_the_seep_total():
    comp = np.zeros((6, 6), np.int32)
    comp[0:2, 0:2], comp[4:6, 4:6], comp[0:2, 4:6] = 1, 2, 3
    proba = np.array([[0.6, 0.3, 0.1, 0, 0, 0, 0, 0],  # rejected: P(seep) 0.4
                      [0.1, 0.5, 0.4, 0, 0, 0, 0, 0],  # kept as seep 1
                      [0.4, 0.3, 0.3, 0, 0, 0, 0, 0]])  # seep (0.6) but split between types
    blobs = Blobs(comp, proba, np.zeros(3, bool), (comp > 0).astype(np.uint8))
    prior = np.array([1, 0.1, 10, 1, 1, 1, 1, 1], float)  # the scene is nearly all seep 2
    out = blobs.labels(prior)
    assert (out[comp == 1] == 0).all(), "a prior cannot make a likely false blob seep"
    assert (out[comp == 2] == 2).all(), "it re-types kept blobs"
    assert (out[comp == 3] == 2).all(), "and settles a seep the typer could not type"
    assert (blobs.labels()[comp == 3] == 0).all()
    votes = np.zeros((3, 8), int)
    votes[0, 6] = 3
    out = blobs.labels(prior, votes=votes)
    assert (out[comp == 1] == 6).all() and (out[comp == 2] == 2).all()


def test_without_a_typer_only_the_continuing_blob_is_relabelled():
    labels = np.zeros((8, 8), np.uint8)
    labels[0:3, 0:2] = 1
    labels[0:3, 2:3] = 2  # one blob of two network classes touching the left edge
    labels[6:8, 5:7] = 5
    edges = {"left": np.array([4, 4, 4, 0, 0, 0, 0, 0], np.uint8)}
    probs = np.zeros((8, 8, 8), np.uint8)
    probs[0] = 255  # the model is sure the rest is sea: nothing to grow across the edge
    out = _apply(Adaptation(), None, labels, np.zeros((8, 8), np.float32), probs, None, edges)
    assert (out[0:3, 0:3] == 4).all() and (out[6:8, 5:7] == 5).all() and (out[labels == 0] == 0).all()


def _missed_slick(size=48):
    """A dark slick entering from the top edge (columns 10-14, rows 0-19) the model half-saw: P(seep) 0.5
    there, 0.05 elsewhere; its labels found nothing. A second dark patch (rows 30-35) touches no edge."""
    image = np.ones((size, size), np.float32)
    image[0:20, 10:15] = -2.0
    image[30:36, 30:36] = -2.0
    probs = np.zeros((8, size, size), np.uint8)
    probs[0] = 242
    probs[1] = 13
    probs[0][0:20, 10:15] = probs[1][0:20, 10:15] = 127
    probs[0][30:36, 30:36] = probs[1][30:36, 30:36] = 127
    line = np.zeros(size, np.uint8)
    line[10:15] = 3  # the reviewed tile above labelled it seep 3 at the shared edge
    return image, probs, np.zeros((size, size), np.uint8), {"up": line}


def test_a_slick_the_neighbour_labelled_is_continued_where_the_model_missed_it():
    from seepview.core.scene_grid import grow_from_edges

    image, probs, labels, edges = _missed_slick()
    out = grow_from_edges(labels, image, probs, edges)
    # the slick's core (at least as dark as the median seed), in the neighbour's class
    assert (out[0:15, 12] == 3).all() and (out[0:5, 11:14] == 3).all() and set(np.unique(out)) == {0, 3}
    assert (out[30:36, 30:36] == 0).all() and out[25:, :].max() == 0  # what does not continue it stays sea
    assert (out[:, :8] == 0).all() and (out[:, 17:] == 0).all()  # only its dark, likely-seep pixels
    assert (grow_from_edges(labels, image, probs, {}) == 0).all()  # no reviewed neighbour, no growth
    sea_line = {"up": np.zeros(48, np.uint8)}
    assert (grow_from_edges(labels, image, probs, sea_line) == 0).all()  # a neighbour with sea there


def test_growth_never_changes_found_pixels_or_no_data_and_is_what_apply_does():
    from seepview.core.scene_grid import grow_from_edges

    image, probs, labels, edges = _missed_slick()
    labels[5:8, 10:15] = 6  # the model found part of it, as another class: kept
    nodata = np.zeros(labels.shape, bool)
    nodata[12:20, :] = True
    out = grow_from_edges(labels, image, probs, edges, nodata)
    assert (out[5:8, 10:15] == 6).all() and (out[nodata] == 0).all() and (out[0:5, 11:14] == 3).all()
    applied = _apply(Adaptation(), None, labels, image, probs, nodata, edges)
    assert np.array_equal(applied[labels == 0], out[labels == 0])
    assert (_apply(Adaptation(), None, labels, image, probs, nodata, edges, grow=False)[labels == 0] == 0).all()


def _grid_project(tmp_path, width=6):
    from seepview.core.project import Project

    folder = tmp_path / "tiles"
    folder.mkdir()
    paths = []
    for name, tile in cut(scene_field(3, width), width).items():
        paths.append(folder / f"{name}.tif")
        tifffile.imwrite(paths[-1], tile)
    project = Project.create(tmp_path / "p", "sar-seep")
    project.add_images(paths)
    return project


def test_a_project_reads_its_grid_and_uses_only_reviewed_neighbours(tmp_path):
    project = _grid_project(tmp_path)
    assert project_neighbours(project, "777001.000007") == {
        "up": "777001.000001", "down": "777001.000013", "left": "777001.000006", "right": "777001.000008"}
    labels = np.zeros((TILE, TILE), np.uint8)
    labels[10:20, -5:] = 3  # a slick leaving 777001.000006 through its right edge
    project.save_labels("777001.000006", labels)
    assert project_edges(project, "777001.000007") == {}, "labels not marked reviewed are not evidence"
    project.set_status("777001.000006", "reviewed")
    edges = project_edges(project, "777001.000007")
    assert list(edges) == ["left"] and (edges["left"] == labels[:, -1]).all()


def test_marking_a_tile_reviewed_drops_its_neighbours_cached_predictions(tmp_path):
    from seepview.core.session import ReviewSession

    project = _grid_project(tmp_path)
    blank = np.zeros((TILE, TILE), np.uint8)
    for i in range(18):
        project.save_prediction(f"777001.{i:06d}", "m1", blank, blank)
    session = ReviewSession(project, load_model=False)
    session.open("777001.000007")
    project_grid(project, "777001")  # read by the tile's prediction, in a worker (the GUI thread never reads it)
    session.mark_reviewed("777001.000007")
    kept = {i for i in range(18) if project.load_prediction(f"777001.{i:06d}", "m1") is not None}
    assert kept == set(range(18)) - {1, 6, 8, 13}


def test_a_hostile_tile_index_costs_no_time():
    import time

    tiles = cut(scene_field(4, 6), 6)
    edges = {n: Edges.of(t) for n, t in tiles.items()}
    edges["777001.999999999"] = next(iter(edges.values()))
    start = time.perf_counter()
    grid = infer_grid(edges)
    assert time.perf_counter() - start < 2.0
    assert grid is not None and grid.width == 6


def test_a_pair_that_does_not_continue_is_not_made_neighbours_by_the_grid():
    """1-based numbering: tile 6 ends row 1 and tile 7 starts row 2, though 7 = 6 + 1."""
    field = scene_field(4, 6, seed=3)
    tiles = {f"777001.{int(n.split('.')[1]) + 1:06d}": t for n, t in cut(field, 6).items()}
    grid = infer_grid({n: Edges.of(t) for n, t in tiles.items()})
    assert grid is not None and grid.width == 6
    assert grid.neighbours("777001.000006").get("right") != "777001.000007"
    assert grid.neighbours("777001.000008")["left"] == "777001.000007"


def test_a_damaged_or_odd_sized_tile_is_left_out_and_the_rest_keep_their_grid(tmp_path):
    project = _grid_project(tmp_path)
    (tmp_path / "tiles" / "777001.000010.tif").write_bytes(b"not a tiff")
    tifffile.imwrite(tmp_path / "tiles" / "777001.000011.tif", np.ones((TILE + 8, TILE), np.uint16))
    assert project_neighbours(project, "777001.000007")["right"] == "777001.000008"
    assert project_neighbours(project, "777001.000010") == {}


def test_unlabelled_or_unknown_ids_next_door_are_not_evidence_without_a_typer():
    labels = np.zeros((8, 8), np.uint8)
    labels[0:3, 0:3] = 1
    for line_value in (255, 200):
        edges = {"left": np.full(8, line_value, np.uint8)}
        out = _apply(Adaptation(), None, labels, np.zeros((8, 8), np.float32), np.zeros((8, 8, 8), np.uint8),
                     None, edges)
        assert (out == labels).all()


def test_sides_used_reports_only_edges_where_a_slick_took_the_neighbours_class():
    from seepview.core.scene_grid import sides_used

    labels = np.zeros((8, 8), np.uint8)
    labels[2:4, 0:3] = 4
    line = np.zeros(8, np.uint8)
    line[5] = 4  # two rows below the slick's last edge row
    assert sides_used(labels, {"left": line, "right": line}, 8) == ("left",)
    line[:] = 0
    line[2:4] = 6  # a different class there: the slick did not take it
    assert sides_used(labels, {"left": line}, 8) == ()


def test_a_prediction_overtaken_by_a_neighbours_review_is_made_again_with_its_labels(tmp_path):
    from seepview.core.session import ReviewSession
    from tests.tiny import make_tiny_checkpoint

    project = _grid_project(tmp_path)
    session = ReviewSession(project, make_tiny_checkpoint())
    predictor = session._get_predictor()
    calls = []
    real = predictor.predict

    def predict(*args, **kwargs):
        calls.append(kwargs.get("edges"))
        if len(calls) == 1:  # the neighbour is reviewed while this tile is being predicted
            labels = np.zeros((TILE, TILE), np.uint8)
            labels[:, -3:] = 2
            project.save_labels("777001.000007", labels)
            project.set_status("777001.000007", "reviewed")
            session._neighbours_stale(project.entry("777001.000007"))
        return real(*args, **kwargs)

    predictor.predict = predict
    result = session.prediction_job("777001.000008")()
    assert len(calls) == 2 and calls[0] == {} and list(calls[1]) == ["left"]
    assert project.load_prediction("777001.000008", session.weights_key) is not None
    assert (result.labels == project.load_prediction("777001.000008", session.weights_key)[0]).all()
