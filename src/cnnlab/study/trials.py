"""One trial: a normal `cnnlab TASK train` run in its own process, watched epoch by epoch (its
metrics.jsonl) so that Optuna's pruner can stop it, with a heartbeat in the study's storage so that
another worker can tell when its process died."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HEARTBEAT_S = float(os.environ.get("CNNLAB_TUNE_HEARTBEAT_S", "10"))
GRACE_S = 6 * HEARTBEAT_S  # a running trial whose heartbeat is older than this is taken for dead


def _die_with_parent() -> None:
    # A trial must not outlive its tuner (kill -9 included): it would train on, unseen, beside the retry.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def epoch_rows(metrics: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The epoch rows written to `metrics` since byte `offset` (whole lines only), and the new offset."""
    try:
        with open(metrics, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    rows = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "epoch"], offset + end


def run_trial(
    trial: Any,
    cmd: list[str],
    run_dir: Path,
    log: Path,
    metric: str,
    threads: int,
    heartbeat: Any,
    halt: threading.Event,
) -> tuple[str, float | None]:
    """Run `cmd` (a train command writing `run_dir`), reporting each epoch's validation `metric` to `trial`
    and stopping the run when the pruner says so, or when `halt` is set (the tuner was interrupted).
    Returns ("complete", best value), ("pruned", best so far), ("interrupted", None) or ("fail", None)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            heartbeat()

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    best, offset, pruned, halted = None, 0, False, False
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
            while True:
                done = proc.poll() is not None
                rows, offset = epoch_rows(run_dir / "metrics.jsonl", offset)
                for row in rows:
                    value = float(row[f"val_{metric}"])
                    best = value if best is None else max(best, value)
                    trial.report(value, row["epoch"])
                    if not pruned and not done and trial.should_prune():
                        pruned = True
                        proc.send_signal(signal.SIGTERM)  # the loop stops after its step and saves
                if halt.is_set() and not done and not pruned and not halted:
                    halted = True
                    proc.send_signal(signal.SIGTERM)
                if done:
                    break
                time.sleep(0.5)
    finally:
        stop.set()
    if pruned:
        return "pruned", best
    if halted or proc.returncode == 130:  # stopped by Ctrl-C or SIGTERM, not by a fault of its own
        return "interrupted", None
    if proc.returncode != 0 or best is None:
        return "fail", None
    return "complete", best


def train_command(task: str, recipe: Path, overrides: list[str], run_dir: Path) -> list[str]:
    """The trial's own `cnnlab TASK train` command line."""
    cmd = [sys.executable, "-m", "cnnlab", task, "train", "--recipe", str(recipe), "--no-progress"]
    for item in overrides:
        cmd += ["--set", item]
    return [*cmd, "--out", str(run_dir)]
