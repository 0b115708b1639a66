"""Scene adaptation (issue 11): candidates chosen out-of-fold, stored as JSON, applied by the Predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seepview.core.adapt import Adaptation, TileData, _apply, adapt_checkpoint, adaptations_of, fit_adaptation
from seepview.core.errors import ModelError
from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint
from seepview.core.model.infer import Predictor
from seepview.core.model.typer import fit_typer
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
    assert again.meta.parent == "base-v3"
    assert [a.kind for a in adaptations_of(again.meta.adaptation)] == ([] if ad.kind == "none" else [ad.kind])
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
        # a set of scene adaptations
        ({"format": 2, "scenes": []}, "2 to 10,000 scenes"),
        ({"format": 2, "scenes": [Adaptation("main", "A", 2, main_class=2).to_dict()]}, "2 to 10,000 scenes"),
        ({"format": 2, "scenes": [Adaptation("main", "A", 2, main_class=2).to_dict()] * 2}, "each scene once"),
        ({"format": 2, "scenes": [Adaptation("main", "A", 2, main_class=2).to_dict(),
                                  Adaptation("main", "", 2, main_class=2).to_dict()]}, "each scene once"),
        ({"format": 2, "scenes": [Adaptation("main", "A", 2, main_class=2).to_dict(), {"format": 1, "kind": "magic"}]},
         "unknown adaptation kind"),
        (dict(Adaptation("main", "A", 2, main_class=2).to_dict(), scene=["x"]), "scene must be a scene id"),
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
    with pytest.raises(ProjectError, match="no reviewed tiles yet"):
        adapt_project(project, scene="900001")
    for entry in project.entries:
        if entry.group == "900001":
            truth = tifffile.imread(project.root / "truth" / f"{entry.id}.tif")
            truth[:8, :8] = 2  # at least one seep
            project.save_labels(entry, truth)
            project.set_status(entry, "reviewed")
    with pytest.raises(ProjectError, match="no reviewed tiles in scene '900002'.*900001"):
        adapt_project(project, scene="900002")
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


def _project_with_tiny(tmp_path):
    from seepview.core.demo import make_demo_project

    project = make_demo_project(tmp_path / "demo", n_images=4, size=64)
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    project.save()
    return project


def _forced(base, scene, kind="main", main_class=3):
    """An adapted checkpoint of ``base`` with a fixed choice (what is tested is how it is stored)."""
    import dataclasses

    from seepview.core.model.checkpoint import Checkpoint

    ad = Adaptation(kind=kind, scene=scene, tiles=3, main_class=main_class, cv={"none": 0.1, kind: 0.3})
    return Checkpoint(base.model, dataclasses.replace(base.meta, adaptation=ad.to_dict())), ad


def _registered(tmp_path):
    """(project, registry, base checkpoint, adapted checkpoint, its version): scene S1 adapted and registered."""
    from seepview.core.adapt import register_adaptation
    from seepview.core.versions import ModelRegistry

    project = _project_with_tiny(tmp_path)
    base = load_checkpoint(project.models_dir / "tiny.safetensors")
    adapted, ad = _forced(base, "S1")
    version, used = register_adaptation(project, base, adapted, ad)
    assert used is adapted
    return project, ModelRegistry(project), base, adapted, version


def test_a_registered_adaptation_borrows_the_base_weights_and_rolls_back(tmp_path):
    import torch

    from seepview.core.adapt import register_adaptation
    from seepview.core.model.checkpoint import _read_safetensors_raw

    project, registry, base, adapted, version = _registered(tmp_path)
    base_version = registry.get(version.parent)
    assert registry.active.key == version.key
    # it corrected nothing: the registry says what it learned from (blocks of a large image too)
    assert version.learned_from == "3 tiles reviewed" and version.corrected_pixels == 0
    assert registry.get(version.key).learned_from == "3 tiles reviewed"  # stored in project.json
    assert _read_safetensors_raw(registry.path(version))[0] == {}  # metadata only: no tensors of its own
    loaded = registry.load(version)
    assert Adaptation.from_dict(loaded.meta.adaptation).main_class == 3
    for (k, a), b in zip(loaded.model.state_dict().items(), base.model.state_dict().values()):
        assert torch.equal(a, b), k
    # a second adaptation of the same base borrows from the base file too, never from another overlay
    second, ad2 = _forced(base, "S1", main_class=5)
    ad2.tiles, ad2.blocks = 99, 96
    v2, _ = register_adaptation(project, loaded, second, ad2)
    assert v2.learned_from == "3 tiles and 96 tile-sized blocks reviewed"
    assert v2.parent == base_version.key and _read_safetensors_raw(registry.path(v2))[0] == {}
    assert registry.load(v2).meta.adaptation["main_class"] == 5
    registry.rollback(base_version)
    assert not registry.active_checkpoint().meta.adaptation


def test_an_adaptation_version_borrows_the_base_typer_and_refuses_a_swapped_one(tmp_path):
    """A version per few reviewed tiles must not copy the ~2 MB typer each time; a typer changed in the
    base file under it is refused like changed weights."""
    import dataclasses

    from seepview.core.adapt import register_adaptation
    from seepview.core.demo import make_demo_project
    from seepview.core.model.checkpoint import BORROWED_TYPER, _read_safetensors_raw
    from seepview.core.versions import ModelRegistry
    from tests.core.model.test_typer import training_set

    x, y, a, _ = training_set(2, 30)
    typer = fit_typer(x, y, a, 8, rounds=20, typist_rows=np.arange(len(y)) % 2 == 0).to_dict()
    project = make_demo_project(tmp_path / "demo", n_images=4, size=64)
    tiny = make_tiny_checkpoint(typer=typer)
    save_checkpoint(project.models_dir / "typed.safetensors", tiny.model, tiny.meta)
    project.settings["active_model"] = "models/typed.safetensors"
    project.save()
    base = load_checkpoint(project.models_dir / "typed.safetensors")
    registry = ModelRegistry(project)
    version, _used = register_adaptation(project, base, *_forced(base, "S1"))
    stored = _read_safetensors_raw(registry.path(version))[1]["typer"]
    assert set(stored) == {BORROWED_TYPER}  # not a copy
    assert registry.path(version).stat().st_size < registry.path(version.parent).stat().st_size / 10
    assert registry.load(version).meta.typer == typer
    # a typer that differs from the one in the weights' file is stored in full
    refitted = dict(typer, info={**typer["info"], "note": "refitted for this scene"})
    own, ad2 = _forced(base, "S2")
    own.meta = dataclasses.replace(own.meta, typer=refitted)
    v2, _ = register_adaptation(project, base, own, ad2)
    assert _read_safetensors_raw(registry.path(v2))[1]["typer"] == refitted
    assert registry.load(v2).meta.typer == refitted
    parent_file = registry.path(version.parent)
    other = dict(typer, info={**typer["info"], "note": "refitted"})
    save_checkpoint(parent_file, base.model, dataclasses.replace(base.meta, typer=other))  # same weights
    with pytest.raises(ModelError, match="typer in .* is not the one this model was made from"):
        registry.load(version)


def test_adapting_a_promoted_fine_tune_keeps_its_weights_not_its_parents(tmp_path):
    """A promoted fine-tune carries a scene adaptation and names an older model as parent (here the plain base,
    as a fine-tune of an unregistered adapted file does): a later adaptation must build on the fine-tune's
    weights, not on the parent's."""
    import copy
    import dataclasses

    import torch

    from seepview.core.adapt import register_adaptation
    from seepview.core.model.checkpoint import Checkpoint, tensors_digest

    project, registry, base, adapted, version = _registered(tmp_path)
    tuned = copy.deepcopy(adapted)  # what retrain promotes: new weights, an adaptation, parent = the old version
    with torch.no_grad():
        tuned.model.head.bias += 1.0
    tuned = Checkpoint(tuned.model, dataclasses.replace(tuned.meta, parent=version.parent))
    tuned_version = registry.add(tuned, promote=True)
    again, ad = _forced(tuned, "S1", main_class=5)
    v, used = register_adaptation(project, registry.load(tuned_version), again, ad)
    assert used is again and registry.active.key == v.key
    parent = registry.get(v.parent)
    assert parent.key not in (version.key, version.parent)  # not the old network
    want = tensors_digest(tuned.model.state_dict())
    assert tensors_digest(registry.load(v).model.state_dict()) == want
    assert tensors_digest(registry.load(parent).model.state_dict()) == want and not registry.load(parent).meta.adaptation


