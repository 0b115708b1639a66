"""Open an image in the review window: seconds to first display and to the prediction shown.

For each size, a synthetic uint16 SAR-like scene is written as a tiled TIFF into a temporary project.
The clock starts when the window is asked to open the image and stops (1) when the image and the
label overlay have been painted once, and (2) when the background prediction has been painted.
Baseline measured in the same run: ``tifffile.imread`` of the same file (the bare cost of reading
the pixels), so ``first_display / read`` says what the app adds on top of I/O.

The model is the shipped ``models/sar-seep.safetensors`` when present, else a randomly initialised
U-Net of the default architecture (same compute, meaningless output), reported as ``model``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192], help="square image sizes")
    parser.add_argument("--no-predict", action="store_true", help="only time the first display")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for a prediction")


def _scene(size: int, seed: int = 0) -> np.ndarray:
    """Speckled backscatter with wind streaks and a few dark slicks; cheap to make at 16384²."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 6 * np.pi, size, dtype=np.float32)[:, None]
    cols = np.linspace(0, 2 * np.pi, size, dtype=np.float32)[None, :]
    base = 20000 + 6000 * np.sin(rows + 0.5 * cols)
    speckle = rng.gamma(4.0, 0.25, (size, size)).astype(np.float32)
    image = base * speckle
    for _ in range(8):
        cy, cx = rng.integers(0, size, 2)
        r = max(8, size // 40)
        y0, y1, x0, x1 = max(0, cy - r), min(size, cy + r), max(0, cx - 3 * r), min(size, cx + 3 * r)
        image[y0:y1, x0:x1] *= 0.3
    return np.clip(image, 1, 65535).astype(np.uint16)


def _model(models_dir: Path):
    from seepview.core.classes import ClassTable
    from seepview.core.model.checkpoint import default_model_path, load_checkpoint, make_meta, save_checkpoint
    from seepview.core.model.normalize import SAR_NORMALIZATION
    from seepview.core.model.unet import UNet

    shipped = default_model_path("sar-seep")
    if shipped.is_file():
        return load_checkpoint(shipped), f"shipped {shipped.name}"
    model = UNet(1, 8)
    path = save_checkpoint(
        models_dir / "random.safetensors",
        model,
        make_meta(model, ClassTable.preset("sar-seep"), SAR_NORMALIZATION, name="random"),
    )
    return load_checkpoint(path), "random-init UNet(1, 8) default architecture (no shipped model yet)"


def run(args) -> dict:
    import tifffile
    from PySide6.QtWidgets import QApplication

    from seepview.core.project import Project
    from seepview.core.session import ReviewSession
    from seepview.qt.app import make_application, prepare_qt
    from seepview.qt.main_window import MainWindow

    prepare_qt(offscreen=True)
    app = make_application()
    results = []
    model_note = None
    with tempfile.TemporaryDirectory(prefix="seepview-bench-open-") as tmp:
        tmp = Path(tmp)
        checkpoint = None
        if not args.no_predict:
            checkpoint, model_note = _model(tmp)
        for size in args.sizes:
            path = tmp / f"bench.{size}.tif"
            tifffile.imwrite(path, _scene(size), tile=(512, 512), compression="zlib")
            t = time.perf_counter()
            tifffile.imread(path)
            read_s = time.perf_counter() - t

            project = Project.create(tmp / f"project-{size}", "sar-seep")
            # A small placeholder is opened first, so the timed open is a real switch between images.
            placeholder = tmp / f"placeholder.{size}.tif"
            tifffile.imwrite(placeholder, np.ones((64, 64), np.uint16))
            first = project.add_image(placeholder)
            entry = project.add_image(path)
            session = ReviewSession(project, checkpoint, load_model=checkpoint is not None)
            window = MainWindow(session)
            window.resize(1400, 900)
            window.show()
            while session.current is None or session.current.entry.id != first.id:
                app.processEvents()
            window._cancel_prediction()
            window.workers.shutdown()

            shown: dict = {}
            window.prediction_shown.connect(lambda image_id, d=shown: d.setdefault(image_id, time.perf_counter()))
            window.prediction_failed.connect(lambda message, d=shown: d.setdefault("error", message))
            t0, cpu0 = time.perf_counter(), time.process_time()
            window.open_image(entry.id)
            window.canvas.viewport().repaint()
            first_display_s = time.perf_counter() - t0
            prediction_s = prediction_cpu_s = None
            if checkpoint is not None:
                deadline = time.perf_counter() + args.timeout
                while not shown and time.perf_counter() < deadline:
                    app.processEvents()
                    time.sleep(0.002)
                if "error" in shown:
                    raise RuntimeError(f"prediction failed: {shown['error']}")
                if entry.id in shown:
                    window.canvas.viewport().repaint()
                    prediction_s = time.perf_counter() - t0
                    prediction_cpu_s = time.process_time() - cpu0
            results.append(
                {
                    "size": size,
                    "read_s": round(read_s, 3),
                    "first_display_s": round(first_display_s, 3),
                    "first_display_vs_read": round(first_display_s / read_s, 2),
                    "prediction_shown_s": None if prediction_s is None else round(prediction_s, 2),
                    # CPU seconds of the whole process (all threads) until then: comparable on a
                    # shared machine where wall time depends on the neighbours' load.
                    "prediction_cpu_s": None if prediction_cpu_s is None else round(prediction_cpu_s, 1),
                    "load_average_1m": round(os.getloadavg()[0], 2),
                }
            )
            window.close()
            window.deleteLater()
            QApplication.processEvents()
    return {"model": model_note, "results": results}
