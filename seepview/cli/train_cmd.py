"""``seepview train``: train a model from labelled images (folder pairs, a project, or a YOLO-seg export).

Argument parsing and progress printing only; the work is ``seepview.core.model.train``. Works under
``torchrun --nproc_per_node N -m seepview train ...``: every rank trains, only rank 0 prints and saves.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from seepview.core.errors import ProjectError, TrainingError

# Same as seepview.core.model.losses.LOSS_NAMES (a test checks); literal so parsing never imports torch.
LOSS_CHOICES = ("ce", "dice", "focal_tversky", "ce+dice", "ce+focal_tversky")


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a segmentation model",
        description="Train a U-Net on labelled images and save it as a .safetensors model. The validation "
        "split is grouped by scene/photo so scores reflect unseen scenes.",
    )
    p.add_argument("--images", required=True, type=Path,
                   help="image folder (with --masks), a seepview project folder, or a YOLOv8-seg export")
    p.add_argument("--masks", type=Path, help="mask folder; masks share the image file's stem")
    p.add_argument("--classes", default=None,
                   help="class table: sar-seep, corrosion or a JSON file (default: the data's or --init's)")
    p.add_argument("--init", type=Path, help="model to fine-tune (default: train from scratch)")
    p.add_argument("--out", required=True, type=Path, help="output model file (.safetensors)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--base-width", type=int, default=16, help="U-Net width (16 CPU, 32/64 GPU)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--val-groups", nargs="+", default=None, metavar="GROUP",
                   help="scenes/photo ids kept for validation (default: a seeded 20%% of the groups)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch", type=int, default=256, help="training patch size (random crops of larger images)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--loss", default="ce+dice", choices=LOSS_CHOICES,
                   help="ce+dice (default) handles heavy class imbalance; focal_tversky favours recall")
    p.add_argument("--patches-per-epoch", type=int, default=None)
    p.add_argument("--rare-fraction", type=float, default=0.5, help="share of patches centred on rare classes")
    p.add_argument("--seconds", type=float, default=None,
                   help="time budget; with validation data the best model so far is written to --out as it "
                   "improves, so a stopped run still leaves a usable model")
    p.add_argument("--patience", type=int, default=10, help="validations without improvement before stopping")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.set_defaults(func=run)


def _load(args, tmp: Path):
    """(samples, classes, normalization, checkpoint or None) from the arguments."""
    from seepview.core.classes import ClassTable
    from seepview.core.importers import import_any
    from seepview.core.model import data as mdata
    from seepview.core.model.checkpoint import load_checkpoint
    from seepview.core.model.normalize import PHOTO_NORMALIZATION, SAR_NORMALIZATION
    from seepview.core.project import PROJECT_FILE, Project

    ckpt = load_checkpoint(args.init) if args.init else None
    classes = ClassTable.from_spec(args.classes) if args.classes else (ckpt.classes if ckpt else None)
    if (args.images / PROJECT_FILE).is_file():
        if args.masks is not None:
            raise ProjectError(args.masks, "--masks is not used with a project folder")
        project = Project.open(args.images)
    else:
        project = import_any(args.images, tmp / "project", classes, masks=args.masks)
    classes = classes or project.classes
    if len(project.classes) > len(classes):
        raise TrainingError(args.images, f"the data has {len(project.classes)} classes, the class table {len(classes)}")
    if ckpt is not None:
        if len(ckpt.classes) != len(classes):
            raise TrainingError(args.init, f"model has {len(ckpt.classes)} classes, the data's table {len(classes)}")
        norm = ckpt.normalization
    else:
        entries = project.labelled_entries()
        if not entries:
            raise TrainingError(args.images, "no labelled images found")
        with project.open_image(entries[0]) as first:
            norm = SAR_NORMALIZATION if first.channels == 1 else PHOTO_NORMALIZATION
    samples = mdata.samples_from_project(project, norm)
    if not samples:
        raise TrainingError(args.images, "no labelled images found")
    return samples, classes, norm, ckpt


def _progress(event, out) -> None:
    if event.kind == "step":
        eta = f" eta {event.eta_s:.0f}s" if event.eta_s is not None else ""
        out.write(f"\repoch {event.epoch}/{event.epochs} step {event.step}/{event.steps} "
                  f"loss {event.loss:.4f}{eta}   ")
    elif event.kind == "epoch":
        v = event.val or {}
        miou = v.get("miou")
        extra = f" val mIoU {miou:.3f} binary IoU {v.get('binary_iou') or 0:.3f}" if miou is not None else ""
        out.write(f"\repoch {event.epoch}/{event.epochs} loss {event.loss:.4f}{extra} ({event.elapsed_s:.0f}s)\n")
    out.flush()


def run(args: argparse.Namespace) -> int:
    from seepview.cli.options import Bound, check_options, check_output_file
    from seepview.core.model import data as mdata
    from seepview.core.model.checkpoint import ARCH_LIMITS, save_checkpoint
    from seepview.core.model.train import TrainConfig, is_main_process, run_training

    check_options(args, {
        "--epochs": Bound(1, 100_000, whole=True), "--batch-size": Bound(1, 4096, whole=True),
        "--patch": Bound(16, 8192, whole=True), "--patches-per-epoch": Bound(1, 10_000_000, whole=True),
        "--threads": Bound(1, 1024, whole=True), "--seed": Bound(0, 2**32 - 1, whole=True),
        "--patience": Bound(1, 100_000, whole=True), "--lr": Bound(0, 10, open_low=True),
        "--val-fraction": Bound(0, 0.95), "--rare-fraction": Bound(0, 1), "--seconds": Bound(0, open_low=True),
        "--base-width": Bound(*ARCH_LIMITS["base_width"], whole=True),
        "--depth": Bound(*ARCH_LIMITS["depth"], whole=True),
    })
    if args.out.suffix.lower() != ".safetensors":
        raise TrainingError(args.out, "the output model must be a .safetensors file")
    check_output_file(args.out, "--out")
    main = is_main_process()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seepview-train-") as tmp:
        samples, classes, norm, ckpt = _load(args, Path(tmp))
    train_s, val_s = mdata.split_by_group(samples, args.val_fraction, args.seed, args.val_groups)
    if main:
        print(f"seepview: {len(train_s)} training images ({len({s.group for s in train_s})} groups), "
              f"{len(val_s)} validation images (groups: {', '.join(sorted({s.group for s in val_s})) or 'none'}); "
              f"loaded in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, patch=args.patch, lr=args.lr, loss=args.loss,
        seed=args.seed, device=args.device, threads=args.threads, time_budget_s=args.seconds,
        patience=args.patience, patches_per_epoch=args.patches_per_epoch, rare_fraction=args.rare_fraction,
        name=args.out.stem, best_path=str(args.out) if val_s else None,
        data={"images": str(args.images.resolve()), "masks": str(args.masks.resolve()) if args.masks else None},
    )
    init = ckpt if ckpt is not None else {"in_channels": samples[0].image.shape[0], "base_width": args.base_width,
                                          "depth": args.depth, "num_classes": len(classes)}
    result = run_training(
        init, train_s, val_s, config, classes=classes, normalization=norm,
        on_event=(lambda event: _progress(event, sys.stderr)) if main else None,
    )
    if not main:
        return 0
    if result.checkpoint is None:
        raise TrainingError(args.out, "training stopped before the first step; nothing saved")
    save_checkpoint(args.out, result.checkpoint.model, result.checkpoint.meta)
    m = result.best_metrics or {}
    print(f"seepview: saved {args.out} ({result.stop_reason}, {result.seconds:.0f}s on {result.device})"
          + (f"; best val mIoU {m['miou']:.3f}" if m.get("miou") is not None else ""), file=sys.stderr)
    if args.json:
        print(json.dumps({"out": str(args.out), "seconds": round(result.seconds, 2), "device": result.device,
                          "stop_reason": result.stop_reason, "metrics": m or None, "history": result.history}))
    return 0
