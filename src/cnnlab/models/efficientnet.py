"""EfficientNet-Lite0, -Lite1 and -Lite2 (Tan & Le 2019, the mobile variants: no squeeze-excitation,
ReLU6, stem and head not scaled) as encoders: a U-Net decoder on them segments, `transfer.py` classifies
with them. Their ImageNet weights come from imagenet.py.

The layer layout follows the TensorFlow original the weights were trained in: "SAME" padding (stride-2
convs pad more on the bottom/right than on the top/left), batch-norm epsilon 1e-3, inputs scaled to
about [-1, 1] ((pixel - 127) / 128). Getting these wrong still trains, but starts from worse features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .imagenet import load_lite
from .segment import double_conv


@dataclass(frozen=True)
class Backbone:
    """The facts of one ImageNet backbone: its stages (repeats, kernel, stride, expand ratio, out
    channels, from the reference builder's 'r1_k3_s11_e1_i32_o16'... strings scaled by its width and
    depth), the side it was trained at, and its input scale: x = (pixel - shift) / scale."""

    name: str
    stages: tuple[tuple[int, int, int, int, int], ...]
    input_size: int
    shift: float = 127.0
    scale: float = 128.0
    stem: int = 32
    features: int = 1280  # the 1x1 conv after the last stage, whose pooled output the ImageNet classifier reads

    @property
    def taps(self) -> tuple[int, ...]:
        """The blocks after which the resolution halves next: features at strides 2, 4, 8, 16 and 32."""
        ends, n = [], 0
        for i, (repeats, *_) in enumerate(self.stages):
            n += repeats
            if i + 1 == len(self.stages) or self.stages[i + 1][2] == 2:
                ends.append(n - 1)
        return tuple(ends)

    @property
    def channels(self) -> tuple[int, ...]:
        ends = [i for i, s in enumerate(self.stages) if i + 1 == len(self.stages) or self.stages[i + 1][2] == 2]
        return tuple(self.stages[i][4] for i in ends)


# Lite1 and Lite2 repeat the middle stages 1.1x and 1.2x (rounded up); Lite2 is also 1.1x as wide.
_LITE12 = (1, 3, 3, 4, 4, 5, 1)
BACKBONES = {
    "lite0": Backbone("lite0", ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)), 224),
    "lite1": Backbone("lite1", tuple(zip(_LITE12, (3, 3, 5, 3, 5, 5, 3), (1, 2, 2, 2, 1, 2, 1), (1, 6, 6, 6, 6, 6, 6),
                                         (16, 24, 40, 80, 112, 192, 320), strict=True)), 240),
    "lite2": Backbone("lite2", tuple(zip(_LITE12, (3, 3, 5, 3, 5, 5, 3), (1, 2, 2, 2, 1, 2, 1), (1, 6, 6, 6, 6, 6, 6),
                                         (16, 24, 48, 88, 120, 208, 352), strict=True)), 260),
}  # fmt: skip
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF's momentum 0.99 in PyTorch's convention


class SameConv(nn.Conv2d):
    """A bias-free conv padded like TensorFlow's "SAME": output side ceil(input / stride)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for side in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((math.ceil(side / s) - 1) * s + k - side, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [SameConv(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise kxk, linear 1x1 projection; identity skip where
    the shape allows."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class LiteEncoder(nn.Module):
    """An EfficientNet-Lite backbone without its classifier head: (B, 3, H, W) in [-1, 1] -> five feature
    maps at strides 2..32 (16, 24, 40, 112 and 320 channels for Lite0)."""

    def __init__(self, backbone: Backbone = BACKBONES["lite0"]) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels = backbone.channels
        self.stem = conv_bn(3, backbone.stem, 3, stride=2)
        blocks, cin = [], backbone.stem
        for repeats, kernel, stride, expand, cout in backbone.stages:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.taps = set(backbone.taps)

    def forward(self, x: Tensor) -> list[Tensor]:
        x, features = self.stem(x), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                features.append(x)
        return features


def input_map(
    in_channels: int, mean: tuple[float, ...], std: tuple[float, ...], backbone: Backbone
) -> tuple[Tensor, Tensor]:
    """(scale, shift) taking the task's inputs, (pixel/255 - mean) / std, to the backbone's own
    (pixel - backbone.shift) / backbone.scale: the task's facts stay the task's."""
    if in_channels not in (1, 3):
        raise ConfigError(f"an EfficientNet-Lite model takes 1 or 3 input channels, not {in_channels}")
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return s * 255 / backbone.scale, (m * 255 - backbone.shift) / backbone.scale


def start_from_imagenet(encoder: LiteEncoder, in_channels: int, pretrained: bool) -> None:
    """Load the ImageNet weights (the `cnnlab[pretrained]` extra) if asked; for grey inputs the stem's RGB
    filters are summed, so a grey image is seen as its RGB copy was."""
    if pretrained:
        encoder.load_state_dict(load_lite(encoder.backbone.name, part="encoder"))
    if in_channels == 1:
        stem = encoder.stem[0]
        stem.weight = nn.Parameter(stem.weight.detach().sum(1, keepdim=True))


class LiteUNet(nn.Module):
    """U-Net on an EfficientNet-Lite encoder (Lite0 here; Lite1UNet, Lite2UNet): each decoder level
    upsamples 2x (bilinear), concatenates the encoder features of that resolution and applies two
    conv3x3-BN-ReLU; the last level reaches the input's resolution without a skip. Any H, W: the input is
    padded (edge-replicated) to a multiple of 32 and the logits cropped back.

    `pretrained`: start the encoder from ImageNet weights (the `cnnlab[pretrained]` extra).
    `mean`/`std`: the normalisation of the inputs the task gives (pixel/255 statistics); the model maps
    them to the encoder's own input scale, so the task's facts stay the task's.
    """

    backbone = BACKBONES["lite0"]
    multiple = 32
    decoder_channels = (96, 64, 40, 24, 16)

    def __init__(
        self,
        num_classes: int = 5,
        in_channels: int = 3,
        pretrained: bool = False,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
    ):
        super().__init__()
        scale, shift = input_map(in_channels, mean, std, self.backbone)
        self.register_buffer("in_scale", scale, persistent=False)
        self.register_buffer("in_shift", shift, persistent=False)
        self.encoder = LiteEncoder(self.backbone)
        start_from_imagenet(self.encoder, in_channels, pretrained)
        channels = self.encoder.channels
        skips = (*reversed(channels[:-1]), 0)
        cin, blocks = channels[-1], []
        for skip, cout in zip(skips, self.decoder_channels, strict=True):
            blocks.append(double_conv(cin + skip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % self.multiple, 0, -height % self.multiple), mode="replicate")
        features = self.encoder(x * self.in_scale + self.in_shift)
        x = features.pop()
        for block in self.decoder:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, features.pop()], 1) if features else x)
        return self.head(x)[..., :height, :width]


class Lite1UNet(LiteUNet):
    backbone = BACKBONES["lite1"]


class Lite2UNet(LiteUNet):
    backbone = BACKBONES["lite2"]


UNETS = {"lite0-unet": LiteUNet, "lite1-unet": Lite1UNet, "lite2-unet": Lite2UNet}
