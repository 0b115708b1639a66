"""Model files: safetensors weights with the metadata as one JSON string in the safetensors header.

One file per model, and loading it never executes code (safetensors holds only tensors and strings).
The metadata carries what inference needs to match training exactly (architecture, class table,
input normalisation) and what the version registry needs (data fingerprint, metrics, parent, time).

Legacy ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` — a malicious pickle is
refused, not run — and converted only when they hold plain tensors plus enough information.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from seepview.core import paths
from seepview.core.atomic import atomic_write_bytes
from seepview.core.classes import PRESETS, ClassTable
from seepview.core.errors import ClassTableError, ModelError, io_reason, path_problem
from seepview.core.model.normalize import PHOTO_NORMALIZATION, SAR_NORMALIZATION, validate_spec
from seepview.core.model.typer import Typer
from seepview.core.model.unet import UNet

META_KEY = "seepview"  # the safetensors metadata entry holding our JSON
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
LEGACY_SUFFIXES = (".pt", ".pth")
#: Bounds on a model file's architecture, checked before anything is built: a hostile or damaged file
#: asking for depth 40 or base_width 2**20 must get a clear error, not an allocation failure.
ARCH_LIMITS = {"in_channels": (1, 4), "num_classes": (1, 255), "base_width": (1, 256), "depth": (1, 8)}
MAX_PARAMETERS = 200_000_000  # ~800 MB of float32 weights; the shipped models have ~2 M


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ModelMeta:
    """Everything about a model except its weights; stored as JSON inside the model file.

    ``arch`` is ``UNet.config()``; ``classes`` is ``ClassTable.to_dict()``; ``normalization`` a spec from
    ``seepview.core.model.normalize`` (unfitted: constants are per image); ``fingerprint`` identifies the
    training data (``data_fingerprint``); ``parent`` the fingerprint/name of the model fine-tuned from;
    ``version`` the number in a project's version registry (0 = not registered); ``training`` free-form
    hyper-parameters, timings and hardware.
    """

    arch: dict
    classes: dict
    normalization: dict
    fingerprint: str = ""
    metrics: dict = field(default_factory=dict)
    parent: str | None = None
    created: str = field(default_factory=_now_iso)
    name: str = ""
    version: int = 0
    training: dict = field(default_factory=dict)
    #: Stage 2 (``seepview.core.model.typer.Typer.to_dict``): blob classifier(s) as LightGBM text, deflated
    #: and base64-encoded in format 2; {} = none.
    typer: dict = field(default_factory=dict)
    #: Scene adaptation (``seepview.core.adapt``): a pixel head and/or class prior for one scene; {} = none.
    adaptation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, path: str | os.PathLike | None = None) -> ModelMeta:
        if not isinstance(data, dict):
            raise ModelError(path, "model metadata is not a JSON object")
        fmt = data.get("format_version", FORMAT_VERSION)
        if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
            raise ModelError(path, f"model file format {fmt!r} is newer than this seepview understands")
        missing = [k for k in ("arch", "classes", "normalization") if k not in data]
        if missing:
            raise ModelError(path, f"model metadata lacks {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            meta = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ModelError(path, f"malformed model metadata: {exc}") from None
        for name in ("arch", "classes", "normalization", "metrics", "training", "typer", "adaptation"):
            if not isinstance(getattr(meta, name), dict):
                raise ModelError(path, f"model metadata field {name!r} must be an object")
        validate_spec(meta.normalization, path)
        validate_arch(meta.arch, path)
        if meta.typer:
            typer = Typer.from_dict(meta.typer, path, num_classes=meta.arch.get("num_classes"))
            typer.booster(path)
            typer.typist(path)
        if meta.adaptation:
            from seepview.core.adapt import adaptations_of

            adaptations_of(meta.adaptation, path, num_classes=meta.arch.get("num_classes"))
        return meta


def unet_parameters(in_channels: int, num_classes: int, base_width: int, depth: int) -> int:
    """Weights of a ``UNet`` of this shape (convolutions; BatchNorm and biases are noise at this scale)."""
    widths = [base_width * 2**i for i in range(depth + 1)]
    total, cin = 0, in_channels
    for w in widths:  # encoder blocks and the bottleneck: two 3x3 convs each
        total += 9 * (cin * w + w * w)
        cin = w
    for i in range(depth, 0, -1):  # 2x2 up-convolution, then a double conv on the concatenation
        total += 4 * widths[i] * widths[i - 1] + 9 * (3 * widths[i - 1] ** 2)
    return total + widths[0] * num_classes


def validate_arch(arch: dict, path: str | os.PathLike | None = None) -> None:
    """Check a model file's architecture against ``ARCH_LIMITS`` before any network is built."""
    if arch.get("arch", "unet") != "unet":
        raise ModelError(path, f"unknown architecture {arch.get('arch')!r} (this seepview builds 'unet')")
    values = {}
    for key, (lo, hi) in ARCH_LIMITS.items():
        value = arch.get(key, {"base_width": 16, "depth": 4}.get(key))
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ModelError(path, f"model architecture: {key} must be a whole number from {lo} to {hi}, got {value!r}")
        values[key] = value
    dropout = arch.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ModelError(path, f"model architecture: dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(arch.get("batchnorm", True), bool):
        raise ModelError(path, f"model architecture: batchnorm must be true or false, got {arch['batchnorm']!r}")
    n = unet_parameters(**values)
    if n > MAX_PARAMETERS:
        raise ModelError(
            path, f"model architecture asks for {n / 1e6:,.0f} M weights (at most {MAX_PARAMETERS / 1e6:,.0f} M)"
        )


class Checkpoint:
    """A model in eval-ready form plus its metadata."""

    def __init__(self, model: UNet, meta: ModelMeta):
        self.model = model
        self.meta = meta

    @property
    def classes(self) -> ClassTable:
        return ClassTable.from_dict(self.meta.classes)

    @property
    def normalization(self) -> dict:
        return dict(self.meta.normalization)

    @property
    def in_channels(self) -> int:
        return self.model.in_channels

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def __repr__(self) -> str:
        return f"Checkpoint({self.meta.name or 'unnamed'}, {self.model.config()})"


def make_meta(model: UNet, classes: ClassTable, normalization: dict, **fields) -> ModelMeta:
    """A ModelMeta for ``model`` with arch taken from the model itself (the usual way to build one)."""
    return ModelMeta(
        arch=model.config(), classes=classes.to_dict(), normalization=dict(normalization), **fields
    )


def save_checkpoint(path: str | os.PathLike, model: UNet, meta: ModelMeta) -> Path:
    """Write ``model`` + ``meta`` to ``path`` (.safetensors) atomically. ``meta.arch`` is refreshed."""
    path = Path(path)
    if path.suffix.lower() != SUFFIX:
        raise ModelError(path, f"models are saved as {SUFFIX} files")
    meta = dataclasses.replace(meta, arch=model.config())
    classes = ClassTable.from_dict(meta.classes, path=path)
    if len(classes) != model.num_classes:
        raise ModelError(
            path, f"class table has {len(classes)} classes but the model outputs {model.num_classes}"
        )
    validate_spec(meta.normalization, path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = st_save(tensors, metadata={META_KEY: json.dumps(meta.to_dict())})
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:  # read-only project, full disk: the model in memory is untouched
        raise ModelError(path, f"cannot write the model file: {io_reason(exc)}") from None
    return path


#: Header key of a file that borrows its weights from a sibling model file (a scene adaptation registered
#: as a project version: only its metadata differs, so it need not copy 8 MB of weights per reviewed tile).
WEIGHTS_FROM_KEY = "seepview_weights_from"


#: An overlay's typer entry ``{BORROWED_TYPER: sha1}``: the typer is the one in the file it borrows from.
BORROWED_TYPER = "borrowed_sha1"


def _typer_digest(typer: dict) -> str:
    return hashlib.sha1(json.dumps(typer, sort_keys=True).encode(), usedforsecurity=False).hexdigest()


def tensors_digest(state: dict) -> str:
    """SHA-1 of a state dict's names and tensor bytes: proves a borrowed file still holds the same weights."""
    digest = hashlib.sha1(usedforsecurity=False)
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bf16 included
    return digest.hexdigest()


def save_overlay(path: str | os.PathLike, meta: ModelMeta, weights_file: str, state: dict) -> Path:
    """Write a model file holding only ``meta`` whose weights are ``state`` as stored in the sibling file
    ``weights_file`` (same folder); loading checks that file's weights still match."""
    path = Path(path)
    if Path(weights_file).name != weights_file or not weights_file.endswith(SUFFIX) or weights_file == path.name:
        raise ModelError(path, f"weights must come from another {SUFFIX} file in the same folder")
    validate_spec(meta.normalization, path)
    ref = json.dumps({"file": weights_file, "sha1": tensors_digest(state)})
    meta_dict = meta.to_dict()
    if meta_dict.get("typer"):  # the typer (~2 MB) is borrowed too when the weights' file holds the same one
        source = path.with_name(weights_file)
        with contextlib.suppress(ModelError):
            theirs = _read_safetensors_raw(source)[1].get("typer") if source.is_file() else None
            if theirs == meta_dict["typer"]:  # digest of the file's own copy: what loading will hash
                meta_dict["typer"] = {BORROWED_TYPER: _typer_digest(theirs)}
    data = st_save({}, metadata={META_KEY: json.dumps(meta_dict), WEIGHTS_FROM_KEY: ref})
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ModelError(path, f"cannot write the model file: {io_reason(exc)}") from None
    return path


def weights_source(path: str | os.PathLike) -> tuple[str, dict]:
    """(name of the file that holds ``path``'s tensors, the tensors): ``path`` itself, or the sibling an
    overlay borrows from (checked as on load). A new overlay names that file, never another overlay."""
    path = Path(path)
    state, _meta, borrowed = _read_safetensors_raw(path)
    if borrowed is None:
        return path.name, state
    name, state, _meta = _borrowed(path, borrowed)
    return name, state


def _borrowed(path: Path, ref: str) -> tuple[str, dict, dict]:
    """(file name, weights, seepview metadata) of the file an overlay names: a sibling safetensors file that
    holds tensors itself (its metadata: the typer an overlay may borrow)."""
    try:
        info = json.loads(ref)
        name, sha = info["file"], info["sha1"]
    except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
        raise ModelError(path, "model file names its weights' file in a form seepview cannot read") from None
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(SUFFIX) or name == path.name:
        raise ModelError(path, "model file may only borrow weights from another model file in its folder")
    source = path.with_name(name)
    if source.is_symlink() or not source.is_file():  # a link could point anywhere: only a plain sibling file
        raise ModelError(path, f"the weights it borrows from {name} are missing")
    try:
        state, source_meta, borrowed = _read_safetensors_raw(source)
    except ModelError as exc:
        raise ModelError(path, f"the weights it borrows from {name} cannot be read: {exc.reason}") from None
    if borrowed is not None or not state:
        raise ModelError(path, f"{name} holds no weights of its own")
    if tensors_digest(state) != sha:
        raise ModelError(path, f"the weights in {name} are not the ones this model was made from")
    return name, state, source_meta if isinstance(source_meta, dict) else {}


def _build(path: Path, meta: ModelMeta, state: dict, device) -> Checkpoint:
    try:
        classes = ClassTable.from_dict(meta.classes, path=path)
    except ClassTableError as exc:
        raise ModelError(path, f"bad class table in model: {exc.reason}") from None
    try:
        model = UNet.from_config(meta.arch)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(path, f"bad architecture in model metadata: {exc}") from None
    if model.num_classes != len(classes):
        raise ModelError(
            path, f"model outputs {model.num_classes} classes but its class table has {len(classes)}"
        )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            path,
            f"weights do not match the architecture (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})",
        )
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ModelError(
                path, f"weight {key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}"
            )
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    return Checkpoint(model, meta)


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    state, meta, borrowed = _read_safetensors_raw(path)
    if borrowed is not None:
        name, state, source_meta = _borrowed(path, borrowed)
        typer = meta.get("typer") if isinstance(meta, dict) else None
        if isinstance(typer, dict) and set(typer) == {BORROWED_TYPER}:
            theirs = source_meta.get("typer")
            if not isinstance(theirs, dict) or _typer_digest(theirs) != typer[BORROWED_TYPER]:
                raise ModelError(path, f"the typer in {name} is not the one this model was made from")
            meta = {**meta, "typer": theirs}
    return state, meta


def _read_safetensors_raw(path: Path) -> tuple[dict, dict, str | None]:
    """(tensors, seepview metadata, the weights-from reference or None) of one safetensors file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(path, f"cannot read model file: {exc.strerror or exc}") from None
    try:
        state = st_load(data)
        # safetensors' Python API exposes the header metadata only through safe_open; parse it directly.
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError, RuntimeError, RecursionError) as exc:
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelError(path, f"not a valid safetensors model file (corrupt or truncated?): {text}") from None
    header_meta = header.get("__metadata__") or {}
    raw = header_meta.get(META_KEY)
    borrowed = header_meta.get(WEIGHTS_FROM_KEY) if not state else None
    if raw is None:
        raise ModelError(
            path, "safetensors file has no seepview metadata (architecture, classes, normalisation)"
        )
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError, TypeError) as exc:  # ValueError: JSONDecodeError, or an int of > 4300 digits
        raise ModelError(path, f"model metadata is not valid JSON: {str(exc)[:120] or 'nested too deeply'}") from None
    return state, meta, borrowed


def _default_meta_for(state: dict, path: Path) -> dict:
    """Metadata for a bare state dict: architecture from the shapes, classes from the matching preset."""
    try:
        first = state["down.0.0.weight"]
        head = state["head.weight"]
        depth = len({k.split(".")[1] for k in state if k.startswith("down.")})
        arch = {
            "arch": "unet",
            "in_channels": int(first.shape[1]),
            "num_classes": int(head.shape[0]),
            "base_width": int(first.shape[0]),
            "depth": depth,
            "batchnorm": "down.0.1.weight" in state,
            "dropout": 0.0,
        }
    except (KeyError, IndexError, AttributeError) as exc:
        raise ModelError(path, f"state dict is not a seepview U-Net ({exc!r} not found)") from None
    presets = {(1, 8): "sar-seep", (3, 2): "corrosion"}
    preset = presets.get((arch["in_channels"], arch["num_classes"]))
    if preset is None:
        raise ModelError(
            path,
            f"bare weights for {arch['in_channels']} channel(s) and {arch['num_classes']} classes: cannot tell the "
            "class table or normalisation; save it as {'state_dict': ..., 'meta': {...}} or as .safetensors",
        )
    norm = SAR_NORMALIZATION if preset == "sar-seep" else PHOTO_NORMALIZATION
    return {"arch": arch, "classes": ClassTable.preset(preset).to_dict(), "normalization": dict(norm)}


def _read_legacy(path: Path) -> tuple[dict, dict]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # PyTorch's text runs for paragraphs; keep only the name of the object it refused.
        found = re.search(r"(?:GLOBAL|global:?)\s+([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ModelError(path, f"refusing to load: the file holds pickled code or objects{what}, not plain weights") from None
    except Exception as exc:  # torch raises many types for corrupt zips/pickles; all mean "unreadable"
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelError(path, f"cannot read PyTorch file (corrupt or not a model?): {text}") from None
    if not isinstance(obj, dict):
        raise ModelError(path, f"expected a state dict, found {type(obj).__name__}")
    state = obj.get("state_dict", obj.get("model_state_dict", obj))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(path, "the file is not a plain state dict of tensors")
    meta = obj.get("meta")
    if meta is None:
        meta = _default_meta_for(state, path)
    return state, meta


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a model file; any problem (missing, corrupt, unsafe, mismatched) raises ModelError naming it."""
    path = Path(path)
    problem = path_problem(path)
    if problem == "no such file":
        raise ModelError(path, "model file not found")
    if problem is not None:
        raise ModelError(path, f"not a model file: {problem.removeprefix('is ')}" if problem.startswith("is ") else f"cannot open the model file: {problem}")
    if path.suffix.lower() in LEGACY_SUFFIXES:
        state, raw_meta = _read_legacy(path)
    else:
        state, raw_meta = _read_safetensors(path)
    meta = ModelMeta.from_dict(raw_meta, path)
    return _build(path, meta, state, device)


def default_model_path(preset: str) -> Path:
    """The shipped default model for a class preset: ``models/<preset>.safetensors``."""
    if preset not in PRESETS:
        raise ModelError(None, f"no default model for {preset!r} (defaults exist for: {', '.join(PRESETS)})")
    try:
        return paths.models_dir() / f"{preset}{SUFFIX}"
    except FileNotFoundError as exc:
        raise ModelError(None, str(exc)) from None


def data_fingerprint(items: Iterable[str | bytes | os.PathLike]) -> str:
    """An order-independent 16-hex-digit fingerprint of training data (file names and/or raw bytes).

    Paths count by name only (the stem set identifies a training set across machines); pass bytes to
    include content. Used to tell whether two models saw the same data.
    """
    digests = []
    for item in items:
        if isinstance(item, bytes):
            raw = b"b:" + item
        else:
            raw = b"n:" + os.fsencode(Path(item).name if isinstance(item, os.PathLike) else item)
        digests.append(hashlib.sha256(raw).digest())
    h = hashlib.sha256()
    for d in sorted(digests):
        h.update(d)
    return h.hexdigest()[:16]
