"""cnnlab: train, evaluate and explain small CNNs (Fashion-MNIST classification, facade segmentation)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "check", "evaluate", "explain", "load_model", "predict", "sweep_activations", "train", "tune"]

if TYPE_CHECKING:
    from .api import check, evaluate, explain, load_model, predict, sweep_activations, train, tune


def __getattr__(name: str) -> Any:
    # The API is loaded on first use: importing it loads torch (~1 s), which `cnnlab --help` never needs.
    if name in __all__:
        return getattr(import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
