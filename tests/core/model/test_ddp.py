"""A real 2-process DistributedDataParallel run on CPU (gloo), launched by torchrun like users do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, torch
    from seepview.core.classes import ClassTable
    from seepview.core.model import data as d
    from seepview.core.model.checkpoint import save_checkpoint
    from seepview.core.model.train import TrainConfig, dist_env, is_main_process, run_training

    out = sys.argv[1]
    rng = np.random.default_rng(0)  # same data on every rank; train() shards it
    samples = []
    for i in range(10):
        img = rng.normal(0.6, 0.05, (1, 16, 16)).astype(np.float32)
        mask = np.zeros((16, 16), np.uint8)
        img[0, 4:10, 4 + i % 4:10 + i % 4] -= 0.4
        mask[4:10, 4 + i % 4:10 + i % 4] = 1
        samples.append(d.Sample(img, mask, group=f"g{i % 5}", name=str(i)))
    tr, va = d.split_by_group(samples, val_groups=["g0", "g1", "g2"])
    cfg = TrainConfig(epochs=2, batch_size=2, patch=16, lr=1e-2, threads=1, patches_per_epoch=8, patience=None)
    steps = []
    res = run_training({"in_channels": 1, "base_width": 4, "depth": 2}, tr, va, cfg,
                       classes=ClassTable.from_names(["bg", "blob"]), normalization={"kind": "scale", "scale": 1.0},
                       on_event=lambda e: e.kind == "step" and steps.append(e.step))
    rank, world, _ = dist_env()
    state = res.checkpoint.model.state_dict()
    checksum = float(sum(v.double().abs().sum() for v in state.values()))
    if is_main_process():
        save_checkpoint(os.path.join(out, "model.safetensors"), res.checkpoint.model, res.checkpoint.meta)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump({"world": world, "steps": len(steps), "checksum": checksum,
                   "val_pixels": res.best_metrics["n_pixels"], "meta_world": res.checkpoint.meta.training["world_size"]}, fh)
    """
)


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    script = tmp_path / "ddp_job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2 == r0["meta_world"]
    # 8 patches per epoch, sharded 4 per rank, batch 2 -> 2 steps per epoch, 2 epochs
    assert r0["steps"] == r1["steps"] == 4
    assert r0["checksum"] == pytest.approx(r1["checksum"], rel=1e-9)  # DDP kept the replicas identical
    # The validation confusion matrix was all-reduced: every rank saw all 6 validation images.
    assert r0["val_pixels"] == r1["val_pixels"] == 6 * 16 * 16
    assert [p.name for p in tmp_path.glob("*.safetensors")] == ["model.safetensors"]  # rank 0 saved once
