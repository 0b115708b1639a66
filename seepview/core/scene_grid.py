"""Where the tiles of a scene sit next to each other, and what a reviewed tile says across its edges.

SAR scenes reach seepview as tiles named ``<scene>.<index>``: cells of a row-major grid whose width the
names do not say (19 or 20 in the CGG data). 97 % of slicks that touch a tile edge continue into the tile
next door, so a reviewed neighbour's labels along the shared edge are the strongest evidence there is for
the slick's type in an unreviewed tile (measured: +0.02 mIoU on the rest of a scene after 20 reviews, and it
never lowered the rest of a scene's mIoU in 45 draws; ``benchmarks/run.py adapt``).

The grid width is read from the pixels: neighbouring tiles continue each other across their shared edge,
so for the right width the bottom row of tile ``i`` matches the top row of tile ``i + width`` about as well
as tile ``i``'s right column matches tile ``i + 1``'s left one, and both match far better than other
pairs. A width is only accepted when it stands out clearly; otherwise the scene has no grid and nothing is
propagated (never a guessed neighbour). On the 13 CGG scenes this finds 19 for the 0418xx scenes and 20 for
the 0455xx ones, and no grid for the 6-tile scene 045593.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
_TILE = re.compile(r"^(?P<scene>[^.]+)\.(?P<index>\d{1,9})(?:\.[A-Za-z0-9]+)?$")
SIDES = ("up", "down", "left", "right")
#: The best width's vertical edge mismatch must be at most this share of the other widths' median.
MAX_RATIO = 0.8
#: ... and at most this multiple of the horizontal neighbours' mismatch (what real neighbours look like).
MAX_OVER_HORIZONTAL = 1.3
MIN_PAIRS = 3  # vertical pairs a width needs before it can be judged
SMALL_TILE = 4_000_000  # pixels: read whole to get the edges (column bands of a striped TIFF decode it all)
SMALL_SCENE = 16_000_000  # pixels in a scene's tiles: its grid may be read on the GUI thread
MAX_WIDTH = 512  # widest grid considered (the CGG scenes are 19-20 wide; a hostile index must not cost time)
SMOOTH = 9  # pixels: edge profiles are averaged along the edge first (speckle would hide the structure)
BAND = 2  # rows (columns) averaged at each edge
TOLERANCE = 2  # pixels along the edge a neighbour's label may sit from a blob's edge pixel


def tile_index(name: str) -> tuple[str, int] | None:
    """(scene, index) of a tile named ``<scene>.<index>[.ext]``, or None for other names."""
    m = _TILE.match(str(name))
    return (m.group("scene"), int(m.group("index"))) if m else None


@dataclass(frozen=True)
class Edges:
    """The four edge profiles of one tile (raw pixel values, averaged over ``BAND`` and smoothed)."""

    up: np.ndarray
    down: np.ndarray
    left: np.ndarray
    right: np.ndarray

    @classmethod
    def of(cls, image: np.ndarray) -> Edges:
        """From a whole (H, W) or (H, W, C) image (channel 0 is used)."""
        a = np.asarray(image)
        return cls.from_bands(a[:BAND], a[-BAND:], a[:, :BAND], a[:, -BAND:])

    @classmethod
    def of_source(cls, source) -> Edges:
        """From an ``ImageSource``: small tiles are read whole (one decode), larger images only at their
        four edge bands."""
        h, w = source.shape[:2]
        if h * w <= SMALL_TILE:
            return cls.of(source.read_all())
        return cls.from_bands(source.read(0, BAND, 0, w), source.read(h - BAND, h, 0, w),
                              source.read(0, h, 0, BAND), source.read(0, h, w - BAND, w))

    @classmethod
    def from_bands(cls, up, down, left, right) -> Edges:
        from scipy.ndimage import uniform_filter1d

        def first(b):
            b = np.asarray(b, np.float64)
            return b[..., 0] if b.ndim == 3 else b

        return cls(*(uniform_filter1d(v, SMOOTH) for v in (
            first(up).mean(0), first(down).mean(0), first(left).mean(1), first(right).mean(1))))


def _mismatch(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two edge profiles over pixels valid in both (no-data is exact 0; dB
    values may be negative), in units of their spread; NaN when they differ in length or are mostly no-data."""
    if a.shape != b.shape:
        return float("nan")
    ok = (a != 0) & (b != 0) & np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 32:
        return float("nan")
    spread = np.std(np.concatenate([a[ok], b[ok]]))
    return float(np.mean(np.abs(a[ok] - b[ok])) / (spread + 1e-6))


