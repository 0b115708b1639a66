"""Issue 11: the typer (stage 2) and scene adaptation on scenes the U-Net never trained on.

The shipped U-Net trained on 10 scenes; only 041870, 045588 and 045591 are unseen. The network's
probabilities for every tile are predicted once and cached (``--cache``, .npz), then:

- typer: leave-one-scene-out over the 3 unseen scenes; the typer scoring scene S is fitted on the blobs
  of the other two unseen scenes (weight ``--val-weight``) plus, with ``--train-blobs``, the blobs of
  the U-Net's 10 training scenes (whose mistakes are fewer than on new scenes: optimistic features);
  the third row adds a typist fitted on the other two unseen scenes' seep blobs only (the shipped design,
  and the typer the learning curve adapts); each row over ``--typer-seeds`` LightGBM seeds (mean, SD);
- learning curve: per unseen scene, k reviewed tiles drawn at random (``--draws``), ``fit_adaptation``
  on them (with the typer that never saw that scene), the rest of the scene scored for the base U-Net,
  with the typer, with the typer plus what the reviewed neighbours say across tile edges (``edges``:
  ``scene_grid``, the grid width read from the pixels), and adapted (which also uses the edges); fit and
  apply times.
- ``--ship MODEL``: fit the typer on all blobs and write it into MODEL (weights untouched).
- ``--large-image``: one reviewed *scene image* instead of reviewed tiles. Each unseen scene's tiles are
  placed on their grid; the tiles of ``--large-rows`` consecutive grid rows (at the top, then at the bottom)
  become one reviewed mosaic (missing cells are no-data), which ``fit_adaptation`` cuts into 256² blocks; the
  scene's other tiles are scored. Baseline, same run: the same tiles reviewed as tiles (the tile path), the
  typer alone; with ``--large-side N`` also the mosaic cut into blocks from N px each way (``LARGE_SIDE``). No edges on either side (a mosaic has no reviewed neighbours), so only the units differ.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections import Counter
from pathlib import Path

import numpy as np

VAL = ("041870", "045588", "045591")
TRAIN_SCENES = ("041869", "041871", "041873", "041874", "045553", "045580", "045589", "045592", "045593", "045594")
K = 8


def add_arguments(parser) -> None:
    parser.add_argument("--data", default="../shared/data/cgg-seep")
    parser.add_argument("--model", default="models/sar-seep.safetensors")
    parser.add_argument("--cache", default="/tmp/sv11-cache")
    parser.add_argument("--train-blobs", action="store_true", default=True)
    parser.add_argument("--val-weight", type=float, default=3.0)
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--typer-seeds", type=int, default=4,
                        help="LightGBM seeds the leave-one-scene-out typer rows are fitted with (mean and SD)")
    parser.add_argument("--ship", default=None, help="write the typer fitted on all blobs into this model file")
    parser.add_argument("--skip-curve", action="store_true")
    parser.add_argument("--finetune", action="store_true",
                        help="also the 60 s fine-tune (retrain) rows: one project per unseen scene, k and draw")
    parser.add_argument("--finetune-seconds", type=float, default=60.0)
    parser.add_argument("--finetune-ks", type=int, nargs="+", default=[20],
                        help="reviewed tiles for the fine-tune rows (the learning curve's picks for each k and draw)")
    parser.add_argument("--finetune-draws", type=int, default=1)
    parser.add_argument("--finetune-refit-stage2", action=argparse.BooleanOptionalAction, default=False,
                        help="the fine-tune also refits the typer on its new network (RetrainConfig.refit_stage2, "
                             "off in the app as here); the scene adaptation is refitted either way")
    parser.add_argument("--units-from", default=None, metavar="JSON",
                        help="only recompute the gate's units curve from the fine-tune runs of an earlier "
                             "--finetune --json output (seconds, no training)")
    parser.add_argument("--large-image", action="store_true",
                        help="only the rows of one reviewed scene image (a mosaic of grid rows) against its tiles")
    parser.add_argument("--large-side", type=int, default=0, metavar="PX",
                        help="also fit each mosaic with adapt_units.LARGE_SIDE = PX (--large-image)")
    parser.add_argument("--large-rows", type=int, nargs="+", default=[4, 6],
                        help="grid rows of tiles in the reviewed mosaic (--large-image)")
    parser.add_argument("--demo", action="store_true",
                        help="only the synthetic demo: what the shipped model (with and without its typer) shows")


def demo_rows(args) -> dict:
    """The first thing a new user sees: ``seepview demo``'s 6 tiles through the shipped model, per tile the
    outlines drawn (blobs) without and with the typer, and binary IoU / recall against the demo's truth."""
    import tempfile

    from scipy import ndimage

    from seepview.core.demo import make_demo_project, truth_path
    from seepview.core.imageio import read_mask
    from seepview.core.model.checkpoint import Checkpoint, load_checkpoint
    from seepview.core.model.infer import Predictor
    from seepview.core.model.metrics import ConfusionMatrix

    ck = load_checkpoint(args.model)
    typed = Predictor(ck, compile=False)
    raw = Predictor(Checkpoint(ck.model, dataclasses.replace(ck.meta, typer={}, adaptation={})), compile=False)
    project = make_demo_project(Path(tempfile.mkdtemp(prefix="sv11-demo-")) / "demo")
    tiles, pooled = [], {"raw": ConfusionMatrix(K), "typed": ConfusionMatrix(K)}
    for e in project.entries:
        truth = read_mask(truth_path(project, e))
        row = {"tile": e.id, "true_slicks": int(ndimage.label(truth > 0)[1])}
        for name, pred in (("raw", raw), ("typed", typed)):
            with project.open_image(e) as source:
                labels = pred.predict(source).labels
            cm = ConfusionMatrix(K).update(labels, truth)
            pooled[name].update(labels, truth)
            seep, true = labels > 0, truth > 0
            row[name] = {"blobs": int(ndimage.label(seep)[1]),
                         "binary_iou": round(cm.metrics()["binary_iou"] or 0.0, 3),
                         "recall": round(float((seep & true).sum() / max(1, true.sum())), 3)}
        tiles.append(row)
    return {"tiles": tiles, **{f"{n}_binary_iou": round(cm.metrics()["binary_iou"] or 0.0, 3)
                               for n, cm in pooled.items()}}


