"""Display normalisation of a large uint16 SAR scene: robust_window + to_uint8 vs a naive baseline.

Baseline (same run, same array): ``np.percentile`` over every valid pixel of the full array, then
float32 scaling of the whole array. Both produce the same display window (the fast path samples,
so it may differ by a few grey levels) and the same uint8 image up to that window difference.
Optionally (``--source``) also times robust_window on a tiled, compressed TIFF opened with
open_image, which reads only a grid of regions.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384], help="square image sides")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the fast path; the best is reported")
    parser.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    parser.add_argument("--source", action="store_true", help="also time robust_window on a tiled TIFF file")


def _scene(side: int) -> np.ndarray:
    """uint16 backscatter-like values with a no-data (0) wedge over ~10% of the scene."""
    rng = np.random.default_rng(0)
    img = rng.integers(2000, 50000, (side, side), dtype=np.uint16)
    rows = np.arange(side)[:, None]
    cols = np.arange(side)[None, :]
    img[cols < (side - rows) * 0.2] = 0
    return img


def _best(fn, repeat: int):
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def _naive_window(img: np.ndarray):
    lo, hi = np.percentile(img[img != 0], [1, 99])
    return float(lo), float(hi)


def _naive_map(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    f = img.astype(np.float32)
    f -= lo
    f *= 255.0 / (hi - lo)
    np.clip(f, 0, 255, out=f)
    out = (f + 0.5).astype(np.uint8)
    out[img == 0] = 0
    return out


def run(args) -> dict:
    from seepview.core.display import robust_window, to_uint8
    from seepview.core.imageio import open_image

    results = []
    for side in args.sizes:
        img = _scene(side)
        row: dict = {"shape": [side, side], "dtype": "uint16", "megapixels": round(side * side / 1e6, 1)}
        t_window, window = _best(lambda img=img: robust_window(img), args.repeat)
        t_map, out = _best(lambda img=img, window=window: to_uint8(img, window), args.repeat)
        buf = np.empty(img.shape, np.uint8)
        t_map_out, _ = _best(
            lambda img=img, window=window, buf=buf: to_uint8(img, window, out=buf), args.repeat
        )
        del buf
        row.update(
            to_uint8_reused_buffer_s=round(t_map_out, 4),
            robust_window_s=round(t_window, 4),
            to_uint8_s=round(t_map, 4),
            total_s=round(t_window + t_map, 4),
            window=[window.lo, window.hi],
            load_average=list(os.getloadavg()),
        )
        if not args.no_baseline:
            t_nw, naive_window = _best(lambda img=img: _naive_window(img), 1)
            t_nm, naive_out = _best(lambda img=img, w=naive_window: _naive_map(img, *w), 1)
            row.update(
                baseline_window_s=round(t_nw, 4),
                baseline_map_s=round(t_nm, 4),
                baseline_s=round(t_nw + t_nm, 4),
                speedup=round((t_nw + t_nm) / (t_window + t_map), 2),
                window_speedup=round(t_nw / t_window, 1),
                map_speedup=round(t_nm / t_map, 2),
                baseline_window=list(naive_window),
                max_pixel_difference=int(np.abs(out.astype(np.int16) - naive_out).max()),
            )
            del naive_out
        if args.source:
            import tifffile

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "scene.tif"
                tifffile.imwrite(path, img, tile=(512, 512), compression="zlib", bigtiff=True)
                with open_image(path) as src:
                    t_src, src_window = _best(lambda src=src: robust_window(src), 1)
                row.update(
                    source_robust_window_s=round(t_src, 4), source_window=[src_window.lo, src_window.hi]
                )
        del img, out
        results.append(row)
    return {"results": results}
