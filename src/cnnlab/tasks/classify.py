"""Classification on the shared engine: augmentation, metrics and figures for any dataset of labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from ..config import RunConfig
from ..data import Split
from ..data.augment import cls_augment
from ..metrics import confusion_matrix, per_class_accuracy
from ..runs import read_eval
from . import Task, nll


class ClassifyTask(Task):
    """One label per image; the best checkpoint has the highest validation accuracy."""

    kind = "classify"
    primary = "acc"
    primary_label = "accuracy"
    headline: ClassVar = {"acc": ("accuracy", "{:.2%}")}
    per_class = (("per_class_acc", "accuracy", "acc"),)
    percent = True
    # All images' accuracy, not the mean of the classes': on unbalanced folders the two differ.
    total_row = "overall accuracy"

    def class_balance(self, split: Split) -> list[float]:
        return torch.bincount(split.targets, minlength=len(self.classes)).tolist()

    def stratify_by(self, split: Split) -> torch.Tensor:
        return split.targets

    def train_inputs(self, x, y, cfg, gen, epoch):
        a = cfg.augment
        if a.pad_crop or a.hflip or a.erase:
            return self.normalise(cls_augment(x, gen, pad_crop=a.pad_crop, hflip=a.hflip, erase=a.erase)), y
        return self.eval_inputs(x), y

    @property
    def photo_sides(self) -> tuple[int, int]:
        """Smallest and largest side (px) a user's photo is decoded at: larger ones are shrunk while
        decoding, to 10x the model's input (each input pixel still averages 100 or more)."""
        return 1, 10 * self.image_size

    def photo_input(self, img: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """A user's decoded uint8 (C,H,W) image (C = self.channels) -> the model's uint8 input, and notes
        on what was done to it: resized to the training images' square size, as the training images were."""
        _, h, w = img.shape
        side = self.image_size
        if (h, w) == (side, side):
            return img, []
        x = torch.nn.functional.interpolate(img[None].float(), size=(side, side), mode="bilinear", antialias=True)
        return x[0].round().clamp(0, 255).to(torch.uint8), [f"resized {w}x{h} to {side}x{side}"]

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
        from ..plots import canvas, figures
        from .explanations import deep_filters

        out = run_dir / "figures"
        epochs = [r for r in history if r["kind"] == "epoch"]
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        o, c, k, _ = conv.weight.shape
        with canvas.pdf_copies(cfg.explain.report == "full"):
            figures.plot_curves(history, out / "curves")
            figures.plot_learning_rate(history, out / "learning_rate", cfg.optim.schedule)
            figures.plot_per_class_over_epochs(
                [r["epoch"] for r in epochs],
                [r["val_per_class_acc"] for r in epochs],
                self.classes,
                out / "per_class_val_acc_over_epochs",
                "accuracy",
            )
            figures.plot_filters(conv.weight, out / "filters_conv1", f"conv1: {o} filters of {c}x{k}x{k}")
            deep_filters(model, out)

    def report_split(self, run_dir, split, data, probs, metrics, model, cfg) -> None:
        from ..plots import canvas, figures

        out = run_dir / "figures"
        conf, pred = probs.max(1)
        y = data.targets
        cm = confusion_matrix(pred, y, len(self.classes))
        columns = {s: e["per_class_acc"] for s in ("val", "test") if (e := read_eval(run_dir, s)) is not None}
        with canvas.pdf_copies(cfg.explain.report == "full"):
            figures.plot_confusion(cm, self.classes, out / f"confusion_{split}", f"{split} confusion matrix")
            figures.plot_examples(data.x, y, pred, conf, self.classes, out / f"examples_{split}")
            figures.plot_per_class_table(columns, self.classes, out / "per_class_accuracy", "Per-class accuracy")

    def report_explanations(self, run_dir, split, data, probs, model, cfg) -> None:
        from ..plots import canvas
        from .explanations import classify_explanations

        with canvas.pdf_copies(cfg.explain.report == "full"):
            classify_explanations(self, run_dir, split, data, probs, model, cfg)
