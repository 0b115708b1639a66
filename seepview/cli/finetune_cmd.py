"""``seepview finetune``: "retrain on my corrections" without the GUI.

Two forms, one engine (``seepview.core.finetune.retrain``):

* ``seepview finetune PROJECT`` fine-tunes the project's active model on its labels, applies the gate
  on the project's fixed validation split and records the new version (promoted or not).
  ``--reset-validation`` chooses the validation images again (older scores stop being comparable).
* ``seepview finetune --model M --images DIR --masks DIR --out NEW.safetensors`` does the same on
  loose folders (a temporary project; masks count as reviewed). With ``--predictions DIR`` (the
  model's masks, same stems) pixels that differ from the prediction get the correction weight. The
  new model is always written to ``--out``; ``promoted`` in the output says whether the gate passed.

``--json`` prints exactly one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from seepview.core.errors import ModelError, ProjectError, TrainingError
from seepview.core.finetune import RetrainConfig


def register(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="retrain a model on corrections (a project, or image/mask folders) with a validation gate",
        description="Fine-tune a model on user corrections. With a PROJECT, the active model is fine-tuned, "
        "compared with the current one on the project's fixed validation images, and recorded as a new "
        "version (made active only if it is not worse). With --model/--images/--masks/--out, the same "
        "fine-tuning runs on plain folders.",
    )
    p.add_argument("project", nargs="?", type=Path, help="a seepview project folder")
    p.add_argument("--model", type=Path, help="model to fine-tune (folder form)")
    p.add_argument("--images", type=Path, help="image folder (folder form)")
    p.add_argument("--masks", type=Path, help="corrected masks, same stems as the images (folder form)")
    p.add_argument("--predictions", type=Path,
                   help="the model's predicted masks (same stems): changed pixels get --correction-weight")
    p.add_argument("--out", type=Path, help="output model (.safetensors, folder form)")
    p.add_argument("--seconds", type=float, default=60.0, help="time budget of a quick run (default 60)")
    p.add_argument("--thorough", action="store_true", help="train up to --epochs with early stopping instead")
    p.add_argument("--epochs", type=int, default=40, help="epoch limit of --thorough")
    p.add_argument("--tolerance", type=float, default=None,
                   help="promote if the validation score (mean of mIoU and binary IoU) >= current - TOLERANCE "
                        "(default: the project's, as last set in the app's Retrain panel, else 0: never worse)")
    p.add_argument("--correction-weight", type=float, default=None,
                   help="loss weight of corrected pixels (default: the project's, else "
                        f"{RetrainConfig.correction_weight:g})")
    p.add_argument("--far-px", type=float, default=32.0,
                   help="on images not marked reviewed, ignore labels farther than this from any correction")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of labelled images kept for validation")
    p.add_argument("--reset-validation", action="store_true",
                   help="choose the project's validation images again (then they stay fixed)")
    p.add_argument("--replay", type=int, default=16, help="tiles of the model's own training data to mix in")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch", type=int, default=128, help="training patch size (crops of larger images)")
    p.add_argument("--lr", type=float, default=RetrainConfig.lr, help="peak learning rate (default %(default)g)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--process", action="store_true", help="train in a child process")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=run)


def _config(args, stored: dict | None = None):
    """``stored``: the project's recorded retrain settings; its tolerance and correction weight (project policy)
    apply where the command line gives none."""
    stored = stored or {}

    def pick(name):
        given = getattr(args, name)
        return given if given is not None else stored.get(name, getattr(RetrainConfig, name))

    return RetrainConfig(
        budget="thorough" if args.thorough else "quick",
        seconds=args.seconds,
        epochs=args.epochs,
        correction_weight=pick("correction_weight"),
        far_px=args.far_px,
        tolerance=pick("tolerance"),
        validation_fraction=args.val_fraction,
        min_validation_images=2,
        replay=args.replay,
        batch_size=args.batch_size,
        patch=args.patch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        process=args.process,
    )


def _progress(event, out) -> None:
    kind = event.kind
    if kind == "step":
        eta = f" eta {event.eta_s:.0f}s" if event.eta_s is not None else ""
        out.write(f"\rstep {event.step} (epoch {event.epoch}) loss {event.loss:.4f}{eta}    ")
    elif kind == "epoch":
        miou = (event.val or {}).get("miou")
        val = f" val mIoU {miou:.3f}" if miou is not None else ""
        out.write(f"\repoch {event.epoch} loss {event.loss:.4f}{val} ({event.elapsed_s:.0f}s)\n")
    elif kind in ("prepare", "evaluate", "gate"):
        out.write(f"\rseepview: {event.message}\n")
    out.flush()


def _drive(gen, quiet: bool):
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if not quiet:
            _progress(event, sys.stderr)


def _summary(metrics: dict | None) -> dict | None:
    if not metrics:
        return None
    keep = ("miou", "miou_foreground", "binary_iou", "pixel_accuracy", "per_class_iou")
    return {k: metrics.get(k) for k in keep}


def _report(args, outcome, extra: dict) -> int:
    d = outcome.decision
    if outcome.cancelled:
        raise TrainingError(None, "cancelled; the current model is unchanged")
    result = {
        "promoted": bool(d.promote),
        "reason": d.reason,
        "before": _summary(d.before),
        "after": _summary(d.after),
        "per_class_delta": {r.name: r.delta for r in d.rows},
        "seconds": round(outcome.seconds, 2),
        "device": outcome.device,
        "validation_images": outcome.stats.validation_images,
        "training_images": outcome.stats.images,
        "corrected_images": outcome.stats.corrected_images,
        "corrected_pixels": outcome.stats.corrected_pixels,
        "replay": outcome.stats.replay_note,
        **extra,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(_table(d), file=sys.stderr)
        verdict = "promoted" if d.promote else "NOT promoted"
        print(f"seepview: {verdict}: {d.reason} ({outcome.seconds:.0f}s on {outcome.device})", file=sys.stderr)
        for k, v in extra.items():
            print(f"seepview: {k}: {v}", file=sys.stderr)
    return 0


def _table(decision) -> str:
    def f(v):
        return "   -  " if v is None else f"{v:6.3f}"

    lines = [f"{'class':<16} {'before':>6} {'after':>6} {'delta':>7}"]
    for r in decision.rows:
        delta = "    -  " if r.delta is None else f"{r.delta:+7.3f}"
        lines.append(f"{r.name:<16} {f(r.before)} {f(r.after)} {delta}")
    lines.append(f"{'mIoU':<16} {f(decision.miou_before)} {f(decision.miou_after)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.project is not None:
        if any(v is not None for v in (args.model, args.images, args.masks, args.out, args.predictions)):
            raise ProjectError(args.project, "give either a PROJECT or --model/--images/--masks/--out, not both")
        return _run_project(args)
    missing = [f"--{n}" for n in ("model", "images", "masks", "out") if getattr(args, n) is None]
    if missing:
        raise TrainingError(None, f"give a PROJECT folder, or all of --model --images --masks --out "
                            f"(missing {' '.join(missing)})")
    if args.reset_validation:
        raise TrainingError(None, "--reset-validation applies to a PROJECT")
    return _run_folders(args)


def _run_project(args) -> int:
    from seepview.core.finetune import project_settings, reset_validation, retrain_and_record
    from seepview.core.project import Project
    from seepview.core.session import ReviewSession
    from seepview.core.versions import ModelRegistry

    project = Project.open(args.project)
    if args.reset_validation:
        reset_validation(project)
    session = ReviewSession(project, device=args.device)
    current = session.checkpoint
    if current is None:
        raise ModelError(project.root, session.model_problem or "the project has no model to fine-tune")
    outcome = _drive(retrain_and_record(project, current, _config(args, project_settings(project))), args.json)
    if outcome.cancelled:
        return _report(args, outcome, {})
    active = ModelRegistry(project).active
    return _report(args, outcome, {"version": outcome.version.key, "active": active.key if active else None})


def _run_folders(args) -> int:
    import numpy as np

    from seepview.core.finetune import retrain
    from seepview.core.imageio import MASK_SUFFIXES, read_mask
    from seepview.core.importers import import_folder_pairs
    from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint
    from seepview.core.session import model_key

    if args.out.suffix.lower() != ".safetensors":
        raise TrainingError(args.out, "the output model must be a .safetensors file")
    current = load_checkpoint(args.model, device="cpu")
    with tempfile.TemporaryDirectory(prefix="seepview-finetune-") as tmp:
        project = import_folder_pairs(args.images, args.masks, Path(tmp) / "project", current.classes)
        if args.predictions is not None:
            if not args.predictions.is_dir():
                raise ProjectError(args.predictions, "folder not found")
            key = model_key(current)
            found = 0
            for entry in project.entries:
                for suffix in MASK_SUFFIXES:
                    path = args.predictions / f"{entry.id}{suffix}"
                    if path.is_file():
                        labels = read_mask(path, current.classes)
                        project.save_prediction(entry, key, labels, np.zeros_like(labels))
                        found += 1
                        break
            if not found:
                raise ProjectError(args.predictions, "no prediction masks named like the images")
        outcome = _drive(retrain(project, current, _config(args)), args.json)
    if outcome.cancelled:
        return _report(args, outcome, {})
    save_checkpoint(args.out, outcome.candidate.model, outcome.candidate.meta)
    return _report(args, outcome, {"out": str(args.out)})
