"""Which image (and which region of a scene) needs a reviewer most: the uncertainty-guided review queue.

A score estimates how much a review would change an image. It is computed from a cached prediction
(labels, confidence, the Predictor's margin uncertainty) block by block, so a 16k x 12k scene is
scored from memory maps without holding it in floats, and the same per-block sums give both the
image score and the ranking of regions inside a scene.

Per block the sums of these per-pixel quantities are kept (``FEATURES``):

- ``conf``: 1 - confidence (the expected error count of a calibrated model; the plain baseline);
- ``margin``: the margin uncertainty (1 - (p1 - p2));
- ``seep_edge``: the margin uncertainty inside predicted foreground (classes other than 0) and a
  band of ``EDGE_PX`` pixels around it, where seeps are cut too wide or too narrow or mislabelled;
- ``area``: predicted foreground;
- ``unsure``: pixels whose margin uncertainty exceeds one half.

``METHODS`` combine them; ``DEFAULT_METHOD`` is the one that ranked best on the shipped model's
unseen validation scenes (``benchmarks/bench_queue.py``, docs/benchmarks.md, issue 13).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from seepview.core.atomic import atomic_write_text
from seepview.core.errors import Cancelled, SeepviewError

log = logging.getLogger(__name__)

BLOCK = 512  # region size inside a scene
EDGE_PX = 3  # band around predicted seeps that counts as "their edge"
FEATURES = ("conf", "margin", "seep_edge", "area", "unsure")
_F = {name: i for i, name in enumerate(FEATURES)}

# Each method maps per-pixel feature means (one value per feature) to a score; bigger = review first.
METHODS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "confidence": lambda f: f[..., _F["conf"]],
    "margin": lambda f: f[..., _F["margin"]],
    "unsure": lambda f: f[..., _F["unsure"]],
    "seep_edge": lambda f: f[..., _F["seep_edge"]],
    "seep_edge+area": lambda f: f[..., _F["seep_edge"]] + f[..., _F["area"]],
    "seep_edge+margin": lambda f: f[..., _F["seep_edge"]] + f[..., _F["margin"]],
}
# Chosen by benchmarks/bench_queue.py on the unseen validation scenes: the best mean of how early the queue
# meets the model's wrong pixels and its missed-seep pixels (seep_edge alone ranks wrong pixels as well but
# scores 0 wherever no seep is predicted, so it finds missed seeps late; see docs/benchmarks.md, issue 13).
DEFAULT_METHOD = "seep_edge+margin"
SCORE_FILE = "queue.json"


# --- scoring ------------------------------------------------------------------------------------------
def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy.ndimage import maximum_filter

    if radius <= 0:
        return mask
    return maximum_filter(mask.view(np.uint8), size=2 * radius + 1, mode="constant").view(bool)


def _uncertainty(confidence: np.ndarray, uncertainty: np.ndarray | None) -> np.ndarray:
    """Margin uncertainty 0..1; caches from before it existed fall back to 1 - confidence."""
    if uncertainty is None:
        return (255 - confidence.astype(np.float32)) * (1.0 / 255.0)
    return uncertainty.astype(np.float32) * (1.0 / 255.0)


def _pixel_sums(labels, confidence, uncertainty, valid: tuple[slice, slice], edge_px: int) -> np.ndarray:
    """Feature sums over ``labels[valid]`` (the arrays may carry a halo for the edge band)."""
    u = _uncertainty(confidence, uncertainty)
    foreground = (labels != 0) & (labels != 255)
    band = _dilate(foreground, edge_px)[valid]
    u_in, fg = u[valid], foreground[valid]
    c = confidence[valid]
    return np.array(
        [
            float(np.sum(255 - c.astype(np.int64))) / 255.0,
            float(u_in.sum(dtype=np.float64)),
            float(u_in[band].sum(dtype=np.float64)),
            float(np.count_nonzero(fg)),
            float(np.count_nonzero(u_in > 0.5)),
        ]
    )


def block_sums(
    labels,
    confidence,
    uncertainty=None,
    block: int = BLOCK,
    edge_px: int = EDGE_PX,
    cancel: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(ny, nx, len(FEATURES)) float64 feature sums per ``block``² block, plus pixel counts via ``block_pixels``.

    Arrays may be memory maps: each block is read with an ``edge_px`` halo, so peak memory is one block.
    """
    h, w = labels.shape
    ny, nx = math.ceil(h / block), math.ceil(w / block)
    out = np.zeros((ny, nx, len(FEATURES)), np.float64)
    for by in range(ny):
        if cancel is not None and cancel():
            raise Cancelled()
        for bx in range(nx):
            y0, x0 = by * block, bx * block
            y1, x1 = min(y0 + block, h), min(x0 + block, w)
            hy0, hx0 = max(0, y0 - edge_px), max(0, x0 - edge_px)
            hy1, hx1 = min(h, y1 + edge_px), min(w, x1 + edge_px)
            valid = (slice(y0 - hy0, y1 - hy0), slice(x0 - hx0, x1 - hx0))
            unc = None if uncertainty is None else np.asarray(uncertainty[hy0:hy1, hx0:hx1])
            out[by, bx] = _pixel_sums(
                np.asarray(labels[hy0:hy1, hx0:hx1]), np.asarray(confidence[hy0:hy1, hx0:hx1]), unc, valid, edge_px
            )
        if progress is not None:
            progress(by + 1, ny)
    return out


