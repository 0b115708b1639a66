"""No-data pixels predicted as seep: ``python benchmarks/run.py nodata --json``.

Runs the shipped SAR model over every tile of unseen cgg-seep scenes (default 041870, 045588, 045591:
the shipped model's validation scenes, never trained on; see models/sar-seep.md) and counts the no-data pixels (exact 0, the tiles' own
``ImageSource.nodata``) that come out as a seep class. ``before`` is the same Predictor with the
no-data forcing switched off (the network's raw answer), ``after`` the Predictor as shipped; both in
this run, on the same tiles.
"""

from __future__ import annotations

import time
from pathlib import Path
from unittest import mock

import numpy as np

from seepview.core.imageio import open_image
from seepview.core.model import infer
from seepview.core.model.checkpoint import default_model_path, load_checkpoint
from seepview.core.nodata import nodata_mask

SCENES = ("041870", "045588", "045591")


def add_arguments(parser) -> None:
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/cgg-seep/images"))
    parser.add_argument("--scenes", nargs="+", default=list(SCENES))
    parser.add_argument("--device", default="cpu")


def run(args) -> dict:
    paths = sorted(p for s in args.scenes for p in args.data.glob(f"{s}.*.tif"))
    if not paths:
        raise SystemExit(f"no tiles of scenes {args.scenes} in {args.data}")
    predictor = infer.Predictor(load_checkpoint(default_model_path("sar-seep")), device=args.device)
    counts = {"before": 0, "after": 0}
    nodata_px = tiles_with_nodata = 0
    start = time.perf_counter()
    for path in paths:
        with open_image(path) as source:
            pixels = source.read_all()
            nodata = nodata_mask(pixels, source.nodata)
            if nodata is None or not nodata.any():
                continue
            tiles_with_nodata += 1
            nodata_px += int(nodata.sum())
            with mock.patch.object(infer, "_force_background", lambda *a: None):
                raw = predictor.predict(source).labels
            counts["before"] += int(np.count_nonzero(raw[nodata]))
            counts["after"] += int(np.count_nonzero(predictor.predict(source).labels[nodata]))
    return {
        "scenes": args.scenes,
        "tiles": len(paths),
        "tiles_with_nodata": tiles_with_nodata,
        "nodata_pixels": nodata_px,
        "seep_nodata_pixels_before": counts["before"],
        "seep_nodata_pixels_after": counts["after"],
        "share_before": counts["before"] / max(nodata_px, 1),
        "share_after": counts["after"] / max(nodata_px, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
