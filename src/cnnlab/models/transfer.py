"""Classifiers on an ImageNet backbone (EfficientNet-Lite0/1/2): transfer learning for small folders.

The net is the ImageNet classifier with a new last layer: the images resized to the backbone's input
side, the encoder, its 1x1 conv to 1280 features (the "neck"), global average pooling, dropout and a
linear layer per class. `features` is everything before the last layer, so a frozen backbone's
features can be computed once and cached (engine/features.py) while only `head` learns.

`freeze` is how much of the backbone learns:
- "backbone": nothing (a linear probe): the backbone stays as it came from ImageNet.
- "bn": everything but the batch-norm statistics, which stay ImageNet's: batches of 32 estimate them
  badly, and new statistics under old weights are what hurts fine-tuning most (Keras' fine-tuning guide
  keeps BatchNormalization in inference mode for this reason).
- "none": everything, as from scratch.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .efficientnet import BACKBONES, Backbone, LiteEncoder, conv_bn, input_map, start_from_imagenet
from .imagenet import load_lite

Freeze = Literal["none", "bn", "backbone"]


class LiteNet(nn.Module):
    """EfficientNet-Lite0 classifier for `image_size` squares (Lite1Net, Lite2Net: the larger ones).

    `input_size`: the side the backbone sees (default: the side it was trained at on ImageNet). Small
    images gain from upscaling: the backbone's filters were learned on objects tens of pixels wide.
    `pretrained`: start from ImageNet weights (the `cnnlab[pretrained]` extra); `mean`/`std` are the
    task's normalisation, mapped to the backbone's own input scale inside the model.
    """

    backbone: Backbone = BACKBONES["lite0"]
    min_side = 1

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        pretrained: bool = False,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        input_size: int | None = None,
        freeze: Freeze = "none",
        dropout: float = 0.2,
    ):
        super().__init__()
        self.input_size = input_size or self.backbone.input_size
        self.freeze = freeze
        scale, shift = input_map(in_channels, mean, std, self.backbone)
        self.register_buffer("in_scale", scale, persistent=False)
        self.register_buffer("in_shift", shift, persistent=False)
        self.encoder = LiteEncoder(self.backbone)
        start_from_imagenet(self.encoder, in_channels, pretrained)
        self.neck = conv_bn(self.encoder.channels[-1], self.backbone.features, 1)
        if pretrained:
            self.neck.load_state_dict(load_lite(self.backbone.name, part="neck"))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.features, num_classes))
        if freeze == "backbone":
            for p in (*self.encoder.parameters(), *self.neck.parameters()):
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> LiteNet:
        super().train(mode)
        if self.freeze != "none":  # the backbone's batch-norm statistics stay ImageNet's (see the module)
            for m in (*self.encoder.modules(), *self.neck.modules()):
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) task inputs -> (B, 1280) pooled backbone features."""
        side = self.input_size
        if x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=False)
        x = self.encoder(x * self.in_scale + self.in_shift)[-1]
        return self.neck(x).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class Lite1Net(LiteNet):
    backbone = BACKBONES["lite1"]


class Lite2Net(LiteNet):
    backbone = BACKBONES["lite2"]


CLASSIFIERS = {"lite0": LiteNet, "lite1": Lite1Net, "lite2": Lite2Net}


def imagenet_classifier(variant: str = "lite0") -> LiteNet:
    """The whole ImageNet classifier of a backbone (1000 classes, pixel/255 inputs): to check the weights."""
    net = CLASSIFIERS[variant](num_classes=1000, pretrained=True, mean=(0.0,) * 3, std=(1.0,) * 3)
    net.head[1].load_state_dict(load_lite(variant, part="fc"))
    return net.eval()
