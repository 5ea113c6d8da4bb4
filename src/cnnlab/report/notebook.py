"""A run as a notebook shows it: its summary table and key figures as HTML, and any of its figures as a
matplotlib `Figure`."""

from __future__ import annotations

from html import escape
from pathlib import Path

from matplotlib.figure import Figure

from .. import runs
from ..errors import ConfigError
from ..plots.canvas import picture
from ..tasks import get_task
from .html import _best_epoch, _duration, _epochs, _fmt, _png_tag, _wall_time, view_of

# The figures a run's summary shows, the first one found of each group: training, then the held-out split.
KEY_FIGURES = (("curves",), ("confusion_test", "ap_iou_test", "confusion_val", "ap_iou_val"))


def figure_names(run_dir: Path) -> list[str]:
    """The names `run_figure` takes: every figure the run drew (figures/NAME.png)."""
    return sorted(p.stem for p in runs.RunPaths(Path(run_dir)).figures.glob("*.png"))


def run_figure(run_dir: Path, name: str) -> Figure:
    """The run's figure NAME (figures/NAME.png) as a `Figure` that a notebook shows inline."""
    path = runs.RunPaths(Path(run_dir)).figures / f"{name}.png"
    if not path.is_file():
        names = ", ".join(figure_names(run_dir)) or "none yet"
        raise ConfigError(f"figure {name!r}: not in {run_dir}/figures; choose one of: {names}")
    return picture(path)


def run_html(run_dir: Path) -> str:
    """The run's summary table (task, model, epochs, best validation and test result, time) and key
    figures, as one HTML fragment with the images embedded; report.html has the rest."""
    run_dir = Path(run_dir)
    cfg = runs.load_run_config(run_dir)
    view = view_of(get_task(cfg))
    epochs = _epochs(runs.read_history(run_dir))
    best = _best_epoch(epochs, view.metric)
    test = runs.read_eval(run_dir, "test")
    rows = {
        "run": str(run_dir),
        "task": f"{cfg.task} / {cfg.recipe} ({cfg.model.name})",
        "epochs": f"{len(epochs)} of {cfg.train.epochs}",
        f"best validation {view.label}": _fmt(best and best.get(f"val_{view.metric}"), view.percent)
        + (f" (epoch {best['epoch']})" if best else ""),
        f"test {view.label}": _fmt(test and test.get(view.metric), view.percent),
        "training time": _duration(_wall_time(epochs)),
    }
    table = "".join(
        f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows.items()
    )
    figures = runs.RunPaths(run_dir).figures
    shown = [
        next((figures / f"{n}.png" for n in group if (figures / f"{n}.png").is_file()), None) for group in KEY_FIGURES
    ]
    # A notebook column is narrower than the report: figures shrink to it, keeping their shape.
    images = "".join(_png_tag(p)[0].replace("<img ", '<img style="max-width:100%;height:auto" ') for p in shown if p)
    report = run_dir / "report.html"
    link = f"<p>Full report: <code>{escape(str(report))}</code></p>" if report.is_file() else ""
    return f"<div><table>{table}</table><div>{images}</div>{link}</div>"
