"""One run's report: report.html, self-contained (figures embedded), written at the end of training
(partial when interrupted) and by `cnnlab report RUN`."""

from __future__ import annotations

import fnmatch
import inspect
from html import escape
from pathlib import Path
from typing import Any

from .. import runs
from ..config import RunConfig
from ..models import model_table
from ..tasks import Task, get_task
from .html import (
    SPLITS,
    _best_epoch,
    _card,
    _class_label,
    _duration,
    _epochs,
    _eval,
    _fmt,
    _history,
    _kv_table,
    _num_td,
    _number,
    _page,
    _photo_tag,
    _plural,
    _png_tag,
    _read_json,
    _setting,
    _View,
    _wall_time,
    _write,
    view_of,
)

# (figure name pattern, who it is for, section, caption): the first match wins, {split} is filled in. Who:
# None for every run, else a task kind ("classify", "segment") or the inputs' colours ("grey", "rgb").
FIGURES = [
    ("curves", "classify", "training", "Loss (left) and accuracy (right) during training: per batch (smoothed, "
     "light blue), the mean of each epoch (blue) and on the validation set after each epoch (orange). Validation "
     "loss rising while training loss falls means the net over-fits."),
    ("curves", "segment", "training", "Loss (left) and pixel accuracy (right) during training: per batch "
     "(smoothed, light blue), the mean of each epoch (blue) and on the validation images after each epoch "
     "(orange); green, right axis: validation mean AP, the metric that picks the best checkpoint."),
    ("per_class_val_acc_over_epochs", None, "training", "Validation accuracy of each class after every epoch: "
     "which classes are learned late and which stay hard."),
    ("ap_per_class_over_epochs", None, "training", "Validation average precision (AP) of each class after every "
     "epoch, in the class colours (others in grey)."),
    ("per_class_accuracy", None, "per-class", "Accuracy of each class on the validation and test sets (the "
     "numbers of the table above)."),
    ("ap_iou_*", None, "per-class", "Average precision and intersection over union of each class on the {split} "
     "set (the numbers of the table above); the title gives their means."),
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
    ("best_*", None, "cases", "Success cases: the {split} images with the highest mean IoU: image, ground truth "
     "and prediction in the class colours."),
    ("worst_*", None, "cases", "Failure cases: the {split} images with the lowest mean IoU: image, ground truth "
     "and prediction in the class colours."),
    ("cams_*", None, "explain", "Grad-CAM of the examples above ({split} set): where the last convolution block "
     "found the evidence for the class it predicted (red strongest). Evidence on the background or on a detail "
     "shared with another class shows why an image was confused."),
    ("class_cams_*", None, "explain", "Grad-CAM of each class on one {split} image (the best case): what in the "
     "photo the network's deepest layer takes as evidence for each class, over the pixels it predicted as that "
     "class."),
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
    ("confidence_*", None, "confidence", "Where the network is unsure, on the {split} images of the success and "
     "failure cases: its confidence (the top class's probability) and the entropy of its class probabilities per "
     "pixel, beside image, truth and prediction."),
]  # fmt: skip

# Figures still legible at half the page width: validation and test versions of these sit side by side.
HALF_WIDTH = ("examples_*", "ap_iou_*", "filters_conv1", "calibration_*")


SECTIONS = {
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
    "config": "Configuration",
    "environment": "Environment",
}


def _figure_info(name: str, task: Task) -> tuple[str, str]:
    """(section, caption) of a figure by its file name; unknown figures go to 'other' with no caption."""
    split = name.rpartition("_")[2]
    tags = {task.kind, "grey" if task.channels == 1 else "rgb"}
    for pattern, only, section, caption in FIGURES:
        if (only is None or only in tags) and fnmatch.fnmatchcase(name, pattern):
            return section, caption.format(split=SPLITS.get(split, split))
    return "other", ""


def _figure_order(path: Path) -> tuple[int, str]:
    """Figures of no split first, then validation, test, external: best/worst and val/test pairs line up."""
    split = path.stem.rpartition("_")[2]
    return (list(SPLITS).index(split) if split in SPLITS else -1, path.stem)


def _figures_html(paths: list[Path], task: Task) -> dict[str, str]:
    """Figure PNGs as <figure> blocks grouped by section; most get a row of their own, small ones share one."""
    out: dict[str, str] = {}
    for path in sorted(paths, key=_figure_order):
        section, caption = _figure_info(path.stem, task)
        tag, (width, _) = _png_tag(path)
        half = width <= 560 or any(fnmatch.fnmatchcase(path.stem, p) for p in HALF_WIDTH)
        wide = "" if half else " wide"
        text = f"<b>{escape(path.stem)}</b>" + (f": {escape(caption)}" if caption else "")
        out[section] = out.get(section, "") + (
            f'<figure id="fig-{escape(path.stem)}" class="fig{wide}">{tag}<figcaption>{text}</figcaption></figure>'
        )
    return {s: f'<div class="figs">{h}</div>' for s, h in out.items()}