def _cache(args, scenes) -> None:
    """Predict the network's probabilities once per tile (no typer: the raw U-Net)."""
    from seepview.core.imageio import open_image, read_mask
    from seepview.core.model.checkpoint import load_checkpoint
    from seepview.core.model.infer import Predictor

    ck = load_checkpoint(args.model)
    ck.meta = dataclasses.replace(ck.meta, typer={}, adaptation={})
    pred = None
    out = Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted((Path(args.data) / "images").glob("*.tif")):
        f = out / (p.stem + ".npz")
        if p.name.split(".")[0] not in scenes or f.exists():
            continue
        pred = pred or Predictor(ck, compile=False)
        with open_image(p) as s:
            img = s.read_all()
        mask = read_mask(Path(args.data) / "masks" / p.name, ck.classes, shape=img.shape[:2])
        prob = pred.predict_proba(img)
        np.savez_compressed(f, image=img, mask=mask, prob=(prob * 255).round().astype(np.uint8))


def load_tiles(args, scenes) -> list[dict]:
    from seepview.core.adapt import TileData
    from seepview.core.model.normalize import SAR_NORMALIZATION, normalize
    from seepview.core.model.typer import blob_features, blob_targets, blobs_of
    from seepview.core.nodata import nodata_mask
    from seepview.core.scene_grid import Edges

    _cache(args, scenes)
    tiles = []
    for f in sorted(Path(args.cache).glob("*.npz")):
        scene = f.name.split(".")[0]
        if scene not in scenes:
            continue
        z = np.load(f)
        img, prob, mask = z["image"], z["prob"], z["mask"]
        nd = nodata_mask(img, 0)
        labels = prob.argmax(0).astype(np.uint8)
        norm = normalize(img, SAR_NORMALIZATION)
        comp, n = blobs_of(labels)
        tgt, area = blob_targets(comp, n, mask, K)
        tiles.append({"scene": scene, "data": TileData(norm, prob, labels, nd, mask, f.stem), "edges": Edges.of(img),
                      "feats": blob_features(norm, prob, comp, n, nd), "tgt": tgt, "area": area})
    return tiles


def _fit(train_sets, typer_kw=None, typist: bool = False):
    """Typer on ``[(tiles, weight)]``; ``typist``: with a typist fitted on the blobs of the unseen scenes."""
    from seepview.core.model.typer import fit_typer

    parts = [(t, w) for ts, w in train_sets for t in ts]
    x = np.concatenate([t["feats"] for t, _ in parts])
    y = np.concatenate([t["tgt"] for t, _ in parts])
    a = np.concatenate([t["area"] for t, _ in parts])
    ew = np.concatenate([np.full(len(t["tgt"]), w) for t, w in parts])
    rows = np.concatenate([np.full(len(t["tgt"]), t["scene"] in VAL) for t, _ in parts]) if typist else None
    return fit_typer(x, y, a, K, extra_weight=ew, typist_rows=rows, **(typer_kw or {}))


def _metrics(pairs) -> dict:
    from seepview.core.model.metrics import ConfusionMatrix

    cm = ConfusionMatrix(K)
    for pred, t in pairs:
        cm.update(pred, t.truth, t.nodata)
    m = cm.metrics()
    return {"miou": round(m["miou"], 4), "binary_iou": round(m["binary_iou"] or 0.0, 4),
            "per_class_iou": {k: None if v is None else round(v, 3) for k, v in m["per_class_iou"].items()}}


