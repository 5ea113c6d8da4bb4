"""One run's report: report.html, self-contained (figures embedded), written at the end of training
(partial when interrupted) and by `cnnlab report RUN`. Figures and tables are numbered in page order,
each figure links its PDF, PNG and numbers in figures/ for download, and the page prints cleanly."""

from __future__ import annotations

import inspect
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .. import runs
from ..config import RunConfig
from ..models import model_table
from ..tasks import get_task
from .architecture import architecture_html, flops_text, run_architecture
from .captions import SECTIONS, by_section, is_half_width, resolve
from .html import (
    RUN_CSS,
    SPLITS,
    _best_epoch,
    _card,
    _class_label,
    _duration,
    _epochs,
    _fmt,
    _kv_table,
    _num_td,
    _number,
    _page,
    _photo_tag,
    _plural,
    _png_tag,
    _setting,
    _View,
    _wall_time,
    _write,
    view_of,
)


def _downloads(path: Path) -> str:
    """Links to the figure's files in figures/ beside the page: its PDF, PNG and numbers (those present)."""
    links = [
        f'<a href="figures/{escape(quote(path.stem + ext))}" download>{what}</a>'
        for ext, what in ((".pdf", "PDF"), (".png", "PNG"), (".json", "numbers (JSON)"))
        if path.with_suffix(ext).is_file()
    ]
    return f'<span class="dl">{escape(path.stem)}: {" · ".join(links)}</span>'


def _number_figures(groups: dict[str, list[tuple[Path, str]]]) -> dict[str, str]:
    """'Figure N' of each figure name, counted in page order."""
    stems = [path.stem for figures in groups.values() for path, _ in figures]
    return {stem: f"Figure {i}" for i, stem in enumerate(stems, 1)}


def _figures_html(groups: dict[str, list[tuple[Path, str]]], numbers: dict[str, str]) -> dict[str, str]:
    """<figure> blocks by section, numbered and captioned; most get a row of their own, small ones share one."""
    out: dict[str, str] = {}
    for section, figures in groups.items():
        blocks = []
        for path, caption in figures:
            tag, (width, _) = _png_tag(path)
            wide = "" if is_half_width(path.stem, width) else " wide"
            text = escape(resolve(caption, numbers)) if caption else escape(path.stem)
            blocks.append(
                f'<figure id="fig-{escape(path.stem)}" class="fig{wide}">{tag}<figcaption><b>{numbers[path.stem]}'
                f"</b>: {text} {_downloads(path)}</figcaption></figure>"
            )
        out[section] = f'<div class="figs">{"".join(blocks)}</div>'
    return out


def _per_class_table(evals: dict[str, dict[str, Any]], classes: tuple[str, ...], view: _View, number: str) -> str:
    """Rows: classes; columns: each per-class metric on each evaluated split; foot: the means."""
    cols = [(split, key, label, mean) for split in evals for key, label, mean in view.per_class]
    head = "".join(f'<th class="num">{escape(SPLITS.get(s, s))} {escape(label)}</th>' for s, _, label, _ in cols)
    rows = "".join(
        f"<tr><td>{_class_label(name, view, c)}</td>"
        + "".join(_num_td(evals[s][key][c], view.percent) for s, key, _, _ in cols)
        + "</tr>"
        for c, name in enumerate(classes)
    )
    foot_label = view.total_row
    foot = "".join(_num_td(evals[s].get(mean), view.percent) for s, _, _, mean in cols)
    metrics = " and ".join(label for _, label, _ in view.per_class)
    sets = " and ".join(SPLITS.get(s, s) for s in evals) + (" sets" if len(evals) > 1 else " set")
    caption = f"{metrics[:1].upper()}{metrics[1:]} of each class on the {sets}; last row: the {foot_label}."
    return (
        f'<div class="scroll"><table id="per-class-table"><caption><b>{number}</b>: {escape(caption)}</caption>'
        f"<thead><tr><th>class</th>{head}</tr></thead>"
        f"<tbody>{rows}</tbody><tfoot><tr><td>{foot_label}</td>{foot}</tr></tfoot></table></div>"
    )


def _history_table(epochs: list[dict[str, Any]], view: _View, best: dict[str, Any] | None, number: str) -> str:
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
        f'<div class="scroll"><table id="epoch-table"><caption><b>{number}</b>: Training and validation metrics '
        f'after each epoch; the best epoch highlighted</caption><thead><tr><th class="num">epoch</th>{head}'
        f'<th class="num">lr</th><th class="num">time</th></tr></thead><tbody>{rows}</tbody></table></div></details>'
    )


def _summary_cards(cfg, view: _View, epochs: list[dict], evals: dict[str, dict], arch: dict[str, Any]) -> str:
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
        _card("parameters", f"{arch['params']:,}", f"model {cfg.model.name}"),
        _card("FLOPs per input", flops_text(arch["flops"]), f"one {'x'.join(map(str, arch['input']))} input"),
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


