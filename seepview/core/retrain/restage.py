"""Stage 2 on top of a fine-tuned network: refit the typer and the scene adaptation on its blobs (issue 11).

The typer learnt the *old* network's mistakes, and a scene adaptation's pixel head read the old network's
probabilities; after a fine-tune both are stale. From the user's training samples (never the gate's
validation units, never the selection split) the new network's blobs are typed again:

- the typer is boosted further on those blobs (``refit_typer``), and the refit is kept only if it beats the
  carried typer out-of-fold over the training images (the same rule the scene adaptation uses); off by
  default (``RetrainConfig.refit_stage2``): it did not help on a CPU;
- each scene adaptation the current model carries is always fitted again (``refit_adaptation``) on its
  scene's reviewed training samples, for the candidate and, for the gate's comparison, for the current model
  too.

The gate then scores both as the user would see them (network + typer + adaptation) on the held-out units,
with adaptations that never saw those units: the one the app fitted saw every reviewed tile.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np

from seepview.core.errors import Cancelled

log = logging.getLogger(__name__)

#: Fewer labelled blobs than this and the carried typer stays as it is: a refit would only add noise.
MIN_REFIT_BLOBS = 20
REFIT_ROUNDS = 60
FOLDS = 4


def network_tiles(checkpoint, samples: Sequence, cancel: Callable[[], bool] | None = None) -> list:
    """``TileData`` (raw network probabilities, no typer) of each sample, with its labels as the truth."""
    import torch

    from seepview.core.adapt import TileData
    from seepview.core.retrain.gate import probs8_tiled

    model = checkpoint.model
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tiles = []
    try:
        with torch.inference_mode():
            for s in samples:
                if cancel is not None and cancel():
                    raise Cancelled()
                probs8, labels = probs8_tiled(model, torch.from_numpy(s.image).unsqueeze(0).to(dev), 1024)
                tiles.append(TileData(s.image[0], probs8, labels, s.nodata, s.mask, s.name))
    finally:
        model.train(was_training)
    return tiles


def _blobs(tiles, num_classes: int):
    from seepview.core.model.typer import blob_features, blob_targets, blobs_of

    out = []
    for t in tiles:
        comp, n = blobs_of(t.labels)
        target, area = blob_targets(comp, n, t.truth, num_classes)
        out.append((blob_features(t.image, t.probs, comp, n, t.nodata), target, area))
    return out


def _stack(blobs):
    """(features, targets, areas) of several tiles' blobs, one row per blob."""
    return tuple(np.concatenate(part) for part in zip(*blobs))


def refit_typer_checked(typer, tiles, num_classes: int, seed: int = 0):
    """(typer to carry, note): the refit on all ``tiles`` if it beats ``typer`` out-of-fold, else ``typer``."""
    from seepview.core.model.metrics import ConfusionMatrix, miou_binary_score
    from seepview.core.model.typer import refit_typer

    blobs = _blobs(tiles, num_classes)
    labelled = sum(int((b[1] >= 0).sum()) for b in blobs)
    if labelled < MIN_REFIT_BLOBS or len(tiles) < 2:
        return typer, f"typer carried over ({labelled} labelled blobs, a refit needs {MIN_REFIT_BLOBS})"
    folds = min(FOLDS, len(tiles))
    order = np.random.default_rng(seed).permutation(len(tiles))
    cms = {k: ConfusionMatrix(num_classes) for k in ("carried", "refit")}
    for i in range(folds):
        held = set(order[i::folds].tolist())
        x, y, a = _stack([blobs[j] for j in range(len(tiles)) if j not in held])
        if int((y >= 0).sum()) < 2:
            return typer, "typer carried over (a fold had no labelled blobs to refit on)"
        refit = refit_typer(typer, x, y, a, rounds=REFIT_ROUNDS, seed=seed)
        for j in held:
            t = tiles[j]
            cms["carried"].update(typer.apply(t.labels, t.image, t.probs, t.nodata), t.truth, t.nodata)
            cms["refit"].update(refit.apply(t.labels, t.image, t.probs, t.nodata), t.truth, t.nodata)
    cv = {k: float(miou_binary_score(cm.metrics()) or 0.0) for k, cm in cms.items()}
    if cv["refit"] <= cv["carried"]:
        return typer, f"typer carried over (refit cv {cv['refit']:.3f} vs {cv['carried']:.3f} carried)"
    refit = refit_typer(typer, *_stack(blobs), rounds=REFIT_ROUNDS, seed=seed,
                        info={"cv_refit": round(cv["refit"], 4), "cv_carried": round(cv["carried"], 4)})
    return refit, f"typer refitted on {labelled} blobs of the new network (cv {cv['refit']:.3f} vs {cv['carried']:.3f})"