def run(args) -> dict:
    if args.demo:
        return {"demo": demo_rows(args)}
    if args.units_from:
        import json

        from seepview.core.retrain.settings import RetrainConfig

        runs = json.loads(Path(args.units_from).read_text())["finetune"]["runs"]
        return {"units_from": args.units_from, "units_curve": _units_curve(runs, RetrainConfig.tolerance,
                                                                            RetrainConfig.confidence)}
    from seepview.core.adapt import Adaptation, _apply, fit_adaptation
    from seepview.core.model.checkpoint import load_checkpoint
    from seepview.core.retrain.restage import refit_typer_checked
    from seepview.core.scene_grid import edge_labels, infer_grid

    start = time.perf_counter()
    val = load_tiles(args, VAL)
    train = load_tiles(args, TRAIN_SCENES) if args.train_blobs else []
    result: dict = {"tiles_unseen": len(val), "blobs_unseen": int(sum(len(t["tgt"]) for t in val)),
                    "blobs_train_scenes": int(sum(len(t["tgt"]) for t in train)), "load_s": 0.0}
    result["load_s"] = round(time.perf_counter() - start, 1)
    result["base"] = _metrics([(t["data"].labels, t["data"]) for t in val])
    typers, rows = {}, {}
    variants = (("loso_unseen_only", False, False), ("loso_unseen+train_scenes", True, False),
                ("loso_unseen+train_scenes+typist", True, True))
    for name, use_train, typist in variants:
        seeds = []
        for seed in range(max(1, args.typer_seeds)):
            typed = []
            for s in VAL:
                sets = [([t for t in val if t["scene"] not in (s,)], args.val_weight)]
                if use_train:
                    sets.append((train, 1.0))
                ty = _fit(sets, {"seed": seed}, typist=typist)
                if typist and seed == 0:  # the shipped design: what the learning curve adapts
                    typers[s] = ty
                t0 = time.perf_counter()
                scene = [t["data"] for t in val if t["scene"] == s]
                typed += [(ty.apply(t.labels, t.image, t.probs, t.nodata), t) for t in scene]
                rows.setdefault("typer_apply_ms_per_tile",
                                round(1000 * (time.perf_counter() - t0) / len(scene), 1))
            seeds.append(_metrics(typed))
        rows[name] = seeds[0] | {
            f"{m}_over_seeds": {"mean": round(float(np.mean([r[m] for r in seeds])), 4),
                                "sd": round(float(np.std([r[m] for r in seeds])), 4), "seeds": len(seeds)}
            for m in ("miou", "binary_iou")}
    result["typer"] = rows
    if args.ship:
        ty = _fit([(val, args.val_weight), (train, 1.0)], typist=True)
        ty.info.update({"trained_on": "blobs the shipped U-Net detected on all 13 cgg-seep scenes: the 3 unseen "
                        f"scenes 041870, 045588, 045591 (weight {args.val_weight:g}) and its 10 training scenes (weight 1); "
                        "the typist on the seep blobs of the 3 unseen scenes only"})
        from seepview.core.model.checkpoint import save_checkpoint

        ck = load_checkpoint(args.ship)
        ck.meta = dataclasses.replace(ck.meta, typer=ty.to_dict())
        save_checkpoint(args.ship, ck.model, ck.meta)
        result["shipped"] = {"path": args.ship, "bytes": Path(args.ship).stat().st_size, "blobs": ty.info["blobs"]}
    base_meta = load_checkpoint(args.model).meta
    if args.large_image:
        result["large_image"] = _large_image_rows(args, val, typers, base_meta)
        return result
    if args.skip_curve:
        if args.finetune:
            result["finetune"] = _finetune_rows(args, val, typers, base_meta)
        return result
    curve = []
    grids = {}
    for s in VAL + TRAIN_SCENES:
        g = infer_grid({t["data"].name: t["edges"] for t in val + train if t["scene"] == s})
        grids[s] = None if g is None else g.width
    result["grid_widths"] = grids
    for s in VAL:
        scene = [t["data"] for t in val if t["scene"] == s]
        grid = infer_grid({t["data"].name: t["edges"] for t in val if t["scene"] == s})
        meta = dataclasses.replace(base_meta, typer=typers[s].to_dict(), adaptation={})
        for k in args.ks:
            if k >= len(scene):
                continue
            for draw in range(args.draws):
                rng = np.random.default_rng(1000 * draw + k)
                pick = set(rng.choice(len(scene), k, replace=False).tolist())
                reviewed = [t for i, t in enumerate(scene) if i in pick]
                rest = [t for i, t in enumerate(scene) if i not in pick]
                t0 = time.perf_counter()
                ad = fit_adaptation(meta, reviewed, scene=s, seed=draw, grid=grid)
                fit_s = time.perf_counter() - t0
                truths = {t.name: t.truth for t in reviewed}
                edges = {t.name: edge_labels(grid, t.name, truths.get) if grid else {} for t in rest}
                t0 = time.perf_counter()
                adapted = [(_apply(ad, typers[s], t.labels, t.image, t.probs, t.nodata, edges[t.name]), t)
                           for t in rest]
                apply_ms = 1000 * (time.perf_counter() - t0) / len(rest)
                no_edges = [(_apply(ad, typers[s], t.labels, t.image, t.probs, t.nodata), t) for t in rest]
                # the same, edges voting on classes but no slick grown across them (scene_grid.grow_from_edges)
                no_growth = [(_apply(ad, typers[s], t.labels, t.image, t.probs, t.nodata, edges[t.name], grow=False), t)
                             for t in rest]
                typed = [(typers[s].apply(t.labels, t.image, t.probs, t.nodata), t) for t in rest]
                typed_edges = [(_apply(Adaptation(), typers[s], t.labels, t.image, t.probs, t.nodata, edges[t.name]), t)
                               for t in rest]
                # the fine-tune's stage-2 rule on the base network: boost the typer on the k tiles' blobs,
                # keep it only if it wins out-of-fold (retrain/restage.py)
                t0 = time.perf_counter()
                refit, refit_note = refit_typer_checked(typers[s], reviewed, K, seed=draw)
                refit_s = time.perf_counter() - t0
                refitted = [(refit.apply(t.labels, t.image, t.probs, t.nodata), t) for t in rest]
                curve.append({"scene": s, "k": k, "draw": draw, "chosen": ad.kind, "cv": ad.cv,
                              "fit_s": round(fit_s, 2), "apply_ms_per_tile": round(apply_ms, 1),
                              "base": _metrics([(t.labels, t) for t in rest]), "typer": _metrics(typed),
                              "typer+edges": _metrics(typed_edges), "adapted_edges_removed": _metrics(no_edges),
                              "adapted_no_growth": _metrics(no_growth),
                              "rest_with_reviewed_neighbour": sum(bool(edges[t.name]) for t in rest),
                              "adapted": _metrics(adapted), "typer_refit": _metrics(refitted),
                              "refit_kept": refit is not typers[s], "refit_note": refit_note,
                              "refit_s": round(refit_s, 2),
                              "candidates_rest": _candidates_rest(ad, meta, reviewed, rest, typers[s], edges, draw)})
    result["curve"] = curve
    summary = {}
    for k in args.ks:
        rows_k = [r for r in curve if r["k"] == k]
        if rows_k:
            summary[k] = {
                f"{what}_{m}": round(float(np.mean([r[what][m] for r in rows_k])), 4)
                for what in ("base", "typer", "typer+edges", "adapted_edges_removed", "adapted_no_growth", "adapted",
                             "typer_refit")
                for m in ("miou", "binary_iou")
            } | {"fit_s_max": max(r["fit_s"] for r in rows_k), "runs": len(rows_k),
                 "chosen": dict(sorted(Counter(r["chosen"] for r in rows_k).items(), key=lambda kv: -kv[1])),
                 "refit_kept": sum(r["refit_kept"] for r in rows_k)}
    result["curve_mean"] = summary
    result["cv_vs_rest"] = _cv_vs_rest(curve, args.ks)
    if args.finetune:
        result["finetune"] = _finetune_rows(args, val, typers, base_meta)
    else:
        result["finetune"] = "not run (--finetune)"
    return result


