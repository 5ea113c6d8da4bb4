"""Classifiers: the two seed reports' Fashion-MNIST nets (activation selectable) and a small ResNet.

Each takes grey or RGB inputs of one square size (`image_size`, 28 for Fashion-MNIST) and any number of
classes; the seed nets' fully connected heads are sized for `image_size`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "sigmoid": nn.Sigmoid}


def _act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class SeedA(nn.Sequential):
    """Report A: conv3x3-32, pool, conv4x4-64, pool (64x5x5), FC 1600-128-10.

    Each max-pool runs before its activation: for monotonic activations (all of ACTIVATIONS) pooling
    then activating is the same function with the same gradients, on a quarter of the pixels.
    """

    min_side = 12  # px: two unpadded convs and two poolings leave at least 1x1 of 64 channels

    def __init__(self, activation: str = "relu", num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        side = ((image_size - 2) // 2 - 3) // 2  # 5 for 28x28
        if side < 1:
            raise ConfigError(
                f"seed-a needs images of at least {self.min_side} px (data.image_size is {image_size}); "
                "use a larger data.image_size or model resnet"
            )
        super().__init__(
            nn.Conv2d(in_channels, 32, 3),
            nn.MaxPool2d(2),
            _act(activation),
            nn.Conv2d(32, 64, 4),
            nn.MaxPool2d(2),
            _act(activation),
            nn.Flatten(),
            nn.Linear(64 * side * side, 128),
            _act(activation),
            nn.Linear(128, num_classes),
        )


class SeedB(nn.Sequential):
    """Report B: two conv5x5-32 layers (padded) with pooling (32x7x7), FC 1568-128-10."""

    min_side = 4

    def __init__(self, activation: str = "relu", num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        side = image_size // 4  # 7 for 28x28
        if side < 1:
            raise ConfigError(f"seed-b needs images of at least {self.min_side} px (data.image_size is {image_size})")
        super().__init__(
            nn.Conv2d(in_channels, 32, 5, padding=2),
            _act(activation),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2),
            _act(activation),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * side * side, 128),
            _act(activation),
            nn.Linear(128, num_classes),
        )


def _conv_bn(cin: int, cout: int, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), _act(activation))


class _Residual(nn.Module):
    def __init__(self, channels: int, activation: str):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels, activation), _conv_bn(channels, channels, activation))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNet(nn.Sequential):
    """The quality net: three stages (28, 14, 7 px) of conv-BN + a residual pair, widths c, 2c, 4c.

    Each stage widens, then pools, before its residual pair: the expensive 3x3 convs run at the
    pooled size, which keeps a training epoch near a minute on two CPU cores at c=32.
    """

    min_side = 4

    def __init__(self, activation: str = "relu", num_classes: int = 10, width: float = 1.0, in_channels: int = 1):
        c = max(8, round(32 * width))
        super().__init__(
            _conv_bn(in_channels, c, activation),
            _conv_bn(c, 2 * c, activation),
            nn.MaxPool2d(2),
            _Residual(2 * c, activation),
            _conv_bn(2 * c, 4 * c, activation),
            nn.MaxPool2d(2),
            _Residual(4 * c, activation),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * c, num_classes),
        )


MODELS = {"seed-a": SeedA, "seed-b": SeedB, "resnet": ResNet}


def build_fashion_model(name: str, activation: str | None = None, width: float | None = None) -> nn.Module:
    """A Fashion-MNIST classifier (1x28x28 in, 10 classes out); options it does not take are refused."""
    from . import build_model

    sizes = {"in_channels": 1, "num_classes": 10, "image_size": 28}
    return build_model("classify", name, **sizes, activation=activation, width=width)
