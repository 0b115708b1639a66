"""Three-way merge of project.json, for two programs writing one project at once.

The app keeps a project open for hours; ``seepview finetune PROJECT`` may register and promote a
model version meanwhile. Overwriting project.json with the app's copy would lose that version, so the
app merges instead: ``base`` is the file as the app last read or wrote it, ``ours`` the app's state,
``theirs`` the file on disk now. A value changed on one side only takes that side's change. Where both
changed the same value:

- images: keyed by id; the entry with the newer ``status_time`` wins (new ids from both are kept);
- ``settings["model_versions"]``: the union keyed by version key (a version is promoted if either
  side promoted it); versions are never deleted, so nothing one side registered is lost;
- classes: the longer table wins (classes can only be added), else ours;
- any other value: dicts merge key by key, anything else keeps ours (the program saving now).
"""

from __future__ import annotations

from typing import Any

VERSIONS_KEY = "model_versions"  # = seepview.core.versions.VERSIONS_KEY (no import: versions imports project)
_MISSING = object()


def _three_way(base: Any, ours: Any, theirs: Any) -> Any:
    if ours == theirs:
        return ours
    if ours == base:
        return theirs
    if theirs == base:
        return ours
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return merge_dicts(base if isinstance(base, dict) else {}, ours, theirs)
    return ours


def merge_dicts(base: dict, ours: dict, theirs: dict) -> dict:
    """Key-by-key three-way merge (a key deleted on one side and untouched on the other stays deleted)."""
    out: dict = {}
    for key in [*ours, *(k for k in theirs if k not in ours)]:
        value = _three_way(base.get(key, _MISSING), ours.get(key, _MISSING), theirs.get(key, _MISSING))
        if value is not _MISSING:
            out[key] = value
    return out


def merge_versions(ours: list, theirs: list) -> list:
    """Union of two model-version lists keyed by ``key``, ours first; promoted if either promoted it."""
    out = [dict(v) for v in ours if isinstance(v, dict)]
    index = {v.get("key"): v for v in out}
    for v in theirs:
        if not isinstance(v, dict):
            continue
        mine = index.get(v.get("key"))
        if mine is None:
            out.append(dict(v))
            index[v.get("key")] = out[-1]
        elif v.get("promoted"):
            mine["promoted"] = True
    return out


def _newer(a: dict, b: dict) -> dict:
    """The image entry with the later status_time (ISO 8601 UTC strings sort by time); ``a`` on a tie."""
    return b if (b.get("status_time") or "") > (a.get("status_time") or "") else a


def merge_images(base: list, ours: list, theirs: list) -> list:
    base_by = {e.get("id"): e for e in base}
    theirs_by = {e.get("id"): e for e in theirs}
    ours_ids = {e.get("id") for e in ours}
    out = []
    for e in ours:
        t = theirs_by.get(e.get("id"))
        if t is None:
            b = base_by.get(e.get("id"))
            if b is not None and b == e:
                continue  # removed by the other program, untouched here
            out.append(e)
            continue
        b = base_by.get(e.get("id"), _MISSING)
        if e == t or t == b:
            merged = e
        elif e == b:
            merged = t
        else:
            merged = _newer(e, t)  # both changed (or both added) it: the later review decision wins
        out.append(merged)
    out.extend(t for t in theirs if t.get("id") not in ours_ids and t.get("id") not in base_by)
    return out


def merge_project(base: dict, ours: dict, theirs: dict) -> dict:
    """The merged project.json dict (see module doc); inputs are left unchanged."""
    out = merge_dicts(
        {k: v for k, v in base.items() if k not in ("images", "settings", "classes")},
        {k: v for k, v in ours.items() if k not in ("images", "settings", "classes")},
        {k: v for k, v in theirs.items() if k not in ("images", "settings", "classes")},
    )
    out["images"] = merge_images(base.get("images") or [], ours.get("images") or [], theirs.get("images") or [])
    bc, oc, tc = base.get("classes"), ours.get("classes"), theirs.get("classes")
    classes = _three_way(bc, oc, tc)
    if oc != tc and oc != bc and tc != bc:
        classes = tc if _class_count(tc) > _class_count(oc) else oc
    out["classes"] = classes
    bs, os_, ts = (d.get("settings") or {} for d in (base, ours, theirs))
    settings = merge_dicts(
        {k: v for k, v in bs.items() if k != VERSIONS_KEY},
        {k: v for k, v in os_.items() if k != VERSIONS_KEY},
        {k: v for k, v in ts.items() if k != VERSIONS_KEY},
    )
    if VERSIONS_KEY in os_ or VERSIONS_KEY in ts:
        settings[VERSIONS_KEY] = merge_versions(os_.get(VERSIONS_KEY) or [], ts.get(VERSIONS_KEY) or [])
    out["settings"] = settings
    return out


def _class_count(table: Any) -> int:
    if isinstance(table, dict):
        classes = table.get("classes", table)
        return len(classes) if hasattr(classes, "__len__") else 0
    return 0
