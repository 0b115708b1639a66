"""Tiled sliding-window inference with smooth blending, batched tiles and bounded memory.

A scene is cut into ``tile``-sized windows overlapping by ``overlap`` pixels. Each tile's softmax is
weighted by a window that is 1 in the middle and falls off with a raised cosine across the overlap, so
tile seams (where a tile saw the least context) count least and blend without visible steps.

Whole scenes stream: rows of tiles are processed in groups (as many as fill a batch), only that
group's float accumulators exist at any time, and finished rows are written as uint8 labels and
confidence straight into the caller's outputs (arrays, ``np.memmap`` or ``tifffile.memmap``). Float
probabilities for the whole scene are never held. Normalisation constants are fitted once per scene.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from seepview.core.errors import Cancelled, ModelError
from seepview.core.imageio import ImageSource
from seepview.core.model.checkpoint import Checkpoint
from seepview.core.model.normalize import fit_normalization, is_fitted, match_channels, normalize
from seepview.core.nodata import nodata_mask
from seepview.core.nodata import nodata_value as nodata_value_of

CancelFn = Callable[[], bool]
ProgressFn = Callable[[int, int], None]

log = logging.getLogger(__name__)

# With ``compile=None`` a Predictor compiles once one call has at least this many tiles: compiling costs
# 5-20 s on 2 CPU cores (less with inductor's on-disk cache) and saves ~15 % per tile, so it pays off
# for scenes (a 10000² scene is ~2000 tiles), not for single 256² tiles.
AUTO_COMPILE_TILES = 400

# Tiles per forward pass when the caller does not say. On CPU small batches win: a batch of 16 256² tiles
# at width 16 holds 64 MB per activation and falls out of cache (measured 2 cores: batch 4 runs 1.3x
# batch 16, see docs/benchmarks.md); GPUs want big batches.
CPU_BATCH, GPU_BATCH = 4, 16

# A checkpoint with a typer (stage 2) or scene adaptation re-types whole blobs, which needs the image's
# class probabilities (uint8, K bytes a pixel) and a component map: images up to this size get them in
# memory, larger ones (whole scenes) stream them through scratch files (``seepview.core.refine_streamed``).
REFINE_MAX_PIXELS = 64_000_000


def _scratch_error(source, folder: str, exc: OSError) -> ModelError:
    reason = exc.strerror or str(exc)
    return ModelError(getattr(source, "path", None),
                      f"the scratch files for typing this image's slicks in {os.path.dirname(folder)} failed: {reason}")


class _Phases:
    """One ``progress(done, total)`` over the network's tiles and then streamed stage 2, each given the
    tiles' count of steps (measured: stage 2 of a whole scene takes 0.5-1x the network's time on a CPU)."""

    def __init__(self, progress: ProgressFn | None, phases: int):
        self.progress, self.phases, self.tiles, self.shown = progress, phases, 0, 0

    def network(self, done: int, total: int) -> None:
        self.tiles = total
        self._show(done)

    def stage2(self, done: int, total: int) -> None:
        self._show(self.tiles + (self.tiles * done) // max(1, total))

    def _show(self, done: int) -> None:
        if self.progress is not None:
            self.shown = max(self.shown, done)
            self.progress(self.shown, self.tiles * self.phases)


class _Probabilities(torch.nn.Module):
    """The network plus softmax in one module, so a compiled graph fuses the softmax (and the copy back
    to NCHW that the per-tile accumulation wants: it reads each class plane) into the head."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x).float(), dim=1).contiguous()


@dataclass
class Prediction:
    """``labels``: uint8 class ids (H, W); ``confidence``: uint8 max probability × 255 (H, W);
    ``uncertainty``: uint8 (1 − margin between the two most likely classes) × 255 (H, W), or None."""

    labels: np.ndarray
    confidence: np.ndarray
    uncertainty: np.ndarray | None = None


def margin_uncertainty(acc: torch.Tensor, wsum: torch.Tensor) -> torch.Tensor:
    """uint8 (1 − (p1 − p2)) × 255 from weighted class sums (K, h, W) and weight sums (h, W).

    The margin, not 1 − max: a pixel split 0.5/0.5 between two seep types is as unsure as one split
    between seep and sea, and a near-uniform spread over many classes still counts as unsure.
    """
    if acc.shape[0] < 2:
        return torch.zeros(acc.shape[1:], dtype=torch.uint8, device=acc.device)
    two = torch.topk(acc, 2, dim=0).values
    margin = (two[0] - two[1]).div_(wsum)
    return margin.neg_().add_(1.0).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)


