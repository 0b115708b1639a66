"""The one tiny test model: a width-4, depth-2 U-Net (milliseconds per step on a CPU)."""

from __future__ import annotations


def make_tiny_checkpoint(seed: int = 0, name: str = "tiny", preset: str = "sar-seep", in_channels: int = 1,
                         poor: bool = False):
    """``poor``: the head calls everything "seep 3", so any training beats it (for gate and retrain tests)."""
    import torch

    from seepview.core.classes import ClassTable
    from seepview.core.model.checkpoint import Checkpoint, make_meta
    from seepview.core.model.normalize import SAR_NORMALIZATION
    from seepview.core.model.unet import UNet

    classes = ClassTable.preset(preset)
    torch.manual_seed(seed)
    model = UNet(in_channels, len(classes), base_width=4, depth=2).eval()
    if poor:
        with torch.no_grad():
            model.head.bias[3] = 5.0
    return Checkpoint(model, make_meta(model, classes, SAR_NORMALIZATION, name=name))


def save_tiny_checkpoint(path, seed: int = 0, name: str = "tiny"):
    """``make_tiny_checkpoint`` written to ``path`` (a project's model, a CLI argument), then loaded back."""
    from seepview.core.model.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = make_tiny_checkpoint(seed, name=name)
    save_checkpoint(path, checkpoint.model, checkpoint.meta)
    return load_checkpoint(path)
