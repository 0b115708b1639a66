"""Stage 2 of a SAR model: type each detected slick as a whole, or reject it as a false detection.

Labels in the SAR data are per slick (about 99 % of connected seep regions hold one class) and the U-Net
finds slicks far better than it tells their types apart, so the network's seep mask is cut into
connected blobs and a gradient-boosted classifier (LightGBM) gives each blob one class, or 0 ("reject":
the blob becomes sea). Features are the blob's shape, its contrast against a ring of sea around it, a
little texture, and the network's mean class probabilities inside it.

A typer may carry a second classifier, the *typist*, that only says which seep type a kept blob is. The
keep/reject decision learns well from many blobs, including those of scenes the network trained on; the
seep type learns better from blobs of scenes the network never saw, whose mistakes are the ones it makes on
a new scene. The two type distributions are combined as a weighted geometric mean (``TYPIST_WEIGHT``):
with 5, 10 or 20 reviewed tiles each alone was worse than the two together; with none, the typist alone
was 0.008 mIoU better (``benchmarks/run.py adapt``, docs/benchmarks.md "Session 8").

Stored without pickle: LightGBM's own text model format inside the model file's JSON metadata
(``ModelMeta.typer``; format 2 deflates it and writes it as base64, which keeps the shipped model under
10 MB), validated on load; the text is parsed by LightGBM, never executed.
"""

from __future__ import annotations

import os
import reprlib
from dataclasses import dataclass

import numpy as np

from seepview.core.errors import ModelError

TYPER_FORMAT = 2
#: Formats this seepview reads: 1 has no typist.
TYPER_FORMATS = (1, 2)
#: Ring of sea around a blob that its contrast is measured against (pixels of dilation).
RING = 6
#: Blobs smaller than this are sea whatever the classifier says: too few pixels to type or trust.
MIN_AREA = 4
#: Side of the window around a blob whose seep share and blob count are context features: one training
#: tile, so a blob in a whole scene sees what it would see in a tile.
CONTEXT = 256
#: Weight of the typist's type distribution against the first booster's (geometric mean; 0.5 = equal say).
TYPIST_WEIGHT = 0.5
MAX_TEXT = 20_000_000  # characters of LightGBM model text accepted from a file (the shipped one is ~1 MB)

SHAPE_FEATURES = [
    "log_area", "log_perimeter", "eccentricity", "solidity", "extent", "log_major", "log_minor",
    "compactness", "touches_edge",
]
IMAGE_FEATURES = [
    "mean_in", "std_in", "mean_ring", "std_ring", "contrast", "contrast_z", "grad_in", "nodata_ring",
    "seep_share_tile", "blobs_tile",
]


def feature_names(num_classes: int) -> list[str]:
    """Column names of ``blob_features`` for a model with ``num_classes`` classes."""
    probs = [f"p{k}" for k in range(num_classes)]
    return SHAPE_FEATURES + IMAGE_FEATURES + probs + ["p_seep", "p_max_fg"]