def test_when_no_adaptation_wins_an_earlier_one_for_the_scene_is_dropped(tmp_path):
    from seepview.core.adapt import register_adaptation

    project, registry, _base, adapted, _version = _registered(tmp_path)
    other = Adaptation(kind="none", scene="S2", tiles=4, cv={"none": 0.2})
    assert register_adaptation(project, adapted, None, other) == (None, None)  # another scene: kept
    assert registry.active_checkpoint().meta.adaptation
    none = Adaptation(kind="none", scene="S1", tiles=4, cv={"none": 0.2, "main": 0.1})
    version, used = register_adaptation(project, adapted, None, none)
    assert version is None and not used.meta.adaptation
    assert registry.active.note == "base model" and not registry.active_checkpoint().meta.adaptation


def test_an_overlay_whose_borrowed_weights_changed_or_escape_the_folder_is_refused(tmp_path):
    import json

    from safetensors.torch import save as st_save

    from seepview.core.model.checkpoint import META_KEY, WEIGHTS_FROM_KEY

    project, registry, _base, adapted, version = _registered(tmp_path)
    parent_file = registry.path(version.parent)
    other = make_tiny_checkpoint(seed=7)
    save_checkpoint(parent_file.with_name("swap.safetensors"), other.model, other.meta)
    parent_file.with_name("swap.safetensors").replace(parent_file)  # the base's weights are not the same any more
    with pytest.raises(ModelError, match="not the ones this model was made from"):
        registry.load(version)
    link = project.models_dir / "link.safetensors"
    link.symlink_to(tmp_path / "elsewhere.safetensors")
    save_checkpoint(tmp_path / "elsewhere.safetensors", other.model, other.meta)
    meta_json = json.dumps(adapted.meta.to_dict())
    for ref, why in ((json.dumps({"file": "../tiny.safetensors", "sha1": "x"}), "only borrow weights"),
                     ("{not json", "cannot read"),
                     (json.dumps({"file": "gone.safetensors", "sha1": "x"}), "are missing"),
                     (json.dumps({"file": "link.safetensors", "sha1": "x"}), "are missing")):  # no links out
        bad = project.models_dir / "bad.safetensors"
        bad.write_bytes(st_save({}, metadata={META_KEY: meta_json, WEIGHTS_FROM_KEY: ref}))
        with pytest.raises(ModelError, match=why):
            load_checkpoint(bad)


