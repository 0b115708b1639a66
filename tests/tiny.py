"""The one tiny test model: a width-4, depth-2 U-Net (milliseconds per step on a CPU)."""

from __future__ import annotations


def make_tiny_checkpoint(seed: int = 0, name: str = "tiny", preset: str = "sar-seep", in_channels: int = 1,
                         poor: bool = False, classes=None, normalization: dict | None = None, **meta):
    """``poor``: the head calls everything "seep 3", so any training beats it (for gate and retrain tests).

    ``classes``: a ``ClassTable`` instead of the preset's (another class count); ``normalization``: instead of
    SAR's; ``meta``: more ``ModelMeta`` fields (``version``, ``training``, ``typer``, ...)."""
    import torch

    from seepview.core.classes import ClassTable
    from seepview.core.model.checkpoint import Checkpoint, make_meta
    from seepview.core.model.normalize import SAR_NORMALIZATION
    from seepview.core.model.unet import UNet

    classes = classes if classes is not None else ClassTable.preset(preset)
    torch.manual_seed(seed)
    model = UNet(in_channels, len(classes), base_width=4, depth=2).eval()
    if poor:
        with torch.no_grad():
            model.head.bias[3] = 5.0
    return Checkpoint(model, make_meta(model, classes, normalization or SAR_NORMALIZATION, name=name, **meta))


def save_tiny_checkpoint(path, seed: int = 0, name: str = "tiny", **kwargs):
    """``make_tiny_checkpoint`` (same arguments) written to ``path`` (a project's model, a CLI argument), then
    loaded back."""
    from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = make_tiny_checkpoint(seed, name=name, **kwargs)
    save_checkpoint(path, checkpoint.model, checkpoint.meta)
    return load_checkpoint(path)


def save_varied_checkpoint(path, in_channels: int = 1, preset: str = "sar-seep", normalization: dict | None = None):
    """A tiny model with a sharpened, graded head: mostly background but some of every class, so predict,
    evaluate and adapt have seeps to work with. Named after its preset."""
    import torch

    from seepview.core.classes import ClassTable
    from seepview.core.model.checkpoint import make_meta, save_checkpoint
    from seepview.core.model.normalize import SAR_NORMALIZATION
    from seepview.core.model.unet import UNet

    torch.manual_seed(0)
    table = ClassTable.preset(preset)
    net = UNet(in_channels, len(table), base_width=4, depth=2)
    with torch.no_grad():
        net.head.bias.copy_(torch.linspace(0.5, -0.5, len(table)))
        net.head.weight.mul_(20)
    return save_checkpoint(path, net, make_meta(net, table, normalization or SAR_NORMALIZATION, name=preset))


def write_slick_tiles(images, masks, unlabeled_row: bool = False) -> None:
    """Three 48×56 uint16 SAR tiles of two scenes, each with a dark slick (class 1) and a class-5 patch."""
    import numpy as np
    import tifffile

    images.mkdir(exist_ok=True)
    masks.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("000001.0", "000001.1", "000002.0"):
        img = rng.integers(20000, 50000, size=(48, 56)).astype(np.uint16)
        img[10:20, 5:40] //= 3
        tifffile.imwrite(images / f"{name}.tif", img)
        mask = np.zeros((48, 56), np.uint8)
        mask[10:20, 5:40] = 1
        mask[30:35, 30:50] = 5
        if unlabeled_row:
            mask[0, :] = 255
        tifffile.imwrite(masks / f"{name}.tif", mask)
