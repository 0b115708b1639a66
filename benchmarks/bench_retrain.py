"""Retrain on corrections, end to end: ``python benchmarks/run.py retrain --json [--model M]``.

The scenario of the retrain issue, on ``../shared/data/cgg-seep`` (skipped when absent):

1. Score the model on every scene; take the scene where it does worst (mIoU over its tiles) among
   scenes with at least ``--corrections + 5`` tiles.
2. ``--corrections`` of that scene's tiles (seeded choice), with their true masks as the user's
   corrections, go into a fresh project whose prediction cache holds the model's own output (so the
   corrected pixels are exactly where the model was wrong); the rest of the scene is the test set.
3. ``seconds_to_promoted``: wall time from "click" (``retrain`` called) to the promoted model stored
   and active, headless with all CPU threads; test mIoU before/after on the held-out tiles.
4. GUI: the app's real ``Canvas`` (the first correction tile, its class LUT, a label document) next to
   the real ``TrainingPanel``; every 16 ms a QTimer paints one dab of a real brush stroke through the
   app's ``ToolController`` (press, moves, release: a stroke every 30 frames) and repaints. The button
   is clicked; frame intervals and each dab's handler-to-painted latency are recorded while training
   runs, for the thread option and the child-process option, plus a baseline with no training in the
   same run. Target: frame p95 <= 33 ms. The strokes go to a document of their own, not the project's
   labels, so they cannot change what trains.

Replay uses the model's training data (the ``train_groups`` it records, read from ``--data``) unless
``--replay 0``. Figures depend on machine load: the result records the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def add_arguments(parser) -> None:
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("SEEPVIEW_DATA", REPO.parent / "shared" / "data")) / "cgg-seep")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "sar-seep.safetensors")
    parser.add_argument("--scene", default=None, help="skip the search and use this scene")
    parser.add_argument("--scan-tiles", type=int, default=0,
                        help="score at most this many tiles per scene in the search (0: all)")
    parser.add_argument("--corrections", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0, help="quick budget (whole run)")
    parser.add_argument("--budget", choices=["quick", "thorough"], default="quick",
                        help="thorough: RetrainConfig's epochs with early stopping, --seconds ignored")
    parser.add_argument("--replay", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default: RetrainConfig's")
    parser.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                        help="default: RetrainConfig's")
    parser.add_argument("--correction-weight", type=float, default=None, help="default: RetrainConfig's")
    parser.add_argument("--class-weight-power", type=float, default=None, help="default: RetrainConfig's")
    parser.add_argument("--rare-fraction", type=float, default=None, help="default: RetrainConfig's")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="picks the correction tiles (and trains, unless --train-seed)")
    parser.add_argument("--train-seed", type=int, default=None, help="training's seed (default: --seed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads headless (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="*", default=["headless", "thread", "process"],
                        choices=["headless", "thread", "process"])
    parser.add_argument("--frame-ms", type=int, default=16, help="canvas repaint timer interval")
    parser.add_argument("--gui-threads", type=int, default=None,
                        help="torch threads in the GUI runs (default: the panel's choice, cores - 1)")
    parser.add_argument("--gui-nice", type=int, default=None, help="training priority drop in the GUI runs")


def _load_scene_samples(data: Path, checkpoint, names: list[str]):
    from seepview.core.model.data import load_samples

    return load_samples([data / "images" / n for n in names], [data / "masks" / n for n in names],
                        checkpoint.normalization, checkpoint.classes)


def _scene_scores(data: Path, checkpoint, limit: int = 0, only: str | None = None) -> dict[str, dict]:
    from seepview.core.project import group_of
    from seepview.core.retrain import evaluate

    scenes: dict[str, list[str]] = {}
    for p in sorted((data / "images").glob("*.tif")):
        scenes.setdefault(group_of(p.name), []).append(p.name)
    out = {}
    for scene, names in scenes.items():
        if only is not None and scene != only:
            out[scene] = {"tiles": len(names), "miou": None, "binary_iou": None, "names": names}
            continue
        scored = names if not limit or len(names) <= limit else names[:: max(1, len(names) // limit)][:limit]
        m = evaluate(checkpoint, _load_scene_samples(data, checkpoint, scored))
        out[scene] = {"tiles": len(names), "miou": m["miou"], "binary_iou": m["binary_iou"], "names": names}
    return out


def _make_project(root: Path, data: Path, current, names: list[str]):
    """A project with the correction tiles: the model's predictions cached, true masks as reviewed labels."""
    from seepview.core.imageio import read_mask
    from seepview.core.model.infer import Predictor
    from seepview.core.project import Project
    from seepview.core.versions import weights_key

    project = Project.create(root, current.classes, name="retrain-bench")
    entries = project.add_images([data / "images" / n for n in names])
    predictor = Predictor(current, device="cpu")
    key = weights_key(current)
    for entry, name in zip(entries, names):
        pred = predictor.predict(project.open_image(entry))
        project.save_prediction(entry, key, pred.labels, pred.confidence)
        project.save_labels(entry, read_mask(data / "masks" / name, current.classes))
        project.set_status(entry, "reviewed")
    return project


