"""Model versions of a project: every retrained model is kept, with lineage, and one is active.

Files live in ``<project>/models/<name>-v<N>.safetensors`` (written atomically, never overwritten);
the list with lineage (parent, corrected images and pixels, data fingerprint, time, per-class metrics)
is ``project.settings["model_versions"]`` and the active one ``project.settings["active_model"]`` (the
model file's path relative to the project, which is what ``ReviewSession`` loads on start). Rollback
is promoting an older version, so nothing is ever deleted and any step can be undone.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from seepview.core.errors import ModelError, ProjectError

MODELS_DIR = "models"
VERSIONS_KEY = "model_versions"
ACTIVE_KEY = "active_model"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def weights_key(checkpoint) -> str:
    """The identity of exactly these weights, ``<name>-v<N>-<digest>``: the prediction cache's folder name.

    Not the version key (``version_key``, the registry's name for a stored version): two models with the same
    name and version (a retrain that was not registered, a test model) must never share cached predictions,
    so the tensors themselves are hashed.
    """
    import hashlib

    digest = hashlib.sha1(usedforsecurity=False)
    for name, tensor in sorted(checkpoint.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    # The typer and scene adaptation change predictions as much as the weights do (issue 11).
    for part in (checkpoint.meta.typer, checkpoint.meta.adaptation):
        if part:
            import json

            digest.update(json.dumps(part, sort_keys=True).encode())
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in (checkpoint.meta.name or "model"))
    return f"{name[:60]}-v{int(checkpoint.meta.version)}-{digest.hexdigest()[:10]}"


def active_reference(project) -> str | None:
    """``project.settings["active_model"]`` as written (a path relative to the project, or a version key;
    older projects stored ``{"path": ...}``): the one reader of that setting."""
    active = project.settings.get(ACTIVE_KEY)
    if isinstance(active, dict):
        active = active.get("path")
    return active if isinstance(active, str) and active else None


def active_model_path(project) -> Path | None:
    """The file of the project's active model, or None when it uses the shipped default."""
    active = active_reference(project)
    if active is None:
        return None
    version = ModelRegistry(project).active
    if version is not None:
        return project.models_dir / version.file
    path = Path(active)
    return path if path.is_absolute() else project.root / path


def version_key(meta) -> str:
    """The registry key of a model version, ``<name>-v<N>``: its file stem and its lineage link."""
    name = _UNSAFE.sub("-", meta.name or "model").strip("-.") or "model"
    return f"{name[:100]}-v{int(meta.version)}"


def _summary_metrics(metrics: dict | None) -> dict:
    """The part of a metrics dict worth keeping in project.json (no confusion matrix)."""
    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None
        return None if f != f else round(f, 5)  # NaN (class absent) -> null: project.json stays strict JSON

    metrics = metrics or {}
    keep = ("miou", "miou_foreground", "binary_iou", "per_class_iou")
    return {k: clean(metrics[k]) for k in keep if k in metrics}


@dataclass(frozen=True)
class ModelVersion:
    """One registered model. ``parent`` is the key of the model it was fine-tuned from."""

    key: str
    name: str
    version: int
    file: str
    created: str
    parent: str | None = None
    fingerprint: str = ""
    weights_key: str = ""  # ``weights_key()`` of its weights: the prediction cache folder (was ``cache_key``)
    images: int = 0
    corrected_images: int = 0
    corrected_pixels: int = 0
    #: what a version that corrected nothing learned from, in words ("14 reviewed tiles"): a scene adaptation
    learned_from: str = ""
    metrics: dict = field(default_factory=dict)
    promoted: bool = False
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "name": self.name,
            "version": self.version,
            "file": self.file,
            "created": self.created,
            "parent": self.parent,
            "fingerprint": self.fingerprint,
            "weights_key": self.weights_key,
            "images": self.images,
            "corrected_images": self.corrected_images,
            "corrected_pixels": self.corrected_pixels,
            **({"learned_from": self.learned_from} if self.learned_from else {}),
            "metrics": self.metrics,
            "promoted": self.promoted,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelVersion:
        """Raises TypeError in words (which fields are missing), never a dataclass signature."""
        if not isinstance(data, dict):
            raise TypeError("a version entry is not a JSON object")
        missing = [f for f in ("key", "name", "version", "file", "created") if f not in data]
        if missing:
            raise TypeError(f"version {data.get('key', '?')!r} has no {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in data.items() if k in known}
        if "learned_from" in fields:  # words for the version list; anything else in a hand-edited file is dropped
            fields["learned_from"] = fields["learned_from"] if isinstance(fields["learned_from"], str) else ""
        if "weights_key" not in data and "cache_key" in data:  # its name in projects written before the rename
            fields["weights_key"] = data["cache_key"]
        return cls(**fields)


class ModelRegistry:
    """The versions of one project's model; all changes are saved to project.json at once."""

    def __init__(self, project):
        self.project = project
        self._lock = project.lock  # the project's one lock: settings writes never interleave

    # --- reading ---------------------------------------------------------------------------------
    def versions(self) -> list[ModelVersion]:
        raw = self.project.settings.get(VERSIONS_KEY) or []
        try:
            return [ModelVersion.from_dict(v) for v in raw]
        except TypeError as exc:
            raise ProjectError(self.project.root / "project.json", f"malformed model_versions: {exc}") from None

    def get(self, version: ModelVersion | str | int) -> ModelVersion:
        """A version by object, key (``sar-seep-v3``) or number."""
        for v in self.versions():
            if (isinstance(version, ModelVersion) and v.key == version.key) or v.key == version or (
                isinstance(version, int) and not isinstance(version, bool) and v.version == version
            ):
                return v
        raise ModelError(self.project.models_dir, f"no model version {version!r} in this project")

    @property
    def active(self) -> ModelVersion | None:
        """The active version, or None when the project uses a model outside the registry."""
        active = active_reference(self.project)
        if active is None:
            return None
        for v in self.versions():
            if active in (v.key, f"{MODELS_DIR}/{v.file}"):
                return v
        return None

    def path(self, version: ModelVersion | str | int) -> Path:
        return self.project.models_dir / self.get(version).file

    def load(self, version: ModelVersion | str | int, device="cpu"):
        from seepview.core.model.checkpoint import load_checkpoint

        return load_checkpoint(self.path(version), device=device)

    def active_checkpoint(self, device="cpu"):
        """The active version's checkpoint, or None when the project still uses a default model."""
        active = self.active
        return None if active is None else self.load(active, device)

    def lineage(self, version: ModelVersion | str | int) -> list[ModelVersion]:
        """The version and its ancestors, newest first."""
        out = [self.get(version)]
        keys = {v.key: v for v in self.versions()}
        while out[-1].parent in keys and keys[out[-1].parent] not in out:
            out.append(keys[out[-1].parent])
        return out

    # --- writing ---------------------------------------------------------------------------------
    def ensure_base(self, current) -> ModelVersion:
        """Register ``current`` (e.g. the shipped default model) if it is not a version yet, so that
        rollback to the model the project started with is always possible. Becomes active if none is."""

        digest = weights_key(current)
        versions = self.versions()
        for v in versions:
            if v.weights_key == digest:
                return v
        number = int(current.meta.version)
        if any(v.version == number for v in versions):  # e.g. an adapted version with its adaptation removed
            number = max(v.version for v in versions) + 1
        version = self._store(current, parent=current.meta.parent, stats=None, metrics=current.meta.metrics,
                              number=number, note="base model")
        if self.active is None:
            self._set_active(version.key)
        return self.get(version.key)

    def add(self, candidate, promote: bool = False, stats=None, note: str = "",
            weights_of: ModelVersion | None = None) -> ModelVersion:
        """Store ``candidate`` as the next version (``stats``: the training set's ``TrainingSetStats``)
        and make it active when ``promote``. Updates ``candidate.meta`` name/version to match.

        ``weights_of``: a stored version with the very same weights (a scene adaptation's base): the new
        file then holds only the metadata and borrows that version's weights and typer (kilobytes, not megabytes).
        """
        with self._lock:
            # Another program (``seepview finetune PROJECT``) may have registered versions meanwhile.
            with contextlib.suppress(ProjectError):
                self.project.sync()
            number = max((v.version for v in self.versions()), default=0) + 1
            version = self._store(candidate, parent=candidate.meta.parent, stats=stats, metrics=candidate.meta.metrics,
                                  number=number, note=note, weights_of=weights_of)
            if promote:
                self._set_active(version.key)
            return self.get(version.key)

    def promote(self, version: ModelVersion | str | int) -> ModelVersion:
        """Make ``version`` the active model (also how "Promote anyway" works)."""
        target = self.get(version)
        if not (self.project.models_dir / target.file).is_file():
            raise ModelError(self.project.models_dir / target.file, "model file of this version is missing")
        self._set_active(target.key)
        return self.get(target.key)

    def rollback(self, version: ModelVersion | str | int) -> ModelVersion:
        """Go back to an older version: the same as promoting it; nothing is deleted."""
        return self.promote(version)

    def _set_active(self, key: str) -> None:
        with self._lock:
            raw = self.project.settings.get(VERSIONS_KEY) or []
            for item in raw:
                if item.get("key") == key:
                    item["promoted"] = True
            version = self.get(key)
            self.project.settings[ACTIVE_KEY] = f"{MODELS_DIR}/{version.file}"
            self.project.save()

    def _weights_file(self, version: ModelVersion, state: dict) -> str | None:
        """The file that holds ``version``'s weights if they equal ``state``, else None: the new version then
        gets its own copy."""
        from seepview.core.model.checkpoint import tensors_digest, weights_source

        try:
            source, own = weights_source(self.project.models_dir / version.file)
        except ModelError:
            return None
        return source if tensors_digest(own) == tensors_digest(state) else None

    def _store(self, checkpoint, parent, stats, metrics, number: int, note: str,
               weights_of: ModelVersion | None = None) -> ModelVersion:
        from seepview.core.model.checkpoint import save_checkpoint, save_overlay
        from seepview.core.project import utc_now

        with self._lock:
            name = checkpoint.meta.name or "model"
            checkpoint.meta = replace(checkpoint.meta, name=name, version=number)
            key = version_key(checkpoint.meta)
            file = f"{key}.safetensors"
            target = self.project.models_dir / file
            if target.exists():
                raise ModelError(target, "a model version with this name already exists; it is never overwritten")
            state = checkpoint.model.state_dict()
            source = self._weights_file(weights_of, state) if weights_of is not None else None
            if source is not None:
                save_overlay(target, replace(checkpoint.meta, arch=checkpoint.model.config()), source, state)
            else:
                save_checkpoint(target, checkpoint.model, checkpoint.meta)
            version = ModelVersion(
                key=key,
                name=name,
                version=number,
                file=file,
                created=utc_now(),
                parent=parent,
                fingerprint=checkpoint.meta.fingerprint or "",
                weights_key=weights_key(checkpoint),
                images=int(getattr(stats, "images", 0) or 0),
                corrected_images=int(getattr(stats, "corrected_images", 0) or 0),
                corrected_pixels=int(getattr(stats, "corrected_pixels", 0) or 0),
                learned_from=str(getattr(stats, "learned_from", "") or ""),
                metrics=_summary_metrics(metrics),
                note=note,
            )
            self.project.settings.setdefault(VERSIONS_KEY, []).append(version.to_dict())
            self.project.save()
            return version
