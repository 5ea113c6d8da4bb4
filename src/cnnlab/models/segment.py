"""Segmentation nets: float (B, in_channels, H, W) in, class logits (B, C, H, W) out, for any H, W.

SeedA and SeedB rebuild the two reference reports' nets; UNet is the stronger, CPU-sized baseline trained
from scratch. LiteUNet (efficientnet.py) puts a U-Net decoder on an ImageNet-pretrained encoder.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def _match_size(logits: Tensor, height: int, width: int) -> Tensor:
    # Used only for input sizes the layer arithmetic does not map back exactly (a few pixels off).
    if logits.shape[-2:] == (height, width):
        return logits
    return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)


class SeedA(nn.Module):
    """Report A's net: 4 convs + 2 max-pools down to 61x61x768, 3 transposed convs back up.

    Shapes for a 256x256 input (unpadded convs, floor pooling):
        conv 5x5, 3->32      256 -> 252     maxpool 2   -> 126
        conv 5x5, 32->64     126 -> 122     maxpool 2   -> 61
        conv 3x3 pad 1, 64->128        61
        conv 1x1, 128->768             61   (`encoder` output: 768 x 61 x 61)
        tconv 4x4 stride 2, 768->32    61 -> 124
        tconv 4x4 stride 2, 32->32     124 -> 250
        tconv 7x7, 32->C               250 -> 256
    ReLU follows every layer but the last. Any H, W divisible by 4 (at least 16) comes back exactly;
    other sizes are off by a few pixels and are resized to the input. The widening 1x1 conv and the
    kernel-4 stride-2 tconvs (no checkerboard: the kernel is a multiple of the stride) keep the
    768-channel layers affordable on a CPU.
    """

    min_side = 16  # px: two unpadded 5x5 convs and two poolings need this much of the input

    def __init__(self, num_classes: int = 5, in_channels: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(768, 32, 4, stride=2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 32, 4, stride=2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, num_classes, 7),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return _match_size(self.decoder(self.encoder(x)), *x.shape[-2:])


def _conv_relu_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # Batch norm after the ReLU: report B found this order trained much better than the usual one.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(cout))


class SeedB(nn.Module):
    """Report B's "FacadeNet": six 3x3 conv-ReLU-BN layers, two of them stride 2, and two stride-2
    transposed convs back to full resolution.

    Widths 64, 128, 256, 1024, 512, 256 then 64 and C, times `width` (not the class layer).
    H and W divisible by 4 come back exactly; other sizes are resized to the input.
    """

    def __init__(self, num_classes: int = 5, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        c1, c2, c3, c4, c5, c6, c7 = (max(1, round(c * width)) for c in (64, 128, 256, 1024, 512, 256, 64))
        self.body = nn.Sequential(
            _conv_relu_bn(in_channels, c1),
            _conv_relu_bn(c1, c2, stride=2),
            _conv_relu_bn(c2, c3, stride=2),
            _conv_relu_bn(c3, c4),
            _conv_relu_bn(c4, c5),
            _conv_relu_bn(c5, c6),
            nn.ConvTranspose2d(c6, c7, 4, stride=2, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(c7),
            nn.ConvTranspose2d(c7, num_classes, 4, stride=2, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return _match_size(self.body(x), *x.shape[-2:])


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class UNet(nn.Module):
    """U-Net: `depth` levels of two conv3x3-BN-ReLU, widths base * 2**level (base = 16 * width),
    max-pool down,
    stride-2 transposed conv up, skip connections by concatenation.

    Any H, W works: the input is padded (edge-replicated) to a multiple of 2**(depth-1) and the
    logits are cropped back.
    """

    def __init__(self, num_classes: int = 5, width: float = 1.0, depth: int = 4, in_channels: int = 3):
        super().__init__()
        base = max(1, round(16 * width))
        if depth < 1:
            raise ConfigError(f"unet depth {depth}: must be at least 1; raise it")
        widths = [base * 2**level for level in range(depth)]
        self.down = nn.ModuleList(
            double_conv(cin, cout) for cin, cout in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        self.up = nn.ModuleList(nn.ConvTranspose2d(w * 2, w, 2, stride=2) for w in widths[:-1])
        self.merge = nn.ModuleList(double_conv(w * 2, w) for w in widths[:-1])
        self.head = nn.Conv2d(base, num_classes, 1)
        self.multiple = 2 ** (depth - 1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % self.multiple, 0, -height % self.multiple), mode="replicate")
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()  # the bottom level has no skip partner
        for up, merge in zip(reversed(self.up), reversed(self.merge), strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)[..., :height, :width]


MODELS = {"seed-a": SeedA, "seed-b": SeedB, "unet": UNet}


def build_facade_model(name: str, width: float | None = None) -> nn.Module:
    """A facade net (RGB in, 5 classes out) called `name`; options it does not take are refused."""
    from . import build_model

    return build_model("segment", name, in_channels=3, num_classes=5, width=width)