def _percentiles(intervals_s: list[float]) -> dict:
    if not intervals_s:
        return {"frames": 0}
    ms = np.asarray(intervals_s) * 1000.0
    return {"frames": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "max_ms": round(float(ms.max()), 2)}


def _headless(project, current, config) -> dict:
    from seepview.core.retrain import retrain
    from seepview.core.versions import ModelRegistry

    registry = ModelRegistry(project)
    registry.ensure_base(current)
    t0 = time.perf_counter()
    gen = retrain(project, current, config)
    steps = 0
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            outcome = stop.value
            break
        steps += ev.kind == "step"
    version = registry.add(outcome.candidate, promote=outcome.decision.promote, stats=outcome.stats)
    seconds = time.perf_counter() - t0
    return {"outcome": outcome, "version": version.key, "seconds_to_decision": round(seconds, 2), "steps": steps}


def _gui(project, current, config_overrides: dict, frame_ms: int) -> dict:
    """Click the real panel's button; record canvas frame intervals while training runs."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QHBoxLayout, QWidget

    from seepview.core.history import LabelDocument
    from seepview.core.session import BLANK, ReviewSession
    from seepview.qt.canvas import Canvas
    from seepview.qt.panels.training import TrainingPanel

    try:
        from seepview.core.retrain import prepare_for_training
    except ImportError:  # before the retrain package
        from seepview.qt.panels.training import prepare_for_training
    from seepview.qt.tools import ToolController

    app = QApplication.instance() or QApplication([])
    session = ReviewSession(project, current)
    window = QWidget()
    layout = QHBoxLayout(window)
    opened = session.open(project.entries[0].id)
    canvas = Canvas()
    canvas.set_image(opened.display_u8)
    canvas.set_lut(project.classes.lut())
    canvas.set_opacity(0.6)
    document = LabelDocument(np.full(opened.shape, BLANK, np.uint8))
    canvas.set_document(document)
    tools = ToolController(canvas)
    tools.set_context(document, opened.image)
    tools.set_brush_radius(6)
    panel = TrainingPanel(session)
    panel.config_overrides = dict(config_overrides)
    panel.model_promoted.connect(session.set_model)
    layout.addWidget(canvas, 3)
    layout.addWidget(panel, 1)
    window.resize(1400, 900)
    window.show()

    canvas.fit()
    stamps: list[float] = []
    dabs: list[tuple[float, float]] = []  # (when, handler-to-painted seconds) of each dab
    tick = [0]
    h, w = opened.shape

    def paint():
        # a real stroke through the app's tools: press, 28 moves, release; then a synchronous repaint
        k = tick[0] = tick[0] + 1
        phase, stroke = k % 30, k // 30
        x = 8 + (phase * (w - 16)) / 30
        y = 8 + ((stroke * 23) % max(1, h - 16)) + 4 * np.sin(phase / 3)
        t0 = time.perf_counter()
        if phase == 0:
            tools.set_active_class(1 + stroke % (len(project.classes) - 1))
            tools.press(x, y)
        elif phase == 29:
            tools.release()
        else:
            tools.move(x, y)
        canvas.viewport().repaint()
        now = time.perf_counter()
        dabs.append((now, now - t0))
        stamps.append(now)

    timer = QTimer()
    timer.setInterval(frame_ms)
    timer.timeout.connect(paint)
    timer.start()

    def run_for(seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)

    prepare_for_training()  # what the window does in the background 3 s after start-up (WARM_UP_DELAY_MS)
    run_for(4.0)
    baseline = np.diff(stamps[len(stamps) // 4:]).tolist()  # skip start-up frames
    stamps.clear()
    marks: dict[str, float] = {}
    panel.model_promoted.connect(lambda *_: marks.setdefault("promoted", time.perf_counter()))
    panel.finished.connect(lambda *_: marks.setdefault("finished", time.perf_counter()))
    first_step = []

    def on_step(ev):
        if getattr(ev, "kind", "") == "step" and not first_step:
            first_step.append(time.perf_counter())

    t_click = time.perf_counter()
    panel.retrain_button.click()
    if panel._worker is not None:
        panel._worker.yielded.connect(on_step)
    while "finished" not in marks and time.perf_counter() - t_click < 600:
        app.processEvents()
        time.sleep(0.001)
    t_end = marks.get("finished", time.perf_counter())
    t_start = first_step[0] if first_step else t_click
    pairs = [(a, b) for a, b in zip(stamps, stamps[1:]) if a >= t_start and b <= t_end]
    dab_latency = [d for when, d in dabs if t_start <= when <= t_end]
    during = [b - a for a, b in pairs]
    whole = [b - a for a, b in zip(stamps, stamps[1:]) if a >= t_click and b <= t_end]
    timer.stop()
    result = panel._result
    window.close()
    app.processEvents()
    out = {
        "baseline_frames": _percentiles(baseline),
        "training_frames": _percentiles(during),  # first training step .. finished
        "training_dab_latency": _percentiles(dab_latency),  # tools handler -> canvas repainted
        "painted_px": int(np.count_nonzero(document.labels != BLANK)),  # the strokes really painted
        # when the longest frame ended, in seconds after the click (where to look for a hitch)
        "longest_frame_at_s": round(max(pairs, key=lambda p: p[1] - p[0])[1] - t_click, 2) if pairs else None,
        "click_to_finished_frames": _percentiles(whole),  # includes snapshot, spawn, evaluation
        "steps": len(panel._losses),
        "seconds_click_to_promoted": round(marks["promoted"] - t_click, 2) if "promoted" in marks else None,
        "seconds_click_to_finished": round(t_end - t_click, 2),
    }
    if isinstance(result, BaseException) or result is None:
        out["error"] = str(result)
    else:
        out["promoted"] = bool(result.decision and result.decision.promote)
        out["candidate"] = result.candidate
    base, dur = out["baseline_frames"].get("p95_ms"), out["training_frames"].get("p95_ms")
    if base and dur:
        out["p95_ratio_vs_idle"] = round(dur / base, 2)
    return out


def run(args) -> dict:
    import torch

    from seepview.core.model.checkpoint import load_checkpoint
    from seepview.core.retrain import RetrainConfig, evaluate

    if not (args.data / "images").is_dir():
        return {"skipped": f"data not found at {args.data}"}
    if not args.model.is_file():
        return {"skipped": f"model not found at {args.model} (give --model)"}
    if args.threads:
        torch.set_num_threads(args.threads)
    current = load_checkpoint(args.model)
    if args.replay:
        # the model records which scenes it trained on; tell it where they live (what `seepview train` should record)
        current.meta.training = {**current.meta.training,
                                 "data": {"images": str(args.data / "images"), "masks": str(args.data / "masks")}}
    result: dict = {"model": str(args.model), "data": str(args.data), "load_average": os.getloadavg(),
                    "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    scores = _scene_scores(args.data, current, args.scan_tiles, args.scene)
    result["scan_seconds"] = round(time.perf_counter() - t0, 1)
    eligible = {s: v for s, v in scores.items() if v["tiles"] >= args.corrections + 5}
    scene = args.scene or min(eligible, key=lambda s: eligible[s]["miou"] if eligible[s]["miou"] is not None else 1)
    result["scan_tiles_per_scene"] = args.scan_tiles or "all"
    result["scene_miou"] = {s: None if v["miou"] is None else round(v["miou"], 4) for s, v in scores.items()}
    names = scores[scene]["names"]
    rng = np.random.default_rng(args.seed)
    picked = sorted(rng.choice(len(names), size=args.corrections, replace=False).tolist())
    corrections = [names[i] for i in picked]
    test = [n for n in names if n not in set(corrections)]
    test_samples = _load_scene_samples(args.data, current, test)
    before = evaluate(current, test_samples)
    result.update({"scene": scene, "corrections": len(corrections), "test_tiles": len(test),
                   "trained_on_scene": scene in set((current.meta.training or {}).get("train_groups") or ()),
                   "test_miou_before": round(before["miou"], 4),
                   "test_binary_iou_before": round(before["binary_iou"], 4)})
    base = dict(budget=args.budget, seconds=args.seconds, replay=args.replay,
                batch_size=args.batch_size, patch=args.patch, device=args.device,
                seed=args.seed if args.train_seed is None else args.train_seed)
    for name in ("lr", "freeze_bn", "correction_weight", "class_weight_power", "rare_fraction"):  # None: RetrainConfig's
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)

    def test_after(candidate, promoted: bool) -> dict:
        chosen = candidate if promoted else current
        m = evaluate(chosen, test_samples)
        c = evaluate(candidate, test_samples) if candidate is not None else None
        return {"test_miou_after": round(m["miou"], 4), "test_binary_iou_after": round(m["binary_iou"], 4),
                "candidate_test_miou": None if c is None else round(c["miou"], 4),
                "candidate_test_binary_iou": None if c is None else round(c["binary_iou"], 4)}

    with tempfile.TemporaryDirectory(prefix="seepview-bench-retrain-") as tmp:
        for mode in args.modes:
            project = _make_project(Path(tmp) / mode, args.data, current, corrections)
            if mode == "headless":
                r = _headless(project, current, RetrainConfig(**base, threads=args.threads))
                o = r.pop("outcome")
                r.update({"promoted": o.decision.promote, "reason": o.decision.reason,
                          "val_miou_before": o.decision.miou_before, "val_miou_after": o.decision.miou_after,
                          "replay": o.stats.replay_note, "device": o.device,
                          "corrected_pixels": o.stats.corrected_pixels, "validation_images": o.stats.validation_images,
                          **test_after(o.candidate, o.decision.promote)})
            else:
                gui = {**base, "process": mode == "process"}
                if args.gui_threads:
                    gui["threads"] = args.gui_threads
                if args.gui_nice is not None:
                    gui["nice"] = args.gui_nice
                r = _gui(project, current, gui, args.frame_ms)
                r["threads"], r["nice"] = gui.get("threads", "panel default"), gui.get("nice", "panel default")
                candidate = r.pop("candidate", None)
                if candidate is not None:
                    r.update(test_after(candidate, r.get("promoted", False)))
            result[mode] = r
    return result