def _per_class_table(evals: dict[str, dict[str, Any]], classes: tuple[str, ...], view: _View) -> str:
    """Rows: classes; columns: each per-class metric on each evaluated split; foot: the means."""
    cols = [(split, key, label, mean) for split in evals for key, label, mean in view.per_class]
    head = "".join(f'<th class="num">{escape(SPLITS.get(s, s))} {escape(label)}</th>' for s, _, label, _ in cols)
    rows = "".join(
        f"<tr><td>{_class_label(name, view, c)}</td>"
        + "".join(_num_td(evals[s][key][c], view.percent) for s, key, _, _ in cols)
        + "</tr>"
        for c, name in enumerate(classes)
    )
    foot_label = "overall accuracy" if view.percent else "mean over classes"
    foot = "".join(_num_td(evals[s].get(mean), view.percent) for s, _, _, mean in cols)
    return (
        f'<div class="scroll"><table id="per-class-table"><thead><tr><th>class</th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody><tfoot><tr><td>{foot_label}</td>{foot}</tr></tfoot></table></div>"
    )


def _history_table(epochs: list[dict[str, Any]], view: _View, best: dict[str, Any] | None) -> str:
    keys = [("train_loss", "train loss", False), ("train_acc", "train acc", True), ("val_loss", "val loss", False),
            ("val_acc", "val acc", True)]  # fmt: skip
    if view.metric != "acc":
        keys += [("val_map", "val mean AP", False), ("val_miou", "val mean IoU", False)]
    head = "".join(f'<th class="num">{escape(label)}</th>' for _, label, _ in keys)
    rows = "".join(
        f'<tr{" class=best" if r is best else ""}><td class="num">{r["epoch"]}</td>'
        + "".join(_num_td(r.get(k), pct) for k, _, pct in keys)
        + f'<td class="num">{r.get("lr", 0):.3g}</td><td class="num">{_duration(_number(r.get("time_s")))}</td></tr>'
        for r in epochs
    )
    return (
        f"<details><summary>Metrics after each epoch ({_plural(len(epochs), 'epoch')}; the best is highlighted)"
        "</summary>"
        f'<div class="scroll"><table id="epoch-table"><thead><tr><th class="num">epoch</th>{head}'
        f'<th class="num">lr</th><th class="num">time</th></tr></thead><tbody>{rows}</tbody></table></div></details>'
    )


def _summary_cards(cfg, view: _View, epochs: list[dict], evals: dict[str, dict]) -> str:
    test = evals.get("test")
    best = _best_epoch(epochs, view.metric)
    cards = [
        _card(f"test {view.label}", _fmt(test.get(view.metric), view.percent) if test else "not evaluated",
              f"{test['n']} images, {test.get('checkpoint', 'best')} checkpoint" if test else "no eval_test.json"),
    ]  # fmt: skip
    if view.metric != "acc" and test:
        cards.append(_card("test mean IoU", _fmt(test.get("miou"), False)))
        cards.append(_card("test pixel accuracy", _fmt(test.get("acc"), True)))
    cards += [
        _card(f"best validation {view.label}", _fmt(best[f"val_{view.metric}"], view.percent) if best else "n/a",
              f"epoch {best['epoch']}" if best else "no finished epoch"),
        _card("epochs", f"{len(epochs)} / {cfg.train.epochs}", f"{epochs[-1]['step']} steps" if epochs else ""),
        _card("wall time", _duration(_wall_time(epochs)), "training, up to the last epoch"),
    ]  # fmt: skip
    return f'<div class="cards">{"".join(cards)}</div>'


def _partial_banner(run_dir: Path, cfg, history: list[dict]) -> str:
    batches = [r for r in history if r.get("kind") == "batch"]
    where = f"epoch {batches[-1]['epoch']} step {batches[-1]['step']}" if batches else "before its first step"
    return (
        f'<div class="banner" id="partial-banner"><b>Partial run: training was interrupted at {where}</b> '
        f"(of {_plural(cfg.train.epochs, 'epoch')}). Curves, tables and figures show the state when it stopped; "
        f"continue with <code>cnnlab {escape(cfg.task)} train --resume {escape(str(run_dir))}</code>.</div>"
    )


def _activation(cfg: RunConfig) -> str | None:
    """The activation the run's model uses (the config's, else the model's default); None for a model
    without that setting, or one this version does not know."""
    model = model_table(cfg.kind).get(cfg.model.name)
    takes = inspect.signature(model).parameters if model else {}
    if "activation" not in takes:
        return None
    return cfg.model.activation or takes["activation"].default


def _config_html(cfg) -> str:
    sections = {k: v for k, v in cfg.model_dump().items() if isinstance(v, dict)}
    cards = "".join(
        f"<div><h3>{escape(name)}</h3>{_kv_table({k: _setting(v) for k, v in values.items()})}</div>"
        for name, values in sections.items()
    )
    return (
        f'<p class="note">From config.yaml: the recipe with every override applied.</p><div class="grid">{cards}</div>'
    )


