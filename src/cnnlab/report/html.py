"""Self-contained HTML pages: one run's report (`write_report`) and several runs side by side (`write_compare`).

Everything a page shows is inside the one file (images as base64 data URIs, inline CSS, no scripts, no
fonts), so report.html can be copied, mailed or opened offline and still shows every figure.
"""

from __future__ import annotations

import base64
import fnmatch
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from PIL import Image

# `engine` as a module, not names from it: the engine may import this module, and attribute look-ups at
# call time work inside such an import cycle where `from ..engine import X` would not.
from .. import __version__, engine
from ..checkpoint import atomic_write
from ..errors import CheckpointError, ConfigError
from ..tasks import get_task
from ..tasks.facade import HEX as FACADE_HEX

SPLITS = {"val": "validation", "test": "test", "external": "external data"}
PHOTO_MAX_PX = 1000  # prediction overlays can be camera-sized; the page needs no more than this
RUN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


@dataclass(frozen=True)
class _View:
    """What a task's pages show: its headline metric and its per-class metrics."""

    metric: str  # key in eval_*.json and (with val_) in metrics.jsonl
    label: str
    per_class: tuple[tuple[str, str, str], ...]  # (per-class key, column label, key of its mean)
    percent: bool  # accuracies read better as percentages, AP and IoU as fractions
    colors: tuple[str, ...] | None = None


VIEWS = {
    "fashion": _View("acc", "accuracy", (("per_class_acc", "accuracy", "acc"),), percent=True),
    "facade": _View("map", "mean AP", (("ap", "AP", "map"), ("iou", "IoU", "miou")), False, tuple(FACADE_HEX)),
}

# (figure name pattern, task or None for both, section, caption); the first match wins, {split} is filled in.
FIGURES = [
    ("curves", "fashion", "training", "Loss (left) and accuracy (right) during training: per batch (smoothed, "
     "light blue), the mean of each epoch (blue) and on the validation set after each epoch (orange). Validation "
     "loss rising while training loss falls means the net over-fits."),
    ("curves", "facade", "training", "Loss (left) and pixel accuracy (right) during training: per batch "
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
    ("confusion_*", "fashion", "confusion", "Confusion matrix of the {split} set: rows are the true class, columns "
     "the predicted one; counts (left) and each row divided by its total (right), so the diagonal is each class's "
     "accuracy and the bright off-diagonal cells are the classes it is confused with."),
    ("confusion_*", "facade", "confusion", "Pixel confusion matrix of the {split} set: rows are the true class of "
     "a pixel, columns the predicted one; pixel counts (left) and rows divided by their totals (right)."),
    ("examples_*", None, "examples", "Images of the {split} set, one row per true class: two classified correctly "
     "(green) and two wrongly (red, with the class predicted instead), each with the predicted class's "
     "probability."),
    ("filters_conv1", None, "filters", "The learned kernels of the first convolution layer, one tile per filter, "
     "each scaled to its own range (black low, white high)."),
    ("filters_*", None, "filters", "The learned kernels of a deeper convolution layer on one shared scale (red "
     "positive, blue negative); the axis labels give the layout."),
    ("best_*", None, "cases", "Success cases: the {split} images with the highest mean IoU: photo, ground truth "
     "and prediction in the class colours."),
    ("worst_*", None, "cases", "Failure cases: the {split} images with the lowest mean IoU: photo, ground truth "
     "and prediction in the class colours."),
]  # fmt: skip

# Figures still legible at half the page width: validation and test versions of these sit side by side.
HALF_WIDTH = ("examples_*", "ap_iou_*", "filters_conv1")

# Settings that change how fast a run goes but not what it learns: named, not given a column.
RUNTIME_KEYS = ("train.threads", "train.eval_batch_size", "train.checkpoint_every_s")

SECTIONS = {
    "per-class": "Per-class results",
    "training": "Training",
    "confusion": "Confusion matrices",
    "examples": "Examples",
    "cases": "Success and failure cases",
    "filters": "Learned filters",
    "predictions": "Predictions on photos",
    "other": "Other figures",
    "config": "Configuration",
    "environment": "Environment",
}

# The main settings: a comparison names their common values; any setting that differs gets a column.
COMPARE_KEYS = {
    "recipe": "recipe",
    "model.name": "model",
    "model.activation": "activation",
    "train.epochs": "epochs",
    "train.batch_size": "batch size",
    "optim.name": "optimizer",
    "optim.lr": "lr",
    "optim.schedule": "schedule",
    "loss.name": "loss",
}

CSS = """
:root { --fg: #1d232b; --muted: #5d6875; --line: #d9dee4; --bg: #f5f7f9; --accent: #1f5fbf; --warn: #fff1d6; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.5;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; min-height: 100vh; }
h1 { font-size: 1.6rem; margin: 0 0 2px; }
h2 { font-size: 1.25rem; margin: 36px 0 12px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.02rem; margin: 20px 0 8px; }
a { color: var(--accent); }
.sub, .note, figcaption, footer { color: var(--muted); }
.sub { margin: 0 0 16px; }
.banner { background: var(--warn); border: 1px solid #e0b24c; border-left: 6px solid #d18a00;
  padding: 12px 16px; margin: 12px 0 18px; border-radius: 4px; }
nav.toc { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 8px 16px;
  margin: 8px 0 8px; font-size: 0.92rem; }
nav.toc ol { margin: 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 4px 18px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 0.85rem; }
.card .v { font-size: 1.45rem; font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap; }
.card .s { color: var(--muted); font-size: 0.8rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 4px 0 12px; font-size: 0.92rem; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
tbody th { white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tfoot td { font-weight: 600; border-top: 2px solid var(--fg); }
tr.best td { background: #e8f4ea; }
.diff { background: #fff1d6; }
td.diff { min-width: 8em; overflow-wrap: anywhere; }
th.diff { background: #ffe2a8; }
td.bar { background-image: linear-gradient(to right, #d5e4fa var(--v), transparent var(--v));
  background-repeat: no-repeat; min-width: 120px; }
.sw { display: inline-block; width: 0.95em; height: 0.95em; border: 1px solid #7a828c; border-radius: 2px;
  margin-right: 6px; vertical-align: -0.12em; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.88rem; }
.muted { color: var(--muted); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 340px), 1fr)); gap: 8px 20px; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 520px), 1fr)); gap: 18px; }
figure { margin: 0; text-align: center; }
figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 3px; }
figcaption { text-align: left; font-size: 0.88rem; margin-top: 4px; }
.photo figcaption { text-align: center; }
figcaption b { color: var(--fg); font-family: ui-monospace, Menlo, Consolas, monospace; font-weight: 600; }
.photo { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 300px), 1fr)); gap: 12px;
  align-items: start; border: 1px solid var(--line); border-radius: 6px; padding: 12px; margin-bottom: 14px; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
footer { margin-top: 40px; font-size: 0.82rem; border-top: 1px solid var(--line); padding-top: 8px; }
"""


# ---------------------------------------------------------------- small helpers


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e}); delete it or write it again") from None


