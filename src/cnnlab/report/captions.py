"""What the run report says about each figure: its section, its caption, how wide it is shown, and the
figure and table numbers its caption refers to."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from ..tasks import Task
from .html import SPLITS

# (figure name pattern, who it is for, section, caption): the first match wins. Who: None for every run,
# else a task kind ("classify", "segment") or the inputs' colours ("grey", "rgb"). In a caption {split}
# is the split in words, {s} its short name, and [NAME] the number of the figure or table NAME
# ("Figure 4", "Table 1").
FIGURES = [
    ("curves", "classify", "training", "Loss (left) and accuracy (right) during training: per batch (smoothed, "
     "light blue), the mean of each epoch (blue) and on the validation set after each epoch (orange). Validation "
     "loss rising while training loss falls means the net over-fits."),
    ("curves", "segment", "training", "Loss (left) and pixel accuracy (middle) during training: per batch "
     "(smoothed, light blue), the mean of each epoch (blue) and on the validation images after each epoch "
     "(orange); right: the validation mean AP after each epoch, the metric that picks the best checkpoint."),
    ("learning_rate", None, "training", "The learning rate of every training batch, as the run's schedule "
     "(optim.schedule, in the title) set it."),
    ("per_class_val_acc_over_epochs", None, "training", "Validation accuracy of each class after every epoch: "
     "which classes are learned late and which stay hard."),
    ("ap_per_class_over_epochs", None, "training", "Validation average precision (AP) of each class after every "
     "epoch, in the class colours (others in grey)."),
    ("per_class_accuracy", None, "per-class", "Accuracy of each class on the validation and test sets (the "
     "numbers of [per-class-table])."),
    ("ap_iou_*", None, "per-class", "Average precision and intersection over union of each class on the {split} "
     "set (the numbers of [per-class-table]); the title gives their means."),
    ("confusion_*", "classify", "confusion", "Confusion matrix of the {split} set: rows are the true class, columns "
     "the predicted one; counts (left) and each row divided by its total (right), so the diagonal is each class's "
     "accuracy and the bright off-diagonal cells are the classes it is confused with."),
    ("confusion_*", "segment", "confusion", "Pixel confusion matrix of the {split} set: rows are the true class of "
     "a pixel, columns the predicted one; pixel counts (left) and rows divided by their totals (right)."),
    ("examples_*", None, "examples", "Images of the {split} set, one row per true class: two classified correctly "
     "(green) and two wrongly (red, with the class predicted instead), each with the predicted class's "
     "probability."),
    # A first layer on grey inputs is drawn one tile per filter; on RGB inputs as a grid of its kernels.
    ("filters_conv1", "grey", "filters", "The learned kernels of the first convolution layer, one tile per filter, "
     "each scaled to its own range (black low, white high)."),
    ("filters_conv1", None, "filters", "The learned kernels of the first convolution layer on one shared scale (red "
     "positive, blue negative); the axis labels give the layout."),
    ("filters_*", None, "filters", "A deeper convolution's filters of largest weight (L2 norm), one per row, each "
     "shown by its input-channel slices of largest norm, all on one shared scale (colour bar): the patterns the "
     "layer combines its inputs with."),
    ("best_*", None, "cases", "Success cases: the {split} images with the highest mean IoU, at most one per group "
     "(data.group_key; the facade set's three views of a building are one group): image, ground truth and "
     "prediction in the class colours."),
    ("worst_*", None, "cases", "Failure cases: the {split} images with the lowest mean IoU, at most one per group "
     "(data.group_key): image, ground truth and prediction in the class colours."),
    ("cams_*", None, "explain", "Grad-CAM of the images of [examples_{s}] ({split} set): where the last convolution "
     "block found the evidence for the class it predicted (red strongest). Evidence on the background or on a "
     "detail shared with another class shows why an image was confused."),
    ("class_cams_*", None, "explain", "Grad-CAM of each class on one {split} image (the best case of [best_{s}]): "
     "what in the photo the network's deepest layer takes as evidence for each class, over the pixels it predicted "
     "as that class."),
    ("feature_maps_*", None, "explain", "Feature maps of one convolution for the most confidently right {split} "
     "image of each class: its channels most active on these images, on one colour scale. Channels that "
     "respond alike to two classes are what keeps them apart or not."),
    ("embedding_*", None, "explain", "The penultimate layer's features of {split} images in two dimensions, one "
     "colour per class, with thumbnails; the legend gives each class's share of neighbours from other classes: "
     "classes whose clouds overlap are the ones the network mixes up."),
    ("calibration_*", "classify", "confidence", "Reliability of the {split} predictions: their accuracy per bin "
     "of confidence against the diagonal of perfect calibration, the gap hatched in red, and how many fall in "
     "each bin (below). ECE: the expected calibration error, the count-weighted mean gap."),
    ("calibration_*", "segment", "confidence", "Reliability of the {split} pixels' predictions: accuracy per bin "
     "of confidence against the diagonal, the gap hatched in red, the pixels per bin below; ECE in the title."),
    ("confidence_best_*", None, "confidence", "Where the network is unsure on the success cases of [best_{s}]: its "
     "confidence (the top class's probability) and the entropy of its class probabilities per pixel, beside "
     "image, truth and prediction."),
    ("confidence_worst_*", None, "confidence", "Where the network is unsure on the failure cases of [worst_{s}]: "
     "its confidence (the top class's probability) and the entropy of its class probabilities per pixel, beside "
     "image, truth and prediction."),
]  # fmt: skip

# Figures still legible at half the page width: validation and test versions of these sit side by side.
HALF_WIDTH = ("examples_*", "ap_iou_*", "filters_conv1", "calibration_*", "learning_rate")

# The report's sections in page order (figures are numbered in this order) and their titles.
SECTIONS = {
    "summary": "Summary",
    "per-class": "Per-class results",
    "training": "Training",
    "confusion": "Confusion matrices",
    "examples": "Examples",
    "cases": "Success and failure cases",
    "filters": "Learned filters",
    "explain": "What the network looks at",
    "confidence": "How sure it is",
    "predictions": "Predictions on photos",
    "other": "Other figures",
    "architecture": "Network architecture",
    "config": "Configuration",
    "environment": "Environment",
}

_REF = re.compile(r"\[([\w-]+)\]")


def _entry(name: str, task: Task) -> int:
    """The index in FIGURES of a figure's entry (the first that fits it and the task); len(FIGURES) if none."""
    tags = {task.kind, "grey" if task.channels == 1 else "rgb"}
    fits = (
        i
        for i, (pattern, only, _, _) in enumerate(FIGURES)
        if (only is None or only in tags) and fnmatch.fnmatchcase(name, pattern)
    )
    return next(fits, len(FIGURES))


