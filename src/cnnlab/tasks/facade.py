"""Facade segmentation: data, model, losses, metrics and figures for the shared engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data import Split
from ..data import facade as fdata
from ..data.augment import seg_augment
from ..metrics import confusion_matrix, iou_per_class, per_class_average_precision, pixel_accuracy
from ..models.facade import build_facade_model
from ..report import figures
from . import Task, nll

# ImageNet statistics: the facade photos are ordinary RGB photographs.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
HEX = ["#000000", "#0080FF", "#80FF80", "#FF8000", "#FF0000"]


def _split(fs: fdata.FacadeSet, idx: torch.Tensor) -> Split:
    return Split(fs.images[idx], fs.labels[idx], [fs.names[i] for i in idx.tolist()])


def per_image_iou(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,H,W) maps -> (N,) mean IoU over the classes present in truth or prediction of each image."""
    n = len(pred)
    flat = (torch.arange(n).view(n, 1, 1) * num_classes + truth.long()) * num_classes + pred.long()
    cm = torch.bincount(flat.flatten(), minlength=n * num_classes**2).view(n, num_classes, num_classes).double()
    inter = cm.diagonal(dim1=1, dim2=2)
    union = cm.sum(1) + cm.sum(2) - inter
    return (inter / union).nanmean(1)


def dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(1)
    onehot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)).mean()


class FacadeTask(Task):
    name = "facade"
    classes = fdata.CLASSES
    primary = "map"

    def __init__(self) -> None:
        self.class_weights: torch.Tensor | None = None

    def load_data(self, cfg: RunConfig) -> dict[str, Split]:
        d = cfg.data
        fs = fdata.load_folder(fdata.find_facade_dir(d.dir))
        groups = fdata.group_keys(fs.names, d.group_key)
        idx = fdata.group_split(groups, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=cfg.train.seed)
        if d.limit is not None:
            idx["train"] = idx["train"][: d.limit]
        return {k: _split(fs, v) for k, v in idx.items()}

    def load_external(self, folder: Path) -> Split:
        fs = fdata.load_folder(folder)
        return _split(fs, torch.arange(len(fs.names)))

    def build_model(self, cfg: RunConfig) -> torch.nn.Module:
        m = cfg.model
        kwargs = {"seed-b": {"width": m.width}, "unet": {"base": max(1, round(16 * m.width))}}.get(m.name, {})
        return build_facade_model(m.name, **kwargs)

    def prepare_training(self, cfg: RunConfig, train: Split) -> None:
        if cfg.loss.name == "freq-weighted-ce":
            freq = fdata.class_frequencies(train.y, len(self.classes)).clamp_min(1e-6)
            self.class_weights = (1 / freq) / (1 / freq).sum() * len(self.classes)

    def eval_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - MEAN) / STD

    def train_inputs(self, x, y, cfg, gen, epoch):
        a = cfg.augment
        # Small rescaled crops train fast but show objects at other scales than the whole images the
        # model is evaluated on; a short last phase on whole images closes that gap.
        whole = epoch >= cfg.train.epochs - a.full_size_epochs or (
            a.crop_size is None and a.min_crop == a.max_crop == 1
        )
        if whole and not a.hflip and not a.jitter:
            return self.eval_inputs(x), y.long()
        size = None if whole else a.crop_size or min(x.shape[-2:])
        xf, yl = seg_augment(
            x, y, gen, out_size=size, min_crop=a.min_crop, max_crop=a.max_crop, hflip=a.hflip, jitter=a.jitter
        )
        return (xf - MEAN) / STD, yl

    def unflip(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.flip(-1)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
        weight = None
        if cfg.loss.name == "batch-weighted-ce":
            # Report A: each class weighted by the inverse of its pixel count in this batch.
            counts = torch.bincount(y.flatten(), minlength=logits.shape[1]).float()
            weight = torch.where(counts > 0, 1 / counts.clamp_min(1), torch.zeros_like(counts))
            weight = weight / weight.sum() * logits.shape[1]
        elif cfg.loss.name == "freq-weighted-ce":
            weight = self.class_weights
        loss = F.cross_entropy(logits, y, weight=weight, label_smoothing=cfg.loss.label_smoothing)
        if cfg.loss.dice:
            loss = loss + cfg.loss.dice * dice_loss(logits, y)
        return loss

    def metrics(self, probs: torch.Tensor, y: torch.Tensor, cfg: RunConfig) -> dict[str, Any]:
        ap = per_class_average_precision(probs, y)
        cm = confusion_matrix(probs.argmax(1), y, len(self.classes))
        iou = iou_per_class(cm)
        return {
            "loss": nll(probs, y),
            "acc": pixel_accuracy(cm),
            "ap": ap.tolist(),
            "map": float(ap.nanmean()),
            "iou": iou.tolist(),
            "miou": float(iou.nanmean()),
        }

    def summary_line(self, m: dict[str, Any]) -> str:
        return f"loss {m['loss']:.4f}  mAP {m['map']:.4f}  mIoU {m['miou']:.4f}  pixel acc {m['acc']:.2%}"

    def report_training(self, run_dir: Path, history: list[dict], model: torch.nn.Module, cfg: RunConfig) -> None:
        out = run_dir / "figures"
        figures.plot_curves(history, out / "curves", metric="map", metric_label="mean AP")
        epochs = [r for r in history if r["kind"] == "epoch"]
        figures.plot_per_class_over_epochs(
            [r["epoch"] for r in epochs],
            [r["val_ap"] for r in epochs],
            self.classes,
            out / "ap_per_class_over_epochs",
            "AP",
            colors=["#555555", *HEX[1:]],
        )

    def report_split(
        self, run_dir: Path, split: str, data: Split, probs: torch.Tensor, metrics: dict, model: torch.nn.Module
    ) -> None:
        out = run_dir / "figures"
        pred = probs.argmax(1)
        cm = confusion_matrix(pred, data.y, len(self.classes))
        figures.plot_confusion(cm, self.classes, out / f"confusion_{split}", f"{split} pixel confusion")
        figures.plot_per_class_table(
            {"AP": metrics["ap"], "IoU": metrics["iou"]},
            self.classes,
            out / f"ap_iou_{split}",
            f"{split}: mean AP {metrics['map']:.3f}, mean IoU {metrics['miou']:.3f}",
        )
        scores = per_image_iou(pred, data.y, len(self.classes))
        order = scores.argsort(descending=True).tolist()
        k = min(3, len(order) // 2) or 1
        for name, pick in (("best", order[:k]), ("worst", order[::-1][:k])):
            figures.plot_segmentation_cases(
                data.x[pick],
                data.y[pick],
                pred[pick],
                scores[pick].tolist(),
                [data.names[i] for i in pick],
                self.classes,
                fdata.COLORS,
                out / f"{name}_{split}",
                f"{'Success' if name == 'best' else 'Failure'} cases ({split}, by per-image mean IoU)",
            )
        figures.write_json(out / f"per_image_iou_{split}.json", dict(zip(data.names, scores.tolist(), strict=True)))
