"""The retrain loop: snapshot the corrections, fine-tune a copy, score both models, let the gate decide.

``retrain`` is a generator so the GUI, the CLI and the tests drive the same code (``drive`` runs one to
the end). The current model is never modified and nothing here writes a model: ``retrain_and_record``
hands the outcome to ``versions.ModelRegistry``, so a failed or cancelled run cannot touch the current model.
Epoch choice never sees the gate's validation data: the quick budget keeps the last weights, the thorough
one stops early on a selection split of the training images. When the current model carries scene
adaptations, both models are judged as the user sees them, each with every scene's adaptation fitted again on
that scene's reviewed tiles outside the validation set (the app's own saw every reviewed tile): the candidate
is promoted with the adaptations it was judged with. Each held-out tile is scored with its reviewed
neighbours' labels across its edges, as its prediction in the app would be.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seepview.core.errors import Cancelled, TrainingError
from seepview.core.jobs import drive  # noqa: F401 - re-exported: retrain.drive
from seepview.core.retrain import validation as val
from seepview.core.retrain.gate import Decision, Gate, confusions
from seepview.core.retrain.restage import adaptation_scenes, refit_adaptation, restage
from seepview.core.retrain.settings import UNCHANGED, RetrainConfig
from seepview.core.retrain.training_set import (
    TrainingSetStats,
    build_training_set,
    build_validation_set,
    lineage_keys,
    replay_samples,
)

log = logging.getLogger(__name__)


@dataclass
class RetrainEvent:
    """A retrain stage event (training itself yields ``TrainEvent``): "prepare", "evaluate", "gate"."""

    kind: str
    message: str
    decision: Decision | None = None
    stats: TrainingSetStats | None = None
    pid: int | None = None


@dataclass
class RetrainOutcome:
    """What ``retrain`` returns. ``candidate`` is None when cancelled; the caller registers it."""

    candidate: Any
    decision: Decision | None
    seconds: float
    device: str
    cancelled: bool = False
    stats: TrainingSetStats = field(default_factory=TrainingSetStats)
    history: list = field(default_factory=list)
    version: Any = None  # the ModelVersion it was stored as (``retrain_and_record``)


def warm_up() -> None:
    """Import what the first training step needs (torch's optimiser pulls in torch._dynamo: seconds on a cold
    process), under the lock that compiled prediction takes too. Done before the time budget starts."""
    from seepview.core.model.infer import import_compiler

    import_compiler()
    import seepview.core.model.train  # noqa: F401


def training_failure(exc: BaseException, device: str) -> TrainingError:
    """A message for the user from whatever a training or scoring step raised."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower():
        return TrainingError(None, f"training ran out of memory on {device}; try a smaller batch or patch. {UNCHANGED}")
    return TrainingError(None, f"training failed: {type(exc).__name__}: {exc}. {UNCHANGED}")


def _train_config(config: RetrainConfig, time_budget_s: float | None, selecting: bool):
    from seepview.core.model.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    wanted = {
        "epochs": config.epochs if config.budget == "thorough" else 10_000,
        "batch_size": config.batch_size,
        "patch": config.patch,
        "lr": config.lr,
        "class_weight_power": config.class_weight_power,
        "rare_fraction": config.rare_fraction,
        "freeze_bn": config.freeze_bn,
        "select": "miou+binary",  # the gate's score, on the selection split only
        "seed": config.seed,
        "device": config.device,
        "threads": config.threads,
        "time_budget_s": time_budget_s,
        "patience": config.patience if selecting else None,
    }
    return TrainConfig(**{k: v for k, v in wanted.items() if k in fields})


def selection_split(samples: list, fraction: float, salt: str = "") -> tuple[list, list]:
    """(train, selection): whole images hashed into a selection share that picks the thorough run's epoch.
    Fewer than two selection images are no basis for a choice: then all train and the last epoch is kept."""
    chosen = [s for s in samples if val._rank("selection", salt, s.name) < fraction]
    if len(chosen) < 2 or len(chosen) == len(samples):
        return samples, []
    names = {s.name for s in chosen}
    return [s for s in samples if s.name not in names], chosen


