"""How fast the command line answers `--help`, against the interpreter's own start and against the help
with torch imported first (what every command paid before the CLI imported torch lazily).

    python benchmarks/cli_startup.py [--repeats 7]

Each command runs `--repeats` times in a fresh process, alternating, and the median wall time is kept.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import date

from common import machine, write_block

EAGER = "import sys, cnnlab.api, cnnlab.cli.app; sys.argv = ['cnnlab', *sys.argv[1:]]; cnnlab.cli.app.main()"
COMMANDS = {
    "python -c pass (interpreter start, baseline)": [sys.executable, "-c", "pass"],
    "cnnlab --help, torch imported first (before)": [sys.executable, "-c", EAGER, "--help"],
    "cnnlab --help": [sys.executable, "-m", "cnnlab", "--help"],
    "cnnlab --version": [sys.executable, "-m", "cnnlab", "--version"],
    "cnnlab fashion train --help": [sys.executable, "-m", "cnnlab", "fashion", "train", "--help"],
    "cnnlab facade predict --help": [sys.executable, "-m", "cnnlab", "facade", "predict", "--help"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    before = median["cnnlab --help, torch imported first (before)"]
    rows = [f"| {name} | {m:.3f} s | {m / before:.2f}x |" for name, m in median.items()]
    table = "\n".join(
        [
            f"{date.today()}, {machine()}. `python benchmarks/cli_startup.py`: median of {args.repeats} fresh "
            "processes each, run alternately; the ratio is to the help with torch imported first.",
            "",
            "| command | wall time | of before |",
            "|---|---|---|",
            *rows,
        ]
    )
    print(table)
    write_block("cli-startup", table)


if __name__ == "__main__":
    main()
