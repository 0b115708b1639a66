"""Training as a generator: the GUI, the CLI and the retrain loop all drive the same loop.

``train(init, train_samples, val_samples, config, cancel)`` yields ``TrainEvent``s (one per step, one
per epoch with validation metrics) and *returns* a ``TrainResult`` (``StopIteration.value``; use
``result = yield from train(...)`` or ``run_training``). It never touches the model it was given: it
trains a copy, so a NaN, an out-of-memory error or a cancel leaves the caller's model as it was, and
promoting the result is the caller's decision.

Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group (NCCL on CUDA, gloo on CPU), shards
each epoch's patch plan across ranks and wraps the model in DistributedDataParallel. Validation is
sharded too and the confusion matrices are all-reduced, so every rank takes the same early-stopping
decision; stop decisions (cancel, time budget) are all-reduced as well so no rank waits forever.
Only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seepview.core.classes import IGNORE, ClassTable
from seepview.core.errors import ModelError, TrainingError
from seepview.core.model import data as mdata
from seepview.core.model.checkpoint import Checkpoint, ModelMeta, make_meta, save_checkpoint
from seepview.core.model.losses import DEFAULT_LOSS, LOSS_NAMES, make_loss
from seepview.core.model.metrics import ConfusionMatrix, miou_binary_score
from seepview.core.model.unet import UNet

log = logging.getLogger(__name__)

SCHEDULES = ("onecycle", "cosine", "constant")
SELECTS = ("miou", "miou+binary")


@dataclass
class TrainConfig:
    """Hyper-parameters and run limits. Every field is JSON-able; the result's meta records them."""

    epochs: int = 30
    batch_size: int = 8
    patch: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = DEFAULT_LOSS
    schedule: str = "onecycle"  # onecycle: warm-up then cosine decay; cosine: decay only
    warmup_fraction: float = 0.05
    seed: int = 0
    device: str | None = None  # None: CUDA, then MPS, then CPU
    threads: int | None = None  # torch.set_num_threads on CPU (keeps a GUI responsive)
    time_budget_s: float | None = None  # stop (and keep the best model) after this many seconds
    patience: int | None = 10  # validations without mIoU improvement before stopping; None = never
    val_every: int = 1  # epochs between validations
    num_workers: int = 0  # >0: threads that prepare the next batch while the current one trains
    patches_per_epoch: int | None = None  # None: about one pass over every image
    rare_fraction: float = 0.5  # share of patches centred on rare-class pixels
    class_weight_power: float = 0.5  # CE class weights = frequency ** -power
    augment: bool = True
    jitter: float = 0.1  # intensity gain/offset jitter amplitude
    data: dict | None = None  # where the training data lives ({"images", "masks"}): lets fine-tuning replay it
    amp: bool = True  # bf16 autocast on CUDA
    val_batch_size: int = 8
    freeze_bn: bool = False  # keep learned BatchNorm statistics fixed (fine-tuning on few images, small batches)
    select: str = "miou"  # what picks the best model: "miou", or "miou+binary" (metrics.miou_binary_score)
    best_path: str | None = None  # rank 0 saves the best model here whenever it improves
    name: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainEvent:
    """A progress report. ``kind`` is "step", "epoch" or "done"; ``val`` holds metrics after validation."""

    kind: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    eta_s: float | None = None
    val: dict | None = None
    lr: float = 0.0
    elapsed_s: float = 0.0


@dataclass
class TrainResult:
    checkpoint: Checkpoint | None
    best_metrics: dict | None
    history: list[dict] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    stop_reason: str = ""


# --- device and distributed set-up ---------------------------------------------------------------

def pick_device(requested: str | None = None) -> torch.device:
    """``infer.select_device`` (CUDA, then MPS, then CPU), with its errors reported as TrainingError."""
    from seepview.core.model.infer import select_device

    try:
        return select_device(requested)
    except ModelError as exc:
        raise TrainingError(exc.path, exc.reason) from None


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def is_main_process() -> bool:
    return dist_env()[0] == 0


def _init_distributed(device: torch.device) -> bool:
    """Join the process group when launched by torchrun; True when this call created it."""
    import torch.distributed as dist

    if dist_env()[1] <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


# --- helpers -------------------------------------------------------------------------------------

