"""Facade segmentation: the from-scratch U-Net (`fast`) against an ImageNet EfficientNet-Lite0 encoder under
the same decoder (`pretrained`), over several seeds each.

    python benchmarks/facade_encoders.py RUNS [--seeds 0 1 2] [--threads 1]

Trains each recipe and seed missing from RUNS (RUNS/RECIPE-seedK, resumed where a run stopped), then writes
the "facade-encoders" block of BENCHMARKS.md from every finished run there: validation and test mAP per seed,
their mean and spread, and the two pooled (180 images of 60 buildings), which is what the shipped `facade`
model is chosen by. A run of 45 epochs takes 15-45 minutes on 2 cores; two runs of one thread each use two
cores better than one run of two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import ROOT, machine, write_block

RECIPES = ("fast", "pretrained")
CLI = [sys.executable, "-m", "cnnlab", "facade", "train", "--report", "summary", "--no-progress"]


def train(run: Path, recipe: str, seed: int, threads: int) -> None:
    if (run / "eval_test.json").is_file():
        return
    if (run / "config.yaml").is_file():
        cmd = [*CLI, "--resume", str(run)]
    else:
        cmd = [*CLI, "--recipe", recipe, "--seed", str(seed), "--out", str(run)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def finished(runs: Path, recipe: str) -> list[dict]:
    out = []
    for run in sorted(runs.glob(f"{recipe}-seed*")):
        if not (run / "eval_test.json").is_file():
            continue
        val, test = (json.loads((run / f"eval_{s}.json").read_text()) for s in ("val", "test"))
        epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        wall = max((e.get("time_s", 0) for e in epochs if e.get("kind") == "epoch"), default=0)
        out.append({"run": run.name, "val": val["map"], "test": test["map"], "pillar": val["ap"][2], "wall": wall})
    return out


def spread(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-train", action="store_true", help="only write the block from the finished runs")
    args = ap.parse_args()
    if not args.no_train:
        for seed in args.seeds:
            for recipe in RECIPES:
                train(args.runs / f"{recipe}-seed{seed}", recipe, seed, args.threads)
    rows, summary = [], []
    for recipe in RECIPES:
        done = finished(args.runs, recipe)
        for r in done:
            rows.append(
                f"| {recipe} | {r['run']} | {r['val']:.4f} | {r['test']:.4f} | {(r['val'] + r['test']) / 2:.4f} "
                f"| {r['pillar']:.3f} | {r['wall']:.0f} s |"
            )
        if done:
            pooled = [(r["val"] + r["test"]) / 2 for r in done]
            summary.append(
                f"| {recipe} | {len(done)} | {spread([r['val'] for r in done])} | {spread([r['test'] for r in done])} "
                f"| **{spread(pooled)}** | `cnnlab facade train --recipe {recipe} --seed K` |"
            )
    table = "\n".join(
        [
            "## Issue 30: facade segmentation, from scratch against an ImageNet encoder, over seeds",
            "",
            f"Machine: {machine()}. `python benchmarks/facade_encoders.py RUNS` (the runs' own folders: see its "
            "docstring). mAP of the best checkpoint (by validation) at the recipes' final test-time views; "
            "pooled = the mean of validation and test (90 images of 30 buildings each). Wall: the training "
            "loop; runs shared the machine, so compare mAP, not time.",
            "",
            "| recipe | seeds | val mAP (mean ± sd) | test mAP | pooled val + test | command |",
            "|---|---|---|---|---|---|",
            *summary,
            "",
            "| recipe | run | val mAP | test mAP | pooled | val pillar AP | training loop |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    write_block("facade-encoders", table)
    print(table)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