def _candidates_rest(ad, meta, reviewed, rest, typer, edges, seed) -> dict:
    """Every candidate fitted on all k reviewed tiles, scored on the rest of the scene: what the out-of-fold
    choice was trying to predict."""
    from seepview.core.adapt import MIN_HEAD_TILES, _apply, _candidate, _fit_head

    head = _fit_head(reviewed, seed) if len(reviewed) >= MIN_HEAD_TILES else None
    out = {}
    for kind in ad.cv:
        cand = _candidate(kind, reviewed, K, seed, head)
        out[kind] = _metrics([(_apply(cand, typer, t.labels, t.image, t.probs, t.nodata, edges[t.name]), t)
                              for t in rest])
    return out


def _mosaic(tiles, pos, rows):
    """One TileData of the grid rows ``rows`` (their tiles at their cells; missing cells no-data, unlabelled)."""
    from seepview.core.adapt import TileData

    r0, r1 = min(rows), max(rows) + 1
    width = max(c for _, c in pos.values()) + 1
    h, w = 256 * (r1 - r0), 256 * width
    image = np.zeros((h, w), np.float32)
    probs = np.zeros((K, h, w), np.uint8)
    probs[0] = 255
    labels = np.zeros((h, w), np.uint8)
    nodata = np.ones((h, w), bool)
    truth = np.full((h, w), 255, np.uint8)
    for t in tiles:
        r, c = pos[t.name]
        ys, xs = slice(256 * (r - r0), 256 * (r - r0 + 1)), slice(256 * c, 256 * (c + 1))
        image[ys, xs] = t.image[0] if t.image.ndim == 3 else t.image
        probs[:, ys, xs], labels[ys, xs], truth[ys, xs] = t.probs, t.labels, t.truth
        nodata[ys, xs] = t.nodata if t.nodata is not None else False
    return TileData(image, probs, labels, nodata, truth, "")


@contextlib.contextmanager
def _large_side(side: int):
    """Another size from which images are cut into blocks (``is_large`` reads it at call time; only the
    summary's "at least 512 x 512 px" text keeps the shipped value)."""
    import seepview.core.adapt_units as units

    old, units.LARGE_SIDE = units.LARGE_SIDE, side or units.LARGE_SIDE
    try:
        yield
    finally:
        units.LARGE_SIDE = old