@dataclass(frozen=True)
class SceneGrid:
    """Tiles of one scene on a row-major grid ``width`` cells wide: name -> index; index ``offset`` sits in
    the first column (0 for 0-based numbering; read from the pixels when rows visibly wrap elsewhere)."""

    width: int
    index: Mapping[str, int]
    offset: int = 0

    def neighbours(self, name: str) -> dict[str, str]:
        """{side: name} of ``name``'s neighbours that exist in the scene (up, down, left, right)."""
        if name not in self.index:
            return {}
        i, w = self.index[name], self.width
        by_index = {v: k for k, v in self.index.items()}
        col = (i - self.offset) % w
        cand = {"up": i - w, "down": i + w, "left": i - 1 if col > 0 else None,
                "right": i + 1 if col < w - 1 else None}
        return {side: by_index[j] for side, j in cand.items() if j is not None and j in by_index}


def infer_grid(edges: Mapping[str, Edges]) -> SceneGrid | None:
    """The scene's grid from its tiles' ``Edges`` (keys: tile names of one scene), or None when the names
    are not ``<scene>.<index>`` or no width stands out (see the module doc)."""
    index = {}
    for name in edges:
        parsed = tile_index(name)
        if parsed is None:
            return None
        index[name] = parsed[1]
    by_index = {v: k for k, v in index.items()}
    if len(by_index) != len(index) or len(index) < 4:
        return None
    pairs = {(i, i + 1): _mismatch(edges[n].right, edges[by_index[i + 1]].left) for n, i in index.items()
             if i + 1 in by_index}
    horizontal = [v for v in pairs.values() if v == v]
    if len(horizontal) < MIN_PAIRS:
        return None
    h = float(np.median(horizontal))
    medians = {}
    for w in range(2, min(max(index.values()), MAX_WIDTH) + 1):
        v = [_mismatch(edges[n].down, edges[by_index[i + w]].up) for n, i in index.items() if i + w in by_index]
        v = [x for x in v if x == x]
        if len(v) >= MIN_PAIRS:
            medians[w] = float(np.median(v))
    if len(medians) < 3:
        return None
    best = min(medians, key=medians.get)
    others = float(np.median([m for w, m in medians.items() if w != best]))
    # Consecutive indices must be real neighbours (clearly better than other pairs), and the best width's
    # vertical pairs must look like them: a width that only wins by chance among many fails one or the other.
    if h > MAX_RATIO * others or medians[best] > MAX_RATIO * others or medians[best] > MAX_OVER_HORIZONTAL * h:
        return None
    # Where rows wrap: consecutive indices i, i + 1 across a row end do not continue each other. The
    # column class of i whose pairs match worst, when clearly worse than neighbours, is the last column;
    # otherwise (no pairs there, as in the CGG scenes) the numbering is taken to start at column 0.
    by_col: dict[int, list[float]] = {}
    for (i, _), v in pairs.items():
        if v == v:
            by_col.setdefault(i % best, []).append(v)
    last = best - 1
    medians_col = {c: float(np.median(v)) for c, v in by_col.items() if len(v) >= MIN_PAIRS}
    if medians_col:
        worst = max(medians_col, key=medians_col.get)
        if medians_col[worst] > (h + others) / 2:
            last = worst
    return SceneGrid(best, index, (last + 1) % best)


# --- what reviewed neighbours say about a tile's blobs -------------------------------------------
_OWN = {"up": lambda a: a[0, :], "down": lambda a: a[-1, :], "left": lambda a: a[:, 0], "right": lambda a: a[:, -1]}
_FACING = {"up": "down", "down": "up", "left": "right", "right": "left"}


def edge_labels(grid: SceneGrid, name: str, labels_of) -> dict[str, np.ndarray]:
    """{side: the reviewed neighbour's label row/column that touches this tile's ``side``}.

    ``labels_of(name)`` gives a reviewed tile's labels (H, W) or None when the tile is not reviewed."""
    out = {}
    for side, nb in grid.neighbours(name).items():
        lab = labels_of(nb)
        if lab is not None:
            out[side] = np.asarray(_OWN[_FACING[side]](np.asarray(lab)), np.uint8).copy()
    return out