def test_out_of_fold_held_out_tiles_hear_from_their_reviewed_neighbours():
    """A slick crossing a row of tiles: across the edge, a neighbour in the other folds says its class."""
    from seepview.core.scene_grid import SceneGrid

    tiles = []
    for t in scene_tiles(12, size=40):
        truth = np.zeros_like(t.truth)
        truth[16:24, :] = 4  # the slick runs through the tile, edge to edge
        probs = np.zeros_like(t.probs)
        probs[0], probs[1] = np.where(truth > 0, 50, 230), np.where(truth > 0, 205, 25)
        tiles.append(TileData(t.image, probs, probs.argmax(0).astype(np.uint8), None, truth,
                              f"900001.{len(tiles):06d}"))
    grid = SceneGrid(4, {t.name: i for i, t in enumerate(tiles)})
    alone = fit_adaptation(meta(), tiles, kinds=["none"]).cv["none"]
    heard = fit_adaptation(meta(), tiles, kinds=["none"], grid=grid).cv["none"]
    assert heard > alone + 0.1, (alone, heard)


def test_with_a_typer_the_scenes_class_mix_stands_unless_clearly_beaten_out_of_fold():
    """On this few tiles out-of-fold scores cannot rank close candidates, so the measured default (the
    scene's class mix) is kept, and the summary says so."""
    from seepview.core.model.typer import fit_typer
    from tests.core.model.test_typer import training_set

    x, y, a, _ = training_set(0, 40)
    typer = fit_typer(x, y, a, K, rounds=40)
    _, _, _, tiles = training_set(1, 8)  # typed right by the typer already: nothing to gain
    data = [TileData(img, probs, labels, None, truth, f"t{i}") for i, (img, probs, labels, truth) in enumerate(tiles)]
    ad = fit_adaptation(meta(typer.to_dict()), data, scene="S2")
    assert ad.kind == "prior", ad.cv
    assert "class mix" in ad.summary() and "too little to go on" in ad.summary()
    assert Adaptation.from_dict(ad.to_dict()).summary() == ad.summary()  # the panel reads it back from the file


def test_a_class_mix_that_barely_moved_registers_no_new_version(tmp_path):
    import dataclasses

    from seepview.core.adapt import register_adaptation
    from seepview.core.model.checkpoint import Checkpoint
    from seepview.core.versions import ModelRegistry

    project = _project_with_tiny(tmp_path)
    base = load_checkpoint(project.models_dir / "tiny.safetensors")

    def prior_adaptation(prior):
        ad = Adaptation(kind="prior", scene="S1", tiles=5, prior=prior, cv={"none": 0.2, "prior": 0.3},
                        default="prior")
        return Checkpoint(base.model, dataclasses.replace(base.meta, adaptation=ad.to_dict())), ad

    first = register_adaptation(project, base, *prior_adaptation([1, 2.0, 1, 1, 1, 1, 1, 1]))[0]
    assert first is not None
    active = ModelRegistry(project).load(first)
    assert register_adaptation(project, active, *prior_adaptation([1, 2.1, 1, 1, 1, 1, 1, 1])) == (None, None)
    moved = register_adaptation(project, active, *prior_adaptation([1, 4.0, 1, 1, 1, 1, 1, 1]))[0]
    assert moved is not None and len(ModelRegistry(project).versions()) == 3


def test_a_class_mix_from_few_tiles_is_shrunk_towards_the_flat_prior():
    from seepview.core.adapt import PRIOR_FULL_TILES, _candidate

    tiles = scene_tiles(2 * PRIOR_FULL_TILES, seed=3)
    few, full, more = (_candidate("prior", tiles[:n], 8, 0).prior
                       for n in (5, PRIOR_FULL_TILES, 2 * PRIOR_FULL_TILES))
    assert np.argmax(few[1:]) == np.argmax(full[1:]) == 3  # seep 4, the scene's class, is favoured either way
    assert 1 < few[4] < full[4]  # but 5 tiles' worth of evidence moves the typer less
    assert np.allclose(full, more, rtol=0.05)  # from PRIOR_FULL_TILES on, the mix counts in full