def seen_groups(meta) -> dict[str, list[str]]:
    """Groups (scenes) a model and all its ancestors trained or validated on: ``evaluate`` warns about them."""
    training = meta.training or {}
    lineage = training.get("lineage") or {}
    return {
        "trained": sorted(set(lineage.get("trained") or ()) | set(training.get("train_groups") or ())),
        "validated": sorted(set(lineage.get("validated") or ()) | set(training.get("val_groups") or ())),
    }


def _version_key_of(project, weights_key: str) -> str | None:
    from seepview.core.versions import ModelRegistry

    return next((v.key for v in ModelRegistry(project).versions() if v.weights_key == weights_key), None)


def _base_data(current) -> dict:
    """Where the base model's training data lives, carried down the lineage so replay keeps working."""
    training = current.meta.training or {}
    data = dict(training.get("data") or {})
    if "train_groups" not in data and training.get("train_groups") and "finetune" not in training:
        data["train_groups"] = list(training["train_groups"])
    return data


def _scored(checkpoint, samples, cancel, device: str):
    try:
        return confusions(checkpoint, samples, cancel=cancel)
    except (TrainingError, Cancelled):
        raise
    except Exception as exc:  # OOM or a kernel failure while scoring: say so, in words
        raise training_failure(exc, device) from exc


def _basis(reference, candidate, scenes: list[str]) -> str:
    """What the gate compared, in a few words for the verdict: each side's scene adaptations, as refitted."""
    from seepview.core.adapt import adaptations_of

    def kinds(checkpoint) -> dict[str, str]:
        found = {a.scene: a.kind for a in adaptations_of(checkpoint.meta.adaptation)}
        return {scene: found.get(scene, "none") for scene in scenes}

    tiles = "the reviewed tiles outside the validation set"
    before, after = kinds(reference), kinds(candidate)
    if len(scenes) == 1:
        scene = scenes[0]
        where = f"scene {scene}'s" if scene else "the"
        b, a = before[scene], after[scene]
        if b == a == "none":
            return f"Compared both without {where} adaptation: none stands when fitted again on {tiles}"
        if b == a:
            return f"Compared both with {where} adaptation ({b}) fitted again on {tiles}"
        return f"Compared with {where} adaptation fitted again on {tiles} for each: {b} before, {a} after"
    each = ", ".join(f"{s} {before[s]}" + ("" if before[s] == after[s] else f" → {after[s]}") for s in scenes)
    return f"Compared both with the {len(scenes)} scenes' adaptations fitted again on {tiles} ({each})"


@dataclass
class _AdaptationRefit:
    """Fits a model's scene adaptations again on the stage-2 samples (``restage.refit_adaptation``), turning a
    failure into a message for the user (as ``_scored`` does). ``grids``: the scenes' tile grids, as the app's
    own fit uses."""

    scenes: list[str]
    samples: list
    cancel: Callable[[], bool]
    seed: int
    grids: dict = field(default_factory=dict)

    def __call__(self, checkpoint):
        try:
            return refit_adaptation(checkpoint, self.samples, self.scenes, self.cancel, self.seed, grids=self.grids)
        except (TrainingError, Cancelled):
            raise
        except Exception as exc:
            raise TrainingError(None, f"fitting the scene adaptation failed: {type(exc).__name__}: {exc}. "
                                      f"{UNCHANGED}") from exc


def _adaptation_refit(project, scenes: list[str], samples: list, cancel, seed: int) -> _AdaptationRefit:
    """The refit for this retrain, with the scenes' grids read once (off the GUI thread: this runs in the worker)."""
    from seepview.core.scene_grid import project_grid

    grids = {}
    for scene in scenes:
        if not scene:
            continue
        try:
            grids[scene] = project_grid(project, scene)
        except Exception as exc:  # no grid is what the app uses when it cannot read one
            log.warning("scene %s: no tile grid for the adaptation refit: %s", scene, exc)
    return _AdaptationRefit(scenes, samples, cancel, seed, grids)