def refit_adaptation(checkpoint, samples: Sequence, scenes, cancel: Callable[[], bool] | None = None,
                     seed: int = 0, tiles: Sequence | None = None, grids=None):
    """(``checkpoint`` with the adaptation of each of ``scenes`` fitted again on that scene's ``samples``
    only, note). ``scenes``: one scene id or several; "" is an adaptation for every image (the folder form of
    ``seepview adapt``), fitted on all samples.

    ``samples``: reviewed training samples (the caller filters out validation units, so what is fitted here
    never saw the gate's evidence). A scene with fewer than two tiles, or where "no adaptation" wins, loses
    its adaptation. ``tiles``: the samples' ``network_tiles`` when already computed. ``grids``: {scene:
    ``SceneGrid``}, so the out-of-fold choice sees reviewed neighbours across tile edges as the app's does
    (their truths come from the training folds only).
    """
    from seepview.core.adapt import fit_adaptation, with_adaptation
    from seepview.core.adapt_units import units_of
    from seepview.core.model.checkpoint import Checkpoint

    scenes = [scenes] if isinstance(scenes, str) else list(scenes)
    meta = dataclasses.replace(checkpoint.meta, adaptation={})
    wanted = [i for i, s in enumerate(samples) if "" in scenes or s.scene in scenes]
    if tiles is None:
        tiles = dict(zip(wanted, network_tiles(checkpoint, [samples[i] for i in wanted], cancel)))
    data, notes = {}, []
    for scene in scenes:
        mine = [tiles[i] for i in wanted if not scene or samples[i].scene == scene]
        where = f"scene {scene}" if scene else "every scene"
        if len(units_of(mine)[0]) < 2:  # a large reviewed image counts as its blocks
            notes.append(f"{where}: adaptation dropped (fewer than 2 of its reviewed tiles are outside the "
                         "validation set)")
            continue
        ad = fit_adaptation(meta, mine, scene=scene, seed=seed, grid=(grids or {}).get(scene))
        data = with_adaptation(data, ad)
        notes.append(f"{where}: {ad.summary()}")
    return Checkpoint(checkpoint.model, dataclasses.replace(meta, adaptation=data)), "; ".join(notes)


def adaptation_scenes(checkpoint) -> list[str]:
    """The scenes ``checkpoint``'s adaptations were fitted for ([] without any; "" is one for every scene,
    from the folder form of ``seepview adapt``)."""
    from seepview.core.adapt import adaptations_of

    return [a.scene for a in adaptations_of(checkpoint.meta.adaptation)]


def restage(current, candidate, samples: Sequence, cancel: Callable[[], bool] | None = None, seed: int = 0,
            grids=None):
    """(candidate with refitted typer/adaptation, notes).

    ``samples``: training samples of images marked reviewed (the caller filters): stage 2 is fitted on whole
    blobs, which only a reviewed image vouches for; a crop around the edits of an unreviewed one does not.
    ``grids``: the adapted scenes' grids (``refit_adaptation``).
    """
    from seepview.core.model.checkpoint import Checkpoint
    from seepview.core.model.typer import Typer

    meta = candidate.meta
    typer_data = dict(current.meta.typer or {})
    scenes = adaptation_scenes(current)
    if not typer_data and not scenes:
        return candidate, []
    k = len(candidate.classes)
    tiles = network_tiles(candidate, samples, cancel)
    notes = []
    if typer_data and samples:
        typer, note = refit_typer_checked(Typer.from_dict(typer_data), tiles, k, seed)
        typer_data = typer.to_dict()
        notes.append(note)
    staged = Checkpoint(candidate.model, dataclasses.replace(meta, typer=typer_data, adaptation={}))
    if scenes:
        staged, note = refit_adaptation(staged, samples, scenes, cancel, seed, tiles=dict(enumerate(tiles)),
                                        grids=grids)
        notes.append(note)
    for note in notes:
        log.info(note)
    return staged, notes