def edge_votes(comp: np.ndarray, n: int, edges: Mapping[str, np.ndarray], num_classes: int) -> np.ndarray:
    """(n, num_classes) votes: for every edge pixel of blob b, the seep class the reviewed neighbour holds
    within ``TOLERANCE`` pixels across the edge (its most common one there). A blob with votes continues a
    slick the user labelled next door. Unlabelled (255) and sea pixels do not vote."""
    votes = np.zeros((n + 1, num_classes), np.int64)
    for side, line in edges.items():
        own = _OWN[side](comp)
        line = np.asarray(line).astype(np.int64)
        if line.shape != own.shape:
            continue  # a neighbour of another size: not a grid neighbour after all
        seep = (line > 0) & (line < num_classes)
        if not seep.any():
            continue
        onehot = np.zeros((len(line), num_classes), np.int64)
        onehot[np.flatnonzero(seep), line[seep]] = 1
        # counts of each class within +-TOLERANCE of every position along the edge
        c = np.cumsum(np.vstack([np.zeros((1, num_classes), np.int64), onehot]), axis=0)
        pos = np.arange(len(line))
        lo, hi = np.clip(pos - TOLERANCE, 0, len(line)), np.clip(pos + TOLERANCE + 1, 0, len(line))
        near = c[hi] - c[lo]
        hit = (own > 0) & (near.sum(axis=1) > 0)
        np.add.at(votes, (own[hit], near[hit].argmax(axis=1)), 1)
    return votes[1:]


#: Growing a slick across the edge of a reviewed neighbour (``grow_from_edges``): the continuation must be
#: at least as dark as the median of the seed pixels (smoothed, SAR slicks damp the backscatter), have
#: P(seep) above ``GROW_MIN_SEEP`` and lie within ``GROW_MAX_PX`` of the edge. Chosen among 18 settings on
#: the 3 unseen scenes at k = 20 (the 12 with the median or 30th percentile all gained mIoU +0.009 to +0.014;
#: docs/benchmarks.md, issue 11 "Session 11"): the figures rest on the scenes that chose them.
GROW_SMOOTH = 2.0
GROW_MIN_SEEP = 0.3
GROW_MAX_PX = 32


def grow_from_edges(labels: np.ndarray, image: np.ndarray, probs: np.ndarray, edges: Mapping[str, np.ndarray],
                    nodata: np.ndarray | None = None, num_classes: int = 8) -> np.ndarray:
    """``labels`` with the slicks that reviewed neighbours hold at the shared edge continued into this tile
    where the model missed them: 97 % of slicks at a tile edge continue next door, and the U-Net's own
    detection there is what misses them. Only background pixels change (to the class the neighbour labelled
    where the region meets the edge); no-data never does. ``image``: the normalised image (H, W) or (C, H, W);
    ``probs``: uint8 softmax × 255 or float (K, H, W)."""
    from scipy import ndimage

    out = np.asarray(labels, np.uint8)
    seed_cls = np.zeros(out.shape, np.uint8)
    for side, line in edges.items():
        line = np.asarray(line)
        own = _OWN[side](seed_cls)
        if line.shape != own.shape:
            continue
        own[...] = np.where((line > 0) & (line < num_classes), line, 0)
    nd = np.zeros(out.shape, bool) if nodata is None else np.asarray(nodata, bool)
    seeds = (seed_cls > 0) & ~nd
    if not seeds.any():
        return out
    img = np.asarray(image, np.float32)
    img = img[0] if img.ndim == 3 else img
    smooth = ndimage.gaussian_filter(img, GROW_SMOOTH)
    p = np.asarray(probs)
    p_seep = 1.0 - p[0].astype(np.float32) / (255.0 if p.dtype == np.uint8 else 1.0)
    near = ndimage.distance_transform_edt(~seeds) <= GROW_MAX_PX
    region = (smooth <= np.median(smooth[seeds])) & (p_seep > GROW_MIN_SEEP) & near & ~nd
    touch = seeds & region
    if not touch.any():
        return out
    comp, n = ndimage.label(region)
    # each grown region takes the class its seeds hold most often (regions without a seed get 0)
    votes = np.zeros((n + 1, num_classes), np.int64)
    np.add.at(votes, (comp[touch], seed_cls[touch]), 1)
    lut = np.where(votes[:, 1:].sum(axis=1) > 0, votes[:, 1:].argmax(axis=1) + 1, 0).astype(np.uint8)
    grown = lut[comp]
    return np.where((grown > 0) & (out == 0), grown, out).astype(np.uint8)


# --- in a project ---------------------------------------------------------------------------------
_GRIDS: OrderedDict[tuple, SceneGrid | None] = OrderedDict()
_GRIDS_LOCK = threading.Lock()
MAX_GRIDS = 256


def _grid_key(project, scene: str) -> tuple:
    entries = [e for e in project.entries if e.scene == scene]
    return (str(project.root), scene, tuple(e.id for e in entries)), entries