def figure_info(name: str, task: Task) -> tuple[str, str]:
    """(section, caption) of a figure by its file name, the caption's references still as [NAME];
    unknown figures go to 'other' with no caption."""
    i = _entry(name, task)
    if i == len(FIGURES):
        return "other", ""
    split = name.rpartition("_")[2]
    _, _, section, caption = FIGURES[i]
    return section, caption.format(split=SPLITS.get(split, split), s=split)


def figure_order(path: Path, task: Task) -> tuple[int, int, str]:
    """Figures of no split first, then validation, test, external, each in the order of FIGURES: the
    curves lead the training section, and best/worst and val/test pairs line up."""
    split = path.stem.rpartition("_")[2]
    return (list(SPLITS).index(split) if split in SPLITS else -1, _entry(path.stem, task), path.stem)


def by_section(paths: list[Path], task: Task) -> dict[str, list[tuple[Path, str]]]:
    """Figure PNGs as (path, caption) by section, sections and figures in page order."""
    out: dict[str, list[tuple[Path, str]]] = {}
    for path in sorted(paths, key=lambda p: figure_order(p, task)):
        section, caption = figure_info(path.stem, task)
        out.setdefault(section, []).append((path, caption))
    return {s: out[s] for s in SECTIONS if s in out}


def is_half_width(name: str, width: int) -> bool:
    """Whether a figure (its name, its width as shown in px) can share a row with another."""
    return width <= 560 or any(fnmatch.fnmatchcase(name, p) for p in HALF_WIDTH)


def resolve(caption: str, numbers: dict[str, str]) -> str:
    """The caption with each [NAME] replaced by that figure's or table's number ("Figure 4"), or by the
    name itself where the report has no such figure."""
    return _REF.sub(lambda m: numbers.get(m[1], f"the figure {m[1]} (not in this report)"), caption)
