"""Several runs side by side on one self-contained page (`cnnlab report --compare`): the settings that
differ, final metrics and wall times, training and validation curves overlaid, and each run's per-class
results against the best run's. The numbers behind the charts go to a JSON file next to the page."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from .. import runs
from ..errors import CheckpointError, ConfigError
from ..outputs import OutputError, write_json
from ..plots.compare import curves_figure, difference_figure, png_bytes
from ..tasks import get_task
from .html import (
    _best_epoch,
    _class_label,
    _data_uri,
    _duration,
    _epochs,
    _flat,
    _img,
    _num_td,
    _number,
    _page,
    _setting,
    _swatch,
    _View,
    _wall_time,
    _write,
    view_of,
)
from .run_page import _activation

RUN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]

# Settings that change how fast a run goes but not what it learns: named, not given a column.
RUNTIME_KEYS = ("train.threads", "train.eval_batch_size", "train.checkpoint_every_s")

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

# Inline, so the page needs nothing from the shared stylesheet to show which run is best.
BADGE = (
    '<span class="badge" style="margin-left:6px;padding:0 6px;border-radius:8px;background:#2e7d32;color:#fff;'
    'font-size:0.78rem;font-weight:600">best</span>'
)


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (those holding config.yaml) among `paths`, with folders of runs (e.g. a sweep) expanded."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise CheckpointError(f"{p}: no such folder")
        inside = [p] if (p / "config.yaml").is_file() else sorted(c.parent for c in p.rglob("config.yaml"))
        if not inside:
            raise CheckpointError(f"{p}: neither a run folder nor a folder of runs (no config.yaml in it)")
        seen = {f.resolve() for f in found}
        found += [r for r in inside if r.resolve() not in seen]
    return found


def _labels(run_dirs: list[Path]) -> list[str]:
    """Folder names, or parent/name where two runs share a name (e.g. relu/ of two sweeps)."""
    names = [d.resolve().name for d in run_dirs]
    return ["/".join(d.resolve().parts[-2:]) if names.count(n) > 1 else n for d, n in zip(run_dirs, names, strict=True)]


def _check_comparable(given: list[Path], labels: list[str], kinds: list[str]) -> None:
    """Two or more runs of one kind (classify or segment): their metrics mean the same thing."""
    if len(labels) < 2:
        where = ", ".join(str(p) for p in given)
        raise ConfigError(f"compare needs two or more runs (found 1 in {where}); pass more run folders")
    if len(set(kinds)) > 1:
        groups = "; ".join(
            f"{kind}: {', '.join(lb for lb, k in zip(labels, kinds, strict=True) if k == kind)}"
            for kind in dict.fromkeys(kinds)
        )
        raise ConfigError(f"runs of different kinds ({groups}) can't share a page; compare each kind separately")


def _json_path(out: Path) -> Path:
    """Where the page's numbers go: compare.html -> compare.json."""
    if out.suffix == ".json":
        raise OutputError(f"{out}: the page needs an .html name (its numbers go to a .json beside it)")
    return out.with_suffix(".json")


def _best_run(histories: list[list[dict]], metric: str) -> int | None:
    """The run whose best epoch has the highest validation metric (the first of equals); None if no epoch ended."""
    scores = {i: top[f"val_{metric}"] for i, h in enumerate(histories) if (top := _best_epoch(_epochs(h), metric))}
    return max(scores, key=scores.__getitem__) if scores else None


def _curve_series(histories: list[list[dict]], labels: list[str], metric: str) -> dict[str, dict[str, list]]:
    """Per run: epochs and the training and validation loss and `metric` after each (None where not logged:
    segmentation logs no training mean AP)."""
    out = {}
    for hist, label in zip(histories, labels, strict=True):
        epochs = _epochs(hist)
        series: dict[str, list] = {"epoch": [r["epoch"] for r in epochs]}
        for key in ("loss", metric):
            for split in ("train", "val"):
                series[f"{split}_{key}"] = [_number(r.get(f"{split}_{key}")) for r in epochs]
        out[label] = series
    return out


