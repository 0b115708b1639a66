"""Stage 2 (typer and scene adaptation) for images too large to hold in memory, such as whole SAR scenes.

``adapt.refine`` works on one image in memory: its class probabilities (K bytes a pixel), a component map
(4 bytes) and the normalised image (4 bytes), about 16 bytes a pixel with the features' temporaries. A
whole Sentinel-1 scene (~400 Mpx) would need ~6 GB, so above ``REFINE_MAX_PIXELS`` the Predictor streams
instead: the probabilities and the component map go to scratch files (12 bytes a pixel of disk, removed
afterwards), read back in row bands. The steps are ``refine``'s:

1. the scene adaptation's pixel head, band by band, each with a halo its filters need;
2. 8-connected components of the whole seep mask: each band labelled alone, then joined across the band
   seams (connected components of the graph of touching parts), so a slick crossing many bands is one blob;
3. each blob's features on a window around it (the ``CELL`` it starts in and a quarter cell more, or its
   own box if it is larger, plus ``typer.MARGIN``, the reach of its ring and context window), which gives
   the features ``blob_features`` gives on the whole image; a blob whose own window would exceed
   ``blob_bands.BANDED_WINDOW`` (a low-wind area the network took for one slick) is measured band by band
   instead, so no box is ever held whole;
4. the typer's class of each blob, under the scene adaptation's class mix or main class, written band by
   band; too small blobs become sea, as in ``refine``.

The result equals ``refine`` on the whole image (``tests/core/test_refine_streamed.py`` compares them on
real tiles; a blob measured band by band agrees to float rounding, ``tests/core/model/test_blob_bands.py``). Reviewed-neighbour edges do not apply: they belong to the 256² tiles of a scene grid.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import numpy as np

from seepview.core.errors import Cancelled, ModelError

#: Rows beyond a band that the pixel head's filters reach (Gaussian sigma 6, truncated at 4 sigma = 24 px).
HEAD_HALO = 32
#: Pixels per row band of the per-pixel passes (the head, labelling, writing back); the pixel head holds
#: ~100 bytes a pixel of features and filter responses, so a band and its halo cost ~130 MB (bands are at
#: least 64 rows: ~320 MB on a 25 000 px wide scene).
BAND_PIXELS = 1_000_000
#: Side of the cells blobs are grouped by for their features: the blobs that start in a cell and end within a
#: quarter cell beyond it are measured on that window plus ``typer.MARGIN`` (~1.5 Mpx, ~60 MB), a larger one
#: on its own window. Windows overlap, so each scratch byte is read about 2.3 times.
CELL = 1024
#: Rows a scratch file is read in (a column window of a wide image is cut from whole rows).
READ_ROWS = 128

Reader = Callable[[int, int, int, int], tuple[np.ndarray, "np.ndarray | None"]]


def _named(exc: OSError, path: str) -> OSError:
    """``exc`` with the scratch file's name, so the Predictor can tell scratch failures from others."""
    return OSError(exc.errno, exc.strerror or str(exc), path)