def _large_image_rows(args, val, typers, base_meta) -> dict:
    from seepview.core.adapt import _apply, fit_adaptation
    from seepview.core.scene_grid import infer_grid

    runs = []
    for s in VAL:
        scene = [t["data"] for t in val if t["scene"] == s]
        grid = infer_grid({t["data"].name: t["edges"] for t in val if t["scene"] == s})
        pos = {n: divmod(i - grid.offset, grid.width) for n, i in grid.index.items()}
        last = max(r for r, _ in pos.values())
        meta = dataclasses.replace(base_meta, typer=typers[s].to_dict(), adaptation={})
        for n_rows in args.large_rows:
            for where, rows in (("top", range(0, n_rows)), ("bottom", range(last - n_rows + 1, last + 1))):
                reviewed = [t for t in scene if pos[t.name][0] in rows]
                rest = [t for t in scene if pos[t.name][0] not in rows]
                mosaic = _mosaic(reviewed, pos, rows)
                t0 = time.perf_counter()
                large = fit_adaptation(meta, [mosaic], scene=s, seed=0)
                large_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                as_tiles = fit_adaptation(meta, reviewed, scene=s, seed=0)
                tiles_s = time.perf_counter() - t0
                with _large_side(args.large_side):  # another rule for which images are cut into blocks
                    other = fit_adaptation(meta, [mosaic], scene=s, seed=0) if args.large_side else None

                def scored(ad, typer=typers[s], rest=rest):
                    return _metrics([(_apply(ad, typer, t.labels, t.image, t.probs, t.nodata), t) for t in rest])

                runs.append({"scene": s, "rows": n_rows, "where": where, "reviewed_tiles": len(reviewed),
                             "mosaic": f"{mosaic.truth.shape[1]} x {mosaic.truth.shape[0]}", "rest_tiles": len(rest),
                             "blocks": large.blocks, "large_chosen": large.kind, "tiles_chosen": as_tiles.kind,
                             "large_fit_s": round(large_s, 2), "tiles_fit_s": round(tiles_s, 2),
                             "large_summary": large.summary(),
                             "typer": _metrics([(typers[s].apply(t.labels, t.image, t.probs, t.nodata), t)
                                                for t in rest]),
                             "adapted_as_tiles": scored(as_tiles), "adapted_large_image": scored(large),
                             **({"large_image_other_side_chosen": other.kind,
                                 "adapted_large_image_other_side": scored(other)} if other else {})})
    mean = {}
    for n_rows in args.large_rows:
        rs = [r for r in runs if r["rows"] == n_rows]
        mean[n_rows] = {f"{what}_{m}": round(float(np.mean([r[what][m] for r in rs])), 4)
                        for what in ("typer", "adapted_as_tiles", "adapted_large_image",
                                     *(["adapted_large_image_other_side"] if args.large_side else []))
                        for m in ("miou", "binary_iou")} | {
            "runs": len(rs), "large_fit_s_max": max(r["large_fit_s"] for r in rs),
            "tiles_fit_s_max": max(r["tiles_fit_s"] for r in rs), "reviewed_tiles_mean": float(np.mean(
                [r["reviewed_tiles"] for r in rs]))}
    return {"runs": runs, "mean": mean}


def _cv_vs_rest(curve, ks) -> dict:
    """Per k and candidate: does the out-of-fold difference to "none" predict the rest-of-scene difference?
    (correlation over the runs, SD of its error, mean of each); and the rest-of-scene score of simple rules."""
    def score(m):
        return 0.5 * (m["miou"] + m["binary_iou"])

    out = {}
    for k in ks:
        rows = [r for r in curve if r["k"] == k]
        if not rows:
            continue
        per = {}
        for kind in rows[0]["cv"]:
            if kind == "none" or not all(kind in r["cv"] and kind in r["candidates_rest"] for r in rows):
                continue
            cv = np.array([r["cv"][kind] - r["cv"]["none"] for r in rows])
            rest = np.array([score(r["candidates_rest"][kind]) - score(r["candidates_rest"]["none"]) for r in rows])
            per[kind] = {"corr": round(float(np.corrcoef(cv, rest)[0, 1]), 2) if cv.std() and rest.std() else None,
                         "error_sd": round(float(np.std(cv - rest)), 3), "cv_delta_mean": round(float(cv.mean()), 3),
                         "rest_delta_mean": round(float(rest.mean()), 3)}
        rules = {
            "best_out_of_fold": [max(r["cv"], key=lambda c, r=r: (r["cv"][c], c == "none")) for r in rows],
            "always_none": ["none"] * len(rows), "always_prior": ["prior" if "prior" in r["cv"] else "none" for r in rows],
            "chosen": [r["chosen"] for r in rows],
            "hindsight": [max(r["candidates_rest"], key=lambda c, r=r: score(r["candidates_rest"][c])) for r in rows],
        }
        out[k] = {"candidates": per, "rules": {
            name: {m: round(float(np.mean([r["candidates_rest"][c][m] for r, c in zip(rows, picks)])), 4)
                   for m in ("miou", "binary_iou")} for name, picks in rules.items()}}
    return out


