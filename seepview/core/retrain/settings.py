"""How a retrain runs (``RetrainConfig``) and the project's recorded retrain choices.

The tolerance, the correction weight and the units an automatic promotion needs are project policy: the panel records them in ``project.json`` at
each retrain and ``seepview finetune PROJECT`` applies the same values unless given others.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from seepview.core.retrain.gate import MIN_UNITS, PROMOTE_MIN_UNITS

log = logging.getLogger(__name__)

BUDGETS = ("quick", "thorough")
UNCHANGED = "the current model is unchanged"
# Loss weight of pixels the user changed. 3x lost more binary IoU than 2x or 1x in 60 s CPU fine-tunes
# (docs/benchmarks.md, "Retrain on my corrections").
CORRECTION_WEIGHT = 2.0
# The gate promotes when the lower end of the score difference's confidence interval is >= -TOLERANCE
# (docs/benchmarks.md, "The gate's accuracy": the rate of false promotions and rejections it gives).
TOLERANCE = 0.02
SETTINGS_KEY = "retrain"


@dataclass
class RetrainConfig:
    """How to retrain. ``budget="quick"``: the whole run, from the click (child start-up, snapshot,
    evaluation and saving included), aims to fit in ``seconds`` and keeps the last weights; ``"thorough"``
    trains up to ``epochs``, stopping early on a selection split carved out of the *training* images (never
    the gate's validation data).

    ``threads`` limits torch's CPU threads (1 keeps a 2-core machine's GUI fluid) and ``nice`` lowers the
    training's CPU priority (the thread on Linux, else the child process); ``process`` runs training in a
    spawned child process, so a crash or an out-of-memory kill cannot take the app down.
    """

    budget: str = "quick"
    seconds: float = 60.0
    epochs: int = 40
    patience: int = 5
    correction_weight: float = CORRECTION_WEIGHT
    far_px: float = 32.0
    tolerance: float = TOLERANCE
    validation_fraction: float = 0.25
    selection_fraction: float = 0.15  # thorough: share of training images that choose the epoch
    confidence: float = 0.9  # two-sided bootstrap interval of the gate
    promote_min_units: int = PROMOTE_MIN_UNITS  # held-out units an automatic promotion needs (gate.py)
    replay: int = 16
    batch_size: int = 8
    patch: int = 128  # small patches: many short steps (cancel stays prompt on CPU)
    lr: float = 5e-4
    # No rare-class emphasis on top of the correction weight: base training's inverse-frequency class weights and
    # rare-centred patches made one scene's fine-tune over-predict rare seep types (benchmarks.md, fine-tuning table).
    class_weight_power: float = 0.0
    rare_fraction: float = 0.0
    freeze_bn: bool = True  # a few small batches of one scene would skew the base model's BN statistics
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    nice: int = 0  # >0: lower the training thread's/child's CPU priority so the GUI wins the cores
    process: bool = False
    # Refit the typer on the new network too (retrain.restage; a scene adaptation is refitted either way). Off: on
    # the unseen cgg-seep scenes the refit lowered the fine-tune's true effect on average (+0.016 -> -0.008,
    # docs/benchmarks.md, session 6).
    refit_stage2: bool = False

    def __post_init__(self):
        """Refuse nonsense up front, naming the field (the CLI names the option): a negative budget or a zero
        batch would otherwise train nothing, or fail deep inside torch with a message about its internals."""
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        at_least = {"epochs": 1, "patience": 1, "batch_size": 1, "patch": 16, "promote_min_units": MIN_UNITS,
                    "replay": 0}  # fewer units than judging needs would act as MIN_UNITS: refuse, do not pretend
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be a whole number >= 1, got {self.threads!r}")
        for name, ok, rule in (
            ("seconds", lambda v: v > 0, "> 0"),
            ("lr", lambda v: v > 0, "> 0"),
            ("correction_weight", lambda v: v > 0, "> 0"),
            ("tolerance", lambda v: v >= 0, ">= 0"),
            ("far_px", lambda v: v >= 0, ">= 0"),
            ("class_weight_power", lambda v: v >= 0, ">= 0"),
            ("confidence", lambda v: 0 < v < 1, "between 0 and 1"),
            ("validation_fraction", lambda v: 0 < v < 1, "between 0 and 1"),
            ("selection_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("rare_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ):
            value = getattr(self, name)
            if not _number(value) or not math.isfinite(value) or not ok(value):
                raise ValueError(f"{name} must be a number {rule}, got {value!r}")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# What a recorded value must be to be used: the project file may be hand-edited or from another version.
_SETTING_CHECKS: dict[str, Callable[[Any], bool]] = {
    "budget": lambda v: v in BUDGETS,
    "seconds": lambda v: _number(v) and math.isfinite(v) and v > 0,
    "tolerance": lambda v: _number(v) and math.isfinite(v) and v >= 0,
    "correction_weight": lambda v: _number(v) and math.isfinite(v) and v > 0,
    "process": lambda v: isinstance(v, bool),
    "promote_min_units": lambda v: type(v) is int and MIN_UNITS <= v <= 10_000,
}
_WHOLE = {"promote_min_units"}  # stored and used as a whole number; other numbers are floats
PROJECT_SETTINGS = tuple(_SETTING_CHECKS)


def project_settings(project) -> dict:
    """The retrain choices recorded in ``project.json`` (the panel's last run). Values of the wrong type or
    out of range are dropped (with a log line), never fatal."""
    stored = project.settings.get(SETTINGS_KEY)
    if not isinstance(stored, dict):
        return {}
    out = {}
    for name, check in _SETTING_CHECKS.items():
        if name not in stored:
            continue
        value = stored[name]
        if not check(value):
            log.warning("ignoring retrain setting %s=%r in %s", name, value, project.root)
        else:
            out[name] = value if name in _WHOLE else float(value) if _number(value) else value
    return out


def store_project_settings(project, config: RetrainConfig) -> None:
    """Record ``config``'s project-level choices (``PROJECT_SETTINGS``) when they changed. Keys this version
    does not know (a later version's) are kept, so opening a project here does not reset them."""
    chosen = {name: getattr(config, name) for name in PROJECT_SETTINGS}
    with project.lock:
        stored = project.settings.get(SETTINGS_KEY)
        merged = {**stored, **chosen} if isinstance(stored, dict) else chosen
        if stored != merged:
            project.settings[SETTINGS_KEY] = merged
            project.save()