def test_reviews_in_a_row_let_the_class_mix_grow_to_full_strength_in_the_app(tmp_path):
    """The app compares each refit with the active version: a mix that stands still while its tempering
    grows must still reach what a fresh fit on all the tiles applies (not freeze at the first fit's)."""
    import dataclasses

    from seepview.core.adapt import PRIOR_FULL_TILES, PRIOR_TOLERANCE, _candidate, register_adaptation
    from seepview.core.model.checkpoint import Checkpoint
    from seepview.core.versions import ModelRegistry

    project = _project_with_tiny(tmp_path)
    base = load_checkpoint(project.models_dir / "tiny.safetensors")
    tiles = scene_tiles(PRIOR_FULL_TILES, seed=4)
    registry = ModelRegistry(project)
    for n in range(2, PRIOR_FULL_TILES + 1):  # Mark reviewed on one tile after another
        ad = _candidate("prior", tiles[:n], 8, 0)
        ad.scene = "S"
        register_adaptation(project, base, Checkpoint(base.model, dataclasses.replace(
            base.meta, adaptation=ad.to_dict())), ad)
    active = Adaptation.from_dict(registry.load(registry.active).meta.adaptation)
    fresh = _candidate("prior", tiles, 8, 0)
    first = _candidate("prior", tiles[:2], 8, 0)
    assert np.abs(np.log(np.asarray(fresh.prior) / np.asarray(first.prior))).max() > np.log(4)  # it did grow
    assert np.abs(np.log(np.asarray(active.prior) / np.asarray(fresh.prior))).max() < np.log(PRIOR_TOLERANCE)
    assert 3 <= len(registry.versions()) <= PRIOR_FULL_TILES // 2  # a version every few tiles, not every tile

@pytest.mark.parametrize("field, value, message", [
    ("tiles", "x", "tile count"), ("tiles", [1], "tile count"), ("tiles", True, "tile count"),
    ("tiles", 10**400, "tile count"), ("prior", [1.0, float("inf")] + [1.0] * 6, "finite"),
    ("prior", [1.0, float("nan")] + [1.0] * 6, "finite"),
])
def test_a_stored_adaptation_with_hostile_numbers_is_refused_with_one_clear_error(field, value, message):
    data = Adaptation(kind="prior", scene="S", tiles=5, prior=[1.0] * 8).to_dict()
    data[field] = value
    with pytest.raises(ModelError, match=message):
        Adaptation.from_dict(data, "m.safetensors", num_classes=8)


def test_the_typer_cache_tells_typers_apart_by_their_typist_counts():
    """``typist_blobs`` changes what ``blob_proba`` gives a class the typist never saw: not one cache entry."""
    from seepview.core.adapt import _cached_typer
    from tests.core.model.test_typer import training_set

    x, y, a, _ = training_set(5, 30)
    rows = np.arange(len(y)) % 2 == 0
    data = fit_typer(x, y, a, 8, rounds=10, typist_rows=rows).to_dict()
    other = json.loads(json.dumps(data))
    other["info"]["typist_blobs"] = [0] * 8
    assert _cached_typer(data) is _cached_typer(json.loads(json.dumps(data)))  # same content, one parse
    assert _cached_typer(other) is not _cached_typer(data)


def test_each_scene_keeps_its_own_adaptation_in_one_project(tmp_path):
    """An analyst moving from scene to scene must not lose the last scene's adaptation: each scene's is kept,
    each applies to its own scene only, and "no adaptation" for one scene drops that scene's alone."""
    from seepview.core.adapt import adaptation_for, describe_adaptations, refine, register_adaptation

    project, registry, base, adapted, _v1 = _registered(tmp_path)  # S1: every blob seep 3
    second, ad2 = _forced(base, "S2", main_class=5)
    v2, used = register_adaptation(project, adapted, second, ad2)
    both = registry.load(v2).meta.adaptation
    assert used is second and registry.active.key == v2.key and v2.parent == registry.get(_v1.parent).key
    assert v2.metrics == {} and v2.note.endswith("; 1 other scene kept")  # not the base's held-out scores
    assert {a.scene: a.main_class for a in adaptations_of(both)} == {"S1": 3, "S2": 5}
    t = scene_tiles(1, seed=3)[0]
    m = meta()
    m.adaptation = both
    assert set(np.unique(refine(m, t.labels, t.image, t.probs, scene="S1"))) == {0, 3}
    assert set(np.unique(refine(m, t.labels, t.image, t.probs, scene="S2"))) == {0, 5}
    assert np.array_equal(refine(m, t.labels, t.image, t.probs, scene="S3"), t.labels)
    assert adaptation_for(both, None).kind == "none"  # an image of unknown scene: which one is not known
    assert describe_adaptations(both, "S2").startswith("1 other scene adapted too. This one: adapted on 3 tiles "
                                                       "for scene S2")
    assert describe_adaptations(both, "S9") == "none for this scene (adapted: S1, S2)"
    # the same choice again for S2 stores nothing; "no adaptation" for S1 keeps S2's
    assert register_adaptation(project, registry.load(v2), *_forced(base, "S2", main_class=5)) == (None, None)
    none = Adaptation(kind="none", scene="S1", tiles=4, cv={"none": 0.2, "main": 0.1})
    v3, _ = register_adaptation(project, registry.load(v2), None, none)
    assert [(a.scene, a.main_class) for a in adaptations_of(registry.load(v3).meta.adaptation)] == [("S2", 5)]
    assert v3.note.endswith("; 1 other scene kept") and registry.active.key == v3.key


def test_one_adaptation_for_every_scene_replaces_the_scenes_ones():
    from seepview.core.adapt import with_adaptation

    both = with_adaptation(Adaptation("main", "A", 2, main_class=2).to_dict(), Adaptation("main", "B", 2, main_class=3))
    assert [a.scene for a in adaptations_of(both)] == ["A", "B"]
    every = with_adaptation(both, Adaptation("main", "", 5, main_class=4))
    assert [(a.scene, a.main_class) for a in adaptations_of(every)] == [("", 4)]
    assert with_adaptation(every, Adaptation("none", "", 5)) == {}


