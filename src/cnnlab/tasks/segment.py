"""Segmentation on the shared engine: losses, metrics and figures for any set of images with label maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data import Rows, Split
from ..data.augment import seg_augment
from ..data.splits import group_keys
from ..errors import DataError
from ..metrics import confusion_matrix, iou_per_class, per_class_average_precision, pixel_accuracy
from ..outputs import write_json
from ..sizes import MAX_SIDE, MIN_SIDE
from . import Task, nll

# ImageNet statistics: for RGB photographs (the facade set's, and the default of RGB folders).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def class_frequencies(labels: torch.Tensor | Rows, num_classes: int) -> torch.Tensor:
    """Share of pixels (float64, sums to 1 over the classes) of each class in uint8 label maps; values
    outside 0..num_classes-1 (an ignore value) are not counted."""
    counts = torch.zeros(256, dtype=torch.int64)
    # bincount reads the uint8 labels as they are (no int64 copy of the pixels), a chunk at a time.
    for i in range(0, len(labels), 256):
        counts += torch.bincount(labels[i : i + 256].reshape(-1), minlength=256)
    counts = counts[:num_classes]
    return counts.double() / counts.sum().clamp_min(1)


def per_image_iou(
    pred: torch.Tensor, truth: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """(N,H,W) maps -> (N,) mean IoU over the classes present in truth or prediction of each image
    (pixels whose truth is `ignore_index` left out)."""
    n = len(pred)
    flat = (torch.arange(n).view(n, 1, 1) * num_classes + truth.long()) * num_classes + pred.long()
    if ignore_index is not None:
        flat = flat[truth != ignore_index]
    cm = torch.bincount(flat.flatten(), minlength=n * num_classes**2).view(n, num_classes, num_classes).double()
    inter = cm.diagonal(dim1=1, dim2=2)
    union = cm.sum(1) + cm.sum(2) - inter
    return (inter / union).nanmean(1)


def case_groups(spec: str | None, names: list[str]) -> list[int]:
    """Each image's group by a run's group spec (data.group_key: the views of one building share one),
    so that success and failure cases show different groups; every image is its own group without a
    spec, or where the names do not follow it (an external folder)."""
    try:
        return group_keys(names, spec or "file")
    except DataError:
        return list(range(len(names)))


def _one_per_group(order: list[int], groups: Sequence[int], k: int, taken: set[int]) -> list[int]:
    """The first `k` images of `order` not in `taken`, at most one of each group."""
    picked: list[int] = []
    seen: set[int] = set()
    for i in order:
        if i not in taken and groups[i] not in seen:
            picked.append(i)
            seen.add(groups[i])
            if len(picked) == k:
                break
    return picked


def dice_loss(logits: torch.Tensor, y: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    probs, keep = logits.softmax(1), None
    if ignore_index is not None:  # ignored pixels count for no class, predicted or true
        keep = (y != ignore_index).unsqueeze(1)
        probs, y = probs * keep, y.masked_fill(~keep.squeeze(1), 0)
    onehot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    onehot = onehot if keep is None else onehot * keep
    inter = (probs * onehot).sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)).mean()


class SegmentTask(Task):
    """A class per pixel; the best checkpoint has the highest validation mean average precision."""

    kind = "segment"
    image_size = None
    primary = "map"
    primary_label = "mean AP"
    headline: ClassVar = {"map": ("mAP", "{:.3f}"), "miou": ("mIoU", "{:.3f}")}
    per_class = (("ap", "AP", "map"), ("iou", "IoU", "miou"))
    percent = False
    total_row = "mean over classes"
    colour_legend = True
    # A photo smaller than a window of the training crops is refused; a larger one is decoded at MAX_SIDE.
    photo_sides = (MIN_SIDE, MAX_SIDE)

    def __init__(self) -> None:
        self.class_weights: torch.Tensor | None = None

    def split_description(self, cfg: RunConfig) -> str:
        d = cfg.data
        train = 1 - d.val_fraction - d.test_fraction
        limit = f"; training limited to the first {d.limit} images" if d.limit else ""
        return (
            f"whole groups ({d.group_key}) to {train:.0%} train, {d.val_fraction:.0%} validation, "
            f"{d.test_fraction:.0%} test (seed {cfg.train.seed}){limit}"
        )

    label_maps = True
    balance_unit = "share of pixels"

    def class_balance(self, split: Split) -> list[float]:
        return class_frequencies(split.y, len(self.classes)).tolist()

    def prepare_training(self, cfg: RunConfig, train: Split) -> None:
        if cfg.loss.name == "freq-weighted-ce":
            freq = class_frequencies(train.y, len(self.classes)).clamp_min(1e-6)
            self.class_weights = (1 / freq) / (1 / freq).sum() * len(self.classes)

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
        return self.normalise(xf), yl

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
        ignore = -100 if self.ignore_index is None else self.ignore_index
        loss = F.cross_entropy(logits, y, weight=weight, ignore_index=ignore, label_smoothing=cfg.loss.label_smoothing)
        if cfg.loss.dice:
            loss = loss + cfg.loss.dice * dice_loss(logits, y, self.ignore_index)
        return loss

    def batch_correct(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        if self.ignore_index is None:
            return super().batch_correct(logits, y)
        keep = y != self.ignore_index
        return int(((logits.argmax(1) == y) & keep).sum()), int(keep.sum())

    def metrics(self, probs: torch.Tensor, y: torch.Tensor, cfg: RunConfig) -> dict[str, Any]:
        if self.ignore_index is not None:
            # Pixels under the ignore value count nowhere: they become a sample set without them.
            keep = (y != self.ignore_index).reshape(-1)
            probs = probs.movedim(1, -1).reshape(-1, probs.shape[1])[keep].T.unsqueeze(0)
            y = y.reshape(-1)[keep].unsqueeze(0)
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
        from ..plots import canvas, figures

        out = run_dir / "figures"
        with canvas.pdf_copies(cfg.explain.report == "full"):
            figures.plot_curves(history, out / "curves", metric="map", metric_label="mean AP")
            figures.plot_learning_rate(history, out / "learning_rate", cfg.optim.schedule)
            epochs = [r for r in history if r["kind"] == "epoch"]
            figures.plot_per_class_over_epochs(
                [r["epoch"] for r in epochs],
                [r["val_ap"] for r in epochs],
                self.classes,
                out / "ap_per_class_over_epochs",
                "AP",
                colors=["#555555" if c == "#000000" else c for c in self.colors],
            )

    def report_split(self, run_dir, split, data, probs, metrics, model, cfg) -> None:
        from ..plots import canvas, figures

        out = run_dir / "figures"
        pred = probs.argmax(1)
        y = data.targets
        keep = slice(None) if self.ignore_index is None else y != self.ignore_index
        cm = confusion_matrix(pred[keep], y[keep], len(self.classes))
        scores = per_image_iou(pred, y, len(self.classes), self.ignore_index)
        groups = case_groups(cfg.data.group_key, data.names)
        with canvas.pdf_copies(cfg.explain.report == "full"):
            figures.plot_confusion(cm, self.classes, out / f"confusion_{split}", f"{split} pixel confusion")
            figures.plot_per_class_table(
                {"AP": metrics["ap"], "IoU": metrics["iou"]},
                self.classes,
                out / f"ap_iou_{split}",
                f"{split}: mean AP {metrics['map']:.3f}, mean IoU {metrics['miou']:.3f}",
            )
            for name, pick in self.cases(scores, groups).items():
                figures.plot_segmentation_cases(
                    data.x[pick],
                    y[pick],
                    pred[pick],
                    scores[pick].tolist(),
                    [data.names[i] for i in pick],
                    self.classes,
                    self.rgb,
                    out / f"{name}_{split}",
                    f"{'Success' if name == 'best' else 'Failure'} cases ({split}, by mean IoU; one per group)",
                )
        write_json(out / f"per_image_iou_{split}.json", dict(zip(data.names, scores.tolist(), strict=True)))

    @staticmethod
    def cases(scores: torch.Tensor, groups: Sequence[int]) -> dict[str, list[int]]:
        """The success and failure cases: the (up to 3) images of highest and of lowest mean IoU, at most
        one of each group in each list (`groups`: each image's group; a building's three views would
        otherwise fill a row with one facade) and no image in both, unless there is only one."""
        order = scores.argsort(descending=True).tolist()
        k = min(3, len(set(groups)) // 2) or 1
        best = _one_per_group(order, groups, k, set())
        return {"best": best, "worst": _one_per_group(order[::-1], groups, k, set(best)) or order[-1:]}

    def report_explanations(self, run_dir, split, data, probs, model, cfg) -> None:
        from ..plots import canvas
        from .explanations import segment_explanations

        scores = per_image_iou(probs.argmax(1), data.targets, len(self.classes), self.ignore_index)
        cases = self.cases(scores, case_groups(cfg.data.group_key, data.names))
        with canvas.pdf_copies(cfg.explain.report == "full"):
            segment_explanations(self, run_dir, split, data, probs, model, cases, scores.tolist())