def _summary_banner(run_dir: Path, cfg: RunConfig) -> str:
    return (
        '<div class="banner" id="summary-banner"><b>Summary report</b> (<code>explain.report: summary</code>, '
        "as quick recipes keep it): the explanations and the PDF copies are left out, so the report costs a "
        "fraction of the training. Draw them with "
        f"<code>cnnlab {escape(cfg.task)} evaluate {escape(str(run_dir))} --report full</code>.</div>"
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
    env = runs.read_json(path) if path.is_file() else {}
    rows = {k: _setting(v) for k, v in env.items()}
    rows["wall time"] = _duration(_wall_time(epochs))
    return _kv_table(rows, "environment-table")


def _predictions_html(run_dir: Path, classes: tuple[str, ...], view: _View) -> str:
    """Outputs of a segmentation run's `predict` in RUN/predictions: photo beside its overlay (or the overlay
    alone, as older versions wrote it), label map and class areas per photo."""
    blocks = []
    for areas_path in sorted((run_dir / "predictions").glob("*_areas.json")):
        stem = areas_path.name.removesuffix("_areas.json")
        info = runs.read_json(areas_path)
        area = info.get("area", {})
        rows = "".join(
            f"<tr><td>{_class_label(name, view, c)}</td>{_num_td(area.get(name), True, bar=True)}</tr>"
            for c, name in enumerate(classes)
        )
        notes = "".join(f"<li>{escape(n)}</li>" for n in info.get("notes", []))
        folder = run_dir / "predictions"
        shown = [p for p in (folder / f"{stem}_side_by_side.jpg", folder / f"{stem}_overlay.jpg") if p.is_file()][:1]
        shown += [folder / f"{stem}_labels.png"]
        what = {"side_by_side": "the photo and its predicted classes", "overlay": "photo with the predicted classes",
                "labels": "predicted label map"}  # fmt: skip
        images = "".join(
            f"<figure>{_photo_tag(p, p.name)}<figcaption>{what[p.stem.removeprefix(stem + '_')]}</figcaption></figure>"
            for p in shown
            if p.is_file()
        )
        size = "x".join(str(s) for s in info.get("size", []))
        blocks.append(
            f'<div class="photo"><div><h3>{escape(Path(info.get("file", stem)).name)}</h3>'
            f'<p class="note">{escape(size)} px</p><table class="areas"><thead><tr><th>class</th>'
            f'<th class="num">area</th></tr></thead><tbody>{rows}</tbody></table>'
            + (f'<ul class="note">{notes}</ul>' if notes else "")
            + f"</div>{images}</div>"
        )
    return "".join(blocks)


RUN_FOOTER = (
    "Every image is embedded in this file: the page shows everything wherever it is copied. The download links "
    "(PDF, PNG, numbers) point into figures/ beside it: copy the whole run folder to keep them."
)


def write_report(run_dir: Path, *, partial: bool = False) -> Path:
    """Write RUN/report.html: summary, per-class tables, every figure numbered and captioned with links to
    download it, the network's layers, config and environment (and figures/architecture.json).

    The banner for an interrupted run shows when `partial` is set or when fewer epochs finished than the
    config asks for. Returns the path of the page.
    """
    run_dir = Path(run_dir)
    cfg = runs.load_run_config(run_dir)
    task = get_task(cfg)
    view = view_of(task)
    history = runs.read_history(run_dir)
    epochs = _epochs(history)
    evals = {s: e for s in SPLITS if (e := runs.read_eval(run_dir, s)) is not None}
    arch = run_architecture(run_dir)

    figs_dir = runs.RunPaths(run_dir).figures
    groups = by_section(sorted(figs_dir.glob("*.png")), task)
    present = {"per-class-table": bool(evals), "epoch-table": bool(epochs), "architecture-table": True}
    tables = [name for name, shown in present.items() if shown]
    numbers = _number_figures(groups) | {name: f"Table {i}" for i, name in enumerate(tables, 1)}
    figures = _figures_html(groups, numbers)
    best = _best_epoch(epochs, view.metric)
    per_class = (
        _per_class_table(evals, task.classes, view, numbers["per-class-table"])
        if evals
        else '<p class="note">Not evaluated yet.</p>'
    )
    contents = {
        **figures,
        "summary": _summary_cards(cfg, view, epochs, evals, arch),
        "per-class": per_class + figures.get("per-class", ""),
        "training": figures.get("training", "")
        + (_history_table(epochs, view, best, numbers["epoch-table"]) if epochs else ""),
        "predictions": _predictions_html(run_dir, task.classes, view),
        "architecture": architecture_html(arch, numbers["architecture-table"]),
        "config": _config_html(cfg),
        "environment": _environment_html(run_dir, epochs),
    }
    sections = [(key, title, contents[key]) for key, title in SECTIONS.items() if contents.get(key)]

    activation = _activation(cfg)
    activation = f" ({escape(activation)})" if activation else ""
    banner = _partial_banner(run_dir, cfg, history) if partial or len(epochs) < cfg.train.epochs else ""
    if cfg.explain.report != "full" and "explain" not in groups and evals:
        banner += _summary_banner(run_dir, cfg)
    header = (
        f'<header><h1><span class="muted">{escape(cfg.task)} run</span> {escape(run_dir.resolve().name)}</h1>'
        f'<p class="sub">recipe {escape(cfg.recipe)}, model {escape(cfg.model.name)}{activation}, '
        f"{_plural(cfg.train.epochs, 'epoch')}, batch {cfg.train.batch_size}, {escape(cfg.optim.name)} lr "
        f"{cfg.optim.lr:g}, seed {cfg.train.seed}</p></header>{banner}"
    )
    page = _page(f"cnnlab report: {run_dir.resolve().name}", header, sections, css=RUN_CSS, footer=RUN_FOOTER)
    return _write(run_dir / "report.html", page)