def _force_background(acc: torch.Tensor, wsum: torch.Tensor, nodata: torch.Tensor) -> None:
    """No-data pixels are never a seep: probability 1 for background (class 0), so labels 0, confidence
    255 and no uncertainty. Certain rather than unsure on purpose: review queues that rank by
    uncertainty must not send the analyst to no-data wedges."""
    acc[:, nodata] = 0.0
    acc[0][nodata] = wsum[nodata]


def select_device(pref: str | torch.device | None = None) -> torch.device:
    """``pref`` ("cpu", "cuda", "cuda:1", "mps") if usable, else the best available: CUDA, MPS, CPU."""
    if pref is not None and str(pref) != "auto":
        try:
            device = torch.device(pref)
        except RuntimeError:  # torch's reason lists a dozen device types seepview never runs on
            raise ModelError(None, f"unknown device {pref!r}: use cpu, cuda, cuda:N (a GPU's number) or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(None, f"device {pref!r} requested but CUDA is not available")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(
                None, f"device {pref!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ModelError(None, f"device {pref!r} requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``0..length``; the last tile is flush with the end."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_window(height: int, width: int, overlap: int) -> np.ndarray:
    """(height, width) float32 weights: 1 inside, raised-cosine ramp over ``overlap`` px at each edge.

    Strictly positive everywhere, so every pixel of a covered image has a non-zero weight sum.
    """

    def ramp(n: int) -> np.ndarray:
        w = np.ones(n, np.float64)
        r = min(overlap, n // 2)
        if r > 0:
            edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(r) + 0.5) / r)  # (0, 1), never 0
            w[:r] = edge
            w[n - r :] = edge[::-1]
        return w

    return np.outer(ramp(height), ramp(width)).astype(np.float32)


def inference_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """An eval-mode copy of ``model`` for inference: BatchNorm folded into the preceding conv, channels_last.

    Folding removes one full memory pass per conv and channels_last suits oneDNN/cuDNN kernels; together
    about 2x faster on CPU at width 16 (see benchmarks/bench_inference.py). The caller's model is untouched.
    """
    model = copy.deepcopy(model).to(device).eval()
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        layers = list(seq.children())
        fused: list[torch.nn.Module] = []
        i = 0
        while i < len(layers):
            conv, nxt = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(conv, torch.nn.Conv2d) and isinstance(nxt, torch.nn.BatchNorm2d):
                fused.append(fuse_conv_bn_eval(conv, nxt))
                i += 2
            else:
                fused.append(conv)
                i += 1
        if len(fused) != len(layers):
            for name in list(seq._modules):
                del seq._modules[name]
            for j, layer in enumerate(fused):
                seq.add_module(str(j), layer)
    if device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model


class _ArraySource:
    """An in-memory image with the ``ImageSource`` region-read interface."""

    def __init__(self, array: np.ndarray):
        array = np.asarray(array)
        if array.ndim not in (2, 3) or array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"expected an image (H, W) or (H, W, C), got shape {array.shape}")
        self.array = array
        self.shape = array.shape[:2]
        self.channels = 1 if array.ndim == 2 else array.shape[2]
        self.path = None

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.array[y0:y1, x0:x1]


def _as_source(image) -> tuple[ImageSource | _ArraySource, ImageSource | np.ndarray]:
    """(region reader, what normalisation is fitted on) for an ImageSource or an array."""
    if isinstance(image, ImageSource):
        return image, image
    array = np.asarray(image)
    return _ArraySource(array), array



_COMPILER_LOCK = threading.Lock()


def import_compiler() -> None:
    """Import ``torch._dynamo`` and inductor under one process-wide lock.

    A whole-scene prediction compiles in one worker thread while training's warm-up (its optimiser needs
    ``torch._dynamo``) may run in another; two threads importing that package at once leave it
    "partially initialized" for one of them. Every seepview import of it goes through here.
    """
    with _COMPILER_LOCK:
        import torch._dynamo  # noqa: F401
        import torch._inductor.config  # noqa: F401


