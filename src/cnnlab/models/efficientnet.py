"""EfficientNet-Lite0 (Tan & Le 2019, the mobile variant: no squeeze-excitation, ReLU6) as a segmentation
encoder, with a U-Net decoder. Its ImageNet weights come from imagenet.py.

The layer layout follows the TensorFlow original the weights were trained in: "SAME" padding (stride-2
convs pad more on the bottom/right than on the top/left), batch-norm epsilon 1e-3, inputs scaled to
about [-1, 1] ((pixel - 127) / 128). Getting these wrong still trains, but starts from worse features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .imagenet import load_lite0
from .segment import double_conv

# (repeats, kernel, stride, expand ratio, out channels) per stage, from the reference builder's
# 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ... strings.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
STEM = 32
# The blocks after which the resolution halves next: features at strides 2, 4, 8, 16 and 32.
TAPS = (0, 2, 4, 10, 15)
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


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [SameConv(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise kxk, linear 1x1 projection; identity skip where
    the shape allows."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class Lite0Encoder(nn.Module):
    """EfficientNet-Lite0 without its classifier head: (B, 3, H, W) in [-1, 1] -> five feature maps at
    strides 2..32 with 16, 24, 40, 112 and 320 channels."""

    channels = (16, 24, 40, 112, 320)

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, STEM, 3, stride=2)
        blocks, cin = [], STEM
        for repeats, kernel, stride, expand, cout in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        x, features = self.stem(x), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in TAPS:
                features.append(x)
        return features


class LiteUNet(nn.Module):
    """U-Net on an EfficientNet-Lite0 encoder: each decoder level upsamples 2x (bilinear), concatenates
    the encoder features of that resolution and applies two conv3x3-BN-ReLU; the last level reaches the
    input's resolution without a skip. Any H, W: the input is padded (edge-replicated) to a multiple of
    32 and the logits cropped back.

    `pretrained`: start the encoder from ImageNet weights (the `cnnlab[pretrained]` extra).
    `mean`/`std`: the normalisation of the inputs the task gives (pixel/255 statistics); the model maps
    them to the encoder's own input scale, so the task's facts stay the task's.
    """

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
        if in_channels not in (1, 3):
            raise ConfigError(f"model lite0-unet takes 1 or 3 input channels, not {in_channels}")
        self.encoder = Lite0Encoder()
        if pretrained:
            self.encoder.load_state_dict(load_lite0())
        if in_channels == 1:  # grey: the RGB filters summed see a grey image as they saw its RGB copy
            stem = self.encoder.stem[0]
            stem.weight = nn.Parameter(stem.weight.detach().sum(1, keepdim=True))
        # x_task = (pixel/255 - mean) / std  ->  x_encoder = (pixel - 127) / 128
        m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self.register_buffer("in_scale", s * 255 / 128, persistent=False)
        self.register_buffer("in_shift", (m * 255 - 127) / 128, persistent=False)
        skips = (*reversed(Lite0Encoder.channels[:-1]), 0)
        cin, blocks = Lite0Encoder.channels[-1], []
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
