"""Fashion-MNIST classifiers: the two seed-report architectures, activation selectable."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "sigmoid": nn.Sigmoid}


def _act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class SeedA(nn.Sequential):
    """Report A: conv3x3-32, pool, conv4x4-64, pool (64x5x5), FC 1600-128-10."""

    def __init__(self, activation: str = "relu", num_classes: int = 10):
        super().__init__(
            nn.Conv2d(1, 32, 3),
            _act(activation),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 4),
            _act(activation),
            nn.MaxPool2d(2),
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


MODELS = {"seed-a": SeedA, "seed-b": SeedB}


def build_fashion_model(name: str, activation: str = "relu") -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"model '{name}' is not a Fashion-MNIST model; choose one of {sorted(MODELS)}")
    return MODELS[name](activation=activation)
