"""The review queue (issue 13): ``python benchmarks/run.py queue --json``.

On the shipped model's validation scenes (041870, 045588, 045591: the model never trained on them,
models/sar-seep.md), with the true masks used only to score:

1. ``ranking``: the share of the model's wrong pixels (prediction != truth, 255 ignored) that lie in
   the first ``--top`` tiles of the queue, for every ``seepview.core.queue.METHODS`` entry, for
   flip test-time-augmentation disagreement, for ``--top`` random tiles (mean of ``--draws`` draws)
   and for the oracle (tiles sorted by their true wrong pixels). ``auc``: the mean share over every
   queue length, i.e. how good the whole order is; ``missed_*`` the same for missed-seep pixels (truth a
   seep, prediction background). The method with the best mean of the two aucs (``selection``; TTA left
   out: it doubles prediction time) is the one to keep as ``DEFAULT_METHOD``.
2. ``simulation``: an analyst corrects ``--sim-tiles`` tiles (their labels become the truth), in queue
   order (recomputed with the current model after each update) or in file order; every
   ``--sim-every`` tiles the model is fine-tuned on the corrected tiles (``seepview.core.model.train``
   with ``--sim-seconds`` of budget, lr 5e-4, BatchNorm statistics frozen, no class weights: the
   settings ``finetune.RetrainConfig`` uses, without its replay and gate) and every tile is
   re-predicted. Result: the wrong pixels left in the scenes (uncorrected tiles, final model).
3. ``timing``: ``project_scores`` over a project of ``--timing-tiles`` cached 256² predictions (cold:
   no score file; warm: scores remembered), and ``rank_regions`` over a 16384 x 12288 scene held in
   memory maps.

Validation predictions are computed once and cached in ``--cache`` (under /tmp by default).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VAL_SCENES = ("041870", "045588", "045591")


def add_arguments(parser) -> None:
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("SEEPVIEW_DATA", REPO.parent / "shared" / "data")) / "cgg-seep")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "sar-seep.safetensors")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "seepview-bench-queue")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", nargs="*", default=["ranking", "simulation", "timing"],
                        choices=["ranking", "simulation", "timing"])
    parser.add_argument("--sim-tiles", type=int, default=20)
    parser.add_argument("--sim-every", type=int, default=5)
    parser.add_argument("--sim-seconds", type=float, default=20.0)
    parser.add_argument("--timing-tiles", type=int, default=2000)
    parser.add_argument("--scene-shape", type=int, nargs=2, default=[12288, 16384], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)


# --- data ---------------------------------------------------------------------------------------------------
def _names(data: Path) -> list[str]:
    return sorted(p.stem for p in (data / "images").glob("*.tif") if p.stem.split(".")[0] in VAL_SCENES)


def _read(data: Path, names: list[str]):
    from seepview.core.imageio import open_image, read_mask

    images, truth = [], []
    for n in names:
        with open_image(data / "images" / f"{n}.tif") as source:
            images.append(source.read_all())
        mask = next(p for p in sorted((data / "masks").glob(f"{n}.*")))
        truth.append(read_mask(mask))
    return images, np.stack(truth)


def _predict_all(predictor, images):
    out = [predictor.predict(img) for img in images]
    return (np.stack([p.labels for p in out]), np.stack([p.confidence for p in out]),
            np.stack([p.uncertainty for p in out]))


def _val_predictions(args, predictor, images, names):
    path = args.cache / "val.npz"
    if path.is_file():
        d = np.load(path)
        if list(d["names"]) == names:
            return d["labels"], d["conf"], d["unc"], d["flip"], True
    labels, conf, unc = _predict_all(predictor, images)
    flip = np.stack([predictor.predict(np.ascontiguousarray(img[:, ::-1])).labels[:, ::-1] for img in images])
    args.cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, names=np.array(names), labels=labels, conf=conf, unc=unc, flip=flip)
    return labels, conf, unc, flip, False


def _wrong(labels, truth) -> np.ndarray:
    return ((labels != truth) & (truth != 255)).reshape(len(labels), -1).sum(axis=1)


def _scores(labels, conf, unc, method) -> np.ndarray:
    from seepview.core import queue

    return np.array([queue.image_score(labels[i], conf[i], unc[i], method) for i in range(len(labels))])


# --- 1. ranking ---------------------------------------------------------------------------------------------
def _ranking(args, labels, conf, unc, flip, truth) -> dict:
    from seepview.core import queue

    wrong = _wrong(labels, truth)
    total = float(wrong.sum())
    # Missed seeps: true seep pixels the model called background (the errors an analyst most needs to see).
    missed = ((labels == 0) & (truth != 0) & (truth != 255)).reshape(len(labels), -1).sum(axis=1)

    def share(score, k, values=wrong):
        return float(values[np.argsort(-score, kind="stable")[:k]].sum() / values.sum())

    def auc(score, values=wrong):
        order = np.argsort(-score, kind="stable")
        return float(np.cumsum(values[order]).sum() / (values.sum() * len(order)))

    feats = np.stack([queue.image_features(labels[i], conf[i], unc[i]) for i in range(len(labels))])
    candidates = {m: queue.score_features(feats, m) for m in queue.METHODS}
    disagreement = (labels != flip).reshape(len(labels), -1).mean(axis=1)
    tta = {"flip_tta": disagreement, "seep_edge+flip_tta": candidates["seep_edge"] + disagreement}
    rows = {}
    for name, score in {**candidates, **tta, "oracle": wrong.astype(float)}.items():
        rows[name] = {f"share_top{k}": round(share(score, k), 4) for k in (5, 10, args.top, 2 * args.top)}
        rows[name]["auc"] = round(auc(score), 4)
        rows[name][f"missed_share_top{args.top}"] = round(share(score, args.top, missed), 4)
        rows[name]["missed_auc"] = round(auc(score, missed), 4)
        rows[name]["selection"] = round((rows[name]["auc"] + rows[name]["missed_auc"]) / 2, 4)
    rng = np.random.default_rng(args.seed)
    draws = [wrong[rng.choice(len(wrong), args.top, replace=False)].sum() / total for _ in range(args.draws)]
    best = max(candidates, key=lambda m: rows[m]["selection"])
    return {
        "tiles": len(labels),
        "wrong_pixels": int(total),
        "tiles_with_errors": int((wrong > 0).sum()),
        "methods": rows,
        f"random_top{args.top}_mean_of_{args.draws}": round(float(np.mean(draws)), 4),
        f"random_top{args.top}_std": round(float(np.std(draws)), 4),
        "missed_seep_pixels": int(missed.sum()),
        "best_without_tta": best,
        "default_method": queue.DEFAULT_METHOD,
        "queue_vs_random_top": round(rows[queue.DEFAULT_METHOD][f"share_top{args.top}"] / float(np.mean(draws)), 2),
        "queue_vs_confidence_top": round(
            rows[queue.DEFAULT_METHOD][f"share_top{args.top}"] / rows["confidence"][f"share_top{args.top}"], 3),
    }


# --- 2. analyst simulation ---------------------------------------------------------------------------------
def _finetune(checkpoint, images, truth, chosen, seconds, seed):
    from seepview.core.model.data import Sample
    from seepview.core.model.normalize import fit_normalization, normalize
    from seepview.core.model.train import TrainConfig, train

    samples = []
    for i in chosen:
        spec = fit_normalization(images[i], checkpoint.meta.normalization)
        samples.append(Sample(normalize(images[i], spec), truth[i], None, "", str(i)))
    config = TrainConfig(epochs=10_000, batch_size=8, patch=128, lr=5e-4, time_budget_s=seconds, patience=None,
                         class_weight_power=0.0, rare_fraction=0.0, freeze_bn=True, seed=seed, device="cpu",
                         threads=2)
    gen = train(checkpoint, samples, [], config)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value.checkpoint


def _simulate(args, checkpoint, images, truth, names, order_by: str) -> dict:
    from seepview.core.model.infer import Predictor
    from seepview.core.queue import DEFAULT_METHOD

    current = checkpoint
    labels, conf, unc = _predict_all(Predictor(current, compile=False), images)
    done: list[int] = []
    trace = []
    seconds_training = 0.0
    while len(done) < args.sim_tiles:
        left = [i for i in range(len(names)) if i not in done]
        if order_by == "queue":
            scores = _scores(labels, conf, unc, DEFAULT_METHOD)
            left.sort(key=lambda i: -scores[i])
        done += left[: args.sim_every]
        t0 = time.perf_counter()
        current = _finetune(current, images, truth, done, args.sim_seconds, args.seed)
        seconds_training += time.perf_counter() - t0
        labels, conf, unc = _predict_all(Predictor(current, compile=False), images)
        wrong = _wrong(labels, truth)
        wrong[done] = 0  # corrected tiles hold the truth
        trace.append({"corrected": len(done), "remaining_wrong_pixels": int(wrong.sum())})
    return {"corrected": [names[i] for i in done], "trace": trace,
            "remaining_wrong_pixels": trace[-1]["remaining_wrong_pixels"],
            "seconds_training": round(seconds_training, 1)}


def _simulation(args, checkpoint, images, truth, names, labels0, conf0, unc0) -> dict:
    from seepview.core.queue import DEFAULT_METHOD

    wrong0 = _wrong(labels0, truth)
    out = {"initial_wrong_pixels": int(wrong0.sum()),
           "update": f"model.train fine-tune on the corrected tiles, {args.sim_seconds:g} s budget, every "
                     f"{args.sim_every} tiles; all tiles re-predicted after each update"}
    # The same orders without any model update: what the corrections alone remove.
    queue_order = np.argsort(-_scores(labels0, conf0, unc0, DEFAULT_METHOD), kind="stable")[: args.sim_tiles]
    out["no_update"] = {"queue": int(wrong0.sum() - wrong0[queue_order].sum()),
                        "file": int(wrong0.sum() - wrong0[: args.sim_tiles].sum())}
    for arm in ("queue", "file"):
        out[arm] = _simulate(args, checkpoint, images, truth, names, arm)
    q, f = out["queue"]["remaining_wrong_pixels"], out["file"]["remaining_wrong_pixels"]
    out["queue_over_file_remaining"] = round(q / max(f, 1), 3)
    return out


# --- 3. timing -----------------------------------------------------------------------------------------------
def _timing(args, labels, conf, unc, data: Path, names: list[str]) -> dict:
    from seepview.core.classes import ClassTable
    from seepview.core.project import Project
    from seepview.core.queue import ReviewQueue, project_scores, rank_regions

    out = {}
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        tmp = Path(tmp)
        folder = tmp / "images"
        folder.mkdir()
        paths = []
        for i in range(args.timing_tiles):
            link = folder / f"tile{i:05d}.tif"
            link.symlink_to(data / "images" / f"{names[i % len(names)]}.tif")
            paths.append(link)
        project = Project.create(tmp / "project", ClassTable.preset("sar-seep"))
        project.add_images(paths)
        key = "bench-v1-0000000000"
        t0 = time.perf_counter()
        for i, entry in enumerate(project.entries):
            j = i % len(names)
            project.save_prediction(entry, key, labels[j], conf[j], unc[j])
        out["seconds_writing_cache"] = round(time.perf_counter() - t0, 2)
        project = Project.open(project.root)  # a fresh session: no header cache
        for run in ("cold", "warm"):
            t0 = time.perf_counter()
            scores, broken = project_scores(project, key)
            order = ReviewQueue()
            order.update(scores, broken)
            ids = order.order(project.entries)
            out[f"seconds_{args.timing_tiles}_tiles_{run}"] = round(time.perf_counter() - t0, 3)
        out["queued"] = len(ids)

        h, w = args.scene_shape
        mosaic = {}
        for name, src in (("labels", labels), ("conf", conf), ("unc", unc)):
            mm = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(h, w))
            k = 0
            for y in range(0, h, 256):
                for x in range(0, w, 256):
                    tile = src[k % len(src)]
                    mm[y:y + 256, x:x + 256] = tile[: h - y, : w - x]
                    k += 1
            mm.flush()
            del mm
            mosaic[name] = np.load(tmp / f"{name}.npy", mmap_mode="r")
        t0 = time.perf_counter()
        regions = rank_regions(mosaic["labels"], mosaic["conf"], mosaic["unc"])
        out[f"seconds_scene_{w}x{h}_blocks"] = round(time.perf_counter() - t0, 2)
        out["scene_blocks"] = int(regions.grid.size)
        del mosaic
    return out


def run(args) -> dict:
    import torch

    from seepview.core.model.checkpoint import load_checkpoint
    from seepview.core.model.infer import Predictor

    if not (args.data / "images").is_dir():
        return {"skipped": f"no data at {args.data}"}
    torch.set_num_threads(args.threads)
    names = _names(args.data)
    images, truth = _read(args.data, names)
    checkpoint = load_checkpoint(args.model)
    t0 = time.perf_counter()
    labels, conf, unc, flip, cached = _val_predictions(args, Predictor(checkpoint, compile=False), images, names)
    result = {"scenes": list(VAL_SCENES), "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO)
                                                         else args.model),
              "seconds_val_predictions": None if cached else round(time.perf_counter() - t0, 1)}
    if "ranking" in args.parts:
        result["ranking"] = _ranking(args, labels, conf, unc, flip, truth)
    if "simulation" in args.parts:
        result["simulation"] = _simulation(args, checkpoint, images, truth, names, labels, conf, unc)
    if "timing" in args.parts:
        args.cache.mkdir(parents=True, exist_ok=True)
        result["timing"] = _timing(args, labels, conf, unc, args.data, names)
    return result
