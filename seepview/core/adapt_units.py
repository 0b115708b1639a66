"""What a scene adaptation learns from: reviewed tiles as they are, large reviewed images as blocks.

A reviewed tile is one unit of the out-of-fold choice (``adapt.fit_adaptation``). A reviewed image of at
least ``LARGE_SIDE`` each way (a whole scene, or a large part of one) is cut into tile-sized ``BLOCK`` s
that count like tiles, so one reviewed scene image is enough to adapt to its scene; its blocks are held out
by region (``fold_parts``). An image too large to hold (above ``REFINE_MAX_PIXELS``) is never read whole: at
most ``MAX_LARGE_BLOCKS`` of its blocks are read and predicted one by one (``sampled_units``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: A reviewed image at least this size each way (2 x 2 blocks) is cut into ``BLOCK`` blocks for the out-of-fold
#: choice: one reviewed scene image, or a crop of one, is then enough to adapt to its scene. Smaller images
#: (tiles, photos, strips) stay whole. Was 1024 until session 14: a reviewed 1000² crop then counted as one
#: tile and could not adapt its scene alone (measured on 2-3 grid rows of tiles as one image: the same as
#: the tiles, docs/benchmarks.md "Session 14").
LARGE_SIDE = 512
#: Side of those blocks: a tile's, which the typer was trained on (blobs cut at tile borders) and the choice
#: and the class mix's tempering were measured with; 512² blocks cost ~0.45 s each in the choice against
#: ~0.09 s for a tile.
BLOCK = 256
#: Units (tiles or blocks) the out-of-fold choice is made on at most, drawn at random; the winner is fitted on
#: all of them. The choice was measured with 5-20 tiles; a reviewed 8192² scene image is 1 024 blocks.
MAX_CHOICE_UNITS = 40
TILE_PIXELS = 256 * 256  # one reviewed tile's worth of pixels (the cgg-seep tiles the tempering was measured on)
#: Side of the regions whose blocks go to the same out-of-fold part (``TileData.region``).
FOLD_REGION = 1024


@dataclass
class TileData:
    """One tile as adaptation sees it: normalised image (H, W), uint8 probabilities × 255 (K, H, W),
    the base model's labels, no-data mask, and the reviewed truth (None for unreviewed tiles)."""

    image: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    nodata: np.ndarray | None = None
    truth: np.ndarray | None = None
    name: str = ""
    #: how many reviewed tiles' worth of evidence this unit is: the reviewed pixels / 256² for a block of a
    #: large image, at least 1 for a whole image (``units_of``), so a scene's class mix counts as much from
    #: one large image as from the same pixels reviewed as tiles (``PRIOR_FULL_TILES``)
    evidence: float = 1.0
    #: a block's (image, region row, region column); None for a tile. Blocks of one image in the same
    #: ``FOLD_REGION`` are held out together, so a slick cut by a block border is not on both sides of a fold
    #: (except at the region's border)
    region: tuple | None = None
    #: a block's surroundings in its image (``Around``): its blobs are typed there (``typed_in_place``), whole as
    #: the user saw them on the image, not cut at the block's border. For a block of an image too large to
    #: hold, a function that reads and predicts them on first use (``sampled_units``)
    around: Around | Callable[[], Around] | None = None


@dataclass
class Around:
    """Views of a block plus ``AROUND`` pixels each way of its image (of ``shape``; the window starts at
    ``origin``), and the block's rows and columns in them."""

    image: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    nodata: np.ndarray | None
    ys: slice
    xs: slice
    origin: tuple[int, int]
    shape: tuple[int, int]


#: How far around a block its blobs are typed: a slick crossing the block's border by up to this much less
#: ``typer.MARGIN`` (the reach of a blob's features beyond its box) is typed exactly as on the whole image;
#: farther ones are typed as far as this reaches.
AROUND = 192


def typed_in_place(t: TileData, typer, relabel=None):
    """Unit ``t``'s labels scored by ``typer`` (``Blobs``; the labels themselves without a typer): the
    network's labels, or ``relabel(image, probs, nodata)``'s (a pixel head's). A block is scored in its
    surroundings and cut to itself, so its held-out predictions are the ones the user saw on the whole image
    (typed alone, a slick cut by the block's border is typed as a smaller, edge-touching blob)."""
    a = t.around
    if callable(a) and typer is None:  # untyped, a block of an image too large to hold is its own labels
        a = None
    elif callable(a):  # typed: its surroundings are read and predicted now (~6 MB kept), once
        a = t.around = a()
    image, probs, labels, nodata = (a.image, a.probs, a.labels, a.nodata) if a else (t.image, t.probs, t.labels,
                                                                                      t.nodata)
    if relabel is not None:
        labels = relabel(image, probs, nodata)
    if typer is None:
        return labels if a is None else labels[a.ys, a.xs]
    if a is None:
        return typer.score_blobs(labels, image, probs, nodata)
    return typer.score_blobs(labels, image, probs, nodata, within=(a.ys, a.xs), shape=a.shape, origin=a.origin)


