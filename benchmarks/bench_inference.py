"""Inference speed and memory: ``python benchmarks/run.py inference --json [--scene 10000]``.

Tiles/s of the full ``Predictor`` pipeline (region read, normalisation, batching, softmax, blending,
uint8 output) for 256² single-channel tiles, 8 classes, at each width and batch size, next to bare
``model(x)`` loops on the same tensors in the same run:

* ``bare_model``: the checkpoint's model as trained (BatchNorm, NCHW), the naive baseline;
* ``bare_inference_model``: the Predictor's own network (BatchNorm folded, channels_last), so
  ``overhead_ratio = bare_inference_model / predictor`` is the cost of everything around the network;
* ``predictor_compiled``: the same pipeline with ``Predictor(compile=True)`` (torch.compile, inductor
  with frozen weights; what ``compile=None`` picks for calls of >= AUTO_COMPILE_TILES tiles). Its
  one-off compile time is ``compile_s``. ``--no-compile`` skips it.

The pipeline runs at the app's settings, read from a ``Predictor`` made as the app makes it (tile 256,
overlap 32 today; ``--overlap`` overrides), on a one-row image exactly n tiles long at that stride, so it
processes the same n tiles as the bare loops. ``predictor_mpx_s`` is image area per second: with overlap,
each pixel costs more than 1/65536 of a tile.
``--scene N`` also writes an N×N uint16 tiled TIFF and streams it through ``predict_to`` into memory
maps in a fresh subprocess, reporting seconds and peak RSS. The peak is the child's ``VmHWM`` (Linux):
its ``ru_maxrss`` is reported too but inherits this parent's peak at fork, so it overstates small runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from seepview.core.classes import ClassTable
from seepview.core.model.checkpoint import Checkpoint, make_meta, save_checkpoint
from seepview.core.model.infer import Predictor
from seepview.core.model.normalize import SAR_NORMALIZATION, normalize
from seepview.core.model.unet import UNet

TILE = 256
CLASSES = 8


def add_arguments(parser) -> None:
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--scene", type=int, default=0, help="also stream an N x N uint16 scene (e.g. 10000)")
    parser.add_argument("--scene-width", type=int, default=16, help="model width for the scene run")
    parser.add_argument("--skip-tiles", action="store_true", help="only run the --scene measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd pipeline")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap (default: the app's, from Predictor)")


def _checkpoint(width: int) -> Checkpoint:
    torch.manual_seed(0)
    table = ClassTable.preset("sar-seep")
    net = UNet(1, CLASSES, base_width=width).eval()
    return Checkpoint(net, make_meta(net, table, SAR_NORMALIZATION, name=f"bench-w{width}"))


def _image(n_tiles: int, overlap: int) -> np.ndarray:
    """One row of exactly ``n_tiles`` tiles at the Predictor's stride (``TILE - overlap``)."""
    rng = np.random.default_rng(0)
    img = rng.integers(15000, 50000, size=(TILE, (TILE - overlap) * (n_tiles - 1) + TILE), dtype=np.uint16)
    img[:, :40] = 0  # a no-data strip, as at scene edges
    return img


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, tiles_per_call: int, seconds: float, device: torch.device) -> tuple[float, float]:
    """(tiles per wall second, tiles per CPU second of this process) of ``fn``, after one warm-up call,
    over at least ``seconds`` and at least one call. On a shared machine the CPU-second rate times the
    thread count estimates the uncontended speed (OpenMP spin-waits make it a lower bound)."""
    fn()
    _sync(device)
    calls, start, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        calls += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            cpu = max(time.process_time() - cpu0, 1e-9)
            return calls * tiles_per_call / elapsed, calls * tiles_per_call / cpu


def app_settings(args) -> tuple[int, int]:
    """(tile, overlap) of a Predictor made the way the app makes one (only the checkpoint given)."""
    app = Predictor(_checkpoint(4), device="cpu")
    return app.tile, app.overlap if args.overlap is None else args.overlap