def retrain_core(project, current, config: RetrainConfig, cancel: Callable[[], bool], split,
                 clicked_at: float | None = None) -> Generator[Any, None, RetrainOutcome]:
    """The loop itself, in this process (``retrain`` adds the thread policy or the child process)."""
    from seepview.core.model.train import train

    t0 = time.perf_counter()
    clicked_at = time.time() if clicked_at is None else clicked_at
    warm_up()
    keys = lineage_keys(project, current)
    norm = current.normalization
    yield RetrainEvent("prepare", "collecting your corrections")
    train_samples, stats = build_training_set(
        project, keys, norm, config.correction_weight, config.far_px, split=split,
        crop_min=config.patch, channels=current.in_channels,
    )
    val_samples = build_validation_set(project, split, norm, channels=current.in_channels)
    stats.validation_images = len(split.image_ids)
    stats.validation_units = len(val_samples)
    if not train_samples:
        raise TrainingError(
            project.root,
            "nothing to train on: label or correct at least one image outside the validation set "
            f"({split.describe()} held out). {UNCHANGED}",
        )
    selecting = config.budget == "thorough"
    selection: list = []
    if selecting:
        train_samples, selection = selection_split(train_samples, config.selection_fraction)
        stats.selection_images = len(selection)
    reviewed = {e.id for e in project.entries if e.status == "reviewed"}
    scenes = adaptation_scenes(current)
    # whole reviewed images outside the validation set and the selection split: what stage 2 (a scene
    # adaptation, the opt-in typer refit) is fitted on
    stage2_samples = [x for x in train_samples if x.name in reviewed]
    refit = _adaptation_refit(project, scenes, stage2_samples, cancel, config.seed)
    replay, stats.replay_note = replay_samples(current, config.replay, {s.group for s in val_samples}, config.seed)
    stats.replay_images = len(replay)
    log.info(stats.replay_note)
    yield RetrainEvent(
        "prepare",
        f"{stats.images} image(s), {stats.corrected_pixels} corrected pixel(s), {split.describe()} held out for "
        f"the gate; {stats.replay_note}",
        stats=stats,
    )
    if cancel():
        return RetrainOutcome(None, None, time.perf_counter() - t0, "cpu", True, stats)
    device = "cpu"
    before = None
    reference, refit_s, before_note = current, 0.0, ""
    if val_samples and scenes:
        # The user sees the current model with its scene adaptation, which the app fitted on every reviewed
        # tile, the gate's units included. Its fair twin is fitted again without them; the candidate gets
        # the same below, so the gate compares what the user would see before and after, on unseen units.
        yield RetrainEvent("evaluate", "fitting the scene adaptation again without the validation data")
        t_refit = time.perf_counter()
        reference, before_note = refit(current)
        refit_s = time.perf_counter() - t_refit
        log.info("the current model's adaptation for the gate: %s", before_note)
    if val_samples:
        yield RetrainEvent("evaluate", "scoring the current model on the validation data")
        before = _scored(reference, val_samples, cancel, device)
    budget = None
    if config.budget == "quick":
        # ``seconds`` counts from the click (wall clock, so a child's spawn and imports count too); 10% is
        # kept for what follows the last step (scoring the candidate, the gate, writing the version), and
        # the candidate's own adaptation refit takes about as long as the current model's did.
        budget = max(2.0, 0.9 * config.seconds - (time.time() - clicked_at) - refit_s)
        if refit_s > 0.25 * config.seconds:  # many reviewed tiles: say where the time went
            yield RetrainEvent("prepare", f"fitting the scene adaptation again took {refit_s:.0f} s, and the new "
                                          f"model's takes as long: {budget:.0f} s are left for training")
    work = copy.deepcopy(current)  # fine-tune a copy: the current model must stay as it was
    gen = train(work, train_samples + replay, selection, _train_config(config, budget, bool(selection)), cancel=cancel)
    try:
        result = yield from gen
    except (TrainingError, Cancelled):
        raise
    except Exception as exc:  # torch reports OOM and most kernel failures as RuntimeError
        raise training_failure(exc, device) from exc
    finally:
        gen.close()
    device = str(result.device)
    if result.cancelled or cancel():
        return RetrainOutcome(None, None, time.perf_counter() - t0, device, True, stats, result.history)
    candidate = result.checkpoint
    if candidate is None:
        raise TrainingError(None, f"training stopped before its first step ({result.stop_reason}). {UNCHANGED}")
    stage2: list[str] = []
    if config.refit_stage2 and (current.meta.typer or scenes):
        yield RetrainEvent("evaluate", "refitting the typer and scene adaptation on the new network's blobs")
        try:
            candidate, stage2 = restage(current, candidate, stage2_samples, cancel, config.seed, refit.grids)
        except Cancelled:
            raise
        except Exception as exc:  # the network is still a candidate: keep the carried typer, and say so
            log.warning("refitting the typer on the new network failed, the old typer is kept: %s", exc)
            stage2 = [f"stage-2 refit failed ({type(exc).__name__}: {exc}); the typer is carried over"]
            if scenes:
                candidate, note = refit(candidate)
                stage2.append(note)
    elif scenes:  # the carried adaptation read the old network's probabilities: fit it on the new one
        yield RetrainEvent("evaluate", "fitting the scene adaptation on the new network")
        candidate, note = refit(candidate)
        stage2 = [note]
    after = None
    if val_samples:
        yield RetrainEvent("evaluate", "scoring the new model on the validation data")
        after = _scored(candidate, val_samples, cancel, device)
    names = current.classes.names
    k = len(names)
    empty = np.zeros((0, k, k), dtype=np.int64)
    gate = Gate(config.tolerance, config.confidence, promote_min_units=config.promote_min_units)
    decision = gate.decide(before if before is not None else empty, after if after is not None else empty, names,
                           [s.name for s in val_samples])
    if val_samples and scenes and decision.ci is not None:  # judged, promoted or not
        decision.reason += f". {_basis(reference, candidate, scenes)}"
    parent_seen = seen_groups(current.meta)
    candidate.meta = dataclasses.replace(
        candidate.meta,
        name=current.meta.name,
        version=0,
        parent=_version_key_of(project, keys[0]) or current.meta.name or None,
        fingerprint=stats.fingerprint,
        metrics=decision.after or {},
        training={
            **(candidate.meta.training or {}),
            "data": _base_data(current),
            "lineage": {  # the parent's scenes stay on record: scores on them are optimistic too
                "trained": sorted(set(parent_seen["trained"]) | {x.group for x in train_samples + replay}),
                "validated": sorted(set(parent_seen["validated"]) | {x.group for x in val_samples + selection}),
            },
            "finetune": {
                "budget": config.budget,
                "seconds": round(time.perf_counter() - t0, 2),
                "device": device,
                "correction_weight": config.correction_weight,
                "far_px": config.far_px,
                "stage2": stage2,
                "gate": {k2: v for k2, v in decision.to_dict().items() if k2 not in ("per_unit", "per_class")},
                **stats.to_dict(),
            },
        },
    )
    yield RetrainEvent("gate", decision.reason, decision=decision, stats=stats)
    return RetrainOutcome(candidate, decision, time.perf_counter() - t0, device, False, stats, result.history)


