"""Scene adaptation, the instant path: learn from one scene's reviewed tiles in seconds, no network training.

Scenes differ strongly (one is 91 % seep 5; blobs in one tile mostly share a class), so a scene's reviewed
tiles say a lot about its other tiles. Candidates, each fitted on the reviewed tiles only:

- ``none``: the base model (U-Net, then its typer);
- ``prior``: the typer's blob probabilities times the scene's class mix (reviewed seep pixels per class),
  tempered by how many tiles it rests on (``PRIOR_FULL_TILES``), with each blob's P(seep) held fixed: it
  mostly re-types blobs, and settles some the typer found seep but split between types (they are kept);
- ``main``: every blob the typer keeps takes the scene's main seep class;
- ``head`` / ``head+prior`` / ``head+main`` (from ``MIN_HEAD_TILES`` tiles): a per-scene logistic-regression
  pixel head on the U-Net's probabilities plus a few filter responses re-draws the seep mask before typing.

The choice is made out-of-fold on the reviewed tiles (the instant path's own gate) by the mean of mIoU and
binary IoU, with the measured default ``prior`` kept unless another candidate clearly beats it (on 20 tiles
or fewer the out-of-fold score cannot rank candidates closer than that), and reported ("adapted on 14 tiles:
..."). The result is JSON in the model file's metadata (``ModelMeta.adaptation``): one adaptation, or one per
scene (``adaptations_of``: a project reviewed in several scenes keeps each scene's); ``refine`` applies the
image's scene's one and the typer. Independently of the adaptation, a blob that continues a slick labelled in a reviewed neighbour
tile takes that slick's class (``scene_grid``; ``refine(edges=...)``).
"""

from __future__ import annotations

import contextlib
import math
import os
import reprlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from seepview.core.adapt_units import (
    LARGE_SIDE,
    MAX_CHOICE_UNITS,
    TileData,
    fold_parts,
    held_out_groups,
    is_large_entry,
    pixels_for_adaptation,
    sampled_units,
    tile_data,
    too_large_to_hold,
    typed_in_place,
    units_of,
)
from seepview.core.errors import ModelError

ADAPT_FORMAT = 1
#: ``ModelMeta.adaptation`` holding one adaptation per scene: {"format": 2, "scenes": [...]}.
SET_FORMAT = 2
MAX_SCENES = 10_000  # adaptations one model file may hold (a hostile file must not cost time)
#: Below this many reviewed tiles the pixel head is not offered: measured to hurt with fewer (issue 11).
MIN_HEAD_TILES = 10
KINDS = ("none", "prior", "main", "head", "head+prior", "head+main")
HEAD_FEATURES = ["logit_seep", "p_max_fg", "img", "smooth2", "contrast6", "grad1"]
PIXELS_PER_TILE = 4000  # pixels sampled per reviewed tile to fit the head (all seep pixels up to half)
SMOOTH = 1.0  # pseudo-count (per cent of the reviewed seep pixels) added to every class in a scene prior
#: Reviewed tiles at which a scene's class mix counts in full; below, its multipliers are raised to the power
#: tiles / PRIOR_FULL_TILES (shrunk towards the typer's flat prior). The mix of 5 tiles is a few slicks'
#: worth of evidence: in full it lost 0.02 mIoU at 5 and 10 tiles, tempered it gains at 5, 10 and 20
#: (docs/benchmarks.md "Session 8"). Measured only up to 20 tiles (tiles/40 beat tiles/20 by 0.002-0.010
#: there): that it should count in full from 40 is an extrapolation, not a measurement.
PRIOR_FULL_TILES = 40
#: What a scene's reviewed tiles switch to unless out-of-fold evidence clearly says otherwise: the scene's
#: class mix (mostly re-types blobs; keeps P(seep)). Measured over 45 draws on the 3 unseen scenes
#: (``benchmarks/run.py adapt``, ``cv_vs_rest``): always choosing it gave the best mean mIoU and binary IoU
#: at k = 5, 10 and 20, and the out-of-fold score on those few reviewed tiles did not predict which candidate
#: does better on the rest of the scene (correlation -0.63..+0.46; its error, SD 0.02-0.06, exceeds the
#: differences). Not measured beyond 20 reviewed tiles (the unseen scenes hold 34-43).
DEFAULT_KIND = "prior"
#: Another candidate (including "none") replaces the default only when it beats it out-of-fold by more than
#: this: about the SD of the out-of-fold score's error measured above (5-20 tiles; with many more reviewed
#: tiles the out-of-fold score is less noisy and this margin is conservative).
SWITCH_MARGIN = 0.04


