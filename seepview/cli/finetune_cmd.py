"""``seepview finetune``: "retrain on my corrections" without the GUI.

Two forms, one engine (``seepview.core.retrain.retrain``):

* ``seepview finetune PROJECT`` fine-tunes the project's active model on its labels, applies the gate
  on the project's fixed validation split and records the new version (promoted or not).
  ``--reset-validation`` chooses the validation images again (older scores stop being comparable).
* ``seepview finetune --model M --images DIR --masks DIR --out NEW.safetensors`` does the same on
  loose folders (a temporary project; masks count as reviewed). Pixels where a mask differs from the
  model's prediction get the correction weight: the predictions come from ``--predictions DIR`` (the
  model's masks, same stems) or, without it, from running the model. The new model is written to
  ``--out`` only when the gate promotes it (or with ``--keep-rejected``).

Exit status: 0 promoted, 1 not promoted (the gate rejected it, there was not enough evidence, or it passed on
fewer held-out units than ``--promote-min-units``), 2 bad input. ``--json`` prints exactly one JSON object on
stdout (``promoted``, ``verdict``, ``written``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from seepview.core.errors import ModelError, ProjectError, TrainingError
from seepview.core.retrain import RetrainConfig


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
    p.add_argument("--out", type=Path, help="output model (.safetensors, folder form); written only if promoted")
    p.add_argument("--keep-rejected", action="store_true",
                   help="folder form: write the candidate to --out even when the gate does not promote it")
    p.add_argument("--seconds", type=float, default=60.0, help="time budget of a quick run (default 60)")
    p.add_argument("--thorough", action="store_true", help="train up to --epochs with early stopping instead")
    p.add_argument("--epochs", type=int, default=40, help="epoch limit of --thorough")
    p.add_argument("--tolerance", type=float, default=None,
                   help="promote when the low end of the 90%% interval of the validation score difference (mean of "
                        "mIoU and binary IoU, new - current) is >= -TOLERANCE (default: the project's, as last set "
                        f"in the app's Retrain panel, else {RetrainConfig.tolerance:g})")
    p.add_argument("--promote-min-units", type=int, default=None,
                   help="held-out units (tiles or blocks) the gate must have judged on to promote automatically; "
                        "on fewer a pass is reported but not acted on (at least 5, what judging needs; default: "
                        f"the project's, else {RetrainConfig.promote_min_units})")
    p.add_argument("--correction-weight", type=float, default=None,
                   help="loss weight of corrected pixels (default: the project's, else "
                        f"{RetrainConfig.correction_weight:g})")
    p.add_argument("--far-px", type=float, default=32.0,
                   help="on images not marked reviewed, ignore labels farther than this from any correction")
    p.add_argument("--val-fraction", type=float, default=RetrainConfig.validation_fraction,
                   help="share of reviewed tiles (or blocks of large images) held out for the gate, when a "
                        "project has no split yet (default %(default)g, as in the app)")
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

    try:
        return _checked_config(args, pick)
    except ValueError as exc:  # "batch_size must be ...": name the option the user typed
        field, _, rest = str(exc).partition(" ")
        flag = {"validation_fraction": "--val-fraction"}.get(field, "--" + field.replace("_", "-"))
        raise TrainingError(None, f"{flag} {rest}") from None


def _checked_config(args, pick):
    return RetrainConfig(
        budget="thorough" if args.thorough else "quick",
        seconds=args.seconds,
        epochs=args.epochs,
        correction_weight=pick("correction_weight"),
        far_px=args.far_px,
        tolerance=pick("tolerance"),
        promote_min_units=pick("promote_min_units"),
        validation_fraction=args.val_fraction,
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
        from seepview.core.model.metrics import miou_binary_score

        score = miou_binary_score(event.val)
        val = f" selection score {score:.3f}" if score is not None else ""
        out.write(f"\repoch {event.epoch} loss {event.loss:.4f}{val} ({event.elapsed_s:.0f}s)\n")
    elif kind in ("prepare", "evaluate", "gate"):
        out.write(f"\rseepview: {event.message}\n")
    out.flush()


def _drive(gen, quiet: bool):
    from seepview.core.retrain import drive

    return drive(gen, None if quiet else (lambda event: _progress(event, sys.stderr)))


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
        "verdict": d.verdict,
        "evidence": d.evidence,
        "promote_min_units": d.promote_min_units,
        "reason": d.reason,
        "score_before": d.score_before,
        "score_after": d.score_after,
        "delta": d.delta,
        "ci": list(d.ci) if d.ci is not None else None,
        "before": _summary(d.before),
        "after": _summary(d.after),
        "per_class_delta": {r.name: r.delta for r in d.rows},
        "seconds": round(outcome.seconds, 2),
        "device": outcome.device,
        "validation_units": d.units,
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
    return 0 if d.promote else 1


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
    if args.keep_rejected and args.out is None:
        raise TrainingError(None, "--keep-rejected needs --out")
    return _run_folders(args)


def _run_project(args) -> int:
    from seepview.core.project import Project
    from seepview.core.retrain import project_settings, reset_validation, retrain_and_record
    from seepview.core.session import load_active_model
    from seepview.core.versions import ModelRegistry

    project = Project.open(args.project)
    config = _config(args, project_settings(project))  # bad options are refused before anything changes
    if args.reset_validation:
        reset_validation(project)
    current, problem = load_active_model(project)
    if current is None:
        raise ModelError(project.root, problem or "the project has no model to fine-tune")
    outcome = _drive(retrain_and_record(project, current, config), args.json)
    if outcome.cancelled:
        return _report(args, outcome, {})
    active = ModelRegistry(project).active
    return _report(args, outcome, {"version": outcome.version.key, "active": active.key if active else None})


def _cache_predictions(project, current, predictions: Path | None, quiet: bool) -> int:
    """Fill the temporary project's prediction cache: from ``--predictions`` masks, else by running the model,
    so that pixels where the user's masks differ from the model count as corrections."""
    import numpy as np

    from seepview.core.imageio import MASK_SUFFIXES, read_mask
    from seepview.core.model.infer import Predictor
    from seepview.core.versions import weights_key

    key = weights_key(current)
    if predictions is not None:
        if not predictions.is_dir():
            raise ProjectError(predictions, "folder not found")
        found = 0
        for entry in project.entries:
            path = next((predictions / f"{entry.id}{s}" for s in MASK_SUFFIXES
                         if (predictions / f"{entry.id}{s}").is_file()), None)
            if path is not None:
                labels = read_mask(path, current.classes)
                project.save_prediction(entry, key, labels, np.zeros_like(labels))
                found += 1
        if not found:
            raise ProjectError(predictions, "no prediction masks named like the images")
        return found
    predictor = Predictor(current)
    entries = project.entries
    for i, entry in enumerate(entries, 1):
        with project.open_image(entry) as source:
            pred = predictor.predict(source)
        project.save_prediction(entry, key, pred.labels, pred.confidence)
        if not quiet:
            sys.stderr.write(f"\rseepview: predicting with the model to find your corrections: {i}/{len(entries)}")
            sys.stderr.flush()
    if not quiet and entries:
        sys.stderr.write("\n")
    return len(entries)


