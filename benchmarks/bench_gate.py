"""How often the retrain gate is right: ``python benchmarks/run.py gate --json``.

On scenes the shipped model never trained on (its card's validation scenes), each run puts ``--corrections``
tiles of one scene (a seeded draw) into a fresh project as reviewed tiles with their true masks (the model's
own predictions cached, so corrected pixels are where it was wrong), runs the product's quick fine-tune
(``retrain`` with ``RetrainConfig`` defaults apart from the budget), and records the gate's verdict. The
candidate's *true effect* is the score difference (mean of mIoU and binary IoU, pooled over tiles) between
candidate and current model on the rest of that scene, which neither training nor the gate saw.

Besides the ordinary draws, deliberately harmful runs: a huge learning rate, and shuffled labels (each training
tile given another training tile's mask; the held-out tiles keep their true masks, because the gate trusts the
analyst's reviewed labels: a gate that judges on labels cannot catch an analyst whose every label is wrong). A false promotion is a promoted candidate whose true effect is below
``-tolerance``; a false rejection is a candidate not promoted (rejected, or "not enough evidence") whose true
effect is >= 0. Training failures (a NaN loss) promote nothing and are counted as correct rejections.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SCENES = ("041870", "045588", "045591")  # models/sar-seep.md: the validation scenes, never trained on


def add_arguments(parser) -> None:
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("SEEPVIEW_DATA", REPO.parent / "shared" / "data")) / "cgg-seep")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "sar-seep.safetensors")
    parser.add_argument("--scenes", nargs="*", default=list(SCENES))
    parser.add_argument("--draws", type=int, default=3, help="ordinary runs per scene (seeds 0..N-1)")
    parser.add_argument("--harmful", nargs="*", default=["lr", "shuffle"], choices=["lr", "shuffle"])
    parser.add_argument("--harmful-lr", type=float, default=0.5)
    parser.add_argument("--corrections", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=None,
                        help="quick budget of each fine-tune (default: RetrainConfig's, the app's 60 s)")
    parser.add_argument("--tolerance", type=float, default=None, help="default: RetrainConfig's")
    parser.add_argument("--replay", type=int, default=16)
    parser.add_argument("--validation-fraction", type=float, default=None, help="default: RetrainConfig's")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--typer", choices=["loso", "none"], default="loso",
                        help="the current model's typer for scene S: 'loso' = fitted without S's blobs (bench_adapt's "
                             "leave-one-scene-out typer; the shipped typer saw every scene, so its scores there are "
                             "in-sample), 'none' = the network alone (how issue 10 measured the gate)")
    parser.add_argument("--cache", default="/tmp/sv11-cache", help="bench_adapt's probability cache (for --typer loso)")
    parser.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                        help="refit the typer on the new network (RetrainConfig.refit_stage2; default: its default)")


def _scene_typers(args, scenes) -> dict:
    """scene -> typer dict fitted on the blobs of the other unseen scenes (x3) and the network's training scenes."""
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_adapt

    ns = argparse.Namespace(data=str(args.data), model=str(args.model), cache=args.cache)
    val = bench_adapt.load_tiles(ns, bench_adapt.VAL)
    train = bench_adapt.load_tiles(ns, bench_adapt.TRAIN_SCENES)
    return {s: bench_adapt._fit([([t for t in val if t["scene"] != s], 3.0), (train, 1.0)], typist=True).to_dict()
            for s in scenes}


def _project(root: Path, data: Path, current, names: list[str], masks: list[str], predictor):
    from seepview.core.imageio import read_mask
    from seepview.core.project import Project
    from seepview.core.versions import weights_key

    project = Project.create(root, current.classes, name="gate-bench")
    entries = project.add_images([data / "images" / n for n in names])
    key = weights_key(current)
    for entry, mask_name in zip(entries, masks):
        with project.open_image(entry) as source:
            pred = predictor.predict(source)
        project.save_prediction(entry, key, pred.labels, pred.confidence)
        project.save_labels(entry, read_mask(data / "masks" / mask_name, current.classes))
        project.set_status(entry, "reviewed")
    return project


def _shuffle_training_labels(project, config) -> None:
    """Give every training tile another training tile's mask. The held-out tiles keep their true masks: the gate
    trusts the analyst's reviewed labels, so this simulates a harmful *training* set, not a lying analyst."""
    from seepview.core.retrain import ensure_validation_split

    held = ensure_validation_split(project, config.validation_fraction).image_ids
    train = [e for e in project.entries if e.id not in held]
    masks = [project.load_labels(e) for e in train]
    for entry, mask in zip(train, masks[1:] + masks[:1]):
        project.save_labels(entry, mask)
        project.set_status(entry, "reviewed")


def _held_out_confusions(project, current, candidate):
    """Both models' per-unit confusion matrices on the gate's held-out units (the same units the gate used), so
    the verdicts can be re-derived for other tolerances and confidence levels."""
    from seepview.core.retrain import build_validation_set, validation_split
    from seepview.core.retrain.gate import confusions

    samples = build_validation_set(project, validation_split(project), current.normalization, current.in_channels)
    return confusions(current, samples), confusions(candidate, samples)