def cached_grid(project, scene: str):
    """The scene's grid if it was already read (None or a ``SceneGrid``), else ``...``: for the GUI thread,
    which must not read a scene's tiles."""
    key, _ = _grid_key(project, scene)
    with _GRIDS_LOCK:
        return _GRIDS.get(key, ...)


def project_grid(project, scene: str) -> SceneGrid | None:
    """The grid of one scene (group) of a project, read from its tiles' edges once per tile set (reads
    every tile of the scene the first time: call it off the GUI thread)."""
    key, entries = _grid_key(project, scene)
    with _GRIDS_LOCK:
        if key in _GRIDS:
            _GRIDS.move_to_end(key)
            return _GRIDS[key]
    grid = _read_grid(project, entries)
    with _GRIDS_LOCK:
        _GRIDS[key] = grid
        while len(_GRIDS) > MAX_GRIDS:
            _GRIDS.popitem(last=False)
    return grid


def _read_grid(project, entries) -> SceneGrid | None:
    """A tile that cannot be read, or of another size than most, is left out (it gets no neighbours)."""
    from collections import Counter

    from seepview.core.errors import SeepviewError

    if len(entries) < 4 or any(tile_index(e.id) is None for e in entries):
        return None
    edges, shapes = {}, {}
    for e in entries:
        try:
            with project.open_image(e) as source:
                shapes[e.id] = tuple(source.shape[:2])
                edges[e.id] = Edges.of_source(source)
        except SeepviewError as exc:
            log.warning("tile %s is left out of its scene's grid: %s", e.id, exc)
    if not shapes:
        return None
    common = Counter(shapes.values()).most_common(1)[0][0]
    return infer_grid({n: v for n, v in edges.items() if shapes[n] == common})


def project_neighbours(project, image_id: str, read: bool = True) -> dict[str, str]:
    """{side: id} of an image's grid neighbours in its scene ({} when the scene has no grid). With
    ``read=False`` (the GUI thread) a grid not read yet is read only when the scene is small tiles
    (``SMALL_SCENE`` pixels in all: ~0.1 s for a 64-tile CGG scene); otherwise {}."""
    entry = project.entry(image_id)
    scene = entry.scene
    grid = project_grid(project, scene) if read else gui_grid(project, scene)
    return grid.neighbours(entry.id) if isinstance(grid, SceneGrid) else {}


def gui_grid(project, scene: str) -> SceneGrid | None:
    """The scene's grid as the GUI thread may get it: already read, or read now for small tiles only."""
    grid = cached_grid(project, scene)
    if grid is ...:
        grid = project_grid(project, scene) if _small_scene(project, scene) else None
    return grid


def _small_scene(project, scene: str) -> bool:
    from seepview.core.errors import SeepviewError

    entries = [e for e in project.entries if e.scene == scene]
    if len(entries) < 4 or any(tile_index(e.id) is None for e in entries):
        return True  # no grid possible: answered without reading a tile
    total = 0
    for e in entries:
        try:
            h, w = project.image_shape(e)
        except SeepviewError:
            continue
        total += h * w
        if total > SMALL_SCENE:
            return False
    return True


def project_edges(project, image_id: str) -> dict[str, np.ndarray]:
    """What the image's reviewed neighbours hold along its edges (``edge_labels``); labels of images not
    marked reviewed are never used (the user has not confirmed them), and an unreadable mask is skipped
    with a warning."""
    from seepview.core.errors import SeepviewError

    entry = project.entry(image_id)
    grid = project_grid(project, entry.scene)
    if grid is None:
        return {}

    def labels_of(name: str):
        nb = project.entry(name)
        if nb.status != "reviewed":
            return None
        try:
            return project.load_labels(nb)
        except SeepviewError as exc:
            log.warning("not using %s's labels across the edge: %s", name, exc)
            return None

    return edge_labels(grid, entry.id, labels_of)


def sides_used(labels: np.ndarray, edges: Mapping[str, np.ndarray], num_classes: int) -> tuple[str, ...]:
    """The sides where the final ``labels`` continue a neighbour's slick with its class (what the user is
    told): an edge pixel of class c with c labelled within ``TOLERANCE`` pixels across the edge."""
    labels = np.asarray(labels)
    used = []
    for side, line in edges.items():
        own = _OWN[side](labels).astype(np.int64)
        line = np.asarray(line).astype(np.int64)
        if own.shape != line.shape:
            continue
        n = len(line)
        for d in range(-TOLERANCE, TOLERANCE + 1):
            a, b = own[max(0, d): n + min(0, d)], line[max(0, -d): n - max(0, d)]
            if ((a > 0) & (a < num_classes) & (a == b)).any():
                used.append(side)
                break
    return tuple(used)
