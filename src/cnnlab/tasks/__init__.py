"""Everything that differs per task, in one place: two kinds (classify, segment) with their losses,
metrics and figures, and per dataset its facts (class names, colours, normalisation, input size).

The engine, reports, predictions, export and server read these facts from a `Task`; none of them
branches on a task's name. Built-in datasets: Fashion-MNIST (`fashion`) and the mini facade set
(`facade`); `classify` and `segment` read the user's own folders (their facts live in the run's config).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data import Split
from ..errors import ConfigError
from ..models import build_model
from ..plots.overlays import hex_to_rgb

Batchable = Split

# Class colours where the data gives none: matplotlib's tab10, then tab20's light tones.
PALETTE = (
    "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF",
    "#AEC7E8", "#FFBB78", "#98DF8A", "#FF9896", "#C5B0D5", "#C49C94", "#F7B6D2", "#C7C7C7", "#DBDB8D", "#9EDAE5",
)  # fmt: skip


def palette(n: int) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


class Task:
    """What the shared engine and every output need to know about one task kind on one dataset."""

    kind: str  # "classify" or "segment"
    name: str  # the config's task: fashion, facade, classify or segment
    classes: tuple[str, ...]
    colors: tuple[str, ...]  # "#RRGGBB" per class: figures, overlays, the web page
    mean: tuple[float, ...]  # per input channel, of pixel / 255
    std: tuple[float, ...]
    channels: int  # 1 grey or 3 RGB
    image_size: int | None  # classifiers: the side of their square inputs; None: any size
    ignore_index: int | None = None  # segmentation: mask value left out of loss and metrics
    primary: str  # the validation metric that picks the best checkpoint (higher is better)
    primary_label: str
    headline: dict[str, tuple[str, str]]  # metric key -> (label, format): the summary cards and tables
    per_class: tuple[tuple[str, str, str], ...]  # (per-class key, column label, key of its mean)
    percent: bool  # accuracies read better as percentages, AP and IoU as fractions
    total_row: str  # what the per-class tables' last row holds: "overall accuracy", "mean over classes"
    colour_legend = False  # pages show each class beside its colour (segmentation: its label maps' colours)
    photo_sides: tuple[int, int]  # smallest and largest side (px) a user's photo is decoded at
    samples_in_data = False  # the web page offers test photos of its data set (else shipped samples, if any)
    data_description: str = "the user's own image folder"
    skipped: Sequence[str] = ()  # files the data loader left out (data.skip_bad), listed in the run folder

    def load_data(self, cfg: RunConfig, progress: bool = True) -> dict[str, Split]:
        """The train, val and test splits (a folder task also fills in `cfg.data`'s facts)."""
        raise NotImplementedError

    def load_external(self, folder: Path) -> Split:
        """A whole labelled folder to evaluate on (a separate test set)."""
        raise ConfigError(f"{self.name} runs evaluate on their own data splits; use --data-dir instead")

    def split_description(self, cfg: RunConfig) -> str:
        """How the run's data was split, in one sentence (model cards)."""
        raise NotImplementedError

    def build_model(self, cfg: RunConfig, init: bool = False) -> torch.nn.Module:
        """The run's network. `init`: a fresh training run, whose encoder starts from ImageNet weights
        if the config asks; otherwise the weights come from a checkpoint, and the extra is not needed."""
        m = cfg.model
        return build_model(
            self.kind,
            m.name,
            in_channels=self.channels,
            num_classes=len(self.classes),
            image_size=self.image_size,
            activation=m.activation,
            width=m.width,
            pretrained=m.pretrained,
            input_size=m.input_size,
            freeze=m.freeze,
            dropout=m.dropout,
            fresh=init,
            mean=tuple(self.mean),
            std=tuple(self.std),
        )

    @property
    def rgb(self) -> list[tuple[int, int, int]]:
        """The class colours as (r, g, b) bytes."""
        return [hex_to_rgb(c) for c in self.colors]

    @property
    def photo_mode(self) -> str:
        """How a user's photo is decoded for this model: "L" grey, "RGB", or "any" (a grey file grey, any
        other in colour)."""
        return "L" if self.channels == 1 else "RGB"

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or 0..1 float (N,C,H,W) -> the model's input scale."""
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        return (x - self._mean) / self._std

    @property
    def _mean(self) -> torch.Tensor:
        return torch.tensor(self.mean).view(1, -1, 1, 1)

    @property
    def _std(self) -> torch.Tensor:
        return torch.tensor(self.std).view(1, -1, 1, 1)

    groups_csv = False  # data.group_key=csv reads DIR/groups.csv (classification folders)
    label_maps = False  # targets are per-pixel label maps (judged against a trained model), not one class an image
    balance_unit = "images"  # what `class_balance` counts: images a class, or (segmentation) shares of pixels

    def class_balance(self, split: Split) -> list[float]:
        """How much of `split` each class holds, in `balance_unit`."""
        raise NotImplementedError

    def stratify_by(self, split: Split) -> torch.Tensor | None:
        """Labels a random split keeps the shares of (one per image), or None."""
        return None

    def prepare_training(self, cfg: RunConfig, train: Split) -> None:
        """Hook for statistics of the training split (e.g. class frequencies for weighted losses)."""

    def train_inputs(
        self, x: torch.Tensor, y: torch.Tensor, cfg: RunConfig, gen: torch.Generator, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 training batch -> augmented, normalised model inputs and targets (`epoch` counts from 0)."""
        raise NotImplementedError

    def eval_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(x)

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
        self,
        run_dir: Path,
        split: str,
        data: Split,
        probs: torch.Tensor,
        metrics: dict,
        model: torch.nn.Module,
        cfg: RunConfig,
    ) -> None:
        """The figures of one evaluated split (confusion, per-class table, examples or cases) into
        RUN/figures; `cfg` is the run's configuration (segmentation: its group rule picks the cases)."""
        raise NotImplementedError

    def report_explanations(
        self, run_dir: Path, split: str, data: Split, probs: torch.Tensor, model: torch.nn.Module, cfg: RunConfig
    ) -> None:
        """The explanation figures of one split (tasks/explanations.py): after `report_split`."""
        raise NotImplementedError


def nll(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy from probabilities (validation loss, comparable across recipes)."""
    p = probs.gather(1, y.long().unsqueeze(1)).clamp_min(1e-12)
    return float(-p.log().mean())


def get_task(cfg: RunConfig | str) -> Task:
    """The task of a run configuration: its kind on its dataset (a folder run's facts come from `cfg.data`).
    A built-in dataset's name ("fashion", "facade") will do instead of a configuration."""
    name = cfg if isinstance(cfg, str) else cfg.task
    if name == "fashion":
        from .fashion import FashionTask

        return FashionTask()
    if name == "facade":
        from .facade import FacadeTask

        return FacadeTask()
    if isinstance(cfg, str):
        raise ConfigError(f"task {name!r}: give a run's configuration (a folder task's facts live there)")
    from .folders import FolderClassify, FolderSegment

    return FolderClassify(cfg) if name == "classify" else FolderSegment(cfg)