def blobs_of(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(component ids int32 (H, W), count) of the seep mask ``labels > 0``, 8-connected."""
    from scipy import ndimage

    comp, n = ndimage.label(np.asarray(labels) > 0, structure=np.ones((3, 3), bool))
    return comp.astype(np.int32, copy=False), int(n)


#: How far beyond a blob's bounding box its features look (its ring and its context window, which is centred
#: on a point inside the box): a window this much larger than the box gives the whole image's features.
MARGIN = max(RING, CONTEXT // 2)


def blob_features(
    image: np.ndarray, probs: np.ndarray, comp: np.ndarray, n: int, nodata: np.ndarray | None = None
) -> np.ndarray:
    """float32 (n, F) features of blobs 1..n of ``comp``.

    ``image``: normalised (C, H, W) or (H, W) (channel 0 is used); ``probs``: (K, H, W) class
    probabilities (float in [0, 1] or uint8 × 255); ``nodata``: bool (H, W) or None.
    """
    return window_features(image, probs, comp, np.arange(1, n + 1), nodata)


def window_features(
    image: np.ndarray, probs: np.ndarray, comp: np.ndarray, ids, nodata: np.ndarray | None = None,
    shape: tuple[int, int] | None = None, origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """float32 (len(ids), F) features of blobs ``ids`` of ``comp``, a window of a larger image.

    The window starts at ``origin`` of an image of ``shape`` (default: the window is the image). Each
    blob must lie within the window with ``MARGIN`` pixels to spare (or reach the image's border), so its
    features are those ``blob_features`` gives on the whole image (``seepview.core.refine_streamed``).
    """
    from scipy import ndimage
    from skimage.measure import regionprops

    ids = np.asarray(ids, np.int64)
    k = probs.shape[0]
    out = np.zeros((len(ids), len(feature_names(k))), np.float32)
    if len(ids) == 0:
        return out
    img = np.asarray(image, np.float32)
    img = img[0] if img.ndim == 3 else img
    h, w = comp.shape
    full_h, full_w = shape if shape is not None else (h, w)
    oy, ox = origin
    if shape is None and np.array_equal(ids, np.arange(1, len(ids) + 1)) and int(comp.max()) <= len(ids):
        local = comp  # the common case: every blob of a whole tile
    else:
        lut = np.zeros(max(int(comp.max()), int(ids.max())) + 1, np.int32)
        lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        local = lut[comp]
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    nodata = np.zeros((h, w), bool) if nodata is None else np.asarray(nodata, bool)
    valid = ~nodata
    context = CONTEXT // 2
    struct = np.ones((2 * RING + 1, 2 * RING + 1), bool)
    for rp in regionprops(local):
        y0, x0, y1, x1 = rp.bbox
        py0, px0, py1, px1 = max(0, y0 - RING), max(0, x0 - RING), min(h, y1 + RING), min(w, x1 + RING)
        inside = local[py0:py1, px0:px1] == rp.label
        ring = ndimage.binary_dilation(inside, struct) & (comp[py0:py1, px0:px1] == 0)
        ring_valid = ring & valid[py0:py1, px0:px1]
        patch = img[py0:py1, px0:px1]
        vin = patch[inside]
        vring = patch[ring_valid]
        mean_in, std_in = float(vin.mean()), float(vin.std())
        mean_ring = float(vring.mean()) if vring.size else mean_in
        std_ring = float(vring.std()) if vring.size else std_in
        area = float(rp.area)
        perimeter = float(rp.perimeter) or 1.0
        major, minor = float(rp.axis_major_length), float(rp.axis_minor_length)
        p = probs[:, py0:py1, px0:px1][:, inside].astype(np.float32).mean(axis=1) / scale
        edge = oy + y0 == 0 or ox + x0 == 0 or oy + y1 == full_h or ox + x1 == full_w
        out[rp.label - 1] = feature_row(
            area, perimeter, rp.eccentricity, rp.solidity, rp.extent, major, minor, edge,
            (mean_in, std_in, mean_ring, std_ring), _grad(patch, inside),
            float(ring.sum() and (ring & ~valid[py0:py1, px0:px1]).sum() / ring.sum()),
            _context(comp, rp.centroid, context), p)
    return out


def feature_row(area, perimeter, eccentricity, solidity, extent, major, minor, edge, stats, grad, nodata_ring,
                context, p) -> list[float]:
    """One blob's features in ``feature_names`` order from its measurements (``stats``: mean and std inside
    and in the ring; ``p``: mean class probabilities): the one place both ways of measuring meet
    (``window_features``, and ``blob_bands`` for a blob too large to hold its box)."""
    mean_in, std_in, mean_ring, std_ring = stats
    return [
        np.log1p(area), np.log1p(perimeter), eccentricity, solidity, extent,
        np.log1p(major), np.log1p(minor), 4 * np.pi * area / perimeter**2, float(edge),
        mean_in, std_in, mean_ring, std_ring, mean_ring - mean_in,
        (mean_ring - mean_in) / (std_ring + 1e-3), grad, nodata_ring,
        *context, *p, 1.0 - p[0], float(p[1:].max()) if len(p) > 1 else 0.0,
    ]


def _grad(patch: np.ndarray, inside: np.ndarray) -> float:
    """Mean gradient magnitude in the blob (central differences need 2 pixels along each axis)."""
    if min(patch.shape) < 2:
        return 0.0
    return float(np.hypot(*np.gradient(patch))[inside].mean())


def _context(comp: np.ndarray, centroid, half: int) -> tuple[float, float]:
    """(seep share, number of blobs) in the ``CONTEXT`` window around a blob's centroid."""
    cy, cx = int(centroid[0]), int(centroid[1])
    win = comp[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half]
    return float((win > 0).mean()), float(len(np.unique(win)) - 1)


def blob_targets(comp: np.ndarray, n: int, truth: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(majority true class per blob, 0 = a false blob; blob areas) for training the typer.

    Pixels with truth 255 (unlabelled) do not vote; a blob with no voting pixel gets class -1 (skip).
    """
    c = comp.ravel().astype(np.int64)
    t = np.asarray(truth).ravel().astype(np.int64)
    keep = (c > 0) & (t < num_classes)
    votes = np.zeros((n + 1, num_classes), np.int64)
    np.add.at(votes, (c[keep], t[keep]), 1)
    area = np.bincount(c, minlength=n + 1)[1:]
    target = votes[1:].argmax(axis=1)
    target[votes[1:].sum(axis=1) == 0] = -1
    return target, area


ENCODING = "deflate+base64"


def _pack(text: str) -> str:
    import base64
    import zlib

    return base64.b64encode(zlib.compress(text.encode("utf-8"), 9)).decode("ascii")


def _unpack(value, encoding: str | None, what: str, path) -> str:
    """A stored booster's text; anything that is not LightGBM text (or inflates past ``MAX_TEXT``) raises
    ModelError naming ``path``."""
    import base64
    import binascii
    import zlib

    text = value
    if encoding is not None and isinstance(value, str):
        try:
            raw = base64.b64decode(value.encode("ascii"), validate=True)
            inflater = zlib.decompressobj()
            out = inflater.decompress(raw, MAX_TEXT + 1)
            whole = len(out) <= MAX_TEXT and inflater.eof and not inflater.unused_data
            text = out.decode("utf-8") if whole else None
        except (binascii.Error, zlib.error, UnicodeError, ValueError):
            text = None
    if not isinstance(text, str) or not text.startswith("tree") or len(text) > MAX_TEXT:
        raise ModelError(path, f"typer {what} is not a LightGBM text model")
    return text


@dataclass
class Typer:
    """A fitted blob classifier: LightGBM booster text + the feature layout it was trained on.

    ``typist_text``: optional second booster (same features and classes) whose seep-type probabilities
    are combined with the first one's (geometric mean); the first one's P(reject) is kept. A blob that the
    first one split between types can therefore be kept or rejected differently (``Blobs.labels`` takes
    the most likely column).
    """

    model_text: str
    num_classes: int
    features: list[str]
    info: dict
    typist_text: str | None = None

    # --- storage -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        typist = None if self.typist_text is None else _pack(self.typist_text)
        return {"format": TYPER_FORMAT, "kind": "lightgbm", "num_classes": self.num_classes,
                "features": list(self.features), "info": dict(self.info), "encoding": ENCODING,
                "model": _pack(self.model_text), "typist": typist}

    @classmethod
    def from_dict(cls, data, path: str | os.PathLike | None = None, num_classes: int | None = None) -> Typer:
        """Validate a stored typer; any problem raises ModelError naming the file."""
        if not isinstance(data, dict):
            raise ModelError(path, "model typer is not a JSON object")
        fmt = data.get("format")
        if type(fmt) is not int or fmt not in TYPER_FORMATS or data.get("kind") != "lightgbm":
            raise ModelError(path, f"unknown typer format {reprlib.repr(fmt)}/{reprlib.repr(data.get('kind'))}")
        k = data.get("num_classes")
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 255:
            raise ModelError(path, f"typer num_classes must be 2..255, got {reprlib.repr(k)}")
        if num_classes is not None and k != num_classes:
            raise ModelError(path, f"typer types {k} classes but the network outputs {num_classes}")
        if data.get("features") != feature_names(k):
            raise ModelError(path, "typer features differ from the ones this seepview computes")
        encoding = data.get("encoding")
        if encoding not in (None, ENCODING):
            raise ModelError(path, f"unknown typer encoding {reprlib.repr(encoding)}")
        # format 1 (session 7) is plain text without a typist; format 2 is always deflated
        if (fmt == 1) != (encoding is None) or (fmt == 1 and data.get("typist") is not None):
            raise ModelError(path, f"typer format {fmt} does not match its encoding or typist")
        text = _unpack(data.get("model"), encoding, "model", path)
        typist = data.get("typist")
        typist = None if typist is None else _unpack(typist, encoding, "typist", path)
        info = data.get("info", {})
        if not isinstance(info, dict):
            raise ModelError(path, "typer info must be an object")
        seen = info.get("typist_blobs")
        if seen is not None and (not isinstance(seen, list) or len(seen) != k
                                 or not all(type(v) is int and v >= 0 for v in seen)):
            raise ModelError(path, "typer info typist_blobs must be one blob count per class")
        return cls(text, k, list(data["features"]), info, typist)

    def booster(self, path: str | os.PathLike | None = None):
        """The parsed LightGBM model (parsed once); a damaged text raises ModelError naming ``path``."""
        if getattr(self, "_booster", None) is None:
            self._booster = self._parse(self.model_text, "model", path)
        return self._booster

    def typist(self, path: str | os.PathLike | None = None):
        """The parsed typist, or None when this typer has none (parsed once, checked like ``booster``)."""
        if self.typist_text is None:
            return None
        if getattr(self, "_typist", None) is None:
            self._typist = self._parse(self.typist_text, "typist", path)
        return self._typist

    def _parse(self, text: str, what: str, path):
        """LightGBM parses only a copy re-built from checked parts (``lgbm_text``): its own parser trusts
        the text and can hang or abort the process on a crafted one."""
        import lightgbm as lgb

        from seepview.core.model.lgbm_text import clean_model_text

        try:
            clean = clean_model_text(text, len(self.features), self.num_classes)
        except ValueError as exc:
            raise ModelError(path, f"typer {what} is damaged: {exc}") from None
        try:
            booster = lgb.Booster(model_str=clean)
        except Exception as exc:  # LightGBMError, or whatever else its wrapper raises on odd text
            raise ModelError(path, f"typer {what} cannot be read: {str(exc).strip()[:120]}") from None
        if booster.num_feature() != len(self.features):
            raise ModelError(path, f"typer {what} has a different number of features than it declares")
        if booster.num_model_per_iteration() != self.num_classes:
            raise ModelError(path, f"typer {what} types a different number of classes than it declares")
        return booster

    # --- use -----------------------------------------------------------------------------------
    def blob_proba(self, feats: np.ndarray) -> np.ndarray:
        """(n, num_classes) probabilities per blob; column 0 is "reject".

        With a typist, the seep columns are the geometric mean of the two boosters' type distributions
        (``TYPIST_WEIGHT``), scaled to the first booster's P(seep).
        """
        if len(feats) == 0:
            return np.zeros((0, self.num_classes), np.float64)
        p = np.asarray(self.booster().predict(feats), np.float64).reshape(len(feats), self.num_classes)
        typist = self.typist()
        if typist is not None and self.num_classes > 1:
            t = np.asarray(typist.predict(feats), np.float64).reshape(len(feats), self.num_classes)[:, 1:]
            own = p[:, 1:] / np.maximum(p[:, 1:].sum(axis=1, keepdims=True), 1e-12)
            t /= np.maximum(t.sum(axis=1, keepdims=True), 1e-12)
            seen = np.asarray(self.info.get("typist_blobs", [1] * self.num_classes), np.float64)[1:] > 0
            if seen.shape == (self.num_classes - 1,) and not seen.all():
                # a class with no typist blob starts at LightGBM's ~1e-15 and would be vetoed: such a class
                # keeps the first booster's say
                t[:, ~seen] = own[:, ~seen]
                t /= np.maximum(t.sum(axis=1, keepdims=True), 1e-12)
            q = own ** (1 - TYPIST_WEIGHT) * t**TYPIST_WEIGHT
            total = np.broadcast_to(q.sum(axis=1, keepdims=True), q.shape)
            q = np.divide(q, total, out=own.copy(), where=total > 0)  # both 0 everywhere: keep the first's
            p[:, 1:] = q * p[:, 1:].sum(axis=1, keepdims=True)
        return p

    def score_blobs(self, labels: np.ndarray, image: np.ndarray, probs: np.ndarray,
                    nodata: np.ndarray | None = None, within: tuple[slice, slice] | None = None,
                    shape: tuple[int, int] | None = None, origin: tuple[int, int] = (0, 0)) -> Blobs:
        """The blobs of ``labels`` with the typer's class probabilities (the costly part of ``apply``).

        ``within`` (rows, columns): only the blobs that meet this part of the arrays are scored, measured on
        all of them (a window of an image of ``shape`` starting at ``origin``), and the result is cut to it.
        """
        comp, n = blobs_of(labels)
        area = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        if within is None:
            feats = blob_features(image, probs, comp, n, nodata)
            return Blobs(comp, self.blob_proba(feats), area < MIN_AREA, np.asarray(labels, np.uint8))
        ys, xs = within
        ids = np.unique(comp[ys, xs])
        ids = ids[ids > 0]
        feats = window_features(image, probs, comp, ids, nodata, shape or comp.shape, origin)
        lut = np.zeros(n + 1, np.int32)
        lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        return Blobs(lut[comp[ys, xs]], self.blob_proba(feats), area[ids - 1] < MIN_AREA,
                     np.asarray(labels, np.uint8)[ys, xs])

    def apply(self, labels: np.ndarray, image: np.ndarray, probs: np.ndarray,
              nodata: np.ndarray | None = None, prior: np.ndarray | None = None) -> np.ndarray:
        """uint8 labels with every blob of ``labels`` given one class (0 = rejected); other pixels kept.

        ``prior``: optional per-class multipliers on the blob probabilities (a scene's class mix over the
        training mix); see ``Blobs.labels``.
        """
        return self.score_blobs(labels, image, probs, nodata).labels(prior)


@dataclass
class Blobs:
    """Scored blobs of one image: component ids, typer probabilities (n, K), too-small flags, input labels."""

    comp: np.ndarray
    proba: np.ndarray
    small: np.ndarray
    source: np.ndarray

    def labels(self, prior: np.ndarray | None = None, main_class: int | None = None,
               votes: np.ndarray | None = None) -> np.ndarray:
        """Final labels: each blob's most likely class (0 = reject), with optional scene evidence.

        ``prior``: per-class multipliers (a scene's class mix) on the seep classes, with their total held
        at the typer's P(seep) (entry 0 is ignored), so the scene's mix re-types blobs and, the choice
        being the most likely class, also keeps a blob the typer found seep but split between types.
        Measured on unseen scenes (``benchmarks/run.py adapt``): the unnormalised prior cost binary IoU;
        this one gains 0.005-0.01 binary IoU over re-typing only the blobs the typer kept, and ~0.01 mIoU.
        ``main_class``: every kept blob takes it. ``votes`` (n, K) from a reviewed neighbour
        (``scene_grid.edge_votes``): a blob that continues a slick the user labelled takes that class,
        whatever the typer said.
        """
        out = self.source.copy()
        if len(self.proba) == 0:
            return out
        cls = blob_classes(self.proba, self.small, prior, main_class, votes)
        lut = np.concatenate([[0], cls]).astype(np.uint8)
        fg = self.comp > 0
        out[fg] = lut[self.comp[fg]]
        return out


def blob_classes(proba: np.ndarray, small: np.ndarray, prior: np.ndarray | None = None,
                 main_class: int | None = None, votes: np.ndarray | None = None) -> np.ndarray:
    """uint8 (n,) class of each blob (0 = reject) from its typer probabilities; see ``Blobs.labels``."""
    p = np.asarray(proba, np.float64)
    if prior is not None:  # the seep classes' total probability stays what the typer said
        q = p.copy()
        q[:, 1:] *= np.asarray(prior, np.float64)[None, 1:]
        q[:, 1:] *= (p[:, 1:].sum(axis=1) / np.maximum(q[:, 1:].sum(axis=1), 1e-12))[:, None]
        p = q
    cls = p.argmax(axis=1).astype(np.uint8)
    cls[np.asarray(small, bool)] = 0
    if main_class:
        cls[cls > 0] = main_class
    if votes is not None:
        voted = votes.sum(axis=1) > 0
        cls[voted] = votes[voted].argmax(axis=1)
    return cls


def _balanced_weights(targets, areas, area_power: float, extra_weight=None):
    """(kept rows, int64 targets, weights): area**power, times ``extra_weight``, each class present summing
    to the same total (rare seep types are not drowned by seep 1 and rejects)."""
    keep = targets >= 0
    y, a = targets[keep].astype(np.int64), areas[keep].astype(np.float64)
    w = a**area_power
    if extra_weight is not None:
        w = w * np.asarray(extra_weight, np.float64)[keep]
    for c in np.unique(y):
        w[y == c] /= w[y == c].sum()
    w *= len(y) / max(w.sum(), 1e-12)
    return keep, y, w


def _params(num_classes: int, seed: int, learning_rate: float = 0.05) -> dict:
    return {
        "objective": "multiclass", "num_class": num_classes, "learning_rate": learning_rate, "num_leaves": 15,
        "min_data_in_leaf": 5, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
        "lambda_l2": 1.0, "verbose": -1, "seed": seed, "num_threads": 2, "deterministic": True,
    }


def refit_typer(typer: Typer, feats: np.ndarray, targets: np.ndarray, areas: np.ndarray, rounds: int = 60,
                area_power: float = 0.5, seed: int = 0, info: dict | None = None) -> Typer:
    """``typer`` boosted further on new blobs (a fine-tuned network's, on the user's reviewed tiles).

    Continued boosting keeps what the typer learnt across scenes and adds ``rounds`` trees for the new
    network's mistakes; whether that helps is for the caller to check out-of-fold. A typist is kept as it
    is: the new blobs are of the tiles the network now trained on, the kind that teaches typing badly.
    """
    import lightgbm as lgb

    keep, y, w = _balanced_weights(targets, areas, area_power)
    if len(y) < 2:
        raise ValueError("need at least two labelled blobs to refit a typer")
    data = lgb.Dataset(feats[keep], y, weight=w, feature_name=list(typer.features), free_raw_data=True)
    booster = lgb.train(_params(typer.num_classes, seed), data, num_boost_round=rounds,
                        init_model=typer.booster())
    meta = {**typer.info, "refit": {"blobs": int(len(y)), "rounds": rounds, **(info or {})}}
    return Typer(booster.model_to_string(), typer.num_classes, list(typer.features), meta, typer.typist_text)


def fit_typer(feats: np.ndarray, targets: np.ndarray, areas: np.ndarray, num_classes: int,
              area_power: float = 0.5, rounds: int = 150, seed: int = 0, extra_weight=None,
              info: dict | None = None, typist_rows=None) -> Typer:
    """Fit the typer on blob features with class-balanced, area-weighted sample weights.

    A blob weighs ``area ** area_power`` (IoU is counted in pixels, so big blobs matter more), then every
    class present gets the same total weight, so rare seep types are not drowned by seep 1 and rejects.
    ``typist_rows``: bool per row; when given, a typist is fitted on those rows' seep blobs only (blobs of
    scenes the network never trained on), unweighted by ``extra_weight``.
    """
    import lightgbm as lgb

    keep, y, w = _balanced_weights(targets, areas, area_power, extra_weight)
    x = feats[keep]
    if len(y) < 2:
        raise ValueError("need at least two labelled blobs to fit a typer")
    params = _params(num_classes, seed)
    data = lgb.Dataset(x, y, weight=w, feature_name=feature_names(num_classes), free_raw_data=True)
    booster = lgb.train(params, data, num_boost_round=rounds)
    meta = {"blobs": int(len(y)), "class_blobs": np.bincount(y, minlength=num_classes).tolist(),
            "area_power": area_power, "rounds": rounds, **(info or {})}
    typist = None
    if typist_rows is not None:
        rows = np.asarray(typist_rows, bool) & (np.asarray(targets) > 0)
        t_keep, t_y, t_w = _balanced_weights(np.where(rows, targets, -1), areas, area_power)
        if len(np.unique(t_y)) < 2:
            raise ValueError("the typist needs seep blobs of at least two classes")
        t_data = lgb.Dataset(feats[t_keep], t_y, weight=t_w, feature_name=feature_names(num_classes),
                             free_raw_data=True)
        typist = lgb.train(params, t_data, num_boost_round=rounds).model_to_string()
        meta["typist_blobs"] = np.bincount(t_y, minlength=num_classes).tolist()
    return Typer(booster.model_to_string(), num_classes, feature_names(num_classes), meta, typist)