def _eval(run_dir: Path, split: str) -> dict[str, Any] | None:
    path = run_dir / f"eval_{split}.json"
    return _read_json(path) if path.is_file() else None


def _history(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl; a torn last line (a training still writing it) is left out rather than refused."""
    path = engine.RunPaths(run_dir).metrics
    lines = path.read_text().splitlines() if path.is_file() else []
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise CheckpointError(f"{path}: line {i + 1} is not JSON; the metrics log is corrupt") from None
    return rows


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _fmt(v: Any, percent: bool) -> str:
    v = _number(v)
    if v is None:
        return "n/a"
    return f"{v:.2%}" if percent else f"{v:.4f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _setting(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _flat(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': 1e-3}, in the config's own order."""
    out = {}
    for k, v in cfg_dict.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(uri: str, alt: str, size: tuple[int, int]) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}" width="{size[0]}" height="{size[1]}">'


def _open_image(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except (OSError, SyntaxError) as e:  # PIL reports truncated or foreign files as either
        raise CheckpointError(f"{path}: not a readable image ({e}); delete it or write it again") from None
    return im


def _png_tag(path: Path) -> tuple[str, tuple[int, int]]:
    """An <img> for a figure PNG, embedded byte for byte."""
    with _open_image(path) as im:
        size = im.size
    return _img(_data_uri(path.read_bytes(), "image/png"), path.stem, size), size


def _photo_tag(path: Path, alt: str) -> str:
    """An <img> for a prediction output, shrunk to PHOTO_MAX_PX: label maps stay sharp PNGs, photos JPEGs."""
    with _open_image(path) as im:
        im = im.convert("RGB")
        im.thumbnail((PHOTO_MAX_PX, PHOTO_MAX_PX), Image.NEAREST if path.suffix == ".png" else Image.LANCZOS)
        buf = io.BytesIO()
        if path.suffix == ".png":
            im.save(buf, format="PNG", optimize=True)
        else:
            im.save(buf, format="JPEG", quality=85)
        size = im.size
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return _img(_data_uri(buf.getvalue(), mime), alt, size)


def _swatch(color: str) -> str:
    return f'<span class="sw" style="background:{color}"></span>'


def _num_td(v: Any, percent: bool, bar: bool = False) -> str:
    x = _number(v)
    if bar and x is not None:
        return f'<td class="num bar" style="--v:{100 * max(0.0, min(1.0, x)):.1f}%">{_fmt(v, percent)}</td>'
    return f'<td class="num">{_fmt(v, percent)}</td>'


def _kv_table(rows: dict[str, str], table_id: str = "") -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows.items())
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><tbody>{body}</tbody></table>"