def pixels_for_adaptation(stack: contextlib.ExitStack, opened):
    """The pixels of ``opened`` (an ``ImageSource`` context manager), or the open source itself (closed with
    ``stack``) when the image is too large to hold."""
    source = stack.enter_context(opened)
    return source if too_large_to_hold(source.shape) else source.read_all()


def is_large_entry(project, entry) -> bool:
    """Whether a project image is large enough to be cut into blocks (read from its header)."""
    with project.open_image(entry) as source:
        return is_large(source.shape)


def held_out_groups(tiles: Sequence[TileData]) -> list[list[int]]:
    """Indices of ``tiles`` that are held out together: each tile alone, the blocks of one image by their
    ``region``. With a single region, its blocks are held out one by one."""
    keys = [t.region if t.region is not None else ("unit", j) for j, t in enumerate(tiles)]
    if len(set(keys)) < 2:
        keys = [("unit", j) for j in range(len(tiles))]
    members: dict = {}
    for j, key in enumerate(keys):
        members.setdefault(key, []).append(j)
    return list(members.values())


def fold_parts(tiles: Sequence[TileData], folds: int, seed: int) -> list[list[int]]:
    """Indices of ``tiles`` in each out-of-fold part: their ``held_out_groups`` dealt at random."""
    groups = held_out_groups(tiles)
    folds = max(2, min(folds, len(groups)))
    order = np.random.default_rng(seed).permutation(len(groups))
    parts: list[list[int]] = [[] for _ in range(folds)]
    for i, g in enumerate(order):  # tiles: part f is order[f::folds], as before regions existed
        parts[i % folds].extend(groups[g])
    return parts


def is_large(shape) -> bool:
    """Whether an image of ``shape`` (H, W, ...) is cut into ``BLOCK`` blocks for adaptation."""
    return min(int(shape[0]), int(shape[1])) >= LARGE_SIDE


def units_of(tiles: Sequence[TileData]) -> tuple[list[TileData], int]:
    """(out-of-fold units, how many are blocks): each large reviewed image cut into ``BLOCK`` blocks (views,
    no copies; blocks with no reviewed pixel left out), other tiles as they are."""
    out, blocks = [], 0
    for t in tiles:
        truth = np.asarray(t.truth)
        if not is_large(truth.shape):
            if t.region is None:  # a whole image: a strip of many tiles' pixels counts as that many
                out.append(dataclasses.replace(t, evidence=max(t.evidence, _reviewed(truth, t.nodata) / TILE_PIXELS)))
            else:
                out.append(t)
                blocks += 1  # a block ``sampled_units`` read
            continue
        h, w = truth.shape
        for ys in block_spans(h):
            for xs in block_spans(w):
                y0, x0 = ys.start, xs.start
                nodata = None if t.nodata is None else np.asarray(t.nodata)[ys, xs]
                unit = _block_unit(t.image[..., ys, xs], t.probs[:, ys, xs], t.labels[ys, xs], nodata,
                                   truth[ys, xs], (id(t), y0, x0))
                if unit is not None:
                    a0, a1, b0, b1 = _widened((y0, ys.stop, x0, xs.stop), (h, w), AROUND)
                    wy, wx = slice(a0, a1), slice(b0, b1)
                    unit.around = Around(t.image[..., wy, wx], t.probs[:, wy, wx], t.labels[wy, wx],
                                         None if t.nodata is None else np.asarray(t.nodata)[wy, wx],
                                         slice(y0 - a0, ys.stop - a0), slice(x0 - b0, xs.stop - b0), (a0, b0), (h, w))
                    out.append(unit)
                    blocks += 1
    return out, blocks


def block_spans(n: int) -> list[slice]:
    """``BLOCK``-long spans covering ``n`` pixels; a remainder under a quarter block joins the last span, so
    an edge sliver (say 1 x 256 px) is not a unit of the choice of its own."""
    starts = list(range(0, n, BLOCK))
    if len(starts) > 1 and n - starts[-1] < BLOCK // 4:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n])]


def _reviewed(truth, nodata) -> int:
    """Reviewed pixels: labelled (not 255) and not no-data."""
    seen = np.asarray(truth) != 255
    if nodata is not None:
        seen &= ~np.asarray(nodata, bool)
    return int(seen.sum())