def _tiles(args) -> list[dict]:
    from seepview.core.model.infer import tile_starts

    rows = []
    tile, overlap = app_settings(args)
    assert tile == TILE, f"the app's tile is {tile}; the bench's images assume {TILE}"
    for width in args.widths:
        ck = _checkpoint(width)
        for batch in args.batches:
            predictor = Predictor(ck, device=args.device, tile=TILE, overlap=overlap, batch_size=batch)
            device = predictor.device
            image = _image(batch, overlap)
            starts = tile_starts(image.shape[1], TILE, overlap)
            assert len(starts) == batch, (len(starts), batch)
            fitted = predictor.fit(image)
            x = torch.from_numpy(
                np.stack([normalize(image[:, s : s + TILE], fitted) for s in starts])
            ).to(device)
            plain = ck.model.to(device).eval()
            x_cl = x.contiguous(memory_format=torch.channels_last) if device.type in ("cpu", "cuda") else x
            labels = np.empty(image.shape, np.uint8)
            conf = np.empty(image.shape, np.uint8)

            def bare(model=plain, x=x):
                with torch.inference_mode():
                    model(x)

            def bare_inf(model=predictor.model, x=x_cl):
                with torch.inference_mode():
                    model(x)

            def pipeline(p=predictor, image=image, labels=labels, conf=conf, fitted=fitted):
                p.predict_to(image, labels, conf, normalization=fitted)

            runs = [("predictor", pipeline), ("bare_inference_model", bare_inf), ("bare_model", bare)]
            compile_s = None
            if not args.no_compile:
                compiled = Predictor(ck, device=args.device, tile=TILE, overlap=overlap, batch_size=batch, compile=True)
                t0 = time.perf_counter()
                compiled.predict_to(image, labels, conf, normalization=fitted)
                _sync(device)
                compile_s = time.perf_counter() - t0
                if compiled.compiled:

                    def pipeline_compiled(p=compiled, image=image, labels=labels, conf=conf, fitted=fitted):
                        p.predict_to(image, labels, conf, normalization=fitted)

                    runs.insert(1, ("predictor_compiled", pipeline_compiled))
            best = {name: (0.0, 0.0) for name, _ in runs}
            for _ in range(args.rounds):
                for name, fn in runs:
                    best[name] = max(best[name], _rate(fn, batch, args.seconds, device))
            row = {"width": width, "batch": batch, "device": str(device), "tile": TILE, "overlap": overlap}
            if compile_s is not None:
                row["compile_s"] = round(compile_s, 2)
            row.update({f"{k}_tiles_s": round(v[0], 3) for k, v in best.items()})
            row["predictor_mpx_s"] = round(best["predictor"][0] / batch * image.size / 1e6, 3)
            row["overhead_ratio"] = round(best["bare_inference_model"][0] / best["predictor"][0], 3)
            row["speedup_vs_bare_model"] = round(best["predictor"][0] / best["bare_model"][0], 3)
            if device.type == "cpu":
                threads = min(torch.get_num_threads(), os.cpu_count() or 1)
                row.update({f"{k}_tiles_per_cpu_s": round(v[1], 3) for k, v in best.items()})
                row["predictor_est_uncontended_tiles_s"] = round(best["predictor"][1] * threads, 2)
            if "predictor_compiled" in best:
                row["compiled_speedup"] = round(best["predictor_compiled"][0] / best["predictor"][0], 3)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def _write_scene(path: Path, n: int) -> None:
    """An n x n uint16 tiled TIFF with speckle, a dark 'slick' band and a no-data corner, written tile by tile."""
    import tifffile

    rng = np.random.default_rng(1)

    def tiles():
        for ty in range(0, n, TILE):
            for tx in range(0, n, TILE):
                t = rng.gamma(4.0, 8000.0, size=(TILE, TILE)).clip(1, 65535).astype(np.uint16)
                yy = ty + np.arange(TILE)[:, None]
                xx = tx + np.arange(TILE)[None, :]
                t[np.abs(yy - xx // 2 - n // 4) < 40] //= 3
                t[(yy + xx) < n // 6] = 0
                yield t

    tifffile.imwrite(path, tiles(), shape=(n, n), dtype=np.uint16, tile=(TILE, TILE))


_SCENE_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    import numpy as np
    from seepview.core.imageio import open_image
    from seepview.core.model.checkpoint import load_checkpoint
    from seepview.core.model.infer import Predictor, tile_starts
    scene, model, out, device = sys.argv[1:5]

    def hwm_mb():
        # VmHWM is this process's own peak; ru_maxrss also inherits the parent's peak at fork on Linux.
        try:
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rss0 = hwm_mb()
    t0, cpu0 = time.perf_counter(), time.process_time()
    predictor = Predictor(load_checkpoint(model), device=None if device == "auto" else device)
    with open_image(scene) as source:
        h, w = source.shape
        labels = np.memmap(Path(out) / "labels.u8", dtype=np.uint8, mode="w+", shape=(h, w))
        conf = np.memmap(Path(out) / "conf.u8", dtype=np.uint8, mode="w+", shape=(h, w))
        predictor.predict_to(source, labels, conf)
        labels.flush(); conf.flush()
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    tiles = len(tile_starts(h, predictor.tile, predictor.overlap)) * len(tile_starts(w, predictor.tile, predictor.overlap))
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_s, "tiles": tiles, "tiles_s": tiles / seconds,
                      "peak_rss_mb": hwm_mb(), "rss_after_imports_mb": rss0,
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "device": str(predictor.device), "compiled": predictor.compiled, "batch": predictor.batch_size,
                      "tile": predictor.tile, "overlap": predictor.overlap,
                      "classes_found": int(np.bincount(np.asarray(labels[::97, ::97]).ravel()).nonzero()[0].size)}))
    """
)


def _scene(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="seepview-bench-") as tmp:
        tmp = Path(tmp)
        scene = tmp / f"scene{args.scene}.tif"
        t0 = time.perf_counter()
        _write_scene(scene, args.scene)
        write_s = time.perf_counter() - t0
        ck = _checkpoint(args.scene_width)
        model = save_checkpoint(tmp / "model.safetensors", ck.model, ck.meta)
        env = dict(os.environ)
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run(
            [sys.executable, "-c", _SCENE_SCRIPT, str(scene), str(model), str(tmp), args.device or "auto"],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"scene run failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(
            {
                "size": [args.scene, args.scene],
                "dtype": "uint16",
                "width": args.scene_width,
                "scene_file_mb": round(scene.stat().st_size / 2**20, 1),
                "write_scene_s": round(write_s, 1),
            }
        )
        return result


def run(args) -> dict:
    tile, overlap = app_settings(args)
    result: dict = {"tile": [tile, tile], "overlap": overlap, "overlap_source": "Predictor default (the app's)"
                    if args.overlap is None else "--overlap", "channels": 1, "classes": CLASSES}
    result["load_avg_before"] = list(os.getloadavg())
    if not args.skip_tiles:
        result["tiles"] = _tiles(args)
    if args.scene:
        result["scene"] = _scene(args)
    result["load_avg_after"] = list(os.getloadavg())
    return result
