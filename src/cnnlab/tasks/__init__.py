"""What differs per task (data, model, loss, metrics, figures) behind one interface the engine uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data import Split
from ..errors import ConfigError

Batchable = Split


class Task:
    """Defaults shared by both tasks; subclasses fill in the rest."""

    name: str
    classes: tuple[str, ...]
    primary: str  # the validation metric that picks the best checkpoint (higher is better)

    def load_data(self, cfg: RunConfig) -> dict[str, Split]:
        raise NotImplementedError

    def load_external(self, folder: Path) -> Split:
        """A whole labelled folder to evaluate on (a separate test set)."""
        raise ConfigError(f"{self.name} runs evaluate on their own data splits; use --data-dir instead")

    def build_model(self, cfg: RunConfig) -> torch.nn.Module:
        raise NotImplementedError

    def prepare_training(self, cfg: RunConfig, train: Split) -> None:
        """Hook for statistics of the training split (e.g. class frequencies for weighted losses)."""

    def train_inputs(
        self, x: torch.Tensor, y: torch.Tensor, cfg: RunConfig, gen: torch.Generator, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 training batch -> augmented, normalised model inputs and targets (`epoch` counts from 0)."""
        raise NotImplementedError

    def eval_inputs(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unflip(self, probs: torch.Tensor) -> torch.Tensor:
        """Map the prediction for a horizontally flipped input back (test-time flip)."""
        return probs

    def loss(self, logits: torch.Tensor, y: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=cfg.loss.label_smoothing)

    def batch_correct(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        return int((logits.argmax(1) == y).sum()), y.numel()

    def metrics(self, probs: torch.Tensor, y: torch.Tensor, cfg: RunConfig) -> dict[str, Any]:
        raise NotImplementedError

    def summary_line(self, m: dict[str, Any]) -> str:
        raise NotImplementedError

    def report_training(self, run_dir: Path, history: list[dict], model: torch.nn.Module, cfg: RunConfig) -> None:
        raise NotImplementedError

    def report_split(
        self, run_dir: Path, split: str, data: Split, probs: torch.Tensor, metrics: dict, model: torch.nn.Module
    ) -> None:
        raise NotImplementedError


def nll(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy from probabilities (validation loss, comparable across recipes)."""
    p = probs.gather(1, y.long().unsqueeze(1)).clamp_min(1e-12)
    return float(-p.log().mean())


def get_task(name: str) -> Task:
    if name == "fashion":
        from .fashion import FashionTask

        return FashionTask()
    if name == "facade":
        from .facade import FacadeTask

        return FacadeTask()
    raise ConfigError(f"unknown task '{name}'; choose fashion or facade")