class Predictor:
    """Runs a checkpoint over images of any size. One instance can serve many images.

    ``tile`` / ``overlap`` / ``batch_size`` trade speed for memory; ``batch_size=None`` picks the device's
    faster size (``CPU_BATCH`` / ``GPU_BATCH``).
    ``compile``: True compiles the network with ``torch.compile`` (inductor, frozen weights) on first
    use; None (default) does so only for calls of at least ``AUTO_COMPILE_TILES`` tiles; False never.
    If compiling fails (no C compiler, an unsupported platform) it logs a warning and stays eager.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        device: str | torch.device | None = None,
        tile: int = 256,
        overlap: int = 32,
        batch_size: int | None = None,
        compile: bool | None = None,
    ):
        self.device = select_device(device)
        if batch_size is None:
            batch_size = CPU_BATCH if self.device.type == "cpu" else GPU_BATCH
        if tile < 1 or overlap < 0 or overlap >= tile or batch_size < 1:
            raise ValueError(
                f"need tile >= 1, 0 <= overlap < tile, batch_size >= 1 (got {tile}, {overlap}, {batch_size})"
            )
        self.checkpoint = checkpoint
        self.tile, self.overlap, self.batch_size = int(tile), int(overlap), int(batch_size)
        # A snapshot: rebuild the Predictor after changing the checkpoint's weights.
        self.model = inference_model(checkpoint.model, self.device)
        self._probs = _Probabilities(self.model)
        self._compile = compile
        self._compiled: torch.nn.Module | None = None
        self.in_channels = int(checkpoint.model.in_channels)
        self.num_classes = int(checkpoint.model.num_classes)
        self.normalization = dict(checkpoint.meta.normalization)
        self._windows: dict[tuple[int, int], torch.Tensor] = {}

    # --- public API --------------------------------------------------------------------------------
    def fit(self, image) -> dict:
        """The normalisation constants for ``image`` (fitted once; pass them on for its regions)."""
        _, target = _as_source(image)
        return fit_normalization(target, self.normalization)

    def predict(
        self,
        image,
        cancel: CancelFn | None = None,
        progress: ProgressFn | None = None,
        normalization: dict | None = None,
        edges: dict | None = None,
    ) -> Prediction:
        """Labels and confidence for a whole image (array (H, W[, C]) or ImageSource), in memory.

        ``edges``: reviewed neighbours' labels along this tile's edges (``scene_grid.edge_labels``)."""
        source, _ = _as_source(image)
        h, w = source.shape
        labels = np.empty((h, w), np.uint8)
        confidence = np.empty((h, w), np.uint8)
        uncertainty = np.empty((h, w), np.uint8)
        self.predict_to(
            image, labels, confidence, cancel=cancel, progress=progress, normalization=normalization,
            uncertainty_out=uncertainty, edges=edges,
        )
        return Prediction(labels, confidence, uncertainty)

    def predict_to(
        self,
        image,
        labels_out,
        confidence_out=None,
        cancel: CancelFn | None = None,
        progress: ProgressFn | None = None,
        normalization: dict | None = None,
        uncertainty_out=None,
        edges: dict | None = None,
        scratch: str | os.PathLike | None = None,
    ) -> None:
        """Stream a (possibly huge) image into uint8 ``labels_out`` / ``confidence_out`` (H, W) arrays
        (and ``uncertainty_out``: see ``margin_uncertainty``). ``edges``: as in ``predict``.

        Outputs may be memory maps; rows are written as soon as no later tile touches them. Peak memory
        is one group of tile rows (about ``batch_size`` tiles plus a row band) of floats. Stage 2 of an
        image above ``REFINE_MAX_PIXELS`` runs on scratch files in ``scratch`` (default: the system's
        temporary folder), K + 4 bytes a pixel, removed afterwards.
        """
        source, _ = _as_source(image)
        shape = tuple(source.shape)
        outs = (("labels_out", labels_out), ("confidence_out", confidence_out), ("uncertainty_out", uncertainty_out))
        for name, out in outs:
            if out is not None and tuple(out.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(out.shape)}, the image is {shape}")
        refine = bool(self.checkpoint.meta.typer or self.checkpoint.meta.adaptation or edges)
        streamed = refine and shape[0] * shape[1] > REFINE_MAX_PIXELS
        phases = _Phases(progress, 2 if streamed else 1)  # streamed stage 2 takes about as long as the network
        with contextlib.ExitStack() as stack:
            probs_file = self._scratch(stack, source, shape, scratch) if streamed else None
            probs8 = np.empty((self.num_classes, *shape), np.uint8) if refine and not streamed else None
            try:
                self._stream(image, labels_out, confidence_out, uncertainty_out, cancel, phases.network,
                             normalization, probs8, probs_file)
                if probs8 is not None:
                    self._refine(image, source, labels_out, probs8, normalization, edges)
                elif probs_file is not None:
                    if edges:
                        log.info("reviewed-neighbour edges apply to scene-grid tiles, not to a %d px image",
                                 shape[0] * shape[1])
                    self._refine_streamed(image, source, labels_out, probs_file, normalization, cancel,
                                          phases.stage2)
            except OSError as exc:
                folder = os.path.dirname(probs_file.path) if probs_file is not None else None
                if folder is None or not str(exc.filename or "").startswith(folder):
                    raise  # not the scratch files: the image or an output (reported as such by the caller)
                raise _scratch_error(source, folder, exc) from None

    def _scratch(self, stack: contextlib.ExitStack, source, shape, scratch):
        """The scratch folder and probability file for streamed stage 2, after checking there is room."""
        from seepview.core.refine_streamed import ProbabilityFile, scratch_bytes

        folder = stack.enter_context(tempfile.TemporaryDirectory(dir=scratch, prefix=".seepview-stage2-"))
        need, free = scratch_bytes(self.num_classes, shape), shutil.disk_usage(folder).free
        if free < need:
            raise ModelError(getattr(source, "path", None),
                             f"typing the slicks of this {shape[1]} x {shape[0]} image needs {need / 1e9:.1f} GB of "
                             f"scratch disk in {os.path.dirname(folder)}, which has {free / 1e9:.1f} GB free; free "
                             "some space there" + ("" if scratch else " or set TMPDIR to a larger disk"))
        try:
            probs = ProbabilityFile(os.path.join(folder, "probabilities.u8"), self.num_classes, shape)
        except OSError as exc:
            raise _scratch_error(source, folder, exc) from None
        stack.callback(probs.close)
        return probs

    def _stream(self, image, labels_out, confidence_out, uncertainty_out, cancel, progress, normalization,
                probs8, probs_file) -> None:
        for y0, y1, acc, wsum in self._row_bands(image, cancel, progress, normalization):
            if probs8 is not None or probs_file is not None:
                p8 = (acc / wsum).mul_(255.0).round_().to(torch.uint8).cpu().numpy()
                if probs8 is not None:
                    probs8[:, y0:y1] = p8
                else:
                    probs_file.write_band(y0, p8)
            # The weight sum is one positive number per pixel, so argmax/max need no full division.
            top, labels = torch.max(acc, dim=0)
            labels_out[y0:y1] = labels.to(torch.uint8).cpu().numpy()
            if confidence_out is not None:
                top = top.div_(wsum).mul_(255.0).round_()
                confidence_out[y0:y1] = top.to(torch.uint8).cpu().numpy()
            if uncertainty_out is not None:
                uncertainty_out[y0:y1] = margin_uncertainty(acc, wsum).cpu().numpy()

    def _stage2_inputs(self, image, source, normalization: dict | None):
        """(path, normalisation spec, no-data value, scene) that stage 2 reads the image with."""
        path = getattr(source, "path", None)
        spec = normalization if normalization is not None else self.normalization
        if not is_fitted(spec):
            spec = fit_normalization(_as_source(image)[1], spec)
        nd_value = nodata_value_of(source if isinstance(source, ImageSource) else None, spec)
        scene = None
        if path is not None:
            from seepview.core.project import group_of

            scene = group_of(path)
        return path, spec, nd_value, scene

    def _refine(self, image, source, labels_out, probs8: np.ndarray, normalization: dict | None,
                edges: dict | None = None) -> None:
        """Stage 2: the checkpoint's typer (and scene adaptation) re-types the finished labels in place."""
        from seepview.core.adapt import refine

        path, spec, nd_value, scene = self._stage2_inputs(image, source, normalization)
        h, w = (int(v) for v in source.shape)
        region = match_channels(source.read(0, h, 0, w), self.in_channels, path)
        nodata = nodata_mask(region, nd_value)
        labels_out[:] = refine(self.checkpoint.meta, np.asarray(labels_out), normalize(region, spec), probs8, nodata,
                               scene=scene, edges=edges)

    def _refine_streamed(self, image, source, labels_out, probs_file, normalization: dict | None, cancel,
                         progress=None) -> None:
        """Stage 2 of a large image, in row bands and blob windows (``seepview.core.refine_streamed``)."""
        from seepview.core.refine_streamed import refine_streamed

        path, spec, nd_value, scene = self._stage2_inputs(image, source, normalization)

        def read(y0: int, y1: int, x0: int, x1: int):
            region = match_channels(source.read(y0, y1, x0, x1), self.in_channels, path)
            return normalize(region, spec), nodata_mask(region, nd_value)

        refine_streamed(self.checkpoint.meta, labels_out, probs_file, read, os.path.dirname(probs_file.path),
                        scene=scene, cancel=cancel, progress=progress)

    def predict_probs8(self, image, normalization: dict | None = None, cancel: CancelFn | None = None,
                       progress: ProgressFn | None = None) -> np.ndarray:
        """uint8 class probabilities × 255 (K, H, W), as stage 2 and scene adaptation read them: K bytes a
        pixel, never a float copy of the whole image (``predict_proba`` holds 4K)."""
        source, _ = _as_source(image)
        h, w = source.shape
        out = np.empty((self.num_classes, h, w), np.uint8)
        for y0, y1, acc, wsum in self._row_bands(image, cancel, progress, normalization):
            out[:, y0:y1] = (acc / wsum).mul_(255.0).round_().to(torch.uint8).cpu().numpy()
        return out

    def predict_labels_probs8(self, image, normalization: dict | None = None, cancel: CancelFn | None = None,
                              progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(labels, uint8 probabilities × 255): the labels as ``predict`` gives them before stage 2 (the
        argmax of the float probabilities; the rounded ones tie where classes are close, and their argmax
        then differs), with what stage 2 reads. Scene adaptation uses both, so "no adaptation" out-of-fold
        is what the app showed."""
        source, _ = _as_source(image)
        h, w = source.shape
        labels = np.empty((h, w), np.uint8)
        probs8 = np.empty((self.num_classes, h, w), np.uint8)
        self._stream(image, labels, None, None, cancel, progress, normalization, probs8, None)
        return labels, probs8

    def predict_proba(
        self,
        array,
        normalization: dict | None = None,
        cancel: CancelFn | None = None,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Per-class probabilities float32 (K, H, W) for a region (memory grows with its area).

        For a region cut from a larger scene pass ``normalization=predictor.fit(scene)`` so the region
        is stretched like the rest of the scene.
        """
        source, _ = _as_source(array)
        h, w = source.shape
        out = np.empty((self.num_classes, h, w), np.float32)
        for y0, y1, acc, wsum in self._row_bands(array, cancel, progress, normalization):
            out[:, y0:y1] = (acc / wsum).cpu().numpy()
        return out

    # --- machinery ---------------------------------------------------------------------------------
    def _window(self, th: int, tw: int) -> torch.Tensor:
        key = (th, tw)
        if key not in self._windows:
            self._windows[key] = torch.from_numpy(blend_window(th, tw, self.overlap)).to(self.device)
        return self._windows[key]

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def compiled(self) -> bool:
        """Whether tiles now run through the compiled network."""
        return self._compiled is not None

    def _maybe_compile(self, total_tiles: int) -> None:
        wanted = self._compile if self._compile is not None else total_tiles >= AUTO_COMPILE_TILES
        if not wanted or self._compiled is not None or self.device.type not in ("cpu", "cuda"):
            return
        try:
            import_compiler()
            # Frozen weights let inductor pre-pack them for oneDNN/cuDNN; static shapes (batches are
            # padded to batch_size) keep it to one graph per tile size.
            self._compiled = torch.compile(self._probs, dynamic=False, options={"freezing": True})
        except Exception as exc:  # noqa: BLE001 - any backend failure means: stay eager
            self._compile_failed(exc)

    def _compile_failed(self, exc: BaseException) -> None:
        log.warning("torch.compile unavailable (%s: %s); running the model eagerly", type(exc).__name__, exc)
        self._compiled = None
        self._compile = False

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        n = len(batch)
        if self._compiled is not None and n < self.batch_size:
            # Pad the last batch so the compiled graph sees one static shape.
            pad = np.zeros((self.batch_size - n, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            if self._compiled is not None:
                try:
                    probs = self._compiled(x)
                except Exception as exc:  # noqa: BLE001 - compilation happens lazily, on the first call
                    self._compile_failed(exc)
                    probs = self._probs(x)
            else:
                probs = self._probs(x)
        return probs[:n]

    def _row_bands(
        self,
        image,
        cancel: CancelFn | None,
        progress: ProgressFn | None,
        normalization: dict | None,
    ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """Yield (y0, y1, weighted sums (K, h, W), weight sums (h, W)) for finished row bands, top to bottom.

        Probabilities are ``sums / weights``. Both are views of reused buffers: use them before resuming.
        """
        source, fit_target = _as_source(image)
        path = getattr(source, "path", None)
        h, w = (int(v) for v in source.shape)
        # A 1-pixel read checks the channel layout before any heavy work.
        match_channels(source.read(0, 1, 0, 1), self.in_channels, path)
        spec = normalization if normalization is not None else self.normalization
        if not is_fitted(spec):
            spec = fit_normalization(fit_target, spec)
        nd_value = nodata_value_of(source if isinstance(source, ImageSource) else None, spec)

        th, tw = min(self.tile, h), min(self.tile, w)
        ys, xs = tile_starts(h, th, self.overlap), tile_starts(w, tw, self.overlap)
        total = len(ys) * len(xs)
        self._maybe_compile(total)
        # Enough tile rows per group to fill a batch (small images), at least one (wide scenes).
        rows_per_group = max(1, math.ceil(self.batch_size / len(xs)))
        k = self.num_classes
        window = self._window(th, tw)
        max_span = min(h, (rows_per_group - 1) * max(1, th - self.overlap) + th)
        acc = torch.zeros((k, max_span, w), dtype=torch.float32, device=self.device)
        wsum = torch.zeros((max_span, w), dtype=torch.float32, device=self.device)
        done = 0
        if progress is not None:
            progress(0, total)
        with torch.inference_mode():
            for g0 in range(0, len(ys), rows_per_group):
                rows = ys[g0 : g0 + rows_per_group]
                a0, a1 = rows[0], rows[-1] + th
                region = match_channels(source.read(a0, a1, 0, w), self.in_channels, path)
                chw = normalize(region, spec)
                nodata = nodata_mask(region, nd_value)
                if chw.shape[1:] != (a1 - a0, w):
                    raise ModelError(path, f"region read returned {chw.shape[1:]}, expected {(a1 - a0, w)}")
                positions = [(y - a0, x) for y in rows for x in xs]
                for b0 in range(0, len(positions), self.batch_size):
                    if cancel is not None and cancel():
                        raise Cancelled(path)
                    chunk = positions[b0 : b0 + self.batch_size]
                    batch = np.stack([chw[:, y : y + th, x : x + tw] for y, x in chunk])
                    probs = self._forward(batch)
                    for (y, x), p in zip(chunk, probs):
                        acc[:, y : y + th, x : x + tw].addcmul_(p, window)  # one pass: += p * window
                        wsum[y : y + th, x : x + tw] += window
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                # Rows above the next group's first tile are final.
                g1 = g0 + rows_per_group
                end = ys[g1] if g1 < len(ys) else h
                n = end - a0
                if nodata is not None and nodata[:n].any():
                    _force_background(acc[:, :n], wsum[:n], torch.from_numpy(nodata[:n]).to(self.device))
                yield a0, end, acc[:, :n], wsum[:n]
                carry = a1 - end
                if carry > 0:
                    acc[:, :carry] = acc[:, n : n + carry].clone()
                    wsum[:carry] = wsum[n : n + carry].clone()
                acc[:, max(carry, 0) :] = 0
                wsum[max(carry, 0) :] = 0