def _lr_factor(progress: float, schedule: str, warmup: float) -> float:
    """Learning-rate multiplier at training progress in [0, 1] (steps or time budget, whichever is further)."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "onecycle" and warmup > 0 and progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    start = warmup if schedule == "onecycle" else 0.0
    t = (progress - start) / max(1.0 - start, 1e-9)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))


def _confusion(pred: torch.Tensor, true: torch.Tensor, k: int) -> torch.Tensor:
    """(k, k) int64 counts, rows = true class, columns = predicted; IGNORE pixels skipped."""
    true = true.long().flatten()
    pred = pred.long().flatten()
    keep = true != IGNORE
    idx = true[keep] * k + pred[keep]
    return torch.bincount(idx, minlength=k * k).reshape(k, k)


def _metrics(matrix: np.ndarray, names: Sequence[str]) -> dict:
    cm = ConfusionMatrix(len(names))
    cm.matrix[...] = matrix
    return cm.metrics(list(names))


def forward_tiled(model: nn.Module, image: torch.Tensor, tile: int) -> torch.Tensor:
    """Logits argmax for one (1, C, H, W) image; large images in non-overlapping tiles (validation only)."""
    h, w = image.shape[-2:]
    if h <= tile and w <= tile:
        return model(image).argmax(1)
    out = torch.empty((1, h, w), dtype=torch.long, device=image.device)
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            out[:, y:y + tile, x:x + tile] = model(image[..., y:y + tile, x:x + tile]).argmax(1)
    return out


def _build_model(init, config: TrainConfig, classes: ClassTable | None, normalization: dict | None):
    """(model copy, classes, normalization, parent id) from a Checkpoint, a UNet or an arch dict."""
    if isinstance(init, Checkpoint):
        model = copy.deepcopy(init.model)
        parent = init.meta.fingerprint or init.meta.name or None
        return (model, classes or init.classes, normalization or init.normalization, parent)
    if classes is None or normalization is None:
        raise TrainingError(None, "training a new model needs its class table and input normalisation")
    if isinstance(init, nn.Module):
        return copy.deepcopy(init), classes, normalization, None
    if isinstance(init, dict):
        arch = {k: v for k, v in init.items()}
        arch.setdefault("num_classes", len(classes))
        try:
            model = UNet.from_config(arch)
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainingError(None, f"bad architecture {init!r}: {exc}") from None
        if model.num_classes != len(classes):
            raise TrainingError(None, f"architecture has {model.num_classes} classes, class table {len(classes)}")
        return model, classes, normalization, None
    raise TrainingError(None, f"cannot train from {type(init).__name__}; give a Checkpoint or an arch dict")


# --- the loop ------------------------------------------------------------------------------------

def train(
    init,
    train_samples: Sequence[mdata.Sample],
    val_samples: Sequence[mdata.Sample],
    config: TrainConfig | None = None,
    cancel: Callable[[], bool] | None = None,
    classes: ClassTable | None = None,
    normalization: dict | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train a copy of ``init`` (Checkpoint to fine-tune, or arch dict / UNet from scratch).

    ``classes``/``normalization`` are required from scratch and default to the checkpoint's otherwise.
    Raises TrainingError on a non-finite loss, out-of-memory or unusable input.
    """
    config = config or TrainConfig()
    if not train_samples:
        raise TrainingError(None, "no training samples")
    if config.loss not in LOSS_NAMES:
        raise TrainingError(None, f"unknown loss {config.loss!r}; choose from {', '.join(LOSS_NAMES)}")
    if config.schedule not in SCHEDULES:
        raise TrainingError(None, f"unknown schedule {config.schedule!r}; choose from {', '.join(SCHEDULES)}")
    if config.select not in SELECTS:
        raise TrainingError(None, f"unknown selection {config.select!r}; choose from {', '.join(SELECTS)}")
    t_start = time.monotonic()
    rank, world, local = dist_env()
    device = pick_device(config.device)
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.threads and device.type == "cpu":
        torch.set_num_threads(int(config.threads))
    created_group = _init_distributed(device)
    import torch.distributed as dist

    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    try:
        result = yield from _train_loop(
            init, list(train_samples), list(val_samples), config, cancel, classes, normalization,
            device, rank if distributed else 0, world if distributed else 1, t_start,
        )
    except torch.OutOfMemoryError:
        raise TrainingError(
            None,
            f"out of {device.type.upper()} memory at batch size {config.batch_size} and patch {config.patch}: "
            "lower --batch-size or --patch, use a narrower model, or train with --device cpu",
        ) from None
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()
    return result