@contextlib.contextmanager
def _gate_units():
    """Record the (before, after) unit confusion matrices every ``Gate.decide`` call is given, so the same
    units can be judged again by other rules (instrumentation: the gate's behaviour is unchanged)."""
    from seepview.core.retrain.gate import Gate

    seen, real = [], Gate.decide

    def recording(self, before, after, names, unit_names=()):
        seen.append((np.array(before), np.array(after)))
        return real(self, before, after, names, unit_names)

    Gate.decide = recording
    try:
        yield seen
    finally:
        Gate.decide = real


@contextlib.contextmanager
def _edge_free_twin():
    """Score every set of gate units a second time with the units' edge evidence removed (``Sample.edges``),
    so the gate with and without what reviewed neighbours say across a unit's edges judges the very same
    candidates (instrumentation: the gate's own verdict uses the units as given)."""
    from seepview.core.retrain import runner
    from seepview.core.retrain.gate import confusions

    seen = []

    def twin(checkpoint, samples, device=None, cancel=None):
        seen.append(confusions(checkpoint, [dataclasses.replace(s, edges=None) for s in samples], device, cancel))
        return confusions(checkpoint, samples, device, cancel)

    runner.confusions = twin
    try:
        yield seen
    finally:
        runner.confusions = confusions


def _score(m: dict) -> float:
    """The gate's score (mean of mIoU and binary IoU) of a ``_metrics`` row."""
    return 0.5 * (m["miou"] + m["binary_iou"])


