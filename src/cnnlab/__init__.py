"""cnnlab: train, evaluate and explain small CNNs (Fashion-MNIST classification, facade segmentation)."""

__version__ = "0.1.0"

from .api import evaluate, explain, load_model, predict, sweep_activations, train

__all__ = ["__version__", "evaluate", "explain", "load_model", "predict", "sweep_activations", "train"]
