"""Several runs side by side on one self-contained page (`cnnlab report --compare`): the settings that
differ, final metrics, curves overlaid, per-class differences."""

from __future__ import annotations

import io
from html import escape
from pathlib import Path

from matplotlib.figure import Figure

from .. import runs
from ..errors import CheckpointError, ConfigError
from ..tasks import get_task
from .html import (
    _best_epoch,
    _class_label,
    _data_uri,
    _duration,
    _epochs,
    _eval,
    _flat,
    _history,
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
    cfgs = [runs.load_run_config(d) for d in run_dirs]
    if len({c.task for c in cfgs}) > 1:
        which = ", ".join(f"{d.name} is {c.task}" for d, c in zip(run_dirs, cfgs, strict=True))
        raise ConfigError(f"cannot compare runs of different tasks ({which}); compare one task at a time")
    task = get_task(cfgs[0])
    view = view_of(task)
    labels = _labels(run_dirs)
    histories = [_history(d) for d in run_dirs]
    tests = [_eval(d, "test") for d in run_dirs]
    flat = [_flat(c.model_dump()) for c in cfgs]
    # Folder runs of one task may have learned different classes: their per-class numbers do not line up.
    same_classes = all(get_task(c).classes == task.classes for c in cfgs[1:])
    per_class = (
        _per_class_compare(labels, tests, task.classes, view)
        if same_classes
        else '<p class="note">The runs were trained on different classes (see data.classes below): no per-class '
        "comparison.</p>"
    )
    curves = (
        f'<figure class="wide">{_compare_curves(histories, labels, view)}<figcaption>Validation loss (left) and '
        f"validation {escape(view.label)} (right) after each epoch, one line per run (colours as in the table)."
        "</figcaption></figure>"
    )
    sections = [
        ("runs", "Runs", _runs_table(labels, flat, histories, tests, view)),
        ("curves", "Validation curves", curves),
        ("per-class", "Per-class test results", per_class),
        ("settings", "All settings", _settings_table(labels, flat)),
    ]
    header = (
        f"<header><h1>cnnlab comparison: {len(run_dirs)} {escape(task.name)} runs</h1>"
        f'<p class="sub">{escape(", ".join(labels))}</p></header>'
    )
    return _write(Path(out), _page(f"cnnlab comparison: {', '.join(labels)}", header, sections))