def _finite(v) -> bool:
    """A stored number: int or float, not bool, not NaN or ±Infinity (which Python's json accepts)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float range
        return False


@dataclass
class Adaptation:
    kind: str = "none"
    scene: str = ""
    tiles: int = 0
    head: dict | None = None  # {"coef": [...], "intercept": float}
    prior: list | None = None  # per-class multipliers on the typer's blob probabilities
    main_class: int | None = None
    cv: dict = field(default_factory=dict)
    fit_s: float = 0.0
    default: str = "none"  # what stood unless clearly beaten out-of-fold (DEFAULT_KIND with a typer)
    blocks: int = 0  # how many of the ``tiles`` units were ``BLOCK`` blocks of large reviewed images

    def to_dict(self) -> dict:
        return {"format": ADAPT_FORMAT, "kind": self.kind, "scene": self.scene, "tiles": self.tiles,
                "head": self.head, "prior": self.prior, "main_class": self.main_class, "cv": self.cv,
                "fit_s": round(self.fit_s, 3), "features": HEAD_FEATURES, "default": self.default,
                **({"blocks": self.blocks} if self.blocks else {})}

    @classmethod
    def from_dict(cls, data, path: str | os.PathLike | None = None, num_classes: int | None = None) -> Adaptation:
        """Validate a stored adaptation; any problem raises ModelError naming the file."""
        if not isinstance(data, dict) or data.get("format") != ADAPT_FORMAT:
            raise ModelError(path, "model adaptation has an unknown format")
        kind = data.get("kind")
        if kind not in KINDS:
            raise ModelError(path, f"unknown adaptation kind {kind!r} (known: {', '.join(KINDS)})")
        head, prior, main = data.get("head"), data.get("prior"), data.get("main_class")
        if "head" in kind:
            coef = head.get("coef") if isinstance(head, dict) else None
            if (not isinstance(coef, list) or len(coef) != len(HEAD_FEATURES)
                    or not all(_finite(v) for v in [*coef, head.get("intercept")])):
                raise ModelError(path, "adaptation pixel head must hold finite numbers for its coefficients")
        if "prior" in kind and (not isinstance(prior, list) or not all(_finite(v) and v >= 0 for v in prior)
                                or (num_classes is not None and len(prior) != num_classes)):
            raise ModelError(path, "adaptation prior must be one finite, non-negative number per class")
        tiles, blocks = data.get("tiles", 0), data.get("blocks", 0)
        if not (isinstance(tiles, int) and not isinstance(tiles, bool) and 0 <= tiles < 2**31):
            raise ModelError(path, "adaptation tile count must be a whole number of tiles")
        if not (isinstance(blocks, int) and not isinstance(blocks, bool) and 0 <= blocks <= tiles):
            raise ModelError(path, "adaptation block count must be a whole number, at most its tile count")
        if "main" in kind and (isinstance(main, bool) or not isinstance(main, int)
                               or not 1 <= main < (num_classes or 256)):
            raise ModelError(path, f"adaptation main class {reprlib.repr(main)} is not a seep class")
        cv = data.get("cv", {})
        cv = {str(k): float(v) for k, v in cv.items() if _finite(v)} if isinstance(cv, dict) else {}
        # files written before the default existed were chosen by the best out-of-fold score alone
        default = data.get("default", "none")
        fit_s = data.get("fit_s", 0.0)
        scene = data.get("scene", "")
        if not isinstance(scene, str):
            raise ModelError(path, f"adaptation scene must be a scene id (text), got {reprlib.repr(scene)}")
        return cls(kind, scene, tiles, head, prior, main, cv,
                   float(fit_s) if _finite(fit_s) else 0.0, default if default in KINDS else "none", blocks)

    def units(self) -> str:
        """"14 tiles", "96 tile-sized blocks" (of larger reviewed images), or both."""
        tiles, blocks = self.tiles - self.blocks, self.blocks
        parts = ([f"{tiles} tile{'' if tiles == 1 else 's'}"] if tiles or not blocks else []) + (
            [f"{blocks} tile-sized block{'' if blocks == 1 else 's'}"] if blocks else [])
        return " and ".join(parts)

    def summary(self) -> str:
        """One line for the UI and CLI: what was chosen and why."""
        where = f" for scene {self.scene}" if self.scene else ""
        n = self.units()
        base, best = self.cv.get("none"), self.cv.get(self.kind)
        if base is None or best is None:
            return f"adapted{where}: {self.kind}" if self.kind != "none" else f"not adapted{where} ({n})"
        if len(self.cv) == 1 and self.tiles < 2:  # one reviewed tile, or one image too small to cut in blocks
            return (f"not adapted{where} ({n}): choosing out-of-fold needs at least 2 reviewed tiles of the scene, "
                    f"or one reviewed image of at least {LARGE_SIDE} x {LARGE_SIDE} px")
        if len(self.cv) == 1:
            return (f"not adapted{where} ({n}): too few reviewed tiles with seeps to compare "
                    "candidates out-of-fold yet")
        default = self.default if self.default in self.cv else "none"
        others = {k: v for k, v in self.cv.items() if k != self.kind}
        runner = max(others, key=others.get)
        seen = "blocks" if self.blocks == self.tiles else "tiles and blocks" if self.blocks else "tiles"
        unheld = (f"; {runner} scored {others[runner]:.2f} out-of-fold, but its lead did not hold across the "
                  f"reviewed {seen}") if others[runner] > best + SWITCH_MARGIN else ""
        if self.kind == "none" and default == "none":
            if unheld:
                return f"not adapted{where} ({n}): cv {base:.2f}{unheld}"
            return (f"not adapted{where} ({n}): no candidate beat the unadapted model out-of-fold "
                    f"by more than {SWITCH_MARGIN:.2f} (cv {base:.2f}; best other: {runner} {others[runner]:.2f})")
        if self.kind == "none":
            return (f"not adapted{where} ({n}): the unadapted model beat the scene's class mix "
                    f"out-of-fold by more than {SWITCH_MARGIN:.2f} (cv {base:.2f} vs {self.cv[default]:.2f})")
        if self.kind == default:
            if unheld:
                return (f"adapted on {n}{where}: the scene's class mix re-types its slicks (cv {best:.2f} vs "
                        f"{base:.2f} unadapted{unheld})")
            return (f"adapted on {n}{where}: the scene's class mix re-types its slicks (cv "
                    f"{best:.2f} vs {base:.2f} unadapted; no other candidate was ahead of it by more than "
                    f"{SWITCH_MARGIN:.2f}, which on this many tiles is too little to go on)")
        alone = f" and {self.cv[default]:.2f} for the class mix alone" if default != "none" else ""
        return f"adapted on {n}{where}: {self.kind}, cv score {best:.2f} vs {base:.2f} unadapted{alone}"


def adaptations_of(data, path: str | os.PathLike | None = None, num_classes: int | None = None) -> list[Adaptation]:
    """The scene adaptations stored in ``ModelMeta.adaptation``: none ({}), one (format 1), or one per scene
    (``SET_FORMAT``), validated; any problem raises ModelError naming the file."""
    if not data:
        return []
    if isinstance(data, dict) and data.get("format") == SET_FORMAT:
        items = data.get("scenes")
        if not isinstance(items, list) or not 2 <= len(items) <= MAX_SCENES:
            raise ModelError(path, f"model adaptation set must list the adaptations of 2 to {MAX_SCENES:,} scenes")
        ads = [Adaptation.from_dict(d, path, num_classes) for d in items]
        scenes = [a.scene for a in ads]
        if "" in scenes or len(set(scenes)) != len(scenes):
            raise ModelError(path, "model adaptation set must hold each scene once, each with its scene id")
    else:
        ads = [Adaptation.from_dict(data, path, num_classes)]
    return [a for a in ads if a.kind != "none"]  # a stored "no adaptation" (files before session 12) is none


def adaptation_for(data, scene: str | None) -> Adaptation:
    """The adaptation ``refine`` applies to an image of ``scene`` (None: not known): that scene's, else one
    fitted for every scene (scene ""), else, for an image of unknown scene, a model's only one; otherwise
    none (an adaptation fitted for one scene is not applied to another)."""
    ads = data if isinstance(data, list) else adaptations_of(data)  # parsed once by callers with many images
    for ad in ads:
        if scene and ad.scene == scene:
            return ad
    for ad in ads:
        if not ad.scene:
            return ad
    return ads[0] if scene is None and len(ads) == 1 else Adaptation()


def with_adaptation(data, ad: Adaptation) -> dict:
    """``ModelMeta.adaptation`` ``data`` with ``ad`` in place of its scene's entry (the entry removed when
    ``ad`` is "none"); the other scenes' adaptations are kept. One for every scene (scene "") replaces all."""
    keep = [a for a in adaptations_of(data) if a.scene and a.scene != ad.scene] if ad.scene else []
    if ad.kind != "none":
        keep.append(ad)
    keep.sort(key=lambda a: a.scene)
    if len(keep) <= 1:
        return keep[0].to_dict() if keep else {}
    return {"format": SET_FORMAT, "scenes": [a.to_dict() for a in keep]}


