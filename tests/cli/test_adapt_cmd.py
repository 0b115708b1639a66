"""`seepview adapt` (issue 11): the folder form writes an adapted model that evaluate applies; bad input
is one line and exit 2."""

from __future__ import annotations

import json

import pytest

from seepview.cli import main
from seepview.core.adapt import Adaptation
from seepview.core.model.checkpoint import load_checkpoint
from tests.tiny import save_varied_checkpoint, write_slick_tiles


@pytest.fixture
def sar(tmp_path):
    """Three tiles of two scenes with a dark slick each, and a tiny model that finds some seep."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_slick_tiles(images, masks)
    model = save_varied_checkpoint(tmp_path / "sar.safetensors")
    return images, masks, model


def test_adapt_folder_form_writes_a_model_with_lineage_that_evaluate_uses(sar, tmp_path, capsys):
    images, masks, model = sar
    out = tmp_path / "adapted.safetensors"
    rc = main(["adapt", "--model", str(model), "--images", str(images), "--masks", str(masks),
               "--out", str(out), "--scene", "000001", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tiles"] == 2 and report["scene"] == "000001" and "none" in report["cv"]
    ck = load_checkpoint(out)
    assert Adaptation.from_dict(ck.meta.adaptation).kind == report["kind"]
    assert ck.meta.parent == "sar-seep-v0"
    assert main(["evaluate", "--images", str(images), "--masks", str(masks), "--model", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "x.safetensors"], "missing --images, --masks"),
        (["--images", "{images}", "--masks", "{masks}", "--out", "x.pt"], "--out must be a .safetensors"),
        (["--images", "{images}", "--masks", "{masks}", "--out", "{tmp}/a.safetensors", "--scene", "9"],
         "no image of scene '9'"),
    ],
)
def test_adapt_bad_input_is_one_line_and_exit_2(sar, tmp_path, capsys, extra, message):
    images, masks, model = sar
    argv = ["adapt", "--model", str(model)] + [a.format(images=images, masks=masks, tmp=tmp_path) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