def _class_differences(tests: list, labels: list[str], view: _View, ref: int) -> dict[str, dict[str, list]]:
    """{per-class key: {run label: that run's test value minus the reference run's, per class}} for every
    run evaluated on test but the reference; None where either value is missing."""
    out: dict[str, dict[str, list]] = {}
    for key, _, _ in view.per_class:
        base = [_number(v) for v in tests[ref][key]]
        out[key] = {
            label: [None if a is None or b is None else a - b for a, b in zip(map(_number, t[key]), base, strict=True)]
            for i, (label, t) in enumerate(zip(labels, tests, strict=True))
            if i != ref and t is not None
        }
    return out


def _figure(fig, alt: str, caption: str) -> str:
    data, size = png_bytes(fig)
    return (
        f'<div class="figs"><figure class="fig wide">{_img(_data_uri(data, "image/png"), alt, size)}'
        f"<figcaption>{caption}</figcaption></figure></div>"
    )


def _curves_html(curves: dict, view: _View, colors: dict[str, str], best: str | None) -> str:
    panels = [("loss", "Loss", False), (view.metric, view.label[0].upper() + view.label[1:], view.percent)]
    only_val = all(v is None for s in curves.values() for v in s[f"train_{view.metric}"])
    note = f" Training {escape(view.label)} is not measured, so its panel shows validation only." if only_val else ""
    caption = (
        f"Loss (left) and {escape(view.label)} (right) after each epoch: training dashed with hollow points (the "
        "mean over the epoch's batches), validation solid; one colour per run as in the table, the best run drawn "
        f"thicker.{note}"
    )
    return _figure(curves_figure(curves, panels, colors, best), "curves of the compared runs", caption)


def _differences_html(diffs: dict, classes, view: _View, colors: dict[str, str], reference: str, left_out) -> str:
    panels = [(f"Test {name}", diffs[key]) for key, name, _ in view.per_class]
    unit = "percentage points" if view.percent else "the metric's own units"
    missing = f" Not evaluated on test, so left out: {escape(', '.join(left_out))}." if left_out else ""
    caption = (
        f"Each run's test {escape(' and '.join(n for _, n, _ in view.per_class))} per class minus that of the best "
        f"run, <b>{escape(reference)}</b> (in {unit}): bars right of zero are classes a run does better than the "
        f"best run.{missing}"
    )
    fig = difference_figure(classes, panels, colors, reference, view.percent)
    return _figure(fig, f"per-class differences to {reference}", caption)


