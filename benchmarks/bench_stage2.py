"""Stage 2 (typer + scene adaptation) of a whole scene: seconds and peak memory, streamed against in memory.

A mosaic of real cgg-seep tiles (default 8192 x 8192, just above ``REFINE_MAX_PIXELS``; tiles drawn at
random, a no-data wedge) is written as a tiled uint16 TIFF. Each measurement runs in a fresh child process,
so its peak RSS (``VmHWM``) is its own:

- ``imports``: the child imports torch and seepview's model code and loads the shipped model (the floor);
- ``network``: the shipped U-Net over the scene (``Predictor._stream``), labels to a memory map and the
  uint8 probabilities to a scratch file: the work before stage 2, for scale;
- ``streamed``: stage 2 as the Predictor now runs it above 64 Mpx (``refine_streamed``: row bands, blob
  windows, scratch files);
- ``in_memory`` (the baseline, same run): stage 2 as it runs for smaller images, which is what any
  implementation that holds the scene does (``adapt.refine`` on the whole image: probabilities, image and
  component map in memory). Both stage-2 children start from the same network output and must give the
  same labels (``identical``).

The shipped model carries its typer; ``--adaptation`` adds a scene adaptation (the class mix and the pixel
head, the costliest kind) so every step of stage 2 runs.

``--huge-blob PX``: after the network, a diagonal slick PX pixels thick is painted into its labels from
corner to corner, not on no-data (what low wind over a whole scene can look like to the network); the
mosaic's empty tiles can cut it, so ``huge_blob`` reports the largest piece's bounding box (400 px keeps it
whole: wider than a tile). ``streamed_unbanded`` (same run) is streamed stage 2 measuring it on its box, as it
did before ``blob_bands``; ``streamed`` measures it band by band.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
DATA = REPO.parent / "shared" / "data" / "cgg-seep"
MODEL = REPO / "models" / "sar-seep.safetensors"


def add_arguments(parser) -> None:
    parser.add_argument("--size", type=int, default=8192, help="height of the mosaic (pixels)")
    parser.add_argument("--width", type=int, default=None, help="width of the mosaic (default: --size)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--adaptation", action="store_true", help="add a head+prior scene adaptation")
    parser.add_argument("--no-baseline", action="store_true", help="skip the in-memory stage 2")
    parser.add_argument("--huge-blob", type=int, default=0, metavar="PX",
                        help="paint a corner-to-corner slick PX thick into the network's labels (one huge blob)")


def _make_scene(root: Path, size: int, data: Path, width: int | None = None) -> None:
    import tifffile

    files = sorted((data / "images").glob("*.tif"))
    if not files:
        raise SystemExit(f"no cgg-seep tiles in {data / 'images'}")
    rng = np.random.default_rng(0)
    width = width or size
    ny, nx = -(-size // 256), -(-width // 256)
    scene = np.zeros((ny * 256, nx * 256), np.uint16)
    for r in range(ny):
        for c in range(nx):
            scene[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = tifffile.imread(files[rng.integers(len(files))])
    scene = scene[:size, :width]
    cols = np.arange(width)[None, :]
    for y0 in range(0, size, 1024):  # the no-data wedge of a scene's edge
        rows = np.arange(y0, min(size, y0 + 1024))[:, None]
        scene[y0 : y0 + len(rows)][cols < rows * 0.1] = 0
    tifffile.imwrite(root / "scene.tif", scene, tile=(256, 256))


def _paint_slick(root: Path, height: int, width: int, thick: int) -> dict:
    """A slick ``thick`` px across from the top-left to the bottom-right corner, class 1, into the network's
    labels (not on no-data): one 8-connected blob whose box is the whole scene."""
    import tifffile

    labels = np.memmap(root / "labels-network.u8", np.uint8, "r+", shape=(height, width))
    scene = tifffile.imread(root / "scene.tif")
    cols = np.arange(width)[None, :]
    painted = 0
    for y0 in range(0, height, 512):
        rows = np.arange(y0, min(height, y0 + 512))[:, None]
        on = (np.abs(cols - rows * (width / height)) < thick / 2) & (scene[y0 : y0 + len(rows)] > 0)
        labels[y0 : y0 + len(rows)][on] = 1
        painted += int(on.sum())
    labels.flush()
    # what stage 2 will see: the 8-connected blob holding most of the slick (empty tiles of the mosaic are
    # no-data and can cut a thin slick in pieces), with the network's own seeps that touch it
    from scipy import ndimage

    comp, _n = ndimage.label(np.asarray(labels) > 0, structure=np.ones((3, 3), bool))
    band = np.abs(np.arange(width)[None, :] - np.arange(height)[:, None] * (width / height)) < thick / 2
    ids, counts = np.unique(comp[band & (comp > 0)], return_counts=True)
    main = int(ids[counts.argmax()])
    box = ndimage.find_objects((comp == main).astype(np.uint8))[0]
    pieces = int((counts > 1000).sum())
    del comp, band
    return {"thick_px": thick, "pixels": painted, "pieces_over_1000_px": pieces,
            "largest_box": [box[0].start, box[1].start, box[0].stop, box[1].stop],
            "largest_box_mpx": round((box[0].stop - box[0].start) * (box[1].stop - box[1].start) / 1e6, 1),
            "largest_share_of_slick": round(float(counts.max() / counts.sum()), 3)}


def _checkpoint(adaptation: bool, plain: bool = False):
    from seepview.core.adapt import Adaptation, with_adaptation
    from seepview.core.model.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(MODEL)
    if plain:
        checkpoint.meta.typer, checkpoint.meta.adaptation = {}, None
    elif adaptation:  # a head+prior adaptation of plausible size: every step of stage 2 runs
        checkpoint.meta.adaptation = with_adaptation(None, Adaptation(
            kind="head+prior", tiles=20, prior=[1.0, 0.6, 1.4, 0.8, 0.8, 2.0, 1.2, 0.8],
            head={"coef": [1.0, 1.5, -0.8, -0.4, 0.2, -0.1], "intercept": -0.3}))  # fmt: skip
    return checkpoint


def _child(kind: str, root: Path, adaptation: bool) -> dict:
    """Runs in the child process: one measurement."""
    from seepview.core.imageio import open_image
    from seepview.core.model.infer import Predictor
    from seepview.core.refine_streamed import ProbabilityFile

    checkpoint = _checkpoint(adaptation, plain=kind == "network")
    predictor = Predictor(checkpoint, compile=False)
    out: dict = {}
    start = time.perf_counter()
    if kind != "imports":
        source = open_image(root / "scene.tif")
        shape = tuple(int(v) for v in source.shape)
        k = predictor.num_classes
        create = kind == "network"
        labels = np.memmap(root / f"labels-{kind}.u8", np.uint8, "w+" if create else "r+", shape=shape)
        probs = ProbabilityFile(root / "probs.u8", k, shape, create=create)
        if kind == "network":
            predictor._stream(source, labels, None, None, None, None, None, None, probs)
        elif kind in ("streamed", "streamed_unbanded"):
            if kind == "streamed_unbanded":
                import seepview.core.model.blob_bands as blob_bands

                blob_bands.BANDED_WINDOW = 1 << 62  # every blob on its window, as before blob_bands
            predictor._refine_streamed(source, source, labels, probs, None, None)
        elif kind == "in_memory":
            predictor._refine(source, source, labels, probs.read_band(0, shape[0]), None)
        labels.flush()
        probs.close()
        out["seep_pixels"] = int(np.count_nonzero(labels))
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["read_mb"] = _read_mb()
    return out


def _read_mb() -> float:
    """Bytes this process read through system calls (``rchar``: the scratch files, the image, the model)."""
    with open("/proc/self/io", encoding="ascii") as fh:
        return round(next(int(line.split()[1]) for line in fh if line.startswith("rchar:")) / 2**20, 1)


def _peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    return round(kb / 1024, 1)


def _measure(kind: str, root: Path, adaptation: bool) -> dict:
    proc = subprocess.run([sys.executable, str(HERE), "--child", kind, str(root), str(int(adaptation))],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="seepview-bench-stage2-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        _make_scene(root, args.size, args.data, args.width)
        width = args.width or args.size
        result = {
            "scene": f"{width} x {args.size} uint16 mosaic of random cgg-seep tiles, a no-data wedge",
            "scratch_mb": round((8 + 4) * width * args.size / 2**20, 1),  # K = 8 probabilities + component ids
            "adaptation": "head+prior" if args.adaptation else "none (the shipped typer only)",
            "setup_seconds": round(time.perf_counter() - start, 1),
            "imports": _measure("imports", root, args.adaptation),
            "network": _measure("network", root, args.adaptation),
        }
        kinds = ["streamed"] + (["streamed_unbanded"] if args.huge_blob else []) + ([] if args.no_baseline
                                                                                     else ["in_memory"])
        if args.huge_blob:
            result["huge_blob"] = _paint_slick(root, args.size, width, args.huge_blob)
        for kind in kinds:
            shutil.copyfile(root / "labels-network.u8", root / f"labels-{kind}.u8")
            result[kind] = _measure(kind, root, args.adaptation)
        floor = result["imports"]["peak_rss_mb"]
        result["rss_above_imports_mb"] = {k: round(result[k]["peak_rss_mb"] - floor, 1)
                                          for k in ("network", *kinds)}
        others = [k for k in kinds if k != "streamed"]
        a = np.fromfile(root / "labels-streamed.u8", np.uint8)
        for kind in others:
            b = np.fromfile(root / f"labels-{kind}.u8", np.uint8)
            result[f"identical_to_{kind}"] = bool(np.array_equal(a, b))
            result[f"differing_pixels_{kind}"] = int(np.count_nonzero(a != b))
        if not args.no_baseline:
            result["identical"] = result["identical_to_in_memory"]
            above = result["rss_above_imports_mb"]
            result["in_memory_over_streamed_rss"] = round(above["in_memory"] / max(above["streamed"], 1.0), 2)
            result["streamed_over_in_memory_seconds"] = round(
                result["streamed"]["seconds"] / max(result["in_memory"]["seconds"], 0.01), 2)
        result["streamed_over_network_seconds"] = round(
            result["streamed"]["seconds"] / max(result["network"]["seconds"], 0.01), 2)
    return result


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--child":
    sys.path.insert(0, str(REPO))
    print(json.dumps(_child(sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1")))