def _sweep(rows, names) -> list[dict]:
    """False promotions / rejections had the gate used another tolerance, interval or minimum number of units
    for an automatic promotion (same runs, same units)."""
    from seepview.core.retrain import Gate
    from seepview.core.retrain.gate import MIN_UNITS, PROMOTE_MIN_UNITS

    out = []
    for least in sorted({MIN_UNITS, PROMOTE_MIN_UNITS}):
        for expanded in (True, False):  # the gate's small-sample interval, and plain bootstrap percentiles
            for confidence in (0.8, 0.9, 0.95):
                for tolerance in (0.0, 0.01, 0.02, 0.03):
                    fp = fr = fine = 0
                    for r in rows:
                        if r.get("_units") is None:
                            continue
                        gate = Gate(tolerance, confidence, expanded=expanded, promote_min_units=least)
                        d = gate.decide(*r["_units"], names)
                        fp += bool(d.promote and r["true_delta"] < -tolerance)
                        fine += r["true_delta"] >= 0
                        fr += bool(not d.promote and r["true_delta"] >= 0)
                    out.append({"promote_min_units": least, "interval": "expanded" if expanded else "plain",
                                "confidence": confidence, "tolerance": tolerance, "false_promotions": fp,
                                "false_rejections": fr, "truly_not_worse": fine})
    return out


def _rest_score(checkpoint, samples) -> float:
    from seepview.core.retrain.gate import confusions, scores

    return float(scores(confusions(checkpoint, samples).sum(axis=0)))


def run(args) -> dict:
    import torch

    from seepview.core.errors import TrainingError
    from seepview.core.model.checkpoint import load_checkpoint
    from seepview.core.model.data import load_samples
    from seepview.core.model.infer import Predictor
    from seepview.core.project import group_of
    from seepview.core.retrain import RetrainConfig, drive, retrain

    if not (args.data / "images").is_dir():
        return {"skipped": f"data not found at {args.data}"}
    if args.threads:
        torch.set_num_threads(args.threads)
    import dataclasses

    from seepview.core.model.checkpoint import Checkpoint

    shipped = load_checkpoint(args.model)
    typers = _scene_typers(args, args.scenes) if args.typer == "loso" else {s: {} for s in args.scenes}
    currents = {s: Checkpoint(shipped.model, dataclasses.replace(shipped.meta, typer=typers[s], adaptation={}))
                for s in args.scenes}
    current = shipped
    tolerance = RetrainConfig.tolerance if args.tolerance is None else args.tolerance
    refit = RetrainConfig.refit_stage2 if args.refit is None else args.refit
    by_scene: dict[str, list[str]] = {}
    for p in sorted((args.data / "images").glob("*.tif")):
        by_scene.setdefault(group_of(p.name), []).append(p.name)
    plan = [(scene, seed, "ordinary") for scene in args.scenes for seed in range(args.draws)]
    plan += [(scene, 100, kind) for kind in args.harmful for scene in args.scenes]
    rows = []
    for scene, seed, kind in plan:
        current = currents[scene]
        predictor = Predictor(current, device="cpu")
        names = by_scene[scene]
        rng = np.random.default_rng(seed)
        picked = sorted(rng.choice(len(names), size=min(args.corrections, len(names) - 5), replace=False).tolist())
        chosen = [names[i] for i in picked]
        rest = [n for n in names if n not in set(chosen)]
        rest_samples = load_samples([args.data / "images" / n for n in rest], [args.data / "masks" / n for n in rest],
                                    current.normalization, current.classes)
        before = _rest_score(current, rest_samples)
        config = RetrainConfig(seconds=args.seconds or RetrainConfig.seconds, replay=args.replay, tolerance=tolerance, seed=seed,
                               lr=args.harmful_lr if kind == "lr" else RetrainConfig.lr,
                               validation_fraction=args.validation_fraction or RetrainConfig.validation_fraction,
                               refit_stage2=refit)
        row = {"scene": scene, "seed": seed, "kind": kind, "tiles": len(chosen), "rest_tiles": len(rest),
               "rest_before": round(before, 4)}
        with tempfile.TemporaryDirectory(prefix="seepview-gate-") as tmp:
            project = _project(Path(tmp) / "p", args.data, current, chosen, chosen, predictor)
            if kind == "shuffle":
                _shuffle_training_labels(project, config)
            t0 = time.perf_counter()
            try:
                outcome = drive(retrain(project, current, config))
            except TrainingError as exc:
                row.update(decision="failed", promoted=False, reason=str(exc), true_delta=None, seconds=None)
                rows.append(row)
                print(f"gate bench {len(rows)}/{len(plan)}: {row}", file=sys.stderr, flush=True)
                continue
            d = outcome.decision
            after = _rest_score(outcome.candidate, rest_samples)
            row["_units"] = _held_out_confusions(project, current, outcome.candidate)
            row.update(
                decision=d.verdict,
                promoted=d.promote, units=d.units, gate_delta=_r(d.delta), ci=[_r(x) for x in d.ci] if d.ci else None,
                rest_after=round(after, 4), true_delta=round(after - before, 4),
                seconds=round(time.perf_counter() - t0, 1),
            )
        rows.append(row)
        print(f"gate bench {len(rows)}/{len(plan)}: { {k: v for k, v in row.items() if k != '_units'} }",
              file=sys.stderr, flush=True)
    sweep = _sweep(rows, current.classes.names)
    for r in rows:
        r.pop("_units", None)
    judged = [r for r in rows if r["true_delta"] is not None]
    false_promotions = [r for r in judged if r["promoted"] and r["true_delta"] < -tolerance]
    truly_fine = [r for r in judged if r["true_delta"] >= 0]
    false_rejections = [r for r in truly_fine if not r["promoted"]]
    return {
        "typer": args.typer,
        "refit_stage2": refit,
        "tolerance": tolerance,
        "confidence": RetrainConfig.confidence,
        "runs": len(rows),
        "false_promotions": len(false_promotions),
        "false_rejections": len(false_rejections),
        "truly_not_worse": len(truly_fine),
        "false_rejection_rate": round(len(false_rejections) / len(truly_fine), 3) if truly_fine else None,
        "sweep": sweep,
        "rows": rows,
    }


def _r(x):
    return None if x is None else round(float(x), 4)
