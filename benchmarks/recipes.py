"""Time to accuracy of the speed recipes: train each on this machine, then tabulate them in BENCHMARKS.md.

    python benchmarks/recipes.py                     # trains fashion fast, fashion best, facade fast (~40 min, 2 cores)
    python benchmarks/recipes.py --runs RUN [RUN..]  # tabulates finished runs of those recipes instead

Each recipe has a target (issue 18): a quality bar and a training wall-time limit. The table shows both,
the measured figures, and whether the run met them. Training wall time is the run's own clock at the
end of its last epoch (per-epoch validation included; data loading, final test evaluation and figures
not). The quality bar of the facade recipe is on validation data; the others on test data, measured
once, with the checkpoint chosen on validation data. Per-epoch validation uses the mirrored view only;
the final evaluations add the recipe's other test-time views (shifts, sizes).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from common import machine, write_block

from cnnlab import runs
from cnnlab.config import load_config
from cnnlab.engine import trainer as engine


@dataclass
class Target:
    split: str
    metric: str
    bound: float
    seconds: float


TARGETS = {  # issue 18's
    ("fashion", "fast"): Target("test", "acc", 0.920, 15),
    ("fashion", "best"): Target("test", "acc", 0.950, 15 * 60),
    ("facade", "fast"): Target("val", "map", 0.75, 10 * 60),
}


def _fmt(metric: str, value: float) -> str:
    return f"{value:.2%}" if metric == "acc" else f"{value:.3f}"


def row(run: Path) -> str:
    cfg = runs.load_run_config(run)
    target = TARGETS[(cfg.task, cfg.recipe)]
    epochs = [r for r in runs.read_history(run) if r["kind"] == "epoch"]
    env = json.loads((run / "environment.json").read_text())
    wall = epochs[-1]["time_s"]
    best = max(epochs, key=lambda r: r[f"val_{target.metric}"])
    result = json.loads((run / f"eval_{target.split}.json").read_text())[target.metric]
    val, test = runs.read_eval(run, "val") or {}, runs.read_eval(run, "test") or {}
    met = result >= target.bound and wall <= target.seconds
    return (
        f"| {cfg.task} {cfg.recipe} | `cnnlab {cfg.task} train --recipe {cfg.recipe}` | {env['precision']}, "
        f"{env['threads']} threads | {wall:.0f} s ({len(epochs)} epochs) | "
        f"{_fmt(target.metric, best[f'val_{target.metric}'])} (epoch {best['epoch']}) | "
        f"{_fmt(target.metric, val[target.metric]) if target.metric in val else '-'} | "
        f"{_fmt(target.metric, test[target.metric]) if target.metric in test else '-'} | "
        f"{target.split} {target.metric} >= {_fmt(target.metric, target.bound)} in {target.seconds:.0f} s | "
        f"{'yes' if met else '**no**'} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", type=Path, help="finished runs to tabulate instead of training")
    ap.add_argument("--out", type=Path, default=Path("runs/benchmark-recipes"), help="where new runs go")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = ap.parse_args()

    folders = args.runs
    if not folders:
        stamp = date.today().isoformat()
        folders = [
            engine.train(load_config(task, recipe), args.out / f"{task}-{recipe}-{stamp}").run_dir
            for task, recipe in TARGETS
        ]
    lines = [
        f"Measured {date.today()} on {machine()}; `python benchmarks/recipes.py` trains the three recipes "
        "and rewrites this table (`--runs RUN...` tabulates finished runs).",
        "",
        "| recipe | command | precision, threads | training wall time | best per-epoch val (epoch) "
        "| val, final evaluation | test | target | met |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row(Path(r)) for r in folders),
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_block("recipes", table)


if __name__ == "__main__":
    main()