def test_unlabelled_pixels_are_no_evidence_of_seep():
    tiles = scene_tiles(4)
    for t in tiles:
        t.truth[:] = 0
        t.truth[:8] = 255  # a band the user left unlabelled
    ad = fit_adaptation(meta(), tiles)
    assert ad.kind == "none" and list(ad.cv) == ["none"]


def test_a_reviewed_crop_of_a_scene_adapts_it_and_a_strip_counts_its_pixels():
    """Until session 14 only images of 1024 px each way were cut into blocks: a reviewed 1000² crop (15 tiles'
    worth) counted as one tile and could not adapt its scene alone."""
    from seepview.core.adapt_units import TILE_PIXELS, units_of

    crop = large_scene(size=700)  # 3 x 3 blocks, one fold region: held out block by block
    units, blocks = units_of([crop])
    assert blocks == len(units) == 9
    assert sum(u.evidence for u in units) == pytest.approx(((700 - 70) * (700 - 30)) / TILE_PIXELS)
    ad = fit_adaptation(meta(), [crop], scene="S1")
    assert ad.kind in ("main", "prior") and ad.main_class == 4 and ad.blocks == 9
    assert ad.summary().startswith("adapted on 9 tile-sized blocks for scene S1")
    small = large_scene(size=511)  # one block short each way: a whole unit
    assert units_of([small])[1] == 0
    strip = large_scene(size=1500)
    strip = TileData(strip.image[:300], strip.probs[:, :300], strip.labels[:300], strip.nodata[:300],
                     strip.truth[:300], "strip")  # 300 x 1500: too thin to cut, 6 tiles' pixels
    (unit,), _ = units_of([strip])
    assert unit.region is None and unit.evidence == pytest.approx(300 * (1500 - 30) / TILE_PIXELS)
    (tile,), _ = units_of([scene_tiles(1)[0]])
    assert tile.evidence == 1.0  # a tile (or anything smaller) is one tile, as the tempering was measured


def test_a_candidate_replaces_the_class_mix_only_when_its_lead_holds_across_the_units():
    """Session 14: on neighbouring reviewed tiles a lead out-of-fold that came from one or two of them cost
    the rest of the scene; a switch now needs the lower end of a paired interval above 0."""
    from seepview.core.adapt import _clearly_better

    def cm(tp, fp, fn):  # a unit's 8-class matrix: seep 1 found (tp), false alarms (fp), missed (fn)
        m = np.zeros((K, K), np.int64)
        m[0, 0], m[1, 1], m[0, 1], m[1, 0] = 10_000, tp, fp, fn
        return m

    units = scene_tiles(8)
    mix = [cm(50, 50, 50)] * 8
    steady = [cm(70, 40, 30)] * 8  # better on every unit
    assert _clearly_better(steady, mix, units)
    lucky = [cm(2000, 10, 10)] + [cm(40, 60, 60)] * 7  # ahead pooled, from one unit only
    from seepview.core.retrain.gate import scores

    assert scores(np.sum(lucky, axis=0)) > scores(np.sum(mix, axis=0)) + 0.04
    assert not _clearly_better(lucky, mix, units)


def unit_cm(tp, fp, fn, sea=10_000):
    """A unit's 8-class matrix (rows truth): seep 1 found (tp), false alarms (fp), missed (fn)."""
    m = np.zeros((K, K), np.int64)
    m[0, 0], m[1, 1], m[0, 1], m[1, 0] = sea, tp, fp, fn
    return m


def test_seep_free_units_left_clean_by_both_do_not_veto_a_steady_lead():
    """Audit of session 15: bootstrap draws of seep-free units only scored a difference of exactly 0, so when
    such draws reached the interval's tail (8 of 10 units here) no re-typing could ever replace the default."""
    from seepview.core.adapt import _clearly_better

    units = scene_tiles(10)
    clean = unit_cm(0, 0, 0)
    default = [clean] * 8 + [unit_cm(50, 50, 50)] * 2
    candidate = [clean] * 8 + [unit_cm(80, 20, 20)] * 2  # better wherever there is a seep, the same elsewhere
    assert _clearly_better(candidate, default, units)
    assert not _clearly_better(default, candidate, units)
    worse_clean = [unit_cm(0, 30, 0)] * 8 + [unit_cm(80, 20, 20)] * 2  # false alarms on the clean units count
    assert not _clearly_better(worse_clean, [unit_cm(0, 0, 0)] * 8 + [unit_cm(78, 22, 22)] * 2, units)
    alarms = [unit_cm(0, 5, 0)] * 8 + [unit_cm(80, 20, 20)] * 2  # ahead on every draw that holds a seep ...
    assert not _clearly_better(alarms, default, units)  # ... but draws of clean units only count against it