def retrain(project, current, config: RetrainConfig | None = None,
            cancel: Callable[[], bool] | None = None) -> Generator[Any, None, RetrainOutcome]:
    """Fine-tune ``current`` (a ``Checkpoint``) on the project's corrections; gate the result.

    Yields ``RetrainEvent`` (prepare/evaluate/gate) and ``TrainEvent`` (step/epoch/done) objects and returns a
    ``RetrainOutcome``. ``current`` is never modified. Failures raise ``TrainingError`` with a message for the
    user; cancel returns an outcome with ``cancelled=True`` and no candidate.
    """
    from seepview.core.retrain import child, policy

    clicked_at = time.time()
    config = config or RetrainConfig()
    cancel = cancel or (lambda: False)
    split = val.ensure_validation_split(project, config.validation_fraction)
    t0 = time.perf_counter()
    try:
        if config.process:
            return (yield from child.retrain_in_child(project, current, config, cancel, split, clicked_at))
        with policy.training_thread(config.nice):
            return (yield from retrain_core(project, current, config, cancel, split, clicked_at=clicked_at))
    except Cancelled:
        return RetrainOutcome(None, None, time.perf_counter() - t0, "cpu", True)


def retrain_and_record(project, current, config: RetrainConfig | None = None,
                       cancel: Callable[[], bool] | None = None) -> Generator[Any, None, RetrainOutcome]:
    """``retrain``, then store the candidate as the next version (active only if the gate passed).

    Writing the model files (fsync) happens here, in the worker, not on the GUI thread. The base model is
    registered first so rollback to it is always possible.
    """
    from seepview.core.versions import ModelRegistry

    registry = ModelRegistry(project)
    registry.ensure_base(current)
    outcome = yield from retrain(project, current, config, cancel)
    if outcome.candidate is not None and not outcome.cancelled:
        outcome.version = registry.add(outcome.candidate, promote=outcome.decision.promote, stats=outcome.stats)
    return outcome