def describe_adaptations(data, scene: str | None = None) -> str | None:
    """One line for the Model panel: the adaptation that applies to ``scene`` and how many other scenes have
    one; None without any."""
    ads = adaptations_of(data)
    if not ads:
        return None
    mine = adaptation_for(ads, scene)
    if mine.kind == "none":
        names = ", ".join(a.scene for a in ads[:3]) + (", ..." if len(ads) > 3 else "")
        return f"none for this scene (adapted: {names})" if scene else f"adapted for scenes {names}"
    others = len(ads) - 1  # mine is one of them
    # first, so a narrow panel that cuts the long summary short still shows it
    more = f"{others} other scene{'s' if others != 1 else ''} adapted too. This one: " if others else ""
    return more + mine.summary()


# --- pixel head ----------------------------------------------------------------------------------
def head_features(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """float32 (H*W, F) pixel features: the U-Net's seep logit and top seep probability + filter responses."""
    from scipy import ndimage

    img = np.asarray(image, np.float32)
    img = img[0] if img.ndim == 3 else img
    p = probs.astype(np.float32) / (255.0 if probs.dtype == np.uint8 else 1.0)
    p0 = np.clip(p[0], 1e-3, 1 - 1e-3)
    smooth2 = ndimage.gaussian_filter(img, 2.0)
    feats = [np.log1p(-p0) - np.log(p0), p[1:].max(axis=0), img, smooth2,
             ndimage.gaussian_filter(img, 6.0) - smooth2, ndimage.gaussian_gradient_magnitude(img, 1.0)]
    return np.stack(feats, axis=-1).reshape(-1, len(feats))


def _fit_head(tiles: Sequence[TileData], seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for t in tiles:
        f = head_features(t.image, t.probs)
        y = np.asarray(t.truth).ravel()
        ok = y != 255
        if t.nodata is not None:
            ok &= ~np.asarray(t.nodata).ravel()
        idx = np.flatnonzero(ok)
        pos, neg = idx[y[idx] > 0], idx[y[idx] == 0]
        take = np.concatenate([rng.choice(pos, min(len(pos), PIXELS_PER_TILE // 2), replace=False),
                               rng.choice(neg, min(len(neg), PIXELS_PER_TILE - min(len(pos), PIXELS_PER_TILE // 2)),
                                          replace=False)])
        xs.append(f[take])
        ys.append(y[take] > 0)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if y.all() or not y.any():
        raise ValueError("the reviewed tiles need both seep and sea pixels to fit a pixel head")
    # Sampling evens out seep and sea; reweight so the head estimates the scene's true seep odds.
    n_pos = sum(int(((np.asarray(t.truth) > 0) & (np.asarray(t.truth) != 255)).sum()) for t in tiles)
    n_all = sum(int((np.asarray(t.truth) != 255).sum()) for t in tiles)
    w = np.where(y, n_pos / max(1, y.sum()), (n_all - n_pos) / max(1, (~y).sum()))
    lr = LogisticRegression(C=1.0, max_iter=200)
    lr.fit(x, y)
    # Fitted on balanced samples; the cut is then chosen for the best seep IoU at the scene's true
    # seep/sea odds (the weights), which is what the rest of the scene will be scored on.
    z = x @ lr.coef_[0]
    cuts = np.quantile(z, np.linspace(0.3, 0.995, 60))
    wp, wn = w * y, w * ~y
    ious = [(wp[z > c].sum()) / (wp.sum() + wn[z > c].sum()) for c in cuts]
    cut = float(cuts[int(np.argmax(ious))])
    return {"coef": [float(v) for v in lr.coef_[0]], "intercept": -cut}


def _head_mask(head: dict, image, probs) -> np.ndarray:
    f = head_features(image, probs)
    z = f @ np.asarray(head["coef"], np.float32) + np.float32(head["intercept"])
    return (z > 0).reshape(probs.shape[1:])


def head_labels(head: dict, image, probs, nodata=None) -> np.ndarray:
    """uint8 labels the pixel head re-draws: its seep pixels (never no-data) take the U-Net's top seep class."""
    mask = _head_mask(head, image, probs)
    if nodata is not None:
        mask &= ~np.asarray(nodata, bool)
    return np.where(mask, np.asarray(probs[1:]).argmax(axis=0) + 1, 0).astype(np.uint8)


# --- applying -------------------------------------------------------------------------------------
def refine(meta, labels: np.ndarray, image: np.ndarray, probs: np.ndarray, nodata=None,
           scene: str | None = None, edges=None) -> np.ndarray:
    """The model's final labels from the U-Net's ``labels``/``probs``: adaptation head, then typer.

    ``meta``: the checkpoint's ``ModelMeta`` (uses ``typer`` and ``adaptation``). No-data pixels stay
    background. The adaptation applied is the image's ``scene``'s (``adaptation_for``): an adaptation fitted for
    one scene is not applied to an image known to belong to another; there only the typer runs. ``edges``: {side: label line} of reviewed neighbour tiles
    (``scene_grid.edge_labels``); a blob continuing a slick labelled there takes its class. Returns
    ``labels`` unchanged when there is no typer, adaptation or edge evidence.
    """
    ad = adaptation_for(meta.adaptation, scene)
    typer = _cached_typer(meta.typer) if meta.typer else None
    return _apply(ad, typer, labels, image, probs, nodata, edges)


_TYPERS: dict[tuple, object] = {}
_TYPERS_LOCK = threading.Lock()


def _cached_typer(data: dict):
    """One parsed booster per typer (parsing a 1 MB model takes ~50 ms; tiles come by the hundred).

    Keyed on everything ``blob_proba`` depends on; workers (re-predict, adaptation, gate) share it."""
    from seepview.core.model.typer import Typer

    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    key = (str(data.get("model")), str(data.get("typist")), str(data.get("encoding")), str(data.get("num_classes")),
           repr(info.get("typist_blobs")))
    with _TYPERS_LOCK:
        typer = _TYPERS.get(key)
    if typer is None:
        typer = Typer.from_dict(data)
        with _TYPERS_LOCK:
            if len(_TYPERS) >= 8:
                _TYPERS.clear()
            _TYPERS[key] = typer
    return typer


def _apply(ad: Adaptation, typer, labels, image, probs, nodata, edges=None, grow: bool = True) -> np.ndarray:
    out = np.asarray(labels, np.uint8)
    if "head" in ad.kind and ad.head:
        out = head_labels(ad.head, image, probs, nodata)
    k = int(np.asarray(probs).shape[0])
    out = _finish(ad, typer.score_blobs(out, image, probs, nodata) if typer is not None else out, edges, k)
    if edges and grow:  # slicks the reviewed neighbours hold at the edge, continued where the model missed them
        from seepview.core.scene_grid import grow_from_edges

        out = grow_from_edges(out, image, probs, edges, nodata, k)
    return out


def _finish(ad: Adaptation, scored, edges=None, num_classes: int = 8) -> np.ndarray:
    """Labels from scored blobs (or plain labels without a typer) under the adaptation's prior / main
    class, and what reviewed neighbours say across the tile's edges (only their classes 1..num_classes-1
    vote: unlabelled 255 is not evidence)."""
    from seepview.core.model.typer import blobs_of
    from seepview.core.scene_grid import edge_votes

    prior = np.asarray(ad.prior, np.float64) if "prior" in ad.kind and ad.prior else None
    main = ad.main_class if "main" in ad.kind else None
    if isinstance(scored, np.ndarray):  # no typer: the network's classes, pixel by pixel
        out = np.where(scored > 0, main, scored).astype(np.uint8) if main else scored
        if edges:
            comp, n = blobs_of(out)
            votes = edge_votes(comp, n, edges, num_classes)
            voted = votes.sum(axis=1) > 0
            lut = np.concatenate([[0], np.where(voted, votes.argmax(axis=1), 0)]).astype(np.uint8)
            out = np.where(lut[comp] > 0, lut[comp], out).astype(np.uint8)
        return out
    votes = edge_votes(scored.comp, len(scored.proba), edges, scored.proba.shape[1]) if edges else None
    return scored.labels(prior, main, votes)


# --- fitting ------------------------------------------------------------------------------------
def _candidate(kind: str, tiles: Sequence[TileData], num_classes: int, seed: int, head=None) -> Adaptation:
    ad = Adaptation(kind=kind, tiles=len(tiles))
    if kind == "none":
        return ad
    counts = np.zeros(num_classes, np.float64)
    for t in tiles:
        counts += np.bincount(np.asarray(t.truth).ravel(), minlength=256)[:num_classes]
    fg = counts[1:]
    # The typer is fitted class-balanced (a flat prior), so the scene's class mix is the prior shift.
    share = fg + SMOOTH * max(1.0, fg.sum()) / 100
    strength = min(1.0, sum(t.evidence for t in tiles) / PRIOR_FULL_TILES)
    ad.prior = [1.0, *[float(v) for v in (share / share.mean()) ** strength]]
    ad.main_class = int(fg.argmax()) + 1 if fg.sum() else None
    if "head" in kind:
        ad.head = head or _fit_head(tiles, seed)
    return ad


def _has_seep(truth, num_classes: int) -> bool:
    """Whether reviewed ``truth`` labels any seep pixel (unlabelled 255 is no evidence)."""
    t = np.asarray(truth)
    return bool(((t > 0) & (t < num_classes)).any())


def fit_adaptation(meta, tiles: Sequence[TileData], scene: str = "", folds: int = 5, seed: int = 0,
                   kinds: Sequence[str] | None = None, grid=None) -> Adaptation:
    """Choose and fit the scene adaptation out-of-fold on reviewed ``tiles`` (each with ``truth``).

    Every candidate is scored on held-out folds of the reviewed tiles, pooled into one confusion matrix (the
    mean of mIoU and binary IoU). ``DEFAULT_KIND`` is chosen unless another candidate beats it by more than
    ``SWITCH_MARGIN`` and its lead holds across the units (``SWITCH_CONFIDENCE``). The winner is refitted on all tiles. With more than ``MAX_CHOICE_UNITS`` units the
    choice is made on a random subset of that many.
    ``grid`` (``scene_grid.SceneGrid`` of the tiles' names): held-out tiles also get what their reviewed
    neighbours in the other folds say across the edge, as the rest of the scene will. A reviewed image at
    least ``LARGE_SIDE`` each way is cut into ``BLOCK`` blocks that count as tiles (``units_of``), so one
    reviewed scene image is enough.
    """
    from seepview.core.model.metrics import miou_binary_score
    from seepview.core.scene_grid import edge_labels

    start = time.perf_counter()
    tiles, blocks = units_of([t for t in tiles if t.truth is not None])
    num_classes = int(meta.arch.get("num_classes", 8))
    typer = _cached_typer(meta.typer) if meta.typer else None
    kinds = list(kinds or KINDS)
    if len(tiles) < MIN_HEAD_TILES:
        kinds = [k for k in kinds if "head" not in k]
    has_seep = any(_has_seep(t.truth, num_classes) for t in tiles)
    if len(tiles) < 2 or not has_seep:
        kinds = ["none"]
    every = tiles
    if len(tiles) > MAX_CHOICE_UNITS:  # the choice on a random subset; the winner is fitted on every unit
        pick = np.sort(np.random.default_rng(seed + 1).choice(len(tiles), MAX_CHOICE_UNITS, replace=False))
        tiles = [tiles[j] for j in pick]
    parts = fold_parts(tiles, folds, seed)
    from seepview.core.model.metrics import ConfusionMatrix

    base = [typed_in_place(t, typer) for t in tiles]  # the typer runs once per unit for none/prior/main
    cms = {kind: ConfusionMatrix(num_classes) for kind in kinds}
    units = {kind: [None] * len(tiles) for kind in kinds}  # each held-out unit's own matrix, for the interval
    dropped: set[str] = set()
    for i, held in enumerate(parts):
        train = [tiles[j] for p in parts[:i] + parts[i + 1 :] for j in p]
        if not any(_has_seep(t.truth, num_classes) for t in train):
            dropped |= set(kinds) - {"none"}  # a fold without seeps cannot fit any candidate
        live = [k for k in kinds if k not in dropped]
        try:
            head = _fit_head(train, seed) if any("head" in k for k in live) else None
        except ValueError:  # no sea or no seep pixels to fit on in this fold
            head, dropped = None, dropped | {k for k in kinds if "head" in k}
            live = [k for k in live if "head" not in k]
        fitted = {k: _candidate(k, train, num_classes, seed, head) for k in live}
        truths = {t.name: t.truth for t in train if t.name}
        for j in held:
            t = tiles[j]
            edges = edge_labels(grid, t.name, truths.get) if grid is not None and t.name else None
            on_head = None
            if head is not None:
                on_head = typed_in_place(t, typer, lambda im, pr, nd, h=head: head_labels(h, im, pr, nd))
            for kind, ad in fitted.items():
                pred = _finish(ad, on_head if "head" in kind else base[j], edges, num_classes)
                units[kind][j] = ConfusionMatrix(num_classes).update(pred, t.truth, t.nodata).matrix
                cms[kind].matrix += units[kind][j]
    scores = {k: round(float(miou_binary_score(cms[k].metrics()) or 0.0), 4) for k in kinds if k not in dropped}
    # Out-of-fold scores on this few tiles are noisy (see DEFAULT_KIND): the measured default stands unless
    # another candidate clearly beats it. Without a typer there are no blob probabilities to re-weight.
    default = DEFAULT_KIND if typer is not None and DEFAULT_KIND in scores else "none"
    best = max(scores, key=lambda k: (scores[k], k == default))
    if scores[best] <= scores[default] + SWITCH_MARGIN or not _clearly_better(units[best], units[default], tiles):
        best = default
    ad = _candidate(best, every, num_classes, seed)
    ad.scene, ad.cv, ad.fit_s, ad.default = scene, scores, time.perf_counter() - start, default
    ad.blocks = blocks
    return ad


#: ... and only when that lead holds across the reviewed units: the lower end of a paired bootstrap interval
#: of this confidence (the retrain gate's, widened for few units the same way) is above 0. Added in session
#: 14: an analyst reviews neighbouring tiles, and on 3 grid rows of a scene (~10 tiles) the margin alone
#: let "main" replace the mix in 2 of 6 runs, for -0.025 mIoU on the rest of the scene against the typer
#: alone; with the interval the mix stood in all 6 (+0.011). On random draws it changed 0.001 or less.
SWITCH_CONFIDENCE = 0.9


def _clearly_better(candidate, default, tiles) -> bool:
    """Whether ``candidate``'s out-of-fold lead over the default holds across the reviewed units: the lower
    end of a paired bootstrap interval of the score difference, resampling units (the blocks of one fold
    region together, as they were held out), is above 0. Draws where neither the truth nor either candidate
    has a seep pixel are left out: their difference is 0 by construction, and once such draws passed the
    interval's tail they vetoed any switch (session 16). A candidate's false alarms on seep-free units
    still count against it."""
    from seepview.core.retrain.gate import paired_bootstrap

    groups = held_out_groups(tiles)
    before = np.stack([sum(default[j] for j in g) for g in groups])
    after = np.stack([sum(candidate[j] for j in g) for g in groups])
    _delta, low, _high = paired_bootstrap(before, after, SWITCH_CONFIDENCE, foreground_only=True)
    return bool(low > 0)


# --- from models, folders and projects ------------------------------------------------------------
INFER = "infer"  # adapt_checkpoint's default: read the grid from the given images


def adapt_checkpoint(checkpoint, images: Sequence, truths: Sequence, scene: str = "", names=None, grid=INFER):
    """(adapted Checkpoint, Adaptation) from one scene's reviewed ``images`` and their ``truths``.

    ``images``: arrays, or open ``ImageSource`` s (an image above ``REFINE_MAX_PIXELS`` is then read only in
    the blocks ``sampled_units`` draws). ``grid``: the scene's ``SceneGrid``, None when the scene has none (a project found none), or ``INFER``
    (default: inferred from these images and ``names``), so the out-of-fold choice sees what reviewed
    neighbours say across tile edges, as the scene's other tiles do.

    The returned checkpoint shares the weights and typer; only ``meta.adaptation`` is new (this scene's
    adaptation in place of any it had; other scenes' are kept), and its ``parent`` is the base model's
    name/version so a registry can keep the lineage.
    """
    import dataclasses

    from seepview.core.model.checkpoint import Checkpoint
    from seepview.core.model.infer import Predictor

    base_meta = dataclasses.replace(checkpoint.meta, adaptation={})
    raw = Predictor(Checkpoint(checkpoint.model, dataclasses.replace(base_meta, typer={})), compile=False)
    names = list(names) if names is not None else [""] * len(images)
    tiles = []
    for im, t, n in zip(images, truths, names):  # a scene too large to hold is read block by block
        if too_large_to_hold(np.shape(t)):
            tiles += sampled_units(raw, im, t)
        else:
            tiles.append(tile_data(raw, im if isinstance(im, np.ndarray) else im.read_all(), t, n))
    if isinstance(grid, str):
        from seepview.core.scene_grid import Edges, infer_grid

        grid = infer_grid({n: Edges.of(im) if isinstance(im, np.ndarray) else Edges.of_source(im)
                           for n, im in zip(names, images)}) if all(names) else None
    ad = fit_adaptation(base_meta, tiles, scene=scene, grid=grid)
    from seepview.core.versions import version_key

    meta = dataclasses.replace(base_meta, adaptation=with_adaptation(checkpoint.meta.adaptation, ad),
                               parent=version_key(checkpoint.meta),
                               name=checkpoint.meta.name or "model")
    return Checkpoint(checkpoint.model, meta), ad


def adapt_project(project, scene: str | None = None, checkpoint=None):
    """Adapt the project's active model to one scene from its reviewed tiles; register it with lineage.

    ``scene``: a group id (default: the group with the most reviewed tiles). Returns (ModelVersion or
    None when the choice was "no adaptation", Adaptation). Lifts a rollback's pause on the scene
    (``PAUSED_KEY``): the user asked for this fit.
    """
    from seepview.core.errors import ProjectError
    if checkpoint is None:  # the model the app would use: the active one, else the shipped default
        from seepview.core.session import load_active_model

        checkpoint, problem = load_active_model(project)
        if checkpoint is None:
            raise ProjectError(project.root, f"the project has no model to adapt ({problem})")
    reviewed = [e for e in project.entries if e.status == "reviewed"]
    groups = sorted({e.scene for e in reviewed})
    if scene is None and groups:
        scene = max(groups, key=lambda g: sum(e.scene == g for e in reviewed))
    entries = [e for e in reviewed if e.scene == scene]
    if not reviewed:
        raise ProjectError(project.root, "no reviewed tiles yet: mark the tiles you checked reviewed, then adapt")
    if not entries:
        known = ", ".join(groups) or "none"
        raise ProjectError(project.root, f"no reviewed tiles in scene {scene!r} (scenes with reviewed tiles: {known})")
    from seepview.core.scene_grid import project_grid

    with contextlib.ExitStack() as stack:
        images, truths, names = _reviewed_pixels(stack, project, entries)
        adapted, ad = adapt_checkpoint(checkpoint, images, truths, scene=scene, names=names,
                                       grid=project_grid(project, scene))
    version, _used = register_adaptation(project, checkpoint, adapted, ad)
    resume_adaptation(project, scene)  # asked for explicitly: the app's automatic fits may go on again
    return version, ad


def _reviewed_pixels(stack: contextlib.ExitStack, project, entries, cancel=None, progress=None):
    """(images, truths, ids) of reviewed ``entries`` with labels: pixels, or open sources (closed with
    ``stack``) for scenes too large to hold (``adapt_units.pixels_for_adaptation``)."""
    from seepview.core.errors import Cancelled

    images, truths, names = [], [], []
    for i, e in enumerate(entries):
        if cancel is not None and cancel():
            raise Cancelled(None)
        truth = project.load_labels(e)
        if truth is None:
            continue
        images.append(pixels_for_adaptation(stack, project.open_image(e)))
        truths.append(truth)
        names.append(e.id)
        if progress is not None:
            progress(i + 1, len(entries) + 1)
    return images, truths, names


#: Project setting {scene: version key}: scenes whose automatic adaptation (after each Mark reviewed) is
#: paused because the user rolled back to that version. Without it the next review would fit a new
#: adaptation on top and silently undo the rollback. An explicit ``adapt_project`` (``seepview adapt
#: PROJECT``) or the Model panel's Resume lifts it.
PAUSED_KEY = "adapt_paused"


def paused_scenes(project) -> dict[str, str]:
    """{scene: the version rolled back to} for scenes whose automatic adaptation is paused."""
    raw = project.settings.get(PAUSED_KEY)
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


def pause_after_rollback(project, before_meta, after_meta, key: str) -> list[str]:
    """Pause automatic adaptation of every scene whose adaptation differs between the model rolled back from
    (``before_meta``) and version ``key`` rolled back to; returns those scenes. An adaptation for every scene
    ("", from the folder form) is never fitted automatically, so it pauses nothing."""
    old = {a.scene: a.to_dict() for a in adaptations_of(before_meta.adaptation)}
    new = {a.scene: a.to_dict() for a in adaptations_of(after_meta.adaptation)}
    changed = sorted(s for s in old.keys() | new.keys() if s and old.get(s) != new.get(s))
    if changed:
        with project.lock:
            paused = paused_scenes(project)
            paused.update(dict.fromkeys(changed, key))
            project.settings[PAUSED_KEY] = paused
            project.save()
    return changed


def resume_adaptation(project, scene: str) -> str | None:
    """Lift the pause on ``scene``; returns the version key it was paused for, None if it was not."""
    with project.lock:
        paused = paused_scenes(project)
        was = paused.pop(scene, None)
        if was is not None:
            project.settings[PAUSED_KEY] = paused
            project.save()
    return was


def register_adaptation(project, base_checkpoint, adapted, ad: Adaptation):
    """Store a fitted scene adaptation as the project's active version (parent = the base version), so it
    can be rolled back like any retrain. Returns (ModelVersion or None, the checkpoint now in use or None).

    ``base_checkpoint`` is the model in use: the adaptations it holds for other scenes are kept, and ``ad``
    replaces its scene's (``with_adaptation``). The version borrows the base version's weights (a file of
    kilobytes per reviewed tile). Nothing is stored when the scene's adaptation would label its tiles as the
    one in use does. When "no adaptation" wins, the scene's adaptation is dropped; with no scene left, the
    base is made active again: the new evidence says the old adaptation does not help.
    """
    import dataclasses
    from types import SimpleNamespace

    from seepview.core.model.checkpoint import Checkpoint, tensors_digest
    from seepview.core.versions import ModelRegistry

    registry = ModelRegistry(project)
    base_ckpt = None
    if base_checkpoint.meta.adaptation and base_checkpoint.meta.parent:  # an adapted version: its stored base
        try:
            base_ckpt = registry.load(base_checkpoint.meta.parent)
        except ModelError:
            base_ckpt = None
        # a promoted fine-tune carries an adaptation too, but its parent holds the old weights: not its base
        if base_ckpt is not None and (base_ckpt.meta.adaptation or tensors_digest(base_ckpt.model.state_dict())
                                      != tensors_digest(base_checkpoint.model.state_dict())):
            base_ckpt = None
    if base_ckpt is None:
        base_ckpt = Checkpoint(base_checkpoint.model, dataclasses.replace(base_checkpoint.meta, adaptation={}))
    base = registry.ensure_base(base_ckpt)  # may make the base active (an unregistered model file was in use)
    active = registry.active
    mine = active is not None and active.key != base.key and active.parent == base.key  # an adapted version
    active_data = registry.load(active).meta.adaptation if active is not None else {}
    # the model in use: the active adapted version of this base, else what the caller holds
    in_use = active_data if mine else base_checkpoint.meta.adaptation
    old = next((a for a in adaptations_of(in_use) if a.scene == ad.scene), None)
    unchanged = (ad.kind == "none" and old is None) or (old is not None and _same_effect(old, ad))
    if unchanged and in_use == active_data:
        return None, None  # nothing the user would see changes: no new version, no re-predict
    data = with_adaptation(in_use, ad)
    if not data:
        if active_data or in_use:  # the model carries an adaptation no longer wanted: back to the plain network
            registry.promote(base)
            return None, base_ckpt
        return None, None
    if adapted is None:
        adapted = Checkpoint(base_checkpoint.model, dataclasses.replace(base_checkpoint.meta))
    # the base's held-out scores are not this version's: its evidence is the out-of-fold summary in its note
    adapted.meta = dataclasses.replace(adapted.meta, adaptation=data, parent=base.key, metrics={})
    # it corrected nothing: it learned from reviewed tiles (and blocks of large images), said in words
    stats = SimpleNamespace(learned_from=f"{ad.units()} reviewed")
    others = len(adaptations_of(data)) - (ad.kind != "none")
    note = ad.summary() + (f"; {others} other scene{'s' if others != 1 else ''} kept" if others else "")
    version = registry.add(adapted, promote=True, stats=stats, note=note, weights_of=base)
    return version, adapted


#: Class-mix entries may move by this factor before a refit counts as a new adaptation (a version per
#: review would otherwise re-predict the whole scene for a prior that barely moved).
PRIOR_TOLERANCE = 1.15


def _same_effect(old: Adaptation, new: Adaptation) -> bool:
    """Whether two adaptations of one scene would label its tiles almost alike: both the same main class, or
    both the class mix with multipliers within ``PRIOR_TOLERANCE``."""
    if old.scene != new.scene or old.kind != new.kind:
        return False
    if new.kind == "main":
        return old.main_class == new.main_class
    if new.kind != "prior" or not old.prior or not new.prior:
        return False
    a, b = np.asarray(old.prior, np.float64), np.asarray(new.prior, np.float64)
    if a.shape != b.shape or (a <= 0).any() or (b <= 0).any():
        return False
    # only the applied (tempered) multipliers count: the active version is what is compared against, so a
    # mix that stands still while its tempering grows still gets a new version every few tiles (each tile
    # moves a multiplier m by m**(1/PRIOR_FULL_TILES)), until it counts in full
    return bool(np.abs(np.log(a / b)).max() < np.log(PRIOR_TOLERANCE))


def scene_adaptation_job(project, checkpoint, image_id: str):
    """A job ``fn(cancel, progress) -> (checkpoint to use or None, Adaptation | None, ModelVersion | None)``.

    Adapts ``checkpoint`` (the model in use; its adaptation for this scene, if any, is replaced, other
    scenes' are kept) to the scene of ``image_id`` from that scene's reviewed tiles and registers the result as a version
    (``register_adaptation``). The checkpoint is None when nothing changes: fewer than 2 reviewed tiles,
    "no adaptation" won and none was active, or the project's active model changed while it ran (a rollback
    or a promotion by the user wins over a background fit). Reads labels on the worker thread.
    """
    from seepview.core.versions import active_reference

    entry = project.entry(image_id)
    scene = entry.scene
    entries = [e for e in project.entries if e.status == "reviewed" and e.scene == scene]
    started_on = active_reference(project)

    def run(cancel=None, progress=None):
        from seepview.core.errors import Cancelled

        if len(entries) < 2 and not (entries and is_large_entry(project, entries[0])):
            return None, None, None
        from seepview.core.scene_grid import project_grid

        with contextlib.ExitStack() as stack:
            images, truths, names = _reviewed_pixels(stack, project, entries, cancel, progress)
            adapted, ad = adapt_checkpoint(checkpoint, images, truths, scene=scene, names=names,
                                           grid=project_grid(project, scene))
        if cancel is not None and cancel():
            raise Cancelled(None)
        with project.lock:  # the check and the write as one step: a promotion cannot slip between them
            if active_reference(project) != started_on:
                return None, None, None  # superseded: the next review fits on the model now in use
            version, used = register_adaptation(project, checkpoint, adapted, ad)
        return used, ad, version

    return run
