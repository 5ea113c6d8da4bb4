"""Classification and segmentation metrics on tensors.

Everything here works on whole tensors at once: a validation pass over the facade set scores
about 6M pixels per class, so per-pixel Python or a round trip through scikit-learn would dominate
the epoch time.
"""

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Count matrix (C, C) int64: row = true class, column = predicted class. Any shapes."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.numel()} elements but target has {target.numel()}")
    both = torch.cat([pred, target])
    if both.numel() and (both.min() < 0 or both.max() >= num_classes):
        # bincount would silently grow the matrix instead of failing.
        raise ValueError(f"class indices must be in 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_accuracy(cm: Tensor) -> Tensor:
    """Recall of each class (C,) float64; NaN for a class that never occurs."""
    cm = cm.double()
    return cm.diagonal() / cm.sum(dim=1)


def iou_per_class(cm: Tensor) -> Tensor:
    """Intersection over union of each class (C,) float64; NaN where the union is empty."""
    cm = cm.double()
    tp = cm.diagonal()
    return tp / (cm.sum(dim=0) + cm.sum(dim=1) - tp)


def pixel_accuracy(cm: Tensor) -> float:
    """Share of all counted samples (pixels) that were predicted right; NaN if none."""
    cm = cm.double()
    return (cm.trace() / cm.sum()).item()


def average_precision(scores: Tensor, truth: Tensor) -> float:
    """Average precision exactly as scikit-learn's ``average_precision_score`` defines it.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first; samples with
    equal scores enter together at one threshold. NaN when there is no positive.

    Only thresholds that hold a positive move the recall, so it is enough to visit the distinct
    positive scores t: there R steps by (positives scoring t) / P and P_n = pos(>= t) / all(>= t).
    That needs the positive and negative scores sorted but no argsort, and numpy's value sort is
    about 10x faster than torch.sort on CPU (0.07 s against 0.8 s for 6M float32 pixels).
    """
    scores, truth = scores.detach().cpu().reshape(-1), truth.detach().cpu().reshape(-1).bool()
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.double()  # numpy has no bfloat16; float64 holds half, bf16 and ints exactly
    pos = torch.from_numpy(np.sort(scores[truth].numpy()))
    neg = torch.from_numpy(np.sort(scores[~truth].numpy()))
    if pos.numel() == 0:
        return float("nan")
    run_start = torch.nonzero(torch.cat([torch.tensor([True]), pos[1:] != pos[:-1]])).squeeze(1)
    thresholds = pos[run_start]
    pos_at_or_above = pos.numel() - run_start
    all_at_or_above = pos_at_or_above + neg.numel() - torch.searchsorted(neg, thresholds)
    pos_at = torch.diff(run_start, append=torch.tensor([pos.numel()]))
    precision = pos_at_or_above.double() / all_at_or_above.double()
    return ((pos_at.double() * precision).sum() / pos.numel()).item()


def per_class_average_precision(probs: Tensor, target: Tensor) -> Tensor:
    """AP of each class (C,) float64 over every sample/pixel: probs (N, C, ...), target (N, ...)."""
    num_classes = probs.shape[1]
    per_class = probs.transpose(0, 1).reshape(num_classes, -1)
    target = target.reshape(-1)
    if per_class.shape[1] != target.numel():
        raise ValueError(f"probs has {per_class.shape[1]} samples per class but target has {target.numel()}")
    return torch.tensor([average_precision(per_class[c], target == c) for c in range(num_classes)], dtype=torch.float64)


def class_areas(labels: torch.Tensor, classes: Sequence[str]) -> dict[str, float]:
    """Each class's share of the pixels of a label map (N,H,W or H,W); values past the classes count for
    no class."""
    counts = torch.bincount(labels.flatten().long(), minlength=len(classes))[: len(classes)]
    return {c: float(a) for c, a in zip(classes, counts.double() / labels.numel(), strict=True)}
