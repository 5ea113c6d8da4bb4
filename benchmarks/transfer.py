"""Scratch against ImageNet transfer on small real sets: `small` from scratch, `probe` (frozen
EfficientNet-Lite features, cached) and `finetune`, plus the probe's input side and backbone, each
trained by the CLI as a user would. Validation chooses; each finished candidate reads its test split once.

    python scripts/facade_patches.py ../shared/data/cs194-26_mini_facade/train SETS/patches
    python scripts/fashion_subset.py SETS/fashion100
    python scripts/digits_folder.py SETS/digits
    python benchmarks/transfer.py SETS

Writes the "transfer" block of BENCHMARKS.md. Wall time is the whole command (start-up, features,
training, final evaluations; `--report none`), on a cold feature cache: each set gets its own
CNNLAB_CACHE_DIR, removed first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, write_block

SETS = {
    # name: (folder, extra settings, what it is)
    "patches": ("patches", ["data.group_key=index-mod:302"], "facade patches, 32 px RGB, test on unseen buildings"),
    "fashion100": ("fashion100", [], "Fashion-MNIST, 100 labels per class, official test set"),
    "digits": ("digits", [], "scikit-learn digits, 8 px grey"),
}
CANDIDATES = {
    "small": ("small", []),
    "probe": ("probe", []),
    "probe 64 px": ("probe", ["model.input_size=64"]),
    "probe 224 px": ("probe", ["model.input_size=224"]),
    "probe lite1": ("probe", ["model.name=lite1"]),
    "probe lite2": ("probe", ["model.name=lite2"]),
    "finetune": ("finetune", []),
}
CLI = [sys.executable, "-m", "cnnlab"]


def run(folder: Path, recipe: str, settings: list[str], out: Path, cache: Path) -> dict:
    cmd = [*CLI, "classify", "train", "--data", str(folder), "--recipe", recipe, "--out", str(out), "--no-progress"]
    cmd += ["--report", "none", *[arg for s in settings for arg in ("--set", s)]]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "CNNLAB_CACHE_DIR": str(cache)}, capture_output=True)
    wall = time.perf_counter() - start
    val, test = (json.loads((out / f"eval_{s}.json").read_text()) for s in ("val", "test"))
    return {"wall_s": wall, "val": val["acc"], "test": test["acc"], "n_val": val["n"], "n_test": test["n"]}


def main() -> None:
    sets_root = Path(sys.argv[1])
    rows, cached = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (sub, settings, what) in SETS.items():
            cache = Path(tmp) / f"cache-{name}"
            shutil.rmtree(cache, ignore_errors=True)
            results = {}
            for label, (recipe, extra) in CANDIDATES.items():
                results[label] = r = run(sets_root / sub, recipe, settings + extra, Path(tmp) / name / label, cache)
                print(name, label, json.dumps(r), flush=True)
            again = run(sets_root / sub, "probe", settings, Path(tmp) / name / "probe-again", cache)
            cached.append(
                f"| {what} | {results['probe']['wall_s']:.1f} s | {again['wall_s']:.1f} s "
                f"| {again['val'] == results['probe']['val']} |"
            )
            chosen = max(results, key=lambda k: results[k]["val"])
            base = results["small"]
            for label, r in results.items():
                mark = " (best val)" if label == chosen else ""
                cmd = f"`cnnlab classify train --recipe {CANDIDATES[label][0]}` " + " ".join(
                    f"`--set {s}`" for s in settings + CANDIDATES[label][1]
                )
                rows.append(
                    f"| {what} | {label}{mark} | {r['val']:.1%} ({r['n_val']}) | {r['test']:.1%} ({r['n_test']}) "
                    f"| {r['test'] - base['test']:+.1%} | {r['wall_s']:.0f} s "
                    f"| {r['wall_s'] / base['wall_s']:.2f} | {cmd} |"
                )
    table = "\n".join(
        [
            "## Issue 30: ImageNet transfer on small sets (scratch, probe, finetune)",
            "",
            f"Machine: {machine()}. `python benchmarks/transfer.py SETS` (sets made by the scripts its docstring "
            "names). Wall: the whole CLI command with `--report none`, on a cold feature cache; time ratio "
            "against `small` in the same run. Validation chooses (the best-val row); test is read once per run.",
            "",
            "| set | recipe | val acc (n) | test acc (n) | test vs small | wall | time vs small | command |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "`probe` again on the same folder, its features read from the cache (the whole command: about 4 s of "
            "start-up, the head, and the final evaluations of val and test by the whole net, which are most of "
            "Fashion-MNIST's 52 s: 10,000 test images through the backbone):",
            "",
            "| set | first run (features computed) | second run (cached) | same val accuracy |",
            "|---|---|---|---|",
            *cached,
        ]
    )
    write_block("transfer", table)
    print(table)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
