"""After the gate: which model becomes active, and which images to re-predict in what order.

Labels the user made are never touched: only the prediction cache of unreviewed images is refreshed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from seepview.core.errors import Cancelled, SeepviewError

log = logging.getLogger(__name__)


def use_version(project, key: str):
    """Make version ``key`` active (rollback, roll forward, "Promote anyway").

    Returns (version, its checkpoint, scenes whose automatic adaptation this paused). A rollback pauses every
    scene whose adaptation it changed (``adapt.pause_after_rollback``), so the next Mark reviewed does not fit
    a new adaptation on top and undo it. A rollback goes to an older version that was in use before, or that
    the active one descends from; "Promote anyway" of a candidate that was never in use is not one."""
    from seepview.core.adapt import pause_after_rollback
    from seepview.core.versions import ModelRegistry

    registry = ModelRegistry(project)
    with project.lock:  # against a background adaptation registering a version meanwhile
        before = registry.active
        target = registry.get(key)
        back = before is not None and target.version < before.version and (
            target.promoted or target.key in {v.key for v in registry.lineage(before)})
        version = registry.promote(key)
        checkpoint = registry.load(version)
        paused: list[str] = []
        if back:
            try:
                before_meta = registry.load(before).meta
            except SeepviewError as exc:  # the file rolled back from is gone: nothing to compare
                log.warning("not pausing scene adaptation after the rollback: %s", exc)
            else:
                paused = pause_after_rollback(project, before_meta, checkpoint.meta, version.key)
    return version, checkpoint, paused


def repredict_order(project, current_id: str | None = None, visible_ids: Iterable[str] = (),
                    needs: Callable[[str], bool] | None = None, group: str | None = None) -> list[str]:
    """Unreviewed images to re-predict after a promotion: the one on screen and visible ones first, then by
    distance from the current image in project order (the next ones the user will open). ``needs`` drops
    images whose prediction is already current; ``group`` keeps only one scene's images (a scene
    adaptation changes nothing elsewhere)."""
    entries = project.entries
    todo = [e.id for e in entries if e.status == "unreviewed" and (group is None or e.scene == group)]
    if not todo:
        return []
    todo_set = set(todo)
    index = {e.id: i for i, e in enumerate(entries)}
    n = len(entries)
    start = index.get(current_id, 0) if current_id is not None else 0
    first = ([current_id] if current_id in todo_set else []) + [
        v for v in visible_ids if v in todo_set and v != current_id
    ]
    chosen = set(first)
    rest = sorted((i for i in todo if i not in chosen), key=lambda i: ((index[i] - start) % n, i))
    order = first + rest
    return [i for i in order if needs(i)] if needs is not None else order


def repredict(jobs: Sequence[tuple[str, Callable]], cancel: Callable[[], bool] | None = None):
    """Run prediction jobs (``ReviewSession.prediction_job``, built on the GUI thread in ``repredict_order``)
    one after another, yielding each result for the GUI thread to store.

    An unreadable image is logged and skipped, so one bad file does not stop the rest.
    """
    for image_id, job in jobs:
        if cancel is not None and cancel():
            return
        try:
            yield job(cancel=cancel)
        except Cancelled:
            return
        except SeepviewError as exc:
            log.warning("re-predicting %s failed: %s", image_id, exc)