def block_pixels(shape: tuple[int, int], block: int = BLOCK) -> np.ndarray:
    """(ny, nx) pixel count of each block (edge blocks are smaller)."""
    h, w = shape
    rows = np.minimum(block, h - np.arange(0, h, block))
    cols = np.minimum(block, w - np.arange(0, w, block))
    return np.outer(rows, cols).astype(np.float64)


def score_features(means: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
    if method not in METHODS:
        raise ValueError(f"unknown queue method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method](np.asarray(means, np.float64))


def image_features(labels, confidence, uncertainty=None, block: int = BLOCK) -> np.ndarray:
    """Per-pixel means of ``FEATURES`` over a whole image."""
    sums = block_sums(labels, confidence, uncertainty, block)
    return sums.sum(axis=(0, 1)) / float(labels.shape[0] * labels.shape[1])


def image_score(labels, confidence, uncertainty=None, method: str = DEFAULT_METHOD) -> float:
    """How much a review would change this image (bigger = review first)."""
    return float(score_features(image_features(labels, confidence, uncertainty), method))


@dataclass(frozen=True)
class Region:
    """A block of a scene, in pixels: rows y0..y1, columns x0..x1."""

    y0: int
    y1: int
    x0: int
    x1: int
    score: float


@dataclass
class RegionMap:
    """Block scores of one image: ``grid`` (ny, nx) for a heat strip, ``regions`` most uncertain first."""

    grid: np.ndarray
    block: int
    shape: tuple[int, int]
    regions: list[Region] = field(default_factory=list)

    def next_after(self, region: Region | None) -> Region | None:
        """The region after ``region`` in rank order (wrapping), the first when None."""
        if not self.regions:
            return None
        if region is None or region not in self.regions:
            return self.regions[0]
        return self.regions[(self.regions.index(region) + 1) % len(self.regions)]

    def region_at(self, y: float, x: float) -> Region | None:
        for r in self.regions:
            if r.y0 <= y < r.y1 and r.x0 <= x < r.x1:
                return r
        return None


def rank_regions(
    labels, confidence, uncertainty=None, block: int = BLOCK, method: str = DEFAULT_METHOD,
    cancel=None, progress=None,
) -> RegionMap:
    """Blocks of a (large) image ranked like images are: the same features, the same method."""
    shape = tuple(int(v) for v in labels.shape)
    sums = block_sums(labels, confidence, uncertainty, block, cancel=cancel, progress=progress)
    grid = score_features(sums / block_pixels(shape, block)[..., None], method).astype(np.float32)
    h, w = shape
    order = np.argsort(-grid, axis=None, kind="stable")
    regions = []
    for flat in order:
        by, bx = divmod(int(flat), grid.shape[1])
        y0, x0 = by * block, bx * block
        regions.append(Region(y0, min(y0 + block, h), x0, min(x0 + block, w), float(grid[by, bx])))
    return RegionMap(grid, block, shape, regions)


# --- the queue over a project ----------------------------------------------------------------------------
class ReviewQueue:
    """Scores of a project's images and the order they should be reviewed in.

    Unreviewed and in-progress images with a score come first, highest first; images without a
    score (no prediction yet) follow in project order; reviewed and broken images are not queued.
    Scores of a previous model are kept (``stale``) until the new model's arrive, so the order stays
    useful while a retrained model re-predicts in the background.
    """

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}
        self.broken: dict[str, str] = {}  # image id -> why it cannot be read
        self.stale: set[str] = set()

    def update(self, scores: dict[str, float], broken: dict[str, str] | None = None) -> None:
        self.scores.update(scores)
        self.stale.difference_update(scores)
        if broken is not None:
            self.broken.update(broken)
        for image_id in scores:
            self.broken.pop(image_id, None)

    def mark_stale(self) -> None:
        self.stale = set(self.scores)

    def mark_broken(self, image_id: str, reason: str) -> None:
        self.broken[image_id] = reason

    def _key(self, entry, index: int) -> tuple:
        score = self.scores.get(entry.id)
        return (0, -score, index) if score is not None else (1, 0.0, index)

    def order(self, entries: Sequence) -> list[str]:
        """Ids of the images to review, most in need first."""
        keyed = [(self._key(e, i), e.id) for i, e in enumerate(entries) if self._queued(e)]
        return [image_id for _, image_id in sorted(keyed)]

    def _queued(self, entry) -> bool:
        return entry.status != "reviewed" and entry.id not in self.broken

    def next_after(self, entries: Sequence, current_id: str | None, backwards: bool = False) -> str | None:
        """The queued image after (before) ``current_id`` in queue order, wrapping; never ``current_id``.

        ``current_id`` need not be queued (it was just marked reviewed): its score still says where it
        stood, so the next one is the first that ranks below it.
        """
        queued = [(self._key(e, i), e.id) for i, e in enumerate(entries) if self._queued(e) and e.id != current_id]
        if not queued:
            return None
        queued.sort()
        position = {e.id: i for i, e in enumerate(entries)}
        if current_id not in position:
            return queued[-1 if backwards else 0][1]
        key = self._key(entries[position[current_id]], position[current_id])
        if backwards:
            before = [q for q in queued if q[0] < key]
            return (before[-1] if before else queued[-1])[1]
        after = [q for q in queued if q[0] > key]
        return (after[0] if after else queued[0])[1]


def _stamp(path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _read_score_file(path, method: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("method") != method or not isinstance(data.get("images"), dict):
        return {}
    return data["images"]


def project_scores(
    project,
    weights_key: str,
    ids: Iterable[str] | None = None,
    method: str = DEFAULT_METHOD,
    cancel: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """(scores, broken) of the project's images that have a cached prediction of ``weights_key``.

    Scores are remembered in ``predictions/<key>/queue.json`` next to the cache, keyed by the cached
    labels file's modification time and size, so an unchanged image is never re-read. Images whose
    file is gone or whose header cannot be read are reported in ``broken``; readable images without a
    prediction are left out (they follow the scored ones in the queue).
    """
    entries = [project.entry(i) for i in ids] if ids is not None else list(project.entries)
    score_path = project.prediction_dir(weights_key) / SCORE_FILE
    known = _read_score_file(score_path, method)
    scores: dict[str, float] = {}
    broken: dict[str, str] = {}
    changed = False
    for n, entry in enumerate(entries, 1):
        if cancel is not None and cancel():
            raise Cancelled()
        if not project.image_path(entry).is_file():
            broken[entry.id] = "image file not found"
            continue
        labels_path = project.prediction_paths(entry, weights_key)[0]
        stamp = _stamp(labels_path)
        if stamp is None:  # not predicted yet: can it be read at all? (the header, read once a session)
            try:
                project.image_shape(entry)
            except SeepviewError as exc:
                broken[entry.id] = exc.reason
        else:
            cached = known.get(entry.id)
            if isinstance(cached, list) and len(cached) == 2 and cached[1] == stamp:
                scores[entry.id] = float(cached[0])
            else:
                score = _score_cached(project, entry, weights_key, method)
                if score is not None:
                    scores[entry.id] = score
                    known[entry.id] = [score, stamp]
                    changed = True
        if progress is not None:
            progress(n, len(entries))
    if changed:
        try:
            atomic_write_text(score_path, json.dumps({"method": method, "images": known}))
        except OSError as exc:  # a read-only project still gets its queue, just not remembered
            log.warning("could not remember queue scores in %s: %s", score_path, exc)
    return scores, broken


def _score_cached(project, entry, weights_key: str, method: str) -> float | None:
    cached = project.load_prediction(entry, weights_key)
    if cached is None:
        return None
    uncertainty = project.load_uncertainty(entry, weights_key)
    return image_score(cached[0], cached[1], uncertainty, method)


def predict_missing(
    project,
    predictor,
    weights_key: str,
    ids: Iterable[str] | None = None,
    cancel: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, str]:
    """Predict and cache every listed image without a cached prediction; returns {id: reason} of the
    images that could not be read (they stay out of the queue)."""
    from seepview.core.scene_grid import project_edges

    entries = [project.entry(i) for i in ids] if ids is not None else list(project.entries)
    todo = [e for e in entries if not project.prediction_paths(e, weights_key)[0].is_file()]
    broken: dict[str, str] = {}
    if progress is not None:
        progress(0, len(todo))
    for n, entry in enumerate(todo, 1):
        if cancel is not None and cancel():
            raise Cancelled()
        try:
            with project.open_image(entry) as source:  # as the app predicts it: with reviewed neighbours
                result = predictor.predict(source, cancel=cancel, edges=project_edges(project, entry.id))
            project.save_prediction(entry, weights_key, result.labels, result.confidence, result.uncertainty)
        except Cancelled:
            raise
        except SeepviewError as exc:
            log.info("%s", exc)  # returned in ``broken``: the caller tells the user, once
            broken[entry.id] = exc.reason
        if progress is not None:
            progress(n, len(todo))
    return broken


def queue_job(project, weights_key: str, ids: Iterable[str] | None = None, method: str = DEFAULT_METHOD):
    """A ``job(cancel, progress) -> (weights_key, scores, broken)`` for a background worker."""
    ids = list(ids) if ids is not None else None

    def job(cancel=None, progress=None):
        scores, broken = project_scores(project, weights_key, ids, method, cancel=cancel, progress=progress)
        return weights_key, scores, broken

    return job
