"""One factory for every model: a model takes the options its constructor names, and no others."""

from __future__ import annotations

import inspect

from torch import nn

from ..errors import ConfigError


def _classifiers() -> dict[str, type[nn.Module]]:
    from .classify import MODELS
    from .transfer import CLASSIFIERS

    return {**MODELS, **CLASSIFIERS}


def _segmenters() -> dict[str, type[nn.Module]]:
    from .efficientnet import UNETS
    from .segment import MODELS

    return {**MODELS, **UNETS}


def model_table(kind: str) -> dict[str, type[nn.Module]]:
    """The model classes of a task kind ("classify" or "segment") by name."""
    return {"classify": _classifiers, "segment": _segmenters}[kind]()


def build_model(
    kind: str,
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int | None = None,
    activation: str | None = None,
    width: float | None = None,
    pretrained: bool = False,
    input_size: int | None = None,
    freeze: str | None = None,
    dropout: float | None = None,
    fresh: bool = True,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> nn.Module:
    """The `kind` model called `name` for inputs of `in_channels` (and, for classifiers, `image_size` px
    squares) and `num_classes` outputs. `activation`, `width`, `input_size`, `freeze`, `dropout` (None: the
    model's default) and `pretrained` are refused, with a reason, by a model that would ignore them; pretrained
    weights are loaded only for a `fresh` model (not one whose weights come from a checkpoint next). A
    model that names `mean` and `std` gets the normalisation of its inputs (an ImageNet encoder rescales
    them to its own)."""
    table = model_table(kind)
    if name not in table:
        raise ConfigError(f"model.name {name!r}: not a {kind} model; choose one of {', '.join(table)}")
    takes = inspect.signature(table[name]).parameters
    options = {
        "activation": activation, "width": width, "pretrained": pretrained or None, "input_size": input_size,
        "freeze": freeze, "dropout": dropout,
    }  # fmt: skip
    for key, value in options.items():
        if value is not None and key not in takes:
            raise ConfigError(f"model.{key}: {name} has no {key} setting; remove model.{key} or choose another model")
    given = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size, "mean": mean, "std": std}
    given.update(options, pretrained=(pretrained and fresh) or None)
    return table[name](**{k: v for k, v in given.items() if v is not None and k in takes})