class RowFile:
    """A scratch file of rows of ``row_shape`` items, written and read by plain file I/O.

    Not a memory map on purpose: a mapped file's touched pages count toward the process's resident memory,
    which is what streaming is meant to bound. Its space is reserved when it is created (where the system
    can), so a full disk fails there, not halfway through a scene."""

    def __init__(self, path: str | os.PathLike, rows: int, row_shape: tuple[int, ...], dtype, create: bool = True):
        self.path, self.rows = os.fspath(path), int(rows)
        self.row_shape, self.dtype = tuple(int(v) for v in row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self._file = open(self.path, "w+b" if create else "r+b")  # noqa: SIM115 - closed by close()
        if create:
            size = self.row_bytes * self.rows
            try:
                if hasattr(os, "posix_fallocate") and size:
                    os.posix_fallocate(self._file.fileno(), 0, size)
                else:
                    self._file.truncate(size)
            except OSError as exc:
                self._file.close()
                raise _named(exc, self.path) from exc

    def write(self, y0: int, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, self.dtype)
        if data.shape[1:] != self.row_shape or y0 < 0 or y0 + len(data) > self.rows:
            raise ValueError(f"rows of {data.shape} at {y0} do not fit {self.path} ({self.rows} x {self.row_shape})")
        try:
            self._file.seek(y0 * self.row_bytes)
            self._file.write(memoryview(data).cast("B"))
            self._file.flush()
        except OSError as exc:
            raise _named(exc, self.path) from exc

    def read(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """Rows y0..y1, and of each row the last axis's x0..x1.

        A narrow column window is read segment by segment (a window of a wide scene would otherwise read
        its whole rows: 10-25 times the bytes)."""
        width = self.row_shape[-1]
        x1 = width if x1 is None else x1
        out = np.empty((y1 - y0, *self.row_shape[:-1], x1 - x0), self.dtype)
        if 2 * (x1 - x0) < width:
            self._segments(out, y0, y1, x0, x1)
            return out
        whole = x0 == 0 and x1 == width
        for r0 in range(y0, y1, READ_ROWS):
            r1 = min(y1, r0 + READ_ROWS)
            rows = out[r0 - y0 : r1 - y0] if whole else np.empty((r1 - r0, *self.row_shape), self.dtype)
            self._readinto(rows, r0 * self.row_bytes)
            if not whole:
                out[r0 - y0 : r1 - y0] = rows[..., x0:x1]
        return out

    def _segments(self, out: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> None:
        item, width = self.dtype.itemsize, self.row_shape[-1]
        lead = int(np.prod(self.row_shape[:-1]))
        flat = out.reshape(y1 - y0, lead, x1 - x0)
        for r in range(y0, y1):
            for j in range(lead):
                self._readinto(flat[r - y0, j], r * self.row_bytes + (j * width + x0) * item)

    def _readinto(self, target: np.ndarray, offset: int) -> None:
        try:
            self._file.seek(offset)
            n = self._file.readinto(memoryview(target).cast("B"))
        except OSError as exc:
            raise _named(exc, self.path) from exc
        if n != target.nbytes:
            raise OSError(errno.EIO, "short read of a scratch file", self.path)

    def close(self) -> None:
        self._file.close()


class ProbabilityFile(RowFile):
    """uint8 class probabilities × 255 of a whole image, stored row by row ((K, W) a row)."""

    def __init__(self, path, num_classes: int, shape: tuple[int, int], create: bool = True):
        super().__init__(path, shape[0], (num_classes, shape[1]), np.uint8, create)

    def write_band(self, y0: int, probs: np.ndarray) -> None:
        """``probs``: (K, h, W) for rows y0..y0+h."""
        self.write(y0, np.moveaxis(probs, 0, 1))

    def read_band(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """(K, y1-y0, x1-x0) for rows y0..y1, columns x0..x1."""
        return np.ascontiguousarray(np.moveaxis(self.read(y0, y1, x0, x1), 1, 0))


def scratch_bytes(num_classes: int, shape: tuple[int, int]) -> int:
    """Disk that ``refine_streamed`` and its probabilities need for an image of ``shape``."""
    return (int(num_classes) + 4) * int(shape[0]) * int(shape[1])


def band_rows(width: int) -> int:
    """Rows of a band of about ``BAND_PIXELS`` (at least 64, so the head's halo is not most of it)."""
    return max(64, BAND_PIXELS // max(1, int(width)))


def _bands(h: int, rows: int):
    return [(y0, min(h, y0 + rows)) for y0 in range(0, h, rows)]


def _check(cancel) -> None:
    if cancel is not None and cancel():
        raise Cancelled()


class _Steps:
    """Progress over the passes of ``refine_streamed``: bands and blob windows done, of a total that is
    corrected once the blobs are known."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, max(1, int(total)), 0

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def resize(self, total: int) -> None:
        self.total = max(1, self.done, int(total))

    def finish(self) -> None:
        self.total = self.done = max(self.done, 1)
        self.step(0)


def refine_streamed(meta, labels, probs: ProbabilityFile, read: Reader, scratch: str | os.PathLike,
                    scene: str | None = None, rows: int | None = None, cancel=None, progress=None) -> None:
    """``refine`` on a whole image in row bands; ``labels`` (H, W uint8, array or memory map) in place.

    ``probs``: the network's probabilities, written during inference; ``read(y0, y1, x0, x1)`` returns that
    window of the normalised image (C, h, w) float32 and its no-data mask (h, w) or None; ``scratch``: a
    folder for the component map. ``rows``: band height (default: about ``BAND_PIXELS``).
    ``progress(done, total)``: bands and blob windows done (the total is a guess until the blobs are known).
    """
    from seepview.core.adapt import _cached_typer, adaptation_for, head_labels

    h, w = (int(v) for v in labels.shape)
    rows = int(rows) if rows else band_rows(w)
    bands = _bands(h, rows)
    ad = adaptation_for(meta.adaptation, scene)
    typer = _cached_typer(meta.typer) if meta.typer else None
    head = "head" in ad.kind and bool(ad.head)
    cells = -(-h // CELL) * -(-w // CELL)
    steps = _Steps(progress, len(bands) * (3 + head) + cells)
    if head:
        for y0, y1 in bands:  # the head re-draws the seep mask first, as in adapt._apply
            _check(cancel)
            a0, a1 = max(0, y0 - HEAD_HALO), min(h, y1 + HEAD_HALO)
            image, nodata = read(a0, a1, 0, w)
            labels[y0:y1] = head_labels(ad.head, image, probs.read_band(a0, a1), nodata)[y0 - a0 : y1 - a0]
            steps.step()
    prior = np.asarray(ad.prior, np.float64) if "prior" in ad.kind and ad.prior else None
    main = ad.main_class if "main" in ad.kind else None
    if typer is None:  # no blob probabilities: the network's classes, pixel by pixel (adapt._finish)
        if main:
            for y0, y1 in bands:
                band = np.asarray(labels[y0:y1])
                labels[y0:y1] = np.where(band > 0, main, band).astype(np.uint8)
        steps.finish()
        return
    comp = RowFile(os.path.join(os.fspath(scratch), "components.i32"), h, (w,), np.int32)
    try:
        n, box, area = label_streamed(labels, comp, bands, cancel, steps)
        cls = _classes(typer, probs, read, comp, (h, w), n, box, area, prior, main, cancel, steps)
        lut = np.concatenate([[0], cls]).astype(np.uint8)
        for y0, y1 in bands:
            _check(cancel)
            c = comp.read(y0, y1)
            band = np.asarray(labels[y0:y1]).copy()
            fg = c > 0
            band[fg] = lut[c[fg]]
            labels[y0:y1] = band
            steps.step()
        steps.finish()
    finally:
        comp.close()


def label_streamed(labels, comp: RowFile, bands, cancel=None, steps: _Steps | None = None):
    """8-connected components of ``labels > 0`` over row ``bands`` into ``comp`` (ids 1..n).

    Returns (n, boxes (n, 4) of top, left, bottom, right (exclusive), areas (n,)), indexed by id - 1. Each
    band is labelled on its own; parts that touch across a band seam (the 3 pixels above each pixel of a
    band's first row) are joined as connected components of a graph, and the bands are renumbered."""
    from scipy import ndimage, sparse
    from scipy.sparse.csgraph import connected_components

    steps = steps or _Steps(None, 1)
    struct = np.ones((3, 3), bool)
    w = int(labels.shape[1])
    offset, prev_last = 0, None
    pairs_a, pairs_b, boxes, areas = [], [], [], []
    for y0, y1 in bands:
        _check(cancel)
        lab, n = ndimage.label(np.asarray(labels[y0:y1]) > 0, structure=struct)
        if offset + n >= np.iinfo(np.int32).max:
            raise ModelError(None, "too many separate blobs in one image to type (over 2 billion)")
        g = np.where(lab > 0, lab + offset, 0).astype(np.int32)
        comp.write(y0, g)
        if prev_last is not None:
            first = g[0]
            for dx in (-1, 0, 1):
                a = first[max(0, -dx) : w - max(0, dx)]
                b = prev_last[max(0, dx) : w - max(0, -dx)]
                ok = (a > 0) & (b > 0)
                pairs_a.append(a[ok])
                pairs_b.append(b[ok])
        prev_last = g[-1].copy()
        boxes.append(np.array([(s[0].start + y0, s[1].start, s[0].stop + y0, s[1].stop)
                               for s in ndimage.find_objects(lab)], np.int64).reshape(-1, 4))
        areas.append(np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.int64))
        offset += n
        steps.step()
    if offset == 0:
        return 0, np.zeros((0, 4), np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([np.concatenate(pairs_a), np.concatenate(pairs_b)], axis=1), axis=0) if pairs_a \
        else np.zeros((0, 2), np.int32)  # once each: duplicates would be summed into the edge's weight
    a, b = pairs[:, 0], pairs[:, 1]
    graph = sparse.coo_matrix((np.ones(len(a), bool), (a, b)), shape=(offset + 1, offset + 1)).tocsr()
    _, root = connected_components(graph, directed=False)
    # Component 0 holds node 0 (background, no edges) and comes first: the blobs are 1..n.
    root = root.astype(np.int32)
    n = int(root.max())
    part = root[1:] - 1
    parts, big = np.concatenate(boxes), np.iinfo(np.int64).max
    box = np.array([[big, big, 0, 0]] * n, np.int64)
    for j, reduce in enumerate((np.minimum, np.minimum, np.maximum, np.maximum)):
        reduce.at(box[:, j], part, parts[:, j])
    area = np.zeros(n, np.int64)
    np.add.at(area, part, np.concatenate(areas))
    if n < offset:  # some parts were joined: renumber every band
        for y0, y1 in bands:
            _check(cancel)
            comp.write(y0, root[comp.read(y0, y1)])
            steps.step()
    else:
        steps.step(len(bands))
    return n, box, area


def _classes(typer, probs: ProbabilityFile, read: Reader, comp: RowFile, shape, n: int, box, area, prior, main,
             cancel, steps: _Steps) -> np.ndarray:
    """The class of each blob 1..n: features on windows around it, then the typer (``Typer.score_blobs``)."""
    from seepview.core.model.blob_bands import BANDED_WINDOW, banded_features
    from seepview.core.model.typer import MARGIN, MIN_AREA, blob_classes, feature_names, window_features

    h, w = shape
    feats = np.zeros((n, len(feature_names(typer.num_classes))), np.float32)
    small = area < MIN_AREA  # sea whatever the typer says: their features are not needed
    ids = np.arange(1, n + 1)
    slack = CELL // 4  # most blobs end within a quarter cell of the cell they start in
    cell_y, cell_x = box[:, 0] // CELL, box[:, 1] // CELL
    fits = (box[:, 2] <= (cell_y + 1) * CELL + slack) & (box[:, 3] <= (cell_x + 1) * CELL + slack)
    groups = []
    todo = fits & ~small
    if todo.any():
        key = cell_y[todo] * (w // CELL + 1) + cell_x[todo]
        order = np.argsort(key, kind="stable")
        cells, starts = np.unique(key[order], return_index=True)
        for cell, chunk in zip(cells, np.split(ids[todo][order], starts[1:])):
            cy, cx = divmod(int(cell), w // CELL + 1)
            groups.append(((cy * CELL, cx * CELL, (cy + 1) * CELL + slack, (cx + 1) * CELL + slack), chunk, False))
    groups += [(tuple(int(v) for v in box[i - 1]), np.array([i]), True) for i in ids[~fits & ~small]]
    steps.resize(steps.total - -(-h // CELL) * -(-w // CELL) + len(groups))
    for (t, left, b, r), chosen, alone in groups:
        _check(cancel)
        y0, x0, y1, x1 = max(0, t - MARGIN), max(0, left - MARGIN), min(h, b + MARGIN), min(w, r + MARGIN)
        if alone and (y1 - y0) * (x1 - x0) > BANDED_WINDOW:  # one huge blob: its box is never held
            feats[chosen[0] - 1] = banded_features(int(chosen[0]), (t, left, b, r), (h, w), read, probs.read_band,
                                                   comp.read, typer.num_classes, check=lambda: _check(cancel))
            steps.step()
            continue
        image, nodata = read(y0, y1, x0, x1)
        feats[chosen - 1] = window_features(image, probs.read_band(y0, y1, x0, x1), comp.read(y0, y1, x0, x1),
                                            chosen, nodata, shape=(h, w), origin=(y0, x0))
        steps.step()
    proba = np.zeros((n, typer.num_classes), np.float64)
    keep = ~small
    proba[keep] = typer.blob_proba(feats[keep])
    return blob_classes(proba, small, prior, main)