def _environment_html(run_dir: Path, epochs: list[dict]) -> str:
    path = runs.RunPaths(run_dir).env
    env = _read_json(path) if path.is_file() else {}
    rows = {k: _setting(v) for k, v in env.items()}
    rows["wall time"] = _duration(_wall_time(epochs))
    return _kv_table(rows, "environment-table")


def _predictions_html(run_dir: Path, classes: tuple[str, ...], view: _View) -> str:
    """Outputs of a segmentation run's `predict` in RUN/predictions: overlay, label map and class areas per photo."""
    blocks = []
    for areas_path in sorted((run_dir / "predictions").glob("*_areas.json")):
        stem = areas_path.name.removesuffix("_areas.json")
        info = _read_json(areas_path)
        area = info.get("area", {})
        rows = "".join(
            f"<tr><td>{_class_label(name, view, c)}</td>{_num_td(area.get(name), True, bar=True)}</tr>"
            for c, name in enumerate(classes)
        )
        notes = "".join(f"<li>{escape(n)}</li>" for n in info.get("notes", []))
        images = "".join(
            f"<figure>{_photo_tag(p, p.name)}<figcaption>{escape(what)}</figcaption></figure>"
            for p, what in ((run_dir / "predictions" / f"{stem}_overlay.jpg", "photo with the predicted classes"),
                            (run_dir / "predictions" / f"{stem}_labels.png", "predicted label map"))
            if p.is_file()
        )  # fmt: skip
        size = "x".join(str(s) for s in info.get("size", []))
        blocks.append(
            f'<div class="photo"><div><h3>{escape(Path(info.get("file", stem)).name)}</h3>'
            f'<p class="note">{escape(size)} px</p><table class="areas"><thead><tr><th>class</th>'
            f'<th class="num">area</th></tr></thead><tbody>{rows}</tbody></table>'
            + (f'<ul class="note">{notes}</ul>' if notes else "")
            + f"</div>{images}</div>"
        )
    return "".join(blocks)


def write_report(run_dir: Path, *, partial: bool = False) -> Path:
    """Write RUN/report.html: summary, per-class tables, every figure with a caption, config and environment.

    The banner for an interrupted run shows when `partial` is set or when fewer epochs finished than the
    config asks for. Returns the path of the page.
    """
    run_dir = Path(run_dir)
    cfg = runs.load_run_config(run_dir)
    task = get_task(cfg)
    view = view_of(task)
    history = _history(run_dir)
    epochs = _epochs(history)
    evals = {s: e for s in SPLITS if (e := _eval(run_dir, s)) is not None}

    figs_dir = runs.RunPaths(run_dir).figures
    figures = _figures_html(sorted(figs_dir.glob("*.png")) if figs_dir.is_dir() else [], task)
    tables = _per_class_table(evals, task.classes, view) if evals else '<p class="note">Not evaluated yet.</p>'
    predictions = _predictions_html(run_dir, task.classes, view)
    best = _best_epoch(epochs, view.metric)
    training = figures.pop("training", "") + (_history_table(epochs, view, best) if epochs else "")

    sections = [("summary", "Summary", _summary_cards(cfg, view, epochs, evals))]
    sections.append(("per-class", SECTIONS["per-class"], tables + figures.pop("per-class", "")))
    if training:
        sections.append(("training", SECTIONS["training"], training))
    sections += [
        (s, SECTIONS[s], figures[s])
        for s in ("confusion", "examples", "cases", "filters", "explain", "confidence")
        if s in figures
    ]
    if predictions:
        sections.append(("predictions", SECTIONS["predictions"], predictions))
    if "other" in figures:
        sections.append(("other", SECTIONS["other"], figures["other"]))
    sections.append(("config", SECTIONS["config"], _config_html(cfg)))
    sections.append(("environment", SECTIONS["environment"], _environment_html(run_dir, epochs)))

    activation = _activation(cfg)
    activation = f" ({escape(activation)})" if activation else ""
    banner = _partial_banner(run_dir, cfg, history) if partial or len(epochs) < cfg.train.epochs else ""
    header = (
        f'<header><h1><span class="muted">{escape(cfg.task)} run</span> {escape(run_dir.resolve().name)}</h1>'
        f'<p class="sub">recipe {escape(cfg.recipe)}, model {escape(cfg.model.name)}{activation}, '
        f"{_plural(cfg.train.epochs, 'epoch')}, batch {cfg.train.batch_size}, {escape(cfg.optim.name)} lr "
        f"{cfg.optim.lr:g}, seed {cfg.train.seed}</p></header>{banner}"
    )
    return _write(run_dir / "report.html", _page(f"cnnlab report: {run_dir.resolve().name}", header, sections))


# ---------------------------------------------------------------- several runs