def _train_loop(init, train_samples, val_samples, config, cancel, classes, normalization,
                device, rank, world, t_start):
    import torch.distributed as dist

    distributed = world > 1
    torch.manual_seed(config.seed)
    model, classes, normalization, parent = _build_model(init, config, classes, normalization)
    k = model.num_classes
    names = classes.names
    in_ch = train_samples[0].image.shape[0]
    if in_ch != model.in_channels:
        raise TrainingError(None, f"images have {in_ch} channel(s) but the model expects {model.in_channels}")
    counts = mdata.class_counts(train_samples, k)
    if counts.sum() == 0:
        raise TrainingError(None, "the training masks hold no labelled pixels")
    cw = mdata.class_weights(counts, config.class_weight_power)
    loss_fn = make_loss(config.loss, cw)
    fingerprint = mdata.fingerprint(train_samples)

    cuda = device.type == "cuda"
    amp = cuda and config.amp
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sampler = mdata.PatchSampler(train_samples, config.patch, k, config.rare_fraction, config.seed,
                                 config.patches_per_epoch)
    per_rank = len(mdata.shard(range(len(sampler)), rank, world))
    steps_per_epoch = max(1, math.ceil(per_rank / config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    gen = torch.Generator().manual_seed(config.seed * 1009 + rank)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext
    pool = ThreadPoolExecutor(config.num_workers) if config.num_workers > 0 else None
    val_shard = mdata.shard(range(len(val_samples)), rank, world) if val_samples else []
    if distributed and len(val_samples) < world:
        val_shard = [i for i in range(len(val_samples)) if i % world == rank]

    history: list[dict] = []
    best_score, best_metrics, best_state, best_epoch = -1.0, None, None, 0
    since_best = 0
    step = 0
    stop_reason = ""
    cancelled = False
    last_loss = float("nan")

    def should_stop(local_flag: int) -> int:
        """0 go on, 1 cancel, 2 time budget, 3 non-finite loss; the maximum over ranks."""
        if not distributed:
            return local_flag
        flag = torch.tensor([local_flag], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def progress() -> float:
        p = step / max(total_steps, 1)
        if config.time_budget_s:
            p = max(p, (time.monotonic() - t_start) / config.time_budget_s)
        return p

    def eta() -> float | None:
        p = progress()
        if p <= 0:
            return None
        elapsed = time.monotonic() - t_start
        return max(elapsed / p - elapsed, 0.0)

    def sync_buffers() -> None:
        """BatchNorm running statistics drift apart between ranks after the last forward; take rank 0's."""
        if distributed:
            for buf in model.buffers():
                dist.broadcast(buf, 0)

    # Running statistics learned by the base training stay; a few small fine-tuning batches would skew them.
    # Layers that never saw a batch (a fresh model) have nothing worth keeping, so they still learn theirs.
    frozen_bn = [
        m for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and m.num_batches_tracked is not None and int(m.num_batches_tracked) > 0
    ] if config.freeze_bn else []

    def set_train_mode() -> None:
        model.train()
        for m in frozen_bn:
            m.eval()

    def validate() -> dict | None:
        if not val_samples:
            return None
        sync_buffers()
        model.eval()
        mat = torch.zeros((k, k), dtype=torch.int64, device=device)
        with torch.inference_mode(), autocast():
            for i in val_shard:
                s = val_samples[i]
                x = torch.from_numpy(s.image)[None].to(device)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                pred = forward_tiled(model, x, max(config.patch, 1024))
                mat += _confusion(pred, torch.from_numpy(s.mask)[None].to(device), k)
        if distributed:
            dist.all_reduce(mat)
        set_train_mode()
        return _metrics(mat.cpu().numpy(), names)

    def make_checkpoint(state: dict | None, metrics: dict | None, seconds: float) -> Checkpoint:
        final = copy.deepcopy(model).cpu()
        if state is not None:
            final.load_state_dict(state)
        final.eval()
        final.to(memory_format=torch.contiguous_format)
        meta: ModelMeta = make_meta(
            final, classes, normalization,
            fingerprint=fingerprint, metrics=metrics or {}, parent=parent, name=config.name,
            # A fine-tuned network keeps its parent's typer (``retrain.restage`` refits it on the new network's
            # blobs); a scene adaptation is not carried, its pixel head read the old network's probabilities.
            typer=dict(init.meta.typer) if isinstance(init, Checkpoint) else {},
            training={
                **config.to_dict(),
                "class_weights": [round(float(w), 4) for w in cw],
                "train_samples": len(train_samples),
                "val_samples": len(val_samples),
                "train_groups": sorted({s.group for s in train_samples}),
                "val_groups": sorted({s.group for s in val_samples}),
                "best_epoch": best_epoch,
                "steps": step,
                "seconds": round(seconds, 1),
                "device": str(device) if not cuda else torch.cuda.get_device_name(device),
                "world_size": world,
                "torch": torch.__version__,
                "stop_reason": stop_reason,
            },
        )
        return Checkpoint(final, meta)

    def score(metrics: dict) -> float:
        value = miou_binary_score(metrics) if config.select == "miou+binary" else metrics["miou"]
        return -1.0 if value is None else float(value)

    def track(epoch: int) -> dict:
        """Validate; keep (and optionally save) the state when the selection score improves."""
        nonlocal best_score, best_metrics, best_epoch, best_state, since_best
        metrics = validate()
        current = score(metrics)
        if current > best_score:
            best_score, best_metrics, best_epoch, since_best = current, metrics, epoch, 0
            best_state = {n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()}
            if config.best_path and rank == 0:
                ckpt = make_checkpoint(best_state, best_metrics, time.monotonic() - t_start)
                save_checkpoint(Path(config.best_path), ckpt.model, ckpt.meta)
        else:
            since_best += 1
        return metrics

    set_train_mode()
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        plan = mdata.shard(sampler.plan(epoch), rank, world)
        batches = [plan[i:i + config.batch_size] for i in range(0, len(plan), config.batch_size)]
        pending = None
        if pool is not None and batches:
            pending = pool.submit(mdata.collate, train_samples, batches[0], config.patch)
        epoch_loss, epoch_n = 0.0, 0
        for bi, crops in enumerate(batches):
            flag = 1 if (cancel is not None and cancel()) else 0
            if config.time_budget_s and time.monotonic() - t_start >= config.time_budget_s:
                flag = max(flag, 2)
            flag = should_stop(flag)
            if flag:
                cancelled = flag == 1
                stop_reason = "cancelled" if cancelled else "time budget"
                break
            if pool is not None:
                img, msk, wts = pending.result()
                if bi + 1 < len(batches):
                    pending = pool.submit(mdata.collate, train_samples, batches[bi + 1], config.patch)
            else:
                img, msk, wts = mdata.collate(train_samples, crops, config.patch)
            img = img.to(device, non_blocking=True)
            msk = msk.to(device, non_blocking=True)
            wts = None if wts is None else wts.to(device, non_blocking=True)
            if config.augment:
                img, msk, wts = mdata.augment_batch(img, msk, wts, gen, config.jitter)
            if cuda:
                img = img.contiguous(memory_format=torch.channels_last)
            lr = config.lr * _lr_factor(progress(), config.schedule, config.warmup_fraction)
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast():
                logits = net(img)
            loss = loss_fn(logits.float(), msk.long(), wts)
            value = float(loss.detach())
            # Agreed across ranks: one rank raising alone would leave the others waiting in all-reduce.
            if should_stop(0 if math.isfinite(value) else 3) == 3:
                value = value if not math.isfinite(value) else float("nan")
                raise TrainingError(
                    None, f"loss became {value} at epoch {epoch}, step {step + 1}; try a lower learning rate "
                    f"(now {config.lr:g}); the current model is unchanged",
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            epoch_loss += value
            epoch_n += 1
            last_loss = value
            yield TrainEvent("step", epoch, config.epochs, step, total_steps, value, eta(), None, lr,
                             time.monotonic() - t_start)
        if stop_reason == "time budget" and epoch_n and val_samples:
            # The budget cut an epoch short: judge those last steps too, they may be the best.
            record = {"epoch": epoch, "loss": epoch_loss / epoch_n, "seconds": round(time.monotonic() - t_start, 2),
                      "partial": True, "val": track(epoch)}
            history.append(record)
        if stop_reason:
            break
        record = {"epoch": epoch, "loss": epoch_loss / max(epoch_n, 1), "seconds": round(time.monotonic() - t_start, 2)}
        metrics = None
        if val_samples and (epoch % max(config.val_every, 1) == 0 or epoch == config.epochs):
            metrics = record["val"] = track(epoch)
        history.append(record)
        yield TrainEvent("epoch", epoch, config.epochs, step, total_steps, record["loss"], eta(), metrics,
                         opt.param_groups[0]["lr"], time.monotonic() - t_start)
        if config.patience is not None and val_samples and since_best >= config.patience:
            stop_reason = "early stopping"
            break
    if pool is not None:
        pool.shutdown(wait=True)
    if not stop_reason:
        stop_reason = "epochs done"
    sync_buffers()
    if not val_samples:
        best_state, best_metrics, best_epoch = None, None, epoch
    seconds = time.monotonic() - t_start
    if step == 0 and best_state is None:
        checkpoint = None  # cancelled/stopped before any update: nothing new to offer
    else:
        checkpoint = make_checkpoint(best_state, best_metrics, seconds)
    yield TrainEvent("done", epoch, config.epochs, step, total_steps, last_loss, 0.0, best_metrics,
                     opt.param_groups[0]["lr"], seconds)
    dev_name = torch.cuda.get_device_name(device) if cuda else str(device)
    return TrainResult(checkpoint, best_metrics, history, cancelled, seconds, dev_name, stop_reason)


def run_training(*args, on_event: Callable[[TrainEvent], None] | None = None, **kwargs) -> TrainResult:
    """Drive ``train`` to the end (for scripts and tests); ``on_event`` sees every event."""
    from seepview.core.jobs import drive

    return drive(train(*args, **kwargs), on_event)
