"""`cnnlab check` on the real sets, timed against one `fashion fast` training in the same run.

    python benchmarks/check.py

Writes the "check" block of BENCHMARKS.md: for Fashion-MNIST (70,000 images) and the facade set, the whole
command's wall time on a cold cache (the facade's backbone features computed) and again warm, the seconds
check.json reports for loading, the duplicate search and the label issues, and what was found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, write_block

CLI = [sys.executable, "-m", "cnnlab"]


def timed(cmd: list[str], cache: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "CNNLAB_CACHE_DIR": str(cache)}, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        base = timed([*CLI, "fashion", "train", "--recipe", "fast", "--report", "none", "--no-progress",
                      "--out", f"{tmp}/fast"], cache)  # fmt: skip
        for data in ("fashion", "facade"):
            out = Path(tmp) / data
            cold = timed([*CLI, "check", data, "--out", str(out), "--no-progress"], cache)
            warm = timed([*CLI, "check", data, "--out", str(out), "--no-progress"], cache)
            r = json.loads((out / "check.json").read_text())
            d, s = r["duplicates"], r["seconds"]
            rule = d["rule"]["rule"] if d["rule"] else "none"
            lb = r.get("labels", {})
            flagged = f"; {lb['flagged']} label issues flagged" if "flagged" in lb else ""
            found = (
                f"{len(d['groups'])} groups; test in train {d['across_splits']['test in train']} "
                f"({d['across_splits_loose']['test in train']} at >= {d['loose_threshold']}); "
                f"a random split leaks {d['random_split']['leaked']} of {d['random_split']['val_images']}; rule {rule}"
                + flagged
            )
            rows.append(
                f"| {data} | {sum(r['images'].values()):,} | {d['embedding']} >= {d['threshold']} | {cold:.1f} s "
                f"| {warm:.1f} s | {s['load']:.1f} s + {s['duplicates']:.1f} s + {s.get('labels', 0):.1f} s "
                f"| {warm / base:.2f} | {found} "
                f"| `cnnlab check {data}` |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            "## Issue 31: `cnnlab check` on the real sets",
            "",
            f"Machine: {machine()}. `python benchmarks/check.py`. Wall: the whole command, first on a cold cache "
            "(images decoded, the facade's backbone features computed), then warm; check.json's own seconds for "
            "loading, the duplicate search and the label issues (warm; a segmentation data folder has none: its "
            f"masks need a trained run); ratio: warm wall against one `cnnlab fashion train --recipe "
            f"fast --report none` in the same run ({base:.0f} s).",
            "",
            "| set | images | near duplicates | cold | warm | load + search + labels | vs fast training | found "
            "| command |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    write_block("check", table)
    print(table)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