def _finetune_rows(args, val, typers, base_meta) -> dict:
    """The 60 s fine-tune (``retrain``, the app's "Retrain on my corrections") on the learning curve's picks
    (``--finetune-ks`` × ``--finetune-draws``); rest of the scene scored for the fine-tuned network alone, with
    the typer, and with a fresh adaptation; and for the base network (typer, adapted) on the same tiles."""
    import shutil
    import tempfile

    from seepview.core.adapt import _apply, adaptation_for, fit_adaptation, tile_data
    from seepview.core.imageio import open_image
    from seepview.core.jobs import drive
    from seepview.core.model.checkpoint import Checkpoint, load_checkpoint
    from seepview.core.model.infer import Predictor
    from seepview.core.project import Project
    from seepview.core.retrain.gate import MIN_UNITS, Gate
    from seepview.core.retrain.runner import retrain
    from seepview.core.retrain.settings import RetrainConfig
    from seepview.core.scene_grid import edge_labels, infer_grid

    ck = load_checkpoint(args.model)
    rows = []
    runs = [(s, k, d) for k in args.finetune_ks for d in range(args.finetune_draws) for s in VAL]
    for s, k, draw in runs:
        scene = [t["data"] for t in val if t["scene"] == s]
        if k >= len(scene):
            continue
        rng = np.random.default_rng(1000 * draw + k)  # the learning curve's pick for this k and draw
        pick = set(rng.choice(len(scene), k, replace=False).tolist())
        root = Path(tempfile.mkdtemp(prefix="sv11-ft-"))
        project = Project.create(root / "p", "sar-seep")
        entries = project.add_images([Path(args.data) / "images" / f"{t.name}.tif" for t in scene])
        for i, (e, t) in enumerate(zip(entries, scene)):
            if i in pick:
                project.save_labels(e, t.truth)
                project.set_status(e, "reviewed")
        grid = infer_grid({t["data"].name: t["edges"] for t in val if t["scene"] == s})
        # what the app has active after k reviews: the base network, its typer, the scene's adaptation
        typed = dataclasses.replace(base_meta, typer=typers[s].to_dict(), adaptation={})
        base_ad = fit_adaptation(typed, [t for i, t in enumerate(scene) if i in pick], scene=s, seed=draw, grid=grid)
        current = Checkpoint(ck.model, dataclasses.replace(typed, adaptation=base_ad.to_dict()
                                                           if base_ad.kind != "none" else {}))
        t0 = time.perf_counter()
        config = RetrainConfig(seconds=args.finetune_seconds, refit_stage2=args.finetune_refit_stage2)
        with _gate_units() as units, _edge_free_twin() as plain_units:
            outcome = drive(retrain(project, current, config))
        ft_s = time.perf_counter() - t0
        cand = outcome.candidate
        raw = Predictor(Checkpoint(cand.model, dataclasses.replace(cand.meta, typer={}, adaptation={})), compile=False)
        new = []
        for t in scene:
            with open_image(Path(args.data) / "images" / f"{t.name}.tif") as src:
                new.append(tile_data(raw, src.read_all(), t.truth, t.name))
        reviewed = [t for i, t in enumerate(new) if i in pick]
        rest = [t for i, t in enumerate(new) if i not in pick]
        from seepview.core.model.typer import Typer

        staged = Typer.from_dict(cand.meta.typer)  # the fine-tune's own stage 2: refitted or carried
        meta = dataclasses.replace(cand.meta, adaptation={})
        stored = adaptation_for(cand.meta.adaptation, s)  # the scene's, as refine applies it
        truths = {t.name: t.truth for t in reviewed}
        edges = {t.name: edge_labels(grid, t.name, truths.get) if grid else {} for t in rest}
        t0 = time.perf_counter()
        ad = fit_adaptation(meta, reviewed, scene=s, seed=draw, grid=grid)
        fit_s = time.perf_counter() - t0
        # the base network on the same tiles: its typer, and its adaptation (the learning curve's rows)
        base_rest = [t for i, t in enumerate(scene) if i not in pick]
        shutil.rmtree(root, ignore_errors=True)  # one project per run: ks × draws × 3 of them
        rows.append({
            "scene": s, "k": k, "draw": draw, "retrain_s": round(ft_s, 1), "adapt_fit_s": round(fit_s, 2),
            "base+typer": _metrics([(typers[s].apply(t.labels, t.image, t.probs, t.nodata), t) for t in base_rest]),
            "base+adapted": _metrics([(_apply(base_ad, typers[s], t.labels, t.image, t.probs, t.nodata,
                                              edges[t.name]), t) for t in base_rest]),
            "gate_promotes": None if outcome.decision is None else bool(outcome.decision.promote),
            "gate_evidence": None if outcome.decision is None else bool(outcome.decision.evidence),
            "gate_verdict": None if outcome.decision is None else outcome.decision.verdict,
            "gate_reason": None if outcome.decision is None else outcome.decision.reason,
            "gate": None if outcome.decision is None else {
                k2: outcome.decision.to_dict()[k2] for k2 in ("delta", "ci", "units", "seep_pixels", "score_before",
                                                             "score_after")},
            # the same units judged by the plain and the expanded (small-sample) interval, on the interval
            # alone (``gate_promotes`` is the product's verdict, with its minimum for an automatic promotion)
            "gate_rules": {name: bool(Gate(config.tolerance, config.confidence, expanded=flag,
                                           promote_min_units=MIN_UNITS).decide(
                *units[-1], cand.classes.names).promote) if units else None
                for name, flag in (("plain", False), ("expanded", True))},
            # the same candidates judged with the units' edge evidence removed (before session 12's gate)
            "gate_without_edges": None if len(plain_units) < 2 else (lambda d: {
                "verdict": d.verdict, "delta": d.delta, "ci": d.ci, "units": d.units})(
                Gate(config.tolerance, config.confidence, promote_min_units=config.promote_min_units).decide(
                    plain_units[0], plain_units[-1], cand.classes.names)),
            "finetune": _metrics([(t.labels, t) for t in rest]),
            "finetune+carried_typer": _metrics([(typers[s].apply(t.labels, t.image, t.probs, t.nodata), t)
                                                for t in rest]),
            "finetune+typer": _metrics([(staged.apply(t.labels, t.image, t.probs, t.nodata), t) for t in rest]),
            "finetune+adapted": _metrics([(_apply(ad, staged, t.labels, t.image, t.probs, t.nodata, edges[t.name]), t)
                                          for t in rest]),
            # what a promotion shows at once: the candidate with the adaptation the gate judged it with
            "finetune+gated_adaptation": _metrics([(_apply(stored, staged, t.labels, t.image, t.probs, t.nodata,
                                                           edges[t.name]), t) for t in rest]),
            "gated_adaptation": stored.kind, "chosen": ad.kind, "stage2": cand.meta.training["finetune"].get("stage2"),
            # per rest-of-scene tile: what the user had and what a promotion shows at once (``_units_curve``)
            "rest_tiles": {
                "before": _tile_matrices([(_apply(base_ad, typers[s], t.labels, t.image, t.probs, t.nodata,
                                                  edges[t.name]), t) for t in base_rest]),
                "after": _tile_matrices([(_apply(stored, staged, t.labels, t.image, t.probs, t.nodata,
                                                 edges[t.name]), t) for t in rest])},
        })
    mean = {}
    for k in sorted({r["k"] for r in rows}):
        rk = [r for r in rows if r["k"] == k]
        mean[k] = {f"{what}_{m}": round(float(np.mean([r[what][m] for r in rk])), 4)
                   for what in ("base+typer", "base+adapted", "finetune", "finetune+carried_typer", "finetune+typer",
                                "finetune+adapted", "finetune+gated_adaptation") for m in ("miou", "binary_iou")} | {
            "runs": len(rk), "gate_promotes": sum(bool(r["gate_promotes"]) for r in rk),
            "gate_not_enough_evidence": sum(r["gate_verdict"] == "not enough evidence" for r in rk),
            "gate_too_few_units_to_promote": sum(r.get("gate_verdict") == "too few units to promote" for r in rk),
            # a promotion the user is worse off for: what it shows (at once, and after the next review's
            # refit) scores below the base with the scene adaptation they had, on the rest of the scene
            "promoted_worse_at_once": sum(bool(r["gate_promotes"]) and _score(r["finetune+gated_adaptation"])
                                          < _score(r["base+adapted"]) for r in rk),
            "promoted_worse_after_refit": sum(bool(r["gate_promotes"]) and _score(r["finetune+adapted"])
                                              < _score(r["base+adapted"]) for r in rk)}
        for rule in ("plain", "expanded"):  # worse by more than the tolerance, at once: the gate's own promise
            promoted = [r for r in rk if r["gate_rules"][rule]]
            mean[k][f"{rule}_promotes"] = len(promoted)
            mean[k][f"{rule}_promoted_worse_beyond_tolerance"] = sum(
                _score(r["finetune+gated_adaptation"]) - _score(r["base+adapted"]) < -RetrainConfig.tolerance
                for r in promoted)
    return {"runs": rows, "mean": mean, "units_curve": _units_curve(rows, RetrainConfig.tolerance,
                                                                   RetrainConfig.confidence)}