def test_the_lead_is_resampled_by_the_regions_blocks_were_held_out_in():
    """Blocks of one fold region were held out together, so they are one unit of the interval: a lead from one
    of two regions does not hold, though it would over eight independent blocks."""
    from seepview.core.adapt import _clearly_better
    from seepview.core.adapt_units import held_out_groups

    blocks = scene_tiles(8)
    default = [unit_cm(50, 50, 50)] * 8
    candidate = [unit_cm(90, 10, 10)] * 4 + [unit_cm(49, 51, 51)] * 4
    assert _clearly_better(candidate, default, blocks)  # eight tiles, each its own unit
    for j, b in enumerate(blocks):
        b.region = ("image", 0, j // 4)
    assert held_out_groups(blocks) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert not _clearly_better(candidate, default, blocks)
    for b in blocks:
        b.region = ("image", 0, 0)  # one region: its blocks were held out one by one
    assert held_out_groups(blocks) == [[j] for j in range(8)]
    assert _clearly_better(candidate, default, blocks)


def test_fit_adaptation_keeps_the_default_when_a_lead_past_the_margin_does_not_hold(monkeypatch):
    """The interval is the second half of the switch rule: a margin-only rule would adapt here."""
    import seepview.core.adapt as adapt

    tiles = scene_tiles(6)
    ad = fit_adaptation(meta(), tiles, scene="S1", kinds=["none", "main"])
    assert ad.kind == "main" and ad.cv["main"] > ad.cv["none"] + adapt.SWITCH_MARGIN
    asked = []
    monkeypatch.setattr(adapt, "_clearly_better", lambda c, d, t: asked.append(len(t)) or False)
    held = fit_adaptation(meta(), tiles, scene="S1", kinds=["none", "main"])
    assert asked == [6] and held.kind == "none" and held.cv == ad.cv
    assert held.summary() == (f"not adapted for scene S1 (6 tiles): cv {ad.cv['none']:.2f}; main scored "
                              f"{ad.cv['main']:.2f} out-of-fold, but its lead did not hold across the reviewed "
                              "tiles")


def test_a_single_reviewed_image_is_told_it_needs_a_second_one():
    ad = fit_adaptation(meta(), scene_tiles(1), scene="S1")
    assert ad.kind == "none"
    assert ad.summary() == ("not adapted for scene S1 (1 tile): choosing out-of-fold needs at least 2 reviewed "
                            "tiles of the scene, or one reviewed image of at least 512 x 512 px")


def large_scene(size=1100, seed=0, true_class=4):
    """One reviewed scene image: slicks of ``true_class`` the network calls seep 1, a no-data strip, and a band
    the reviewer left unlabelled (255)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.6, 0.05, (size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), np.uint8)
    for cy, cx in rng.integers(20, size - 20, (40, 2)):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = true_class
    img[truth > 0] -= 0.4
    nodata = np.zeros((size, size), bool)
    nodata[:, :30] = True
    truth[nodata] = 0
    truth[-70:] = 255
    probs = np.zeros((K, size, size), np.float32)
    probs[1] = np.where(truth == true_class, 0.8, 0.02)
    probs[0] = 1 - probs[1]
    probs8 = (probs * 255).round().astype(np.uint8)
    return TileData(img, probs8, probs8.argmax(0).astype(np.uint8), nodata, truth, "")


def test_one_large_reviewed_image_is_cut_into_blocks_and_adapts_its_scene():
    from seepview.core.adapt_units import BLOCK, units_of

    scene = large_scene()
    units, blocks = units_of([scene, scene_tiles(1)[0]])
    assert blocks == 25 and len(units) == 26  # 5 x 5 blocks of 256 (the last ones narrower), plus the tile
    assert all(u.truth.shape[0] <= BLOCK and np.shares_memory(u.probs, scene.probs) for u in units[:9])
    ad = fit_adaptation(meta(), [scene], scene="S1")
    assert ad.kind in ("main", "prior") and ad.main_class == 4 and ad.tiles == 25 and ad.blocks == 25
    assert ad.summary().startswith("adapted on 25 tile-sized blocks for scene S1")
    again = Adaptation.from_dict(ad.to_dict())
    assert again.blocks == 25 and again.summary() == ad.summary()
    rest = large_scene(seed=3)  # another image of the scene: its slicks take the scene's class
    out = _apply(ad, None, rest.labels, rest.image, rest.probs, rest.nodata)
    assert set(np.unique(out[rest.truth == 4])) == {4}
    blank = large_scene()
    blank.truth[:] = 255  # marked reviewed but nothing labelled: no evidence, no units
    assert units_of([blank]) == ([], 0)
    with pytest.raises(ModelError, match="block count"):
        Adaptation.from_dict(ad.to_dict() | {"blocks": 26})


def test_an_adapted_model_file_in_use_is_kept_or_dropped_as_the_new_evidence_says(tmp_path):
    """The project's model is an adapted file the registry does not list (the folder form's output): the same
    choice again keeps it as a version, "no adaptation" makes the plain network active and says so."""
    from seepview.core.adapt import register_adaptation
    from seepview.core.session import load_active_model
    from seepview.core.versions import ModelRegistry

    for same in (True, False):
        project = _project_with_tiny(tmp_path / str(same))
        base = load_checkpoint(project.models_dir / "tiny.safetensors")
        adapted, ad = _forced(base, "S1")
        adapted.meta.parent = "sar-seep-v0"  # not a version of this project
        save_checkpoint(project.models_dir / "adapted.safetensors", adapted.model, adapted.meta)
        project.settings["active_model"] = "models/adapted.safetensors"
        project.save()
        current, _ = load_active_model(project)
        new = ad if same else Adaptation("none", "S1", 4, cv={"none": 0.2, "main": 0.1})
        version, used = register_adaptation(project, current, _forced(base, "S1")[0] if same else None, new)
        active = ModelRegistry(project).active_checkpoint()
        if same:
            assert version is not None and [a.scene for a in adaptations_of(active.meta.adaptation)] == ["S1"]
        else:  # the caller is handed the plain network it must now use
            assert version is None and used is not None and not used.meta.adaptation
            assert not active.meta.adaptation


def test_a_promoted_fine_tune_whose_adaptation_no_longer_helps_goes_back_to_its_plain_network(tmp_path):
    import copy
    import dataclasses

    import torch

    from seepview.core.adapt import register_adaptation
    from seepview.core.model.checkpoint import Checkpoint

    project, registry, _base, adapted, version = _registered(tmp_path)
    tuned = copy.deepcopy(adapted)  # what retrain promotes: new weights, S1's adaptation, parent = the old version
    with torch.no_grad():
        tuned.model.head.bias += 1.0
    registry.add(Checkpoint(tuned.model, dataclasses.replace(tuned.meta, parent=version.key)), promote=True)
    none = Adaptation(kind="none", scene="S1", tiles=4, cv={"none": 0.2, "main": 0.1})
    v, used = register_adaptation(project, registry.active_checkpoint(), None, none)
    assert v is None and used is not None and not used.meta.adaptation
    assert not registry.active_checkpoint().meta.adaptation


def test_a_stored_no_adaptation_from_older_files_counts_as_none():
    from seepview.core.adapt import describe_adaptations

    old = Adaptation("none", "S1", 4, cv={"none": 0.2}).to_dict()  # what the folder form wrote before
    assert adaptations_of(old) == [] and describe_adaptations(old, "S1") is None


def test_a_rollback_pauses_the_scenes_it_changed_until_an_explicit_adapt_lifts_it(tmp_path):
    from seepview.core.adapt import PAUSED_KEY, paused_scenes, register_adaptation, resume_adaptation
    from seepview.core.retrain import use_version

    project, registry, base, adapted, v1 = _registered(tmp_path)  # S1 adapted
    second, ad2 = _forced(adapted, "S2", main_class=5)
    v2, used = register_adaptation(project, adapted, second, ad2)  # S1 kept, S2 added
    base_key = v1.parent
    version, checkpoint, paused = use_version(project, v1.key)  # back to S1 only: S2 changed
    assert version.key == v1.key and paused == ["S2"] and paused_scenes(project) == {"S2": v1.key}
    _, _, paused = use_version(project, v2.key)  # rolling forward pauses nothing, lifts nothing
    assert paused == [] and paused_scenes(project) == {"S2": v1.key}
    _, _, paused = use_version(project, base_key)  # the base: both scenes' adaptations are gone
    assert paused == ["S1", "S2"] and paused_scenes(project) == {"S1": base_key, "S2": base_key}
    from seepview.core.project import Project

    assert paused_scenes(Project.open(project.root)) == {"S1": base_key, "S2": base_key}  # saved
    assert resume_adaptation(project, "S1") == base_key and resume_adaptation(project, "S1") is None
    assert paused_scenes(project) == {"S2": base_key}
    project.settings[PAUSED_KEY] = {"S3": 4, 5: "v1", "S4": "tiny-v0"}  # a hand-edited file: junk is no pause
    assert paused_scenes(project) == {"S4": "tiny-v0"}
    project.settings[PAUSED_KEY] = ["S1"]
    assert paused_scenes(project) == {}


def test_adapt_project_lifts_its_scenes_pause(tmp_path):
    import tifffile

    from seepview.core.adapt import adapt_project, paused_scenes
    from seepview.core.demo import make_demo_project

    project = make_demo_project(tmp_path / "demo", n_images=4, size=64)
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    project.settings["adapt_paused"] = {"900001": "tiny-v0", "900002": "tiny-v0"}
    project.save()
    for entry in project.entries:
        if entry.group == "900001":
            truth = tifffile.imread(project.root / "truth" / f"{entry.id}.tif")
            truth[:8, :8] = 2
            project.save_labels(entry, truth)
            project.set_status(entry, "reviewed")
    adapt_project(project, scene="900001")
    assert paused_scenes(project) == {"900002": "tiny-v0"}


def test_the_apps_fit_after_review_adapts_a_scene_from_its_one_large_reviewed_image(tmp_path):
    import tifffile

    from seepview.core.adapt import scene_adaptation_job
    from seepview.core.project import Project

    rng = np.random.default_rng(0)
    big = rng.gamma(4.0, 700.0, (1100, 1040)).clip(1, 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "S7.scene.tif", big)
    tifffile.imwrite(tmp_path / "S8.small.tif", big[:300, :300])
    project = Project.create(tmp_path / "p", "sar-seep")
    project.add_images([tmp_path / "S7.scene.tif", tmp_path / "S8.small.tif"])
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    for image_id, shape in (("S7.scene", big.shape), ("S8.small", (300, 300))):
        truth = np.zeros(shape, np.uint8)
        truth[100:140, 100:160] = 3
        truth[700:740, 600:660] = 3
        project.save_labels(image_id, truth)
        project.set_status(image_id, "reviewed")
    checkpoint = load_checkpoint(project.models_dir / "tiny.safetensors")
    used, ad, version = scene_adaptation_job(project, checkpoint, "S7.scene")()
    assert ad is not None and ad.scene == "S7" and ad.tiles == ad.blocks == 20  # 5 x 4 blocks: the 16-px strip at the right joins its row's last
    assert scene_adaptation_job(project, checkpoint, "S8.small")() == (None, None, None)  # one small tile: nothing


def test_promoting_a_rejected_candidate_anyway_is_not_a_rollback(tmp_path):
    """A fine-tune the gate rejected keeps its (older) number while reviews add newer adaptation versions;
    promoting it later is the user's choice of a new model, not going back: nothing is paused."""
    from seepview.core.adapt import paused_scenes, register_adaptation
    from seepview.core.retrain import use_version

    project, registry, base, adapted, v1 = _registered(tmp_path)
    rejected = registry.add(make_tiny_checkpoint(seed=5), promote=False, note="rejected by the gate")
    second, ad2 = _forced(adapted, "S2", main_class=5)
    v3, _ = register_adaptation(project, adapted, second, ad2)
    assert rejected.version < v3.version and registry.active.key == v3.key
    version, _, paused = use_version(project, rejected.key)
    assert version.key == rejected.key and paused == [] and paused_scenes(project) == {}
    _, _, paused = use_version(project, v1.key)  # v1 was in use before: going back to it is a rollback
    assert paused == ["S1"]  # the candidate in use had no adaptation; v1's for S1 is the user's choice now