def _runs_table(labels, flat: list[dict], histories: list[list[dict]], tests: list, view: _View, best) -> str:
    """One row per run: its final metrics and wall time, then the settings that differ (marked); the best
    run's row highlighted."""
    differ = [k for k in flat[0] if len({_setting(f[k]) for f in flat}) > 1]
    columns = [k for k in differ if k not in RUNTIME_KEYS]
    heads = [f"best val {view.label}", "best epoch", "final val loss", f"test {view.label}"]
    heads += ["test mean IoU"] if view.metric != "acc" else []
    head = "".join(f'<th class="num">{escape(h)}</th>' for h in [*heads, "wall time"])
    head += "".join(f'<th class="diff">{escape(COMPARE_KEYS.get(k, k))}</th>' for k in columns)
    rows = ""
    for i, (label, f, hist, test) in enumerate(zip(labels, flat, histories, tests, strict=True)):
        epochs = _epochs(hist)
        top = _best_epoch(epochs, view.metric)
        cells = [
            _num_td(top[f"val_{view.metric}"] if top else None, view.percent),
            f'<td class="num">{top["epoch"] if top else "n/a"}</td>',
            _num_td(epochs[-1].get("val_loss") if epochs else None, False),
            _num_td(test.get(view.metric) if test else None, view.percent),
        ]
        cells += [_num_td(test.get("miou") if test else None, False)] if view.metric != "acc" else []
        cells += [f'<td class="num">{_duration(_wall_time(epochs))}</td>']
        cells += [f'<td class="diff">{escape(_setting(f[k]))}</td>' for k in columns]
        name = f"{_swatch(RUN_COLORS[i % len(RUN_COLORS)])}{escape(label)}{BADGE if i == best else ''}"
        rows += f"<tr{' class=best' if i == best else ''}><th>{name}</th>{''.join(cells)}</tr>"
    same = ", ".join(
        f"{escape(name)} <b>{escape(_setting(flat[0][k]))}</b>"
        for k, name in COMPARE_KEYS.items()
        if k not in differ and flat[0][k] is not None  # e.g. no activation setting in the facade nets
    )
    runtime = [k for k in differ if k in RUNTIME_KEYS]
    also = f" ({', '.join(runtime)} differ too, which changes speed, not results)" if runtime else ""
    best_note = (
        f"The best run, <b>{escape(labels[best])}</b>, has the highest best validation {escape(view.label)} (the "
        "epoch its best checkpoint comes from); it is highlighted here and drawn thicker in the charts. "
        if best is not None
        else "No run finished an epoch, so none is marked best. "
    )
    return (
        f'<p class="note">{best_note}Same in all runs: {same or "none of the main settings"}. The marked columns are '
        f"the settings that differ{escape(also)}; validation numbers come from metrics.jsonl, test numbers from "
        "eval_test.json (best checkpoint), wall time is training up to the last epoch; every setting is listed "
        '<a href="#settings">below</a>.</p>'
        f'<div class="scroll"><table id="compare-table"><thead><tr><th>run</th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _per_class_compare(labels: list[str], tests: list, classes: tuple[str, ...], view: _View, best) -> str:
    """Each per-class test metric with one column per run (the best run's marked)."""
    out = ""
    for key, name, mean in view.per_class:
        heads = "".join(
            f'<th class="num">{escape(label)}{BADGE if i == best else ""}</th>' for i, label in enumerate(labels)
        )
        body = "".join(
            f"<tr><td>{_class_label(cls, view, c)}</td>"
            + "".join(_num_td(t[key][c] if t else None, view.percent) for t in tests)
            + "</tr>"
            for c, cls in enumerate(classes)
        )
        foot = "".join(_num_td(t.get(mean) if t else None, view.percent) for t in tests)
        out += (
            f'<h3>Test {escape(name)} per class</h3><div class="scroll"><table id="per-class-{key}"><thead><tr>'
            f"<th>class</th>{heads}</tr></thead><tbody>{body}</tbody><tfoot><tr>"
            f"<td>{view.total_row}</td>{foot}</tr></tfoot></table></div>"
        )
    return out


def _per_class_section(labels, tests: list, tasks: list, view: _View, best: int | None, colors) -> tuple[str, Any]:
    """The difference chart and the per-class tables, and the chart's numbers (None without a chart)."""
    classes = tasks[0].classes
    # Runs trained on other classes (folders of one kind) have per-class numbers that do not line up.
    if any(t.classes != classes for t in tasks):
        return (
            '<p class="note">The runs were trained on different classes (see data.classes below): no per-class '
            "comparison and no per-class chart.</p>",
            None,
        )
    tables = _per_class_compare(labels, tests, classes, view, best)
    others = [t for i, t in enumerate(tests) if i != best and t is not None]
    if best is None or tests[best] is None or not others:
        note = '<p class="note">No per-class chart: it needs test results of the best run and of one other.</p>'
        return note + tables, None
    diffs = _class_differences(tests, labels, view, best)
    left_out = [label for label, t in zip(labels, tests, strict=True) if t is None]
    chart = _differences_html(diffs, classes, view, colors, labels[best], left_out)
    numbers = {"split": "test", "reference": labels[best], "classes": list(classes), "difference": diffs}
    return chart + tables, numbers | {"left_out": left_out}


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


def _run_summary(label: str, run_dir: Path, hist: list[dict], test: dict | None, view: _View, is_best: bool) -> dict:
    epochs = _epochs(hist)
    top = _best_epoch(epochs, view.metric)
    return {
        "label": label,
        "dir": str(run_dir),
        "best": is_best,
        f"best_val_{view.metric}": top[f"val_{view.metric}"] if top else None,
        "best_epoch": top["epoch"] if top else None,
        f"test_{view.metric}": test.get(view.metric) if test else None,
        "wall_time_s": _wall_time(epochs),
    }


def write_compare(run_dirs: list[Path], out: Path) -> Path:
    """Write one HTML page comparing two or more runs of one kind (classify or segment), and the numbers
    behind its charts as JSON beside it (compare.html -> compare.json). Returns the page's path.

    `run_dirs` may hold folders of runs too (see `find_runs`). The best run is the one with the highest best
    validation metric; the per-class chart shows each run's test metric per class minus the best run's,
    when all runs share one list of classes. ConfigError for fewer than two runs or runs of different kinds.
    """
    given = [Path(p) for p in run_dirs]
    run_dirs = find_runs(given)
    if not run_dirs:
        raise ConfigError("nothing to compare: give two or more run folders, or folders that hold runs")
    out = Path(out)
    json_path = _json_path(out)
    labels = _labels(run_dirs)
    cfgs = [runs.load_run_config(d) for d in run_dirs]
    tasks = [get_task(c) for c in cfgs]
    _check_comparable(given, labels, [t.kind for t in tasks])
    task, view = tasks[0], view_of(tasks[0])
    histories = [runs.read_history(d) for d in run_dirs]
    tests = [runs.read_eval(d, "test") for d in run_dirs]
    # The activation a model uses, not the config's None for "the model's default" (shown as "none").
    flat = [_flat(c.model_dump()) | {"model.activation": _activation(c)} for c in cfgs]
    best = _best_run(histories, view.metric)
    colors = {label: RUN_COLORS[i % len(RUN_COLORS)] for i, label in enumerate(labels)}
    best_label = labels[best] if best is not None else None
    curves = _curve_series(histories, labels, view.metric)
    per_class, per_class_numbers = _per_class_section(labels, tests, tasks, view, best, colors)
    numbers = {
        "kind": task.kind,
        "tasks": sorted({t.name for t in tasks}),
        "metric": view.metric,
        "best_run": best_label,
        "best_by": f"best validation {view.label}",
        "runs": [
            _run_summary(lb, d, h, t, view, i == best)
            for i, (lb, d, h, t) in enumerate(zip(labels, run_dirs, histories, tests, strict=True))
        ],
        "curves": curves,
        "per_class": per_class_numbers,
    }
    where_numbers = (
        f'<p class="note">The numbers behind the charts (every curve, the per-class differences) are in '
        f"<code>{escape(json_path.name)}</code> beside this page.</p>"
    )
    sections = [
        ("runs", "Runs", _runs_table(labels, flat, histories, tests, view, best)),
        ("curves", "Training and validation curves", _curves_html(curves, view, colors, best_label)),
        ("per-class", "Per-class test results", per_class),
        ("settings", "All settings", _settings_table(labels, flat) + where_numbers),
    ]
    tasks_named = numbers["tasks"]
    what = tasks_named[0] if len(tasks_named) == 1 else f"{task.kind} ({', '.join(tasks_named)})"
    header = (
        f"<header><h1>cnnlab comparison: {len(run_dirs)} {escape(what)} runs</h1>"
        f'<p class="sub">{escape(", ".join(labels))}</p></header>'
    )
    write_json(json_path, numbers)
    return _write(out, _page(f"cnnlab comparison: {', '.join(labels)}", header, sections))
