"""A plain U-Net (Ronneberger et al. 2015) sized for interactive CPU inference at width 16.

Any input size works: the input is padded to a multiple of ``2**depth`` (reflect where the image is
large enough, zeros otherwise) and the logits are cropped back, so callers never think about strides.
``config()`` is everything needed to rebuild the network; checkpoints store it next to the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCH = "unet"


class _DoubleConv(nn.Sequential):
    """(3×3 conv → BN → ReLU) × 2; convs drop their bias when BatchNorm follows (it would cancel it)."""

    def __init__(self, cin: int, cout: int, batchnorm: bool):
        layers: list[nn.Module] = []
        for c_in in (cin, cout):
            layers.append(nn.Conv2d(c_in, cout, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net returning logits (N, num_classes, H, W) for input (N, in_channels, H, W).

    Widths double at each of the ``depth`` levels (16, 32, 64, 128, 256 by default). ``dropout`` > 0 adds
    Dropout2d at the bottleneck and in each decoder block (kept for Monte-Carlo uncertainty later).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_width: int = 16,
        depth: int = 4,
        batchnorm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if in_channels < 1 or num_classes < 1 or base_width < 1 or depth < 1:
            raise ValueError("in_channels, num_classes, base_width and depth must all be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.base_width = int(base_width)
        self.depth = int(depth)
        self.batchnorm = bool(batchnorm)
        self.dropout = float(dropout)

        widths = [base_width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_DoubleConv(cin, w, batchnorm))
            cin = w
        self.bottleneck = _DoubleConv(widths[-2], widths[-1], batchnorm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2))
            self.dec.append(_DoubleConv(2 * widths[i - 1], widths[i - 1], batchnorm))
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def config(self) -> dict:
        """The constructor arguments (plus ``arch``) as JSON-able values."""
        return {
            "arch": ARCH,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "base_width": self.base_width,
            "depth": self.depth,
            "batchnorm": self.batchnorm,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config: dict) -> UNet:
        """Rebuild from ``config()``; raises ValueError/TypeError/KeyError on a malformed dict."""
        if config.get("arch", ARCH) != ARCH:
            raise ValueError(f"unknown architecture {config.get('arch')!r}")
        return cls(
            in_channels=int(config["in_channels"]),
            num_classes=int(config["num_classes"]),
            base_width=int(config.get("base_width", 16)),
            depth=int(config.get("depth", 4)),
            batchnorm=bool(config.get("batchnorm", True)),
            dropout=float(config.get("dropout", 0.0)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            # Reflect keeps image statistics at the border; it needs the pad smaller than the size.
            mode = "reflect" if ph < h and pw < w else "constant"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.drop(self.bottleneck(x))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = self.drop(dec(torch.cat([up(x), skip], dim=1)))
        logits = self.head(x)
        if ph or pw:
            logits = logits[..., :h, :w]
        return logits