def test_a_scene_too_large_to_hold_adapts_from_blocks_read_one_by_one(tmp_path, monkeypatch):
    import tifffile

    import seepview.core.adapt_units as units_mod
    import seepview.core.display as display
    import seepview.core.model.infer as infer
    from seepview.core.adapt import scene_adaptation_job
    from seepview.core.imageio import ImageSource
    from seepview.core.project import Project

    rng = np.random.default_rng(0)
    big = rng.gamma(4.0, 700.0, (1100, 1040)).clip(1, 65535).astype(np.uint16)
    big[:, :20] = 0  # a no-data edge
    tifffile.imwrite(tmp_path / "S7.scene.tif", big)
    project = Project.create(tmp_path / "p", "sar-seep")
    project.add_images([tmp_path / "S7.scene.tif"])
    save_tiny_checkpoint(project.models_dir / "tiny.safetensors")
    project.settings["active_model"] = "models/tiny.safetensors"
    truth = np.full(big.shape, 255, np.uint8)
    truth[:600, :700] = 0  # the reviewer labelled one corner only; the rest stays unlabelled
    truth[100:140, 100:160] = 3
    project.save_labels("S7.scene", truth)
    project.set_status("S7.scene", "reviewed")
    monkeypatch.setattr(infer, "REFINE_MAX_PIXELS", 500_000)  # this 1.1 Mpx image now counts as a whole scene
    monkeypatch.setattr(units_mod, "MAX_LARGE_BLOCKS", 5)
    monkeypatch.setattr(display, "SAMPLE_PIXELS", 200_000)  # its normalisation is fitted on a sample, as a scene's
    whole = ImageSource.read_all

    def read_all(self):  # the labels (1 byte a pixel) are read whole, the scene's pixels never
        assert Path(self.path) != tmp_path / "S7.scene.tif", "the whole scene was read"
        return whole(self)

    monkeypatch.setattr(ImageSource, "read_all", read_all)
    reads = []
    original = ImageSource.read

    def read(self, y0, y1, x0, x1):
        reads.append((y1 - y0) * (x1 - x0))
        return original(self, y0, y1, x0, x1)

    monkeypatch.setattr(ImageSource, "read", read)
    checkpoint = load_checkpoint(project.models_dir / "tiny.safetensors")
    _, ad, _ = scene_adaptation_job(project, checkpoint, "S7.scene")()
    assert ad.scene == "S7" and ad.tiles == ad.blocks == 5  # 5 of the 9 blocks with labels (3 x 3 in the corner)
    block_reads = [n for n in reads if n <= (256 + 64) ** 2]
    assert len(block_reads) >= 5 and max(block_reads) <= (256 + 64) ** 2


def test_blocks_of_one_region_are_held_out_together_and_tiles_one_by_one():
    from seepview.core.adapt_units import fold_parts, units_of

    tiles = scene_tiles(7)
    parts = fold_parts(tiles, 5, seed=3)
    order = np.random.default_rng(3).permutation(7)
    assert parts == [list(order[f::5]) for f in range(5)]  # the split the tile path was measured with
    big = large_scene(size=2200)  # regions of 1024² (the last ones narrow), 9 x 9 blocks of 256 (the last 152)
    units, _ = units_of([big])
    parts = fold_parts(units, 5, seed=0)
    where = {j: f for f, part in enumerate(parts) for j in part}
    assert sorted(where) == list(range(len(units)))
    for j, u in enumerate(units):
        for k, v in enumerate(units):
            if u.region == v.region:
                assert where[j] == where[k]  # a slick cut by a block border stays on one side
    assert len({u.region for u in units}) == 9 and len(units) == 81
    assert {u.region[1:] for u in units if u.truth.shape == (152, 152)} == {(2, 2)}  # 2048 // FOLD_REGION
    one_region, _ = units_of([large_scene(size=1024)])
    assert len(fold_parts(one_region, 5, seed=0)) == 5  # a single region: its blocks one by one
