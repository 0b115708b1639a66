"""Training throughput: tiles/s through ``train()`` vs a bare forward+backward+step loop, same run.

The ratio shows what the pipeline (patch planning, collation, on-device augmentation, the combined
CE + Dice loss, events) costs on top of the network itself. Synthetic SAR-like tiles; no data needed.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from seepview.core.classes import ClassTable
from seepview.core.model import data as mdata
from seepview.core.model.normalize import SAR_NORMALIZATION
from seepview.core.model.train import TrainConfig, pick_device, train
from seepview.core.model.unet import UNet


def add_arguments(parser) -> None:
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (one more is run as warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None)


def _samples(n: int, size: int) -> list[mdata.Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = rng.random((1, size, size), dtype=np.float32)
        mask = np.zeros((size, size), np.uint8)
        for c in range(1, 8):
            y, x = rng.integers(0, size - 16, 2)
            mask[y:y + 16, x:x + 16] = c
        out.append(mdata.Sample(img, mask, group=f"s{i % 4}", name=f"s{i % 4}.{i}"))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare(args, device) -> float:
    """Seconds per step of model(x) + CE + backward + AdamW on fixed tensors."""
    torch.manual_seed(0)
    model = UNet(1, 8, args.width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size, 1, args.patch, args.patch, device=device)
    y = torch.randint(0, 8, (args.batch_size, args.patch, args.patch), device=device)
    times = []
    for _ in range(args.steps + 1):
        _sync(device)
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def _pipeline(args, device) -> float:
    """Seconds per step inside train() (time between consecutive step events, warm-up dropped)."""
    n = args.batch_size * (args.steps + 1)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, patch=args.patch, device=str(device),
                      threads=args.threads, patches_per_epoch=n, patience=None)
    stamps = []
    gen = train({"in_channels": 1, "base_width": args.width}, _samples(8, args.patch), [], cfg,
                classes=ClassTable.preset("sar-seep"), normalization=SAR_NORMALIZATION)
    for event in gen:
        if event.kind == "step":
            stamps.append(time.perf_counter())
    return float(np.median(np.diff(stamps)))


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    bare = _bare(args, device)
    pipe = _pipeline(args, device)
    tiles = args.batch_size * (args.patch / 256) ** 2
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "width": args.width,
        "patch": args.patch,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "bare_tiles_per_s": round(tiles / bare, 3),
        "train_tiles_per_s": round(tiles / pipe, 3),
        "train_over_bare": round(bare / pipe, 3),
        "note": "tiles = 256x256 equivalents; median step time; machine shared with other jobs during runs",
    }
