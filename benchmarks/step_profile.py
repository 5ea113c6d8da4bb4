"""Where a training step's time goes: py-spy samples a real training run and sorts every sample of the
training loop into forward, backward, optimizer and the loop's own overhead.

    python benchmarks/step_profile.py                      # seed-a, 2 epochs of Fashion-MNIST; writes BENCHMARKS.md
    python benchmarks/step_profile.py --baseline REV       # also the code of git revision REV, in the same run

The run is `cnnlab fashion train --recipe seed-a --set train.epochs=2` (844 steps of batch 64 per epoch),
sampled at 250 Hz. Only samples inside the epochs' step loop count (not data loading, per-epoch
validation or the end-of-run figures). Each sample is charged to the first frame below the loop or the
step that names a category; the table gives each category's share and its time per step.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from common import ROOT, machine, write_block

# (category, substring of a py-spy frame "function (file)"), checked in order on the frames below
# Trainer.step or Trainer.run; the first match wins.
CATEGORIES = [
    ("backward", "backward (torch/"),
    ("optimizer step and zero_grad", "torch/optim/"),
    ("forward", "_wrapped_call_impl (torch/nn/modules/module.py"),
    ("loss", "loss (cnnlab/tasks/"),
    ("batch assembly and augmentation", "train_inputs (cnnlab/"),
    ("per-step RNG seeding", "seed"),
    ("batch accuracy", "batch_correct (cnnlab/"),
    ("metrics log (JSONL)", "MetricsLog"),
    ("tensorboard", "tensorboard"),
    ("progress bar", "rich/"),
    ("checkpoints", "save_last (cnnlab/"),
    ("all-reduce of the step's statistics", "sum (cnnlab/distributed.py"),
    ("all-reduce of the step's statistics", "sum (cnnlab/engine/distributed.py"),
]
EXCLUDED = ("end_epoch (cnnlab/", "finish_outputs (cnnlab/", "say (cnnlab/")


def categorise(raw: Path) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        # cnnlab/engine.py before the house issue, cnnlab/engine/trainer.py since
        loop = [i for i, f in enumerate(frames) if "Trainer.run (cnnlab/engine" in f]
        if not loop:
            continue
        below = frames[loop[0] + 1 :]
        if any(key in f for f in below[:1] for key in EXCLUDED):
            continue
        step = [i for i, f in enumerate(below) if "Trainer.step (cnnlab/engine" in f]
        inner = below[step[0] + 1 :] if step else below
        name = next((c for c, key in CATEGORIES if any(key in f for f in inner[:3])), None)
        counts[name or ("the step's own lines" if step else "the loop's own lines")] += int(n)
    return counts


def profile(src: Path, out: Path, epochs: int) -> tuple[collections.Counter, int, float]:
    run = out / "run"
    raw = out / "profile.txt"
    cmd = [sys.executable, "-m", "cnnlab", "fashion", "train", "--recipe", "seed-a", "--out", str(run)]
    cmd += ["--set", f"train.epochs={epochs}", "--set", "explain.figures=false", "--no-progress"]
    env_path = str(src / "src")
    subprocess.run(
        ["py-spy", "record", "--format", "raw", "--rate", "250", "--output", str(raw), "--", *cmd],
        check=True,
        env={**os.environ, "PYTHONPATH": env_path},
        capture_output=True,
    )
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    steps = sum(1 for r in rows if r["kind"] == "batch")
    seconds = next(r for r in reversed(rows) if r["kind"] == "epoch")["time_s"]
    return categorise(raw), steps, seconds


def table(label: str, counts: collections.Counter, steps: int, seconds: float) -> list[str]:
    total = sum(counts.values())
    ms_per_sample = 1000 / 250
    lines = [f"| {label}: {steps} steps, {seconds:.1f} s of training | share | ms per step |", "|---|---|---|"]
    for name, n in counts.most_common():
        lines.append(f"| {name} | {n / total:.1%} | {n * ms_per_sample / steps:.2f} |")
    lines.append(f"| all samples of the step loop | 100% | {total * ms_per_sample / steps:.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--baseline", help="git revision to profile the same way, for comparison")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = ap.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("step_profile.py needs py-spy: pip install py-spy")
    lines = [
        f"Measured {date.today()} on {machine()}; `python benchmarks/step_profile.py"
        f"{' --baseline ' + args.baseline if args.baseline else ''}`: py-spy at 250 Hz over "
        f"`cnnlab fashion train --recipe seed-a --set train.epochs={args.epochs}` (batch 64), samples of the "
        "step loop only (no data loading, validation or figures).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            tree = Path(tmp) / "baseline"
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), args.baseline], cwd=ROOT, check=True)
            try:
                counts, steps, seconds = profile(tree, Path(tmp) / "before", args.epochs)
                lines += [*table(f"{args.baseline} (before)", counts, steps, seconds), ""]
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)
        counts, steps, seconds = profile(ROOT, Path(tmp) / "now", args.epochs)
        lines += table("this commit", counts, steps, seconds)
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_block("step-profile", text)


if __name__ == "__main__":
    main()
