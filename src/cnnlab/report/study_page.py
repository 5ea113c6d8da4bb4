"""STUDY/report.html: a `cnnlab tune` study in the house style. Cards (trials, best value), the optimization
history, every trial's curve (pruned ones grey), parallel coordinates, parameter importances, the best
trial's recipe, and a table of trials that sorts by any column and links each trial's own report."""

from __future__ import annotations

import warnings
from html import escape
from pathlib import Path
from typing import Any

from ..plots.study import plot_curves, plot_history, plot_importance, plot_parallel
from ..runs import read_history, read_json
from .html import SORT_JS, _card, _kv_table, _page, _png_tag, _table, _write


def shown(value: Any) -> str:
    """A parameter's value for people: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_rows(study: Any, folder: Path) -> list[dict[str, Any]]:
    """Each trial as plain data: number, state, value (a pruned trial: its last reported), params, run folder."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                     if t.intermediate_values else None)  # fmt: skip
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": value,
                "params": dict(t.params),
                "epochs": len(t.intermediate_values),
                "seconds": t.user_attrs.get("seconds"),
                "run": t.user_attrs.get("run"),
                "retry_of": t.user_attrs.get("retry_of"),
                "base": t.user_attrs.get("base", False),
            }
        )
    return rows


def _importance(study: Any) -> dict[str, float]:
    import optuna

    try:
        with warnings.catch_warnings():  # "importances will be equal" on a handful of trials: the figure shows it
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # fewer than two complete trials, or a parameter that never varied
        return {}


def write_study_page(folder: Path, spec: dict[str, Any], study: Any) -> Path:
    """Write folder/report.html (and its figures under folder/figures) for the Optuna `study`."""
    rows = trial_rows(study, folder)
    metric = spec["metric"]
    figures = folder / "figures"
    curves = {}
    for r in rows:
        if r["run"] and (folder / r["run"]).is_dir():
            values = [e[f"val_{metric}"] for e in read_history(folder / r["run"]) if e.get("kind") == "epoch"]
            curves[r["number"]] = {"state": r["state"], "values": values}
    space = {p["key"]: p for p in spec["space"]}
    made = [
        ("history", "Optimization history", plot_history(rows, metric, figures / "history")),
        ("curves", "Trials epoch by epoch", plot_curves(curves, metric, figures / "curves")),
        ("parallel", "Parameters", plot_parallel(rows, [(k, p["log"]) for k, p in space.items()], metric,
                                                 figures / "parallel")),
        ("importance", "Parameter importance", plot_importance(_importance(study), figures / "importance")),
    ]  # fmt: skip
    sections = []
    for anchor, title, png in made:
        if png is not None:
            tag, _ = _png_tag(png)
            sections.append((anchor, title, tag))
    done = [r for r in rows if r["state"] == "complete"]
    best = max(done, key=lambda r: r["value"]) if done else None
    keys = list(space)
    table = []
    for r in sorted(rows, key=lambda r: r["number"]):
        report = folder / str(r["run"]) / "report.html"
        link = f'<a href="{escape(r["run"])}/report.html">{r["number"]}</a>' if report.is_file() else str(r["number"])
        table.append(
            [link, r["state"] + (f" (retry of {r['retry_of']})" if r["retry_of"] is not None else "")
             + (" (the recipe's own settings)" if r["base"] else ""),
             "" if r["value"] is None else f"{r['value']:.4f}", str(r["epochs"]),
             "" if r["seconds"] is None else f"{r['seconds']:.0f}",
             *(escape(shown(r["params"][k]) if k in r["params"] else "") for k in keys)]
        )  # fmt: skip
    sections.append(("trials", "Trials", _table(["trial", "state", f"val {metric}", "epochs", "s", *keys], table)))
    if (folder / "best.yaml").is_file():
        recipe = (folder / "best.yaml").read_text()
        how = f"<p>cnnlab {escape(spec['task'])} train --recipe {escape(str(folder / 'best.yaml'))}</p>"
        sections.append(("best", "The best trial's recipe", f"{how}<pre>{escape(recipe)}</pre>"))
    space_rows = {k: _space_text(p) for k, p in space.items()}
    sections.append(("space", "Search space", _kv_table(space_rows)))
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")}
    cards = "".join(
        [
            _card("trials", f"{len(rows)}", ", ".join(f"{k} {v}" for k, v in states.items() if v)),
            _card(f"best val {metric}", f"{best['value']:.4f}" if best else "n/a",
                  f"trial {best['number']}" + _test_text(folder / str(best["run"]), metric) if best else ""),
            _card("asked for", f"{spec['trials']}", _pruner_text(spec)),
        ]
    )  # fmt: skip
    header = f"<header><h1>cnnlab tune: {escape(spec['task'])}</h1><div class='cards'>{cards}</div></header>"
    page = _page(f"cnnlab tune: {spec['task']}", header, sections)
    return _write(folder / "report.html", page.replace("</body>", SORT_JS + "</body>"))


def _pruner_text(spec: dict[str, Any]) -> str:
    after = f" from epoch {spec.get('prune_after', 1)}" if spec["pruner"] != "none" else ""
    return f"pruner: {spec['pruner']}{after}"


def _test_text(run: Path, metric: str) -> str:
    # The study's one look at the test split: the best trial's, made when the study ended.
    if not (run / "eval_test.json").is_file():
        return ""
    return f"; test {metric} {read_json(run / 'eval_test.json')[metric]:.4f} (read once)"


def _space_text(p: dict[str, Any]) -> str:
    if p.get("choices"):
        return "one of " + ", ".join(map(str, p["choices"]))
    how = ", log scale" if p.get("log") else f", step {p['step']}" if p.get("step") else ""
    return f"{p['low']} to {p['high']}{how}"
