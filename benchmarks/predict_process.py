"""A prediction on one photo as a whole process (start-up included), this checkout against a baseline
revision, and what each loads: cnnlab modules, matplotlib.

    python benchmarks/predict_process.py [--baseline e4d8b4a] [--repeats 5]

The baseline is checked out into a temporary git worktree and run from there with this interpreter; the two
alternate, the median wall time is kept, and the ratio is taken pair by pair. The photo is scikit-learn's
temple (a real photo, offline); the garment is a shipped Fashion-MNIST sample.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from common import ROOT, machine, write_block

# Runs the CLI as `python -m cnnlab` does, then reports what the process loaded.
TRACE = """
import atexit, json, runpy, sys
atexit.register(lambda: print(json.dumps({"cnnlab": sum(m.startswith("cnnlab") for m in sys.modules),
    "matplotlib": "matplotlib" in sys.modules, "pyplot": "matplotlib.pyplot" in sys.modules}), file=sys.__stderr__))
sys.argv = ["cnnlab", *sys.argv[1:]]
runpy.run_module("cnnlab", run_name="__main__")
"""


def run(src: Path, args: list[str]) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", TRACE, *args], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(done.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="e4d8b4a")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from PIL import Image
    from sklearn.datasets import load_sample_images

    work = Path(tempfile.mkdtemp())
    photo = work / "temple.jpg"
    Image.fromarray(load_sample_images().images[0]).save(photo)
    garment = ROOT / "src" / "cnnlab" / "samples" / "fashion-mnist-test-0000.png"
    old = work / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), args.baseline], check=True)
    try:
        commands = {
            "facade predict PHOTO": ["facade", "predict", str(photo), "-o", str(work / "out"), "--no-progress"],
            "fashion predict GARMENT": ["fashion", "predict", str(garment), "--no-progress"],
        }
        rows = []
        for name, cli in commands.items():
            pairs, loads = [], {}
            for _ in range(args.repeats + 1):  # the first pair warms the file cache, uncounted
                new, loads["new"] = run(ROOT / "src", cli)
                base, loads["base"] = run(old / "src", cli)
                pairs.append((new, base))
            pairs = pairs[1:]
            new_s, base_s = (statistics.median(p[i] for p in pairs) for i in (0, 1))
            ratio = statistics.median(n / b for n, b in pairs)
            mpl = {k: "pyplot" if v["pyplot"] else "matplotlib" if v["matplotlib"] else "none"
                   for k, v in loads.items()}  # fmt: skip
            rows.append(
                f"| `cnnlab {name}` | {base_s:.2f} s, {loads['base']['cnnlab']} modules, {mpl['base']} | "
                f"{new_s:.2f} s, {loads['new']['cnnlab']} modules, {mpl['new']} | {ratio:.2f}x |"
            )
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    table = "\n".join(
        [
            f"Measured {date.today()} on {machine()} (`python benchmarks/predict_process.py`): a whole process, "
            f"median of {args.repeats} alternating pairs; modules: cnnlab's own loaded; matplotlib: loaded at all.",
            "",
            f"| command | before ({args.baseline}) | after (the house issue) | after / before (wall) |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    write_block("predict-process", table)


if __name__ == "__main__":
    main()