def _tile_matrices(pairs) -> list:
    """One (K, K) confusion matrix per tile, as nested lists (for the JSON)."""
    from seepview.core.model.metrics import ConfusionMatrix

    return [ConfusionMatrix(K).update(pred, t.truth, t.nodata).matrix.tolist() for pred, t in pairs]


def _units_curve(rows, tolerance: float, confidence: float, sizes=(5, 6, 8, 10, 12), subsets: int = 100,
                 holdout: int = 10, confidences=(0.95,)) -> dict:
    """How often the gate's rule promotes a candidate that is worse, against how many units it judges on.

    Each fine-tune's rest-of-scene tiles are split once (seeded by the run) into a *truth* set of at least
    ``holdout`` tiles and a *pool* of ``max(sizes)`` tiles; runs with fewer rest tiles are left out, so every
    size judges the same runs against the same truth. The candidate's true effect is its score difference on
    the truth set, which the gate never sees, so a run is truly worse (< ``-tolerance``), truly not worse
    (>= 0), or in between. The gate's units are drawn from the pool only, nested (the first m of one
    permutation of the pool for every m, ``subsets`` times), and the gate decides with its own rule and
    ``min_units`` = m. Reported per size: the share of decisions on truly worse runs that promoted (false
    promotions), the share on truly not-worse runs that did not (false rejections), the runs with at least one
    false promotion, and decisions that were "not enough evidence" (too few seep pixels). The decisions of one
    run are correlated: the runs are the independent trials. With ``max(sizes)`` units every subset is the
    whole pool. Keyed by units for ``confidence`` (the gate's), and "<confidence>/<units>" for ``confidences``."""
    from seepview.core.retrain.gate import Gate, scores

    pool_size = max(sizes)
    runs = []
    for i, r in enumerate(row for row in rows if "rest_tiles" in row):
        before = np.asarray(r["rest_tiles"]["before"], np.int64)
        after = np.asarray(r["rest_tiles"]["after"], np.int64)
        if len(before) < pool_size + holdout:
            continue
        order = np.random.default_rng(10_007 + i).permutation(len(before))
        pool, truth = order[:pool_size], order[pool_size:]
        effect = float(scores(after[truth].sum(axis=0)) - scores(before[truth].sum(axis=0)))
        rng = np.random.default_rng(20_011 + i)
        draws = [rng.permutation(pool) for _ in range(subsets)]
        runs.append((r, before, after, effect, draws))
    names = [str(c) for c in range(K)]
    out = {"runs": [{"scene": r["scene"], "k": r["k"], "draw": r["draw"], "rest_tiles": len(b),
                     "true_effect": round(e, 4)} for r, b, _a, e, _d in runs]}
    for conf, m in [(confidence, m) for m in sizes] + [(c, m) for c in confidences for m in sizes]:
        gate = Gate(tolerance, conf, min_units=m, promote_min_units=m)
        tally = {"worse": 0, "false_promotions": 0, "not_worse": 0, "false_rejections": 0, "not_enough_evidence": 0,
                 "runs_worse": 0, "runs_falsely_promoted": 0, "runs_not_worse": 0, "runs_ever_promoted": 0}
        for _r, before, after, effect, draws in runs:
            verdicts = [gate.decide(before[d[:m]], after[d[:m]], names).verdict for d in draws]
            promoted = sum(v == "promoted" for v in verdicts)
            tally["not_enough_evidence"] += sum(v == "not enough evidence" for v in verdicts)
            if effect < -tolerance:
                tally["worse"] += len(verdicts)
                tally["false_promotions"] += promoted
                tally["runs_worse"] += 1
                tally["runs_falsely_promoted"] += promoted > 0
            elif effect >= 0:
                tally["not_worse"] += len(verdicts)
                tally["false_rejections"] += len(verdicts) - promoted
                tally["runs_not_worse"] += 1
                tally["runs_ever_promoted"] += promoted > 0
        tally["false_promotion_rate"] = round(tally["false_promotions"] / tally["worse"], 4) if tally["worse"] else None
        tally["false_rejection_rate"] = (round(tally["false_rejections"] / tally["not_worse"], 4)
                                         if tally["not_worse"] else None)
        out[str(m) if conf == confidence else f"{conf:g}/{m}"] = tally
    return out
