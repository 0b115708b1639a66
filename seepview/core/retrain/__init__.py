""""Retrain on my corrections", one concern per module.

- ``settings``: ``RetrainConfig`` and the project's recorded retrain choices;
- ``training_set``: the user's labels as weighted samples (only what the user vouched for, no no-data);
- ``validation``: the gate's held-out tiles and blocks, fixed per project and changeable by the user;
- ``gate``: per-unit scoring, the paired bootstrap and the verdict;
- ``runner``: the loop as a generator (``retrain``, ``retrain_and_record``, ``drive``); ``child``: the same
  loop in a child process; ``policy``: threads, priority and start-up preparation; ``promotion``: making a
  version active and re-predicting.
"""

from seepview.core.retrain.gate import MIN_UNITS, PROMOTE_MIN_UNITS, ClassRow, Decision, Gate, evaluate
from seepview.core.retrain.policy import gui_threads, prepare_for_training
from seepview.core.retrain.promotion import repredict, repredict_order, use_version
from seepview.core.retrain.runner import (
    RetrainEvent,
    RetrainOutcome,
    drive,
    retrain,
    retrain_and_record,
    warm_up,
)
from seepview.core.retrain.settings import (
    CORRECTION_WEIGHT,
    PROJECT_SETTINGS,
    SETTINGS_KEY,
    TOLERANCE,
    UNCHANGED,
    RetrainConfig,
    project_settings,
    store_project_settings,
)
from seepview.core.retrain.training_set import (
    LabelWeights,
    TrainingSetStats,
    build_training_set,
    build_validation_set,
    correction_weights,
    lineage_keys,
    replay_samples,
)
from seepview.core.retrain.validation import (
    VALIDATION_INFO_KEY,
    VALIDATION_KEY,
    ValidationSplit,
    ensure_validation_split,
    reset_validation,
    set_validation,
    validation_ids,
    validation_split,
)

__all__ = [
    "CORRECTION_WEIGHT", "MIN_UNITS", "PROMOTE_MIN_UNITS", "PROJECT_SETTINGS", "SETTINGS_KEY", "TOLERANCE", "UNCHANGED", "VALIDATION_INFO_KEY",
    "VALIDATION_KEY", "ClassRow", "Decision", "Gate", "LabelWeights", "RetrainConfig", "RetrainEvent",
    "RetrainOutcome", "TrainingSetStats", "ValidationSplit", "build_training_set", "build_validation_set",
    "correction_weights", "drive", "ensure_validation_split", "evaluate", "gui_threads", "lineage_keys",
    "prepare_for_training", "project_settings", "replay_samples", "repredict", "repredict_order", "reset_validation",
    "retrain", "retrain_and_record", "set_validation", "store_project_settings", "use_version", "validation_ids",
    "validation_split", "warm_up",
]