def _card(key: str, value: str, sub: str = "") -> str:
    sub_html = f'<div class="s">{escape(sub)}</div>' if sub else ""
    return f'<div class="card"><div class="k">{escape(key)}</div><div class="v">{escape(value)}</div>{sub_html}</div>'


def _page(title: str, header: str, sections: list[tuple[str, str, str]]) -> str:
    """sections: (anchor, title, html) in order; the table of contents links them."""
    toc = "".join(f'<li><a href="#{a}">{escape(t)}</a></li>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{escape(t)}</h2>{h}</section>' for a, t, h in sections)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # An empty icon: otherwise the browser asks for /favicon.ico, an error when opened as a file.
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style></head>'
        f'<body><main>{header}<nav class="toc" aria-label="contents"><ol>{toc}</ol></nav>{body}'
        f"<footer>Written by cnnlab {__version__} on {stamp}. Self-contained: every image is embedded in this "
        "file.</footer></main></body></html>\n"
    )


def _write(path: Path, text: str) -> Path:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


# ---------------------------------------------------------------- one run


def _epochs(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in history if r.get("kind") == "epoch"]


def _best_epoch(epochs: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The first epoch with the highest validation metric: the one whose weights best.safetensors holds."""
    scored = [r for r in epochs if _number(r.get(f"val_{metric}")) is not None]
    return max(scored, key=lambda r: r[f"val_{metric}"]) if scored else None


def _wall_time(epochs: list[dict[str, Any]]) -> float | None:
    return _number(epochs[-1].get("time_s")) if epochs else None


def _figure_info(name: str, task: str) -> tuple[str, str]:
    """(section, caption) of a figure by its file name; unknown figures go to 'other' with no caption."""
    split = name.rpartition("_")[2]
    for pattern, only, section, caption in FIGURES:
        if (only is None or only == task) and fnmatch.fnmatchcase(name, pattern):
            return section, caption.format(split=SPLITS.get(split, split))
    return "other", ""


def _figure_order(path: Path) -> tuple[int, str]:
    """Figures of no split first, then validation, test, external: best/worst and val/test pairs line up."""
    split = path.stem.rpartition("_")[2]
    return (list(SPLITS).index(split) if split in SPLITS else -1, path.stem)


def _figures_html(paths: list[Path], task: str) -> dict[str, str]:
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


def _class_label(name: str, view: _View, c: int) -> str:
    return (_swatch(view.colors[c]) if view.colors else "") + escape(name)


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
    path = engine.RunPaths(run_dir).env
    env = _read_json(path) if path.is_file() else {}
    rows = {k: _setting(v) for k, v in env.items()}
    rows["wall time"] = _duration(_wall_time(epochs))
    return _kv_table(rows, "environment-table")


def _predictions_html(run_dir: Path, classes: tuple[str, ...], view: _View) -> str:
    """Outputs of `cnnlab facade predict` in RUN/predictions: overlay, label map and class areas per photo."""
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
    cfg = engine.load_run_config(run_dir)
    task = get_task(cfg.task)
    view = VIEWS[cfg.task]
    history = _history(run_dir)
    epochs = _epochs(history)
    evals = {s: e for s in SPLITS if (e := _eval(run_dir, s)) is not None}

    figs_dir = engine.RunPaths(run_dir).figures
    figures = _figures_html(sorted(figs_dir.glob("*.png")) if figs_dir.is_dir() else [], cfg.task)
    tables = _per_class_table(evals, task.classes, view) if evals else '<p class="note">Not evaluated yet.</p>'
    predictions = _predictions_html(run_dir, task.classes, view)
    best = _best_epoch(epochs, view.metric)
    training = figures.pop("training", "") + (_history_table(epochs, view, best) if epochs else "")

    sections = [("summary", "Summary", _summary_cards(cfg, view, epochs, evals))]
    sections.append(("per-class", SECTIONS["per-class"], tables + figures.pop("per-class", "")))
    if training:
        sections.append(("training", SECTIONS["training"], training))
    sections += [(s, SECTIONS[s], figures[s]) for s in ("confusion", "examples", "cases", "filters") if s in figures]
    if predictions:
        sections.append(("predictions", SECTIONS["predictions"], predictions))
    if "other" in figures:
        sections.append(("other", SECTIONS["other"], figures["other"]))
    sections.append(("config", SECTIONS["config"], _config_html(cfg)))
    sections.append(("environment", SECTIONS["environment"], _environment_html(run_dir, epochs)))

    # Only the Fashion-MNIST nets take an activation setting; the facade nets ignore it.
    activation = f" ({escape(cfg.model.activation)})" if cfg.task == "fashion" else ""
    banner = _partial_banner(run_dir, cfg, history) if partial or len(epochs) < cfg.train.epochs else ""
    header = (
        f'<header><h1><span class="muted">{escape(cfg.task)} run</span> {escape(run_dir.resolve().name)}</h1>'
        f'<p class="sub">recipe {escape(cfg.recipe)}, model {escape(cfg.model.name)}{activation}, '
        f"{_plural(cfg.train.epochs, 'epoch')}, batch {cfg.train.batch_size}, {escape(cfg.optim.name)} lr "
        f"{cfg.optim.lr:g}, seed {cfg.train.seed}</p></header>{banner}"
    )
    return _write(run_dir / "report.html", _page(f"cnnlab report: {run_dir.resolve().name}", header, sections))


# ---------------------------------------------------------------- several runs


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (those holding config.yaml) among `paths`, with folders of runs (e.g. a sweep) expanded."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise CheckpointError(f"{p}: no such folder")
        runs = [p] if (p / "config.yaml").is_file() else sorted(c.parent for c in p.rglob("config.yaml"))
        if not runs:
            raise CheckpointError(f"{p}: neither a run folder nor a folder of runs (no config.yaml in it)")
        seen = {f.resolve() for f in found}
        found += [r for r in runs if r.resolve() not in seen]
    return found


def _labels(run_dirs: list[Path]) -> list[str]:
    """Folder names, or parent/name where two runs share a name (e.g. relu/ of two sweeps)."""
    names = [d.resolve().name for d in run_dirs]
    return ["/".join(d.resolve().parts[-2:]) if names.count(n) > 1 else n for d, n in zip(run_dirs, names, strict=True)]


def _compare_curves(histories: list[list[dict]], labels: list[str], view: _View) -> str:
    """Validation loss and the headline metric per epoch, one line per run, as an embedded PNG."""
    fig = Figure(figsize=(11, 4), dpi=110)
    axes = fig.subplots(1, 2)
    for i, (hist, label) in enumerate(zip(histories, labels, strict=True)):
        epochs = _epochs(hist)
        ep = [r["epoch"] for r in epochs]
        color = RUN_COLORS[i % len(RUN_COLORS)]
        axes[0].plot(ep, [_number(r.get("val_loss")) for r in epochs], "o-", ms=3, color=color, label=label)
        axes[1].plot(ep, [_number(r.get(f"val_{view.metric}")) for r in epochs], "o-", ms=3, color=color, label=label)
    for ax, name in zip(axes, ("validation loss", f"validation {view.label}"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name[0].upper() + name[1:])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    width, height = fig.canvas.get_width_height()
    return _img(_data_uri(buf.getvalue(), "image/png"), "validation curves of the compared runs", (width, height))


def _runs_table(labels: list[str], flat: list[dict], histories: list[list[dict]], tests: list, view: _View) -> str:
    """One row per run: its final metrics, then the settings that differ between the runs (marked)."""
    differ = [k for k in flat[0] if len({_setting(f[k]) for f in flat}) > 1]
    columns = [k for k in differ if k not in RUNTIME_KEYS]
    heads = [f"best val {view.label}", "best epoch", "final val loss", f"test {view.label}"]
    heads += ["test mean IoU"] if view.metric != "acc" else []
    head = "".join(f'<th class="num">{escape(h)}</th>' for h in [*heads, "wall time"])
    head += "".join(f'<th class="diff">{escape(COMPARE_KEYS.get(k, k))}</th>' for k in columns)
    rows = ""
    for i, (label, f, hist, test) in enumerate(zip(labels, flat, histories, tests, strict=True)):
        epochs = _epochs(hist)
        best = _best_epoch(epochs, view.metric)
        cells = [
            _num_td(best[f"val_{view.metric}"] if best else None, view.percent),
            f'<td class="num">{best["epoch"] if best else "n/a"}</td>',
            _num_td(epochs[-1].get("val_loss") if epochs else None, False),
            _num_td(test.get(view.metric) if test else None, view.percent),
        ]
        cells += [_num_td(test.get("miou") if test else None, False)] if view.metric != "acc" else []
        cells += [f'<td class="num">{_duration(_wall_time(epochs))}</td>']
        cells += [f'<td class="diff">{escape(_setting(f[k]))}</td>' for k in columns]
        rows += f"<tr><th>{_swatch(RUN_COLORS[i % len(RUN_COLORS)])}{escape(label)}</th>{''.join(cells)}</tr>"
    same = ", ".join(
        f"{escape(name)} <b>{escape(_setting(flat[0][k]))}</b>" for k, name in COMPARE_KEYS.items() if k not in differ
    )
    runtime = [k for k in differ if k in RUNTIME_KEYS]
    also = f" ({', '.join(runtime)} differ too, which changes speed, not results)" if runtime else ""
    return (
        f'<p class="note">Same in all runs: {same or "none of the main settings"}. The marked columns are the '
        f"settings that differ{escape(also)}; validation numbers come from metrics.jsonl, test numbers from "
        'eval_test.json (best checkpoint); every setting is listed <a href="#settings">below</a>.</p>'
        f'<div class="scroll"><table id="compare-table"><thead><tr><th>run</th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _per_class_compare(labels: list[str], tests: list, classes: tuple[str, ...], view: _View) -> str:
    """Each per-class test metric with one column per run."""
    out = ""
    for key, name, mean in view.per_class:
        heads = "".join(f'<th class="num">{escape(label)}</th>' for label in labels)
        body = "".join(
            f"<tr><td>{_class_label(cls, view, c)}</td>"
            + "".join(_num_td(t[key][c] if t else None, view.percent) for t in tests)
            + "</tr>"
            for c, cls in enumerate(classes)
        )
        foot = "".join(_num_td(t.get(mean) if t else None, view.percent) for t in tests)
        out += (
            f'<h3>Test {escape(name)} per class</h3><div class="scroll"><table><thead><tr><th>class</th>{heads}'
            f"</tr></thead><tbody>{body}</tbody><tfoot><tr><td>{'overall' if view.percent else 'mean'}</td>{foot}"
            "</tr></tfoot></table></div>"
        )
    return out


def _settings_table(labels: list[str], flat: list[dict]) -> str:
    """Every setting (rows) of every run (columns); rows whose values differ are marked."""
    heads = "".join(f"<th>{escape(label)}</th>" for label in labels)
    rows = ""
    for k in flat[0]:
        values = [_setting(f[k]) for f in flat]
        mark = ' class="diff"' if len(set(values)) > 1 else ""
        rows += f"<tr{mark}><th>{escape(k)}</th>" + "".join(f"<td>{escape(v)}</td>" for v in values) + "</tr>"
    return (
        f'<div class="scroll"><table id="settings-table"><thead><tr><th>setting</th>{heads}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def write_compare(run_dirs: list[Path], out: Path) -> Path:
    """Write one HTML page comparing runs of one task: metrics, differing settings, curves, per-class results.

    `run_dirs` may hold folders of runs too (see `find_runs`). Raises ConfigError for runs of different tasks.
    """
    run_dirs = find_runs(run_dirs)
    if not run_dirs:
        raise ConfigError("nothing to compare: give run folders or folders that hold runs")
    cfgs = [engine.load_run_config(d) for d in run_dirs]
    if len({c.task for c in cfgs}) > 1:
        which = ", ".join(f"{d.name} is {c.task}" for d, c in zip(run_dirs, cfgs, strict=True))
        raise ConfigError(f"cannot compare runs of different tasks ({which}); compare one task at a time")
    task, view = get_task(cfgs[0].task), VIEWS[cfgs[0].task]
    labels = _labels(run_dirs)
    histories = [_history(d) for d in run_dirs]
    tests = [_eval(d, "test") for d in run_dirs]
    flat = [_flat(c.model_dump()) for c in cfgs]
    curves = (
        f'<figure class="wide">{_compare_curves(histories, labels, view)}<figcaption>Validation loss (left) and '
        f"validation {escape(view.label)} (right) after each epoch, one line per run (colours as in the table)."
        "</figcaption></figure>"
    )
    sections = [
        ("runs", "Runs", _runs_table(labels, flat, histories, tests, view)),
        ("curves", "Validation curves", curves),
        ("per-class", "Per-class test results", _per_class_compare(labels, tests, task.classes, view)),
        ("settings", "All settings", _settings_table(labels, flat)),
    ]
    header = (
        f"<header><h1>cnnlab comparison: {len(run_dirs)} {escape(task.name)} runs</h1>"
        f'<p class="sub">{escape(", ".join(labels))}</p></header>'
    )
    return _write(Path(out), _page(f"cnnlab comparison: {', '.join(labels)}", header, sections))
