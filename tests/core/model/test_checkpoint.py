"""Checkpoint round trip and safety: corrupt, mismatched and malicious files give ModelError."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from seepview.core.classes import ClassTable
from seepview.core.errors import ModelError
from seepview.core.model import checkpoint as ckpt
from seepview.core.model.checkpoint import (
    Checkpoint,
    ModelMeta,
    data_fingerprint,
    default_model_path,
    load_checkpoint,
    save_checkpoint,
)
from seepview.core.model.normalize import SAR_NORMALIZATION
from seepview.core.model.unet import UNet
from tests.tiny import make_tiny_checkpoint


def _tiny(in_channels=1, classes="sar-seep"):
    """The tiny test model (``tests/tiny.py``) with non-default BatchNorm statistics, so the round trip checks
    buffers too, and some metadata to round-trip."""
    tiny = make_tiny_checkpoint(preset=classes, in_channels=in_channels, fingerprint="abc", metrics={"miou": 0.5})
    model = tiny.model.train()
    with torch.no_grad():
        model(torch.rand(2, in_channels, 16, 16))
    model.eval()
    return model, tiny.meta


def test_round_trip_preserves_weights_and_metadata(tmp_path):
    model, meta = _tiny()
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, Checkpoint)
    assert loaded.meta == meta
    assert loaded.classes == ClassTable.preset("sar-seep")
    assert loaded.normalization == SAR_NORMALIZATION
    assert not loaded.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    x = torch.rand(1, 1, 20, 20)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded.model(x))
    # Nothing but the final file is left behind by the atomic write.
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_metadata_is_one_json_string_in_the_safetensors_header(tmp_path):
    model, meta = _tiny()
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    stored = json.loads(header["__metadata__"]["seepview"])
    assert stored["arch"] == model.config()
    assert stored["name"] == "tiny"
    assert stored["format_version"] == ckpt.FORMAT_VERSION


def test_truncated_and_garbage_files_raise_model_error_naming_the_file(tmp_path):
    model, meta = _tiny()
    good = save_checkpoint(tmp_path / "m.safetensors", model, meta).read_bytes()
    for name, data in {
        "trunc.safetensors": good[: len(good) // 2],
        "header.safetensors": good[:20],
        "empty.safetensors": b"",
        "garbage.safetensors": b"\x00" * 7 + b"hello world" * 50,
    }.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelError) as info:
            load_checkpoint(path)
        assert name in str(info.value)


def test_missing_file_and_missing_metadata(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    model, _ = _tiny()
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, bare)
    with pytest.raises(ModelError, match="bare.safetensors.*no seepview metadata"):
        load_checkpoint(bare)


def test_mismatched_weights_are_rejected(tmp_path):
    model, meta = _tiny()
    wider = UNet(1, 8, base_width=8, depth=2)  # not the tiny model on purpose: other shapes under its metadata
    path = tmp_path / "mismatch.safetensors"
    # Weights of a wider net under metadata that claims width 4.
    tensors = {k: v.contiguous() for k, v in wider.state_dict().items()}
    save_file(tensors, path, metadata={"seepview": json.dumps(meta.to_dict())})
    with pytest.raises(ModelError, match="mismatch.safetensors.*shape"):
        load_checkpoint(path)
    # Missing keys.
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head")}
    save_file(tensors, path, metadata={"seepview": json.dumps(meta.to_dict())})
    with pytest.raises(ModelError, match="missing"):
        load_checkpoint(path)


def test_class_count_must_match_the_head(tmp_path):
    model, meta = _tiny()
    meta.classes = ClassTable.preset("corrosion").to_dict()
    with pytest.raises(ModelError, match="class table has 2 classes"):
        save_checkpoint(tmp_path / "m.safetensors", model, meta)
    path = tmp_path / "m2.safetensors"
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        path,
        metadata={"seepview": json.dumps(meta.to_dict())},
    )
    with pytest.raises(ModelError, match="m2.safetensors.*8 classes"):
        load_checkpoint(path)


def test_bad_metadata_json_and_fields(tmp_path):
    model, meta = _tiny()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "m.safetensors"
    save_file(tensors, path, metadata={"seepview": "{not json"})
    with pytest.raises(ModelError, match="not valid JSON"):
        load_checkpoint(path)
    d = meta.to_dict()
    del d["normalization"]
    save_file(tensors, path, metadata={"seepview": json.dumps(d)})
    with pytest.raises(ModelError, match="lacks normalization"):
        load_checkpoint(path)
    d = meta.to_dict()
    d["normalization"] = {"kind": "magic"}
    save_file(tensors, path, metadata={"seepview": json.dumps(d)})
    with pytest.raises(ModelError, match="normalisation"):
        load_checkpoint(path)


class _Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_does_not_run(tmp_path, writer):
    # Sanity: the payload really creates its file when unpickled the unsafe way.
    proof = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps(_Evil(proof))).close()
    assert proof.exists()
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "x": _Evil(target)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not target.exists()
    with pytest.raises(ModelError, match="evil.pt.*refusing to load"):
        load_checkpoint(path)
    assert not target.exists()


def test_plain_pt_state_dict_with_meta_is_converted(tmp_path):
    model, meta = _tiny()
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": model.state_dict(), "meta": meta.to_dict()}, path)
    loaded = load_checkpoint(path)
    assert loaded.meta == meta
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])


def test_bare_pt_state_dict_infers_arch_for_a_preset_shape(tmp_path):
    model, _ = _tiny()
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.model.config() == model.config()
    assert loaded.classes == ClassTable.preset("sar-seep")
    odd = UNet(2, 3, base_width=4, depth=2)  # on purpose: a shape no class preset has
    torch.save(odd.state_dict(), path)
    with pytest.raises(ModelError, match="cannot tell the class table"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ModelError, match="expected a state dict"):
        load_checkpoint(path)
    path.write_bytes(b"PK\x03\x04 corrupt zip")
    with pytest.raises(ModelError, match="bare.pt"):
        load_checkpoint(path)


def test_save_refuses_other_suffixes(tmp_path):
    model, meta = _tiny()
    with pytest.raises(ModelError):
        save_checkpoint(tmp_path / "m.pt", model, meta)


def test_meta_from_dict_ignores_unknown_keys_and_rejects_future_format():
    model, meta = _tiny()
    d = meta.to_dict() | {"something_new": 1}
    assert ModelMeta.from_dict(d) == meta
    with pytest.raises(ModelError, match="newer"):
        ModelMeta.from_dict(meta.to_dict() | {"format_version": 99})


def test_default_model_path_and_unknown_preset():
    assert default_model_path("sar-seep").name == "sar-seep.safetensors"
    assert default_model_path("corrosion").parent.name == "models"
    with pytest.raises(ModelError):
        default_model_path("nope")


def test_data_fingerprint_is_order_independent_and_content_sensitive(tmp_path):
    a = data_fingerprint(["x.tif", "y.tif"])
    assert a == data_fingerprint(["y.tif", "x.tif"])
    assert a != data_fingerprint(["x.tif"])
    assert data_fingerprint([tmp_path / "x.tif", "y.tif"]) == a
    assert data_fingerprint([b"abc"]) != data_fingerprint([b"abd"])
    assert len(a) == 16
