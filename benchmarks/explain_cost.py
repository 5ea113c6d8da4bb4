"""What the report's explanation figures cost against a fast recipe's training time (the issue allows ~10%).

    python benchmarks/explain_cost.py                      # trains fashion fast (~1 min), uses shipped facade
    python benchmarks/explain_cost.py --fashion RUN --facade RUN

For each run: the test split's probabilities are computed once (not timed), then the split's usual figures
(`report_split`: confusion, examples, cases; the baseline) and the explanation figures
(`report_explanations`) are timed in the same process, each twice, keeping the faster. The training time
comes from the run's metrics (or a shipped model's card). The fashion run is also timed with the opt-in
t-SNE embedding.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from common import machine, write_block

from cnnlab import runs
from cnnlab.engine import checkpoint
from cnnlab.engine.evaluation import evaluate_split
from cnnlab.engine.runtime import make_runtime
from cnnlab.tasks import get_task
from cnnlab.zoo import resolve_any


def _train_seconds(run_dir: Path) -> float:
    card = run_dir / "card.json"
    if card.is_file():
        return float(json.loads(card.read_text())["train_time_s"])
    epochs = [r for r in runs.read_history(run_dir) if r.get("kind") == "epoch"]
    return float(epochs[-1]["time_s"])


def _best_of_two(fn) -> float:
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(run_dir: Path, out: Path, embedding: str | None = None) -> dict:
    model, cfg = checkpoint.load_model(run_dir)
    if embedding:
        cfg.explain.embedding = embedding
    task = get_task(cfg)
    data = task.load_data(cfg, progress=False)
    split = data["test"]
    metrics, probs = evaluate_split(model, task, split, make_runtime(cfg, "cpu"), cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_test.json").write_text(json.dumps(metrics))  # the per-class figure reads it back
    base = _best_of_two(lambda: task.report_split(out, "test", split, probs, metrics, model))
    explain = _best_of_two(lambda: task.report_explanations(out, "test", split, probs, model, cfg))
    return {"train": _train_seconds(run_dir), "split_figures": base, "explanations": explain, "n": len(split)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fashion", type=Path, help="a fashion run (default: train the fast recipe now)")
    parser.add_argument("--facade", default="facade", help="a facade run or shipped model (default: facade)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fashion = args.fashion
        if fashion is None:
            fashion = Path(tmp) / "fashion-fast"
            subprocess.run(
                [sys.executable, "-m", "cnnlab", "fashion", "train", "--recipe", "fast", "--out", str(fashion),
                 "--no-progress"], check=True,
            )  # fmt: skip
        rows = [
            ("fashion fast, PCA embedding (default)", measure(fashion, Path(tmp) / "a")),
            ("fashion fast, t-SNE embedding (opt-in)", measure(fashion, Path(tmp) / "b", "tsne")),
            (f"facade {args.facade}", measure(resolve_any(args.facade), Path(tmp) / "c")),
        ]
    lines = [
        f"{date.today()}, {machine()}. `python benchmarks/explain_cost.py`: the test split's explanation figures "
        "against the split's usual figures (baseline, same process) and the run's training time.",
        "",
        "| run | test images | training | usual split figures | explanation figures | explanations / training |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['n']} | {r['train']:.0f} s | {r['split_figures']:.2f} s | {r['explanations']:.2f} s "
            f"({r['explanations'] / r['split_figures']:.1f}x) | {r['explanations'] / r['train']:.1%} |"
        )
    table = "\n".join(lines)
    print(table)
    write_block("explain-cost", table)


if __name__ == "__main__":
    main()
