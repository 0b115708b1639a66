"""UNet shape contract: any input size in, same size logits out."""

from __future__ import annotations

import pytest
import torch

from seepview.core.model.unet import UNet


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (17, 33), (31, 16), (64, 64), (3, 100)])
def test_any_size_gives_same_size_logits(size):
    torch.manual_seed(0)
    net = UNet(1, 8, base_width=4, depth=4).eval()
    with torch.inference_mode():
        out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 8, *size)
    assert torch.isfinite(out).all()


def test_odd_input_is_reflect_padded_then_cropped_back():
    torch.manual_seed(0)
    net = UNet(3, 2, base_width=4, depth=3, batchnorm=False).eval()
    x = torch.rand(1, 3, 21, 37)  # pads to 24 x 40
    with torch.inference_mode():
        direct = net(x)
        padded = net(torch.nn.functional.pad(x, (0, 3, 0, 3), mode="reflect"))[..., :21, :37]
    torch.testing.assert_close(direct, padded)


def test_config_round_trip_rebuilds_identical_architecture():
    net = UNet(3, 5, base_width=8, depth=3, batchnorm=False, dropout=0.2)
    cfg = net.config()
    assert cfg == {
        "arch": "unet",
        "in_channels": 3,
        "num_classes": 5,
        "base_width": 8,
        "depth": 3,
        "batchnorm": False,
        "dropout": 0.2,
    }
    clone = UNet.from_config(cfg)
    assert clone.config() == cfg
    assert {k: v.shape for k, v in clone.state_dict().items()} == {
        k: v.shape for k, v in net.state_dict().items()
    }
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in clone.modules())
    assert any(isinstance(m, torch.nn.Dropout2d) for m in clone.modules())


def test_gradients_flow_to_first_layer():
    net = UNet(1, 3, base_width=4, depth=2)
    out = net(torch.rand(2, 1, 13, 19))
    out.sum().backward()
    assert net.down[0][0].weight.grad is not None
    assert net.down[0][0].weight.grad.abs().sum() > 0


def test_invalid_arguments_rejected():
    with pytest.raises(ValueError):
        UNet(0, 2)
    with pytest.raises(ValueError):
        UNet(1, 2, dropout=1.0)