def _block_unit(image, probs, labels, nodata, truth, where) -> TileData | None:
    """A block at ``where`` (image id, top, left) as a unit, weighed by its reviewed pixels; None without any."""
    seen = _reviewed(truth, nodata)
    if not seen:
        return None
    key, y0, x0 = where
    return TileData(image, probs, labels, nodata, truth, evidence=seen / TILE_PIXELS,
                    region=(key, y0 // FOLD_REGION, x0 // FOLD_REGION))


def tile_data(predictor, image, truth=None, name: str = "") -> TileData:
    """A tile as adaptation sees it: the raw network's probabilities (no typer) for ``image``."""
    from seepview.core.model.normalize import normalize
    from seepview.core.nodata import nodata_mask, nodata_value

    spec = predictor.fit(image)
    labels, probs = predictor.predict_labels_probs8(image, normalization=spec)
    array = np.asarray(image)
    return TileData(normalize(array, spec), probs, labels,
                    nodata_mask(array, nodata_value(None, spec)), truth, name)


#: Blocks read from one reviewed image above ``REFINE_MAX_PIXELS`` at most, drawn at random among those with
#: reviewed pixels: a whole scene is never held in memory to adapt to it (400 blocks: 26 Mpx, ~0.4 GB, and
#: ~1 000 tiles of network time). Its class mix is then estimated from them.
MAX_LARGE_BLOCKS = 400


def too_large_to_hold(shape) -> bool:
    from seepview.core.model.infer import REFINE_MAX_PIXELS

    return int(shape[0]) * int(shape[1]) > REFINE_MAX_PIXELS


def sampled_units(predictor, source, truth: np.ndarray, seed: int = 0) -> list[TileData]:
    """Up to ``MAX_LARGE_BLOCKS`` ``BLOCK`` blocks of a reviewed image too large to hold (an ``ImageSource``, or
    an array), each read and predicted on its own with the network's tile overlap as context, normalised as
    the whole image is. Their surroundings (``Around``) are read and predicted only for the blocks the
    out-of-fold choice types (at most ``MAX_CHOICE_UNITS``), while ``source`` is open."""
    from seepview.core.imageio import ImageSource
    from seepview.core.nodata import nodata_value

    truth = np.asarray(truth)
    h, w = truth.shape
    spec = predictor.fit(source)
    nd_value = nodata_value(source if isinstance(source, ImageSource) else None, spec)
    cells = [(ys, xs) for ys in block_spans(h) for xs in block_spans(w) if (truth[ys, xs] != 255).any()]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(cells), min(len(cells), MAX_LARGE_BLOCKS), replace=False).tolist()) if cells else []
    out = []
    for j in pick:
        box = tuple(v for s in cells[j] for v in (s.start, s.stop))  # (top, bottom, left, right)
        win = _predicted_around(predictor, source, spec, nd_value, box, predictor.overlap)
        ys, xs = win.ys, win.xs
        nodata = None if win.nodata is None else np.ascontiguousarray(win.nodata[ys, xs])
        unit = _block_unit(np.ascontiguousarray(win.image[..., ys, xs]), np.ascontiguousarray(win.probs[:, ys, xs]),
                           np.ascontiguousarray(win.labels[ys, xs]), nodata, truth[box[0]:box[1], box[2]:box[3]].copy(),
                           (id(source), box[0], box[2]))
        if unit is not None:
            unit.around = functools.partial(_predicted_around, predictor, source, spec, nd_value, box, AROUND)
            out.append(unit)
    return out


def _widened(box, shape, margin: int) -> tuple[int, int, int, int]:
    """``box`` (top, bottom, left, right) widened by ``margin`` each way within an image of ``shape``."""
    y0, y1, x0, x1 = box
    return max(0, y0 - margin), min(shape[0], y1 + margin), max(0, x0 - margin), min(shape[1], x1 + margin)


def _predicted_around(predictor, source, spec, nd_value, box, margin: int) -> Around:
    """The block ``box`` (top, bottom, left, right) of ``source`` with ``margin`` pixels each way, read and
    predicted as one window."""
    from seepview.core.model.normalize import normalize
    from seepview.core.nodata import nodata_mask

    y0, y1, x0, x1 = box
    shape = tuple(int(v) for v in source.shape[:2])
    a0, a1, b0, b1 = _widened(box, shape, margin)
    window = np.asarray(source.read(a0, a1, b0, b1) if hasattr(source, "read") else source[a0:a1, b0:b1])
    labels, probs = predictor.predict_labels_probs8(window, normalization=spec)
    return Around(normalize(window, spec), probs, labels, nodata_mask(window, nd_value),
                  slice(y0 - a0, y1 - a0), slice(x0 - b0, x1 - b0), (a0, b0), shape)
