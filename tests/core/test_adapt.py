"""Scene adaptation (issue 11): candidates chosen out-of-fold, stored as JSON, applied by the Predictor."""

from __future__ import annotations

import numpy as np
import pytest

from seepview.core.adapt import Adaptation, TileData, _apply, adapt_checkpoint, fit_adaptation
from seepview.core.errors import ModelError
from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint
from seepview.core.model.infer import Predictor
from tests.tiny import make_tiny_checkpoint, save_tiny_checkpoint

K = 8


def scene_tiles(n, seed=0, true_class=4, size=48):
    """Tiles whose slicks are all ``true_class`` while the network calls them seep 1 and misses their rims."""
    rng = np.random.default_rng(seed)
    tiles = []
    for i in range(n):
        img = rng.normal(0.6, 0.05, (size, size)).astype(np.float32)
        yy, xx = np.mgrid[:size, :size]
        cy, cx = rng.integers(12, size - 12, 2)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        truth = np.where(r2 < 64, true_class, 0).astype(np.uint8)
        img[truth > 0] -= 0.4
        probs = np.zeros((K, size, size), np.float32)
        seep = np.where(r2 < 64, np.where(r2 < 25, 0.8, 0.4), 0.02)  # rims under-called by the network
        probs[0], probs[1] = 1 - seep, seep
        probs8 = (probs * 255).round().astype(np.uint8)
        tiles.append(TileData(img, probs8, probs8.argmax(0).astype(np.uint8), None, truth, f"t{i}"))
    return tiles


def meta(typer=None):
    return make_tiny_checkpoint(name="", typer=typer or {}).meta


def test_the_scenes_main_class_wins_out_of_fold_and_is_reported():
    ad = fit_adaptation(meta(), scene_tiles(6), scene="S1")
    assert ad.kind in ("main", "prior") and ad.main_class == 4
    assert ad.cv[ad.kind] > ad.cv["none"]
    assert "head" not in " ".join(ad.cv)  # fewer than MIN_HEAD_TILES: no pixel head offered
    assert ad.summary().startswith("adapted on 6 tiles for scene S1:")
    rest = scene_tiles(4, seed=5)
    for t in rest:
        out = _apply(ad, None, t.labels, t.image, t.probs, t.nodata)
        assert set(np.unique(out)) <= {0, 4}


def test_from_ten_tiles_the_pixel_head_recovers_under_called_rims():
    tiles = scene_tiles(12)
    ad = fit_adaptation(meta(), tiles, kinds=["none", "main", "head+main"])
    assert "head+main" in ad.cv and ad.kind == "head+main", ad.cv
    t = scene_tiles(1, seed=9)[0]
    out = _apply(ad, None, t.labels, t.image, t.probs, t.nodata)
    assert ((out > 0) == (t.truth > 0)).mean() > ((t.labels > 0) == (t.truth > 0)).mean()


def test_no_seep_in_the_reviewed_tiles_means_no_adaptation():
    tiles = scene_tiles(4)
    for t in tiles:
        t.truth[:] = 0
    assert fit_adaptation(meta(), tiles).kind == "none"


def test_an_adapted_model_file_round_trips_and_the_predictor_applies_it(tmp_path):
    base = save_tiny_checkpoint(tmp_path / "base.safetensors", name="base", version=3)
    rng = np.random.default_rng(0)
    images = [(rng.random((48, 48)) * 3000 + 1).astype(np.uint16) for _ in range(3)]
    raw = [Predictor(base, compile=False).predict(im).labels for im in images]
    truths = [np.where(r > 0, 6, 0).astype(np.uint8) for r in raw]  # every detection is seep 6 here
    adapted, ad = adapt_checkpoint(base, images, truths, scene="S")
    path = save_checkpoint(tmp_path / "adapted.safetensors", adapted.model, adapted.meta)
    again = load_checkpoint(path)
    assert again.meta.parent == "base-v3" and Adaptation.from_dict(again.meta.adaptation).kind == ad.kind
    if ad.kind != "none":
        out = Predictor(again, compile=False).predict(images[0]).labels
        assert set(np.unique(out)) <= {0, 6}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"format": 1, "kind": "magic"}, "unknown adaptation kind"),
        ({"format": 1, "kind": "head", "head": {"coef": [1.0], "intercept": 0.0}}, "pixel head"),
        ({"format": 1, "kind": "prior", "prior": [1.0, -2.0]}, "prior"),
        ({"format": 1, "kind": "main", "main_class": 0}, "main class"),
        ({"format": 7, "kind": "none"}, "unknown format"),
    ],
)
def test_a_damaged_adaptation_is_refused_on_load(tmp_path, data, message):
    tiny = make_tiny_checkpoint(name="")
    tiny.meta.adaptation = data
    path = save_checkpoint(tmp_path / "bad.safetensors", tiny.model, tiny.meta)
    with pytest.raises(ModelError, match=message):
        load_checkpoint(path)


def test_an_adaptation_for_one_scene_is_not_applied_to_another():
    from seepview.core.adapt import refine

    ad = fit_adaptation(meta(), scene_tiles(6), scene="S1")
    m = meta()
    m.adaptation = ad.to_dict()
    t = scene_tiles(1, seed=3)[0]
    assert set(np.unique(refine(m, t.labels, t.image, t.probs, scene="S1"))) == {0, 4}
    assert np.array_equal(refine(m, t.labels, t.image, t.probs, scene="S2"), t.labels)


def test_adapt_project_registers_a_version_whose_parent_is_the_base(tmp_path):
    import tifffile

    from seepview.core.adapt import adapt_project
    from seepview.core.demo import make_demo_project
    from seepview.core.errors import ProjectError
    from seepview.core.versions import ModelRegistry

    project = make_demo_project(tmp_path / "demo", n_images=4, size=64)
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    project.save()
    with pytest.raises(ProjectError, match="no reviewed tiles in scene"):
        adapt_project(project, scene="900001")
    for entry in project.entries:
        if entry.group == "900001":
            truth = tifffile.imread(project.root / "truth" / f"{entry.id}.tif")
            truth[:8, :8] = 2  # at least one seep
            project.save_labels(entry, truth)
            project.set_status(entry, "reviewed")
    version, ad = adapt_project(project)  # default: the scene with most reviewed tiles
    assert ad.scene == "900001" and ad.tiles == 2 and "none" in ad.cv
    registry = ModelRegistry(project)
    assert registry.versions()[0].name == "tiny"  # the project's active model (a file), not the shipped default
    if version is None:
        assert ad.kind == "none" and len(registry.versions()) == 1  # only the base was registered
    else:
        assert registry.active.key == version.key
        assert version.parent == registry.versions()[0].key
        assert Adaptation.from_dict(registry.load(version).meta.adaptation).kind == ad.kind
