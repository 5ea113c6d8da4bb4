"""Issue 29 (3): what a quick run's report costs, measured with py-spy, at each `--report` level.

    python benchmarks/report_cost.py              # fashion fast, full / summary / none, into BENCHMARKS.md

Each level trains `cnnlab fashion train --recipe fast` (same seed, same data) as its own process under
`py-spy record` (50 samples a second), and the samples are summed by what the process was doing: start-up
(imports, reading the data), the training loop (steps and each epoch's validation), the final
evaluations, then the report: training figures, each split's figures, the explanations and the page
(report.html). "full" is what every run drew before this issue; the fast recipe now draws "summary".
The report's share is its time over the training loop's, the issue's target being 25% at most.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from common import machine, write_block

RATE = 50  # samples a second
# Phases by the first of these frames found in a sample's stack, checked in this order.
PHASES = {
    "report page": r"^write_report ",
    "explanations": r"report_explanations ",
    "split figures": r"report_split ",
    "training figures": r"report_training ",
    "final evaluations": r"finish_outputs ",
    "training loop": r"Trainer\.(step|end_epoch|fit|run) |^step \(cnnlab/engine",
}
REPORT = ("training figures", "split figures", "explanations", "report page")


def profile(level: str, folder: Path) -> dict[str, float]:
    """Seconds per phase of one run at `level`, its wall time and whether it wrote PDF copies."""
    raw = folder / f"{level}.raw"
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")  # the venv's, when not on PATH
    cmd = [spy, "record", "-r", str(RATE), "-f", "raw", "-o", str(raw), "--",
           sys.executable, "-m", "cnnlab", "fashion", "train", "--recipe", "fast", "--report", level,
           "--out", str(folder / level), "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    seconds = {"wall": time.perf_counter() - start} | dict.fromkeys([*PHASES, "start-up and the rest"], 0.0)
    for line in raw.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        phase = next((p for p, rx in PHASES.items() if any(re.search(rx, f) for f in frames)), "start-up and the rest")
        seconds[phase] += int(n) / RATE
        if any("print_pdf" in f for f in frames):
            seconds["pdf"] = seconds.get("pdf", 0.0) + int(n) / RATE
    return seconds


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    cpu = machine().split(",")[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in ("full", "summary", "none"):
            s = profile(level, Path(tmp))
            report = sum(s[p] for p in REPORT)
            share = report / s["training loop"]
            print(f"{level:8s} " + "  ".join(f"{k} {v:.1f}" for k, v in s.items()) + f"  report/training {share:.0%}")
            rows.append(
                f"| {level} | {s['wall']:.1f} | {s['start-up and the rest']:.1f} | {s['training loop']:.1f} "
                f"| {s['final evaluations']:.1f} | {s['training figures']:.1f} | {s['split figures']:.1f} "
                f"| {s['explanations']:.1f} | {s['report page']:.1f} | {s.get('pdf', 0.0):.1f} | {report:.1f} "
                f"| **{share:.0%}** | {cpu} |"
            )
    lines = [
        f"Measured {date.today()} on {machine()}; `python benchmarks/report_cost.py` (`cnnlab fashion train "
        f"--recipe fast --report LEVEL` under py-spy at {RATE} Hz; seconds of the main thread by phase).",
        "",
        "| --report | wall s | start-up | training loop | final evaluations | training figures | split figures "
        "| explanations | page | of which PDF copies | report | report / training | CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_block("report-cost", "\n".join(lines))


if __name__ == "__main__":
    main()
