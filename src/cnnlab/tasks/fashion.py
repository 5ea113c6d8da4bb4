"""Fashion-MNIST classification: data, model, metrics and figures for the shared engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..data import Split
from ..data import fashion as data
from ..metrics import confusion_matrix, per_class_accuracy
from ..models.fashion import build_fashion_model
from ..report import figures
from . import Task, nll


class FashionTask(Task):
    name = "fashion"
    classes = data.CLASSES
    primary = "acc"

    def load_data(self, cfg: RunConfig) -> dict[str, Split]:
        d = cfg.data
        return data.load(d.dir, val_fraction=d.val_fraction, seed=cfg.train.seed, limit=d.limit)

    def build_model(self, cfg: RunConfig) -> torch.nn.Module:
        return build_fashion_model(cfg.model.name, cfg.model.activation, cfg.model.width)

    def eval_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - data.MEAN) / data.STD

    def train_inputs(self, x, y, cfg, gen, epoch):
        a = cfg.augment
        if a.pad_crop or a.hflip or a.erase:
            from ..data.augment import cls_augment

            xf = cls_augment(x, gen, pad_crop=a.pad_crop, hflip=a.hflip, erase=a.erase)
            return (xf - data.MEAN) / data.STD, y
        return self.eval_inputs(x), y

    def metrics(self, probs: torch.Tensor, y: torch.Tensor, cfg: RunConfig) -> dict[str, Any]:
        cm = confusion_matrix(probs.argmax(1), y, len(self.classes))
        return {
            "loss": nll(probs, y),
            "acc": float(cm.diag().sum() / cm.sum()),
            "per_class_acc": per_class_accuracy(cm).tolist(),
        }

    def summary_line(self, m: dict[str, Any]) -> str:
        return f"loss {m['loss']:.4f}  acc {m['acc']:.2%}"

    def report_training(self, run_dir: Path, history: list[dict], model: torch.nn.Module, cfg: RunConfig) -> None:
        out = run_dir / "figures"
        figures.plot_curves(history, out / "curves")
        epochs = [r for r in history if r["kind"] == "epoch"]
        figures.plot_per_class_over_epochs(
            [r["epoch"] for r in epochs],
            [r["val_per_class_acc"] for r in epochs],
            self.classes,
            out / "per_class_val_acc_over_epochs",
            "accuracy",
        )
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        for i, conv in enumerate(convs[:2], 1):
            o, c, k, _ = conv.weight.shape
            figures.plot_filters(conv.weight, out / f"filters_conv{i}", f"conv{i}: {o} filters of {c}x{k}x{k}")

    def report_split(
        self, run_dir: Path, split: str, data_: Split, probs: torch.Tensor, metrics: dict, model: torch.nn.Module
    ) -> None:
        out = run_dir / "figures"
        conf, pred = probs.max(1)
        cm = confusion_matrix(pred, data_.y, len(self.classes))
        figures.plot_confusion(cm, self.classes, out / f"confusion_{split}", f"{split} confusion matrix")
        figures.plot_examples(data_.x, data_.y, pred, conf, self.classes, out / f"examples_{split}")
        columns = {}
        for s in ("val", "test"):
            path = run_dir / f"eval_{s}.json"
            if path.is_file():
                import json

                columns[s] = json.loads(path.read_text())["per_class_acc"]
        figures.plot_per_class_table(columns, self.classes, out / "per_class_accuracy", "Per-class accuracy")
