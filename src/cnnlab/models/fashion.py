"""Fashion-MNIST classifiers: the two seed-report architectures (activation selectable) and a small ResNet."""

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

    def __init__(self, activation: str = "relu", num_classes: int = 10):
        super().__init__(
            nn.Conv2d(1, 32, 3),
            nn.MaxPool2d(2),
            _act(activation),
            nn.Conv2d(32, 64, 4),
            nn.MaxPool2d(2),
            _act(activation),
            nn.Flatten(),
            nn.Linear(64 * 5 * 5, 128),
            _act(activation),
            nn.Linear(128, num_classes),
        )


class SeedB(nn.Sequential):
    """Report B: two conv5x5-32 layers (padded) with pooling (32x7x7), FC 1568-128-10."""

    def __init__(self, activation: str = "relu", num_classes: int = 10):
        super().__init__(
            nn.Conv2d(1, 32, 5, padding=2),
            _act(activation),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2),
            _act(activation),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
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

    def __init__(self, activation: str = "relu", num_classes: int = 10, width: float = 1.0):
        c = max(8, round(32 * width))
        super().__init__(
            _conv_bn(1, c, activation),
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


def build_fashion_model(name: str, activation: str = "relu", width: float = 1.0) -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"model '{name}' is not a Fashion-MNIST model; choose one of {sorted(MODELS)}")
    if name == "resnet":
        return ResNet(activation=activation, width=width)
    return MODELS[name](activation=activation)