def _run_folders(args) -> int:
    from seepview.core.importers import import_folder_pairs
    from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint
    from seepview.core.retrain import ensure_validation_split, retrain

    if args.out.suffix.lower() != ".safetensors":
        raise TrainingError(args.out, "the output model must be a .safetensors file")
    if args.out.is_dir():
        raise TrainingError(args.out, "is a folder; give the output model's file name")
    config = _config(args)  # before the model runs over every image
    current = load_checkpoint(args.model, device="cpu")
    with tempfile.TemporaryDirectory(prefix="seepview-finetune-") as tmp:
        project = import_folder_pairs(args.images, args.masks, Path(tmp) / "project", current.classes)
        _cache_predictions(project, current, args.predictions, args.json)
        # a fresh project each run: the held-out images follow --seed, so a run can be repeated
        ensure_validation_split(project, config.validation_fraction, salt=f"seed-{args.seed}")
        outcome = _drive(retrain(project, current, config), args.json)
    if outcome.cancelled:
        return _report(args, outcome, {})
    written = bool(outcome.decision.promote or args.keep_rejected)
    if written:
        save_checkpoint(args.out, outcome.candidate.model, outcome.candidate.meta)
    elif not args.json:
        print(f"seepview: {args.out} not written (use --keep-rejected to write a rejected model)", file=sys.stderr)
    return _report(args, outcome, {"out": str(args.out), "written": written})
