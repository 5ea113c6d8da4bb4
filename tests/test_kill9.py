"""kill -9 at random moments, resume, repeat: the end result must equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.engine import checkpoint

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _start(args: list) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *map(str, args)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def kill9_until_done(train_args: list, run: Path, kills: int, seed: int, window: tuple[float, float]) -> int:
    """Start training, SIGKILL it after a random delay, resume, `kills` times; then let it finish.

    Returns how many kills landed before the run had finished by itself."""
    rng = random.Random(seed)
    landed = 0
    for _ in range(kills):
        resuming = (run / "config.yaml").exists()
        proc = _start([*train_args[:2], "--resume", run] if resuming else [*train_args, "--out", run])
        time.sleep(rng.uniform(*window))
        if proc.poll() is None:
            proc.kill()
            landed += 1
        proc.wait()
    resuming = (run / "config.yaml").exists()
    final = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnlab",
            *map(str, [*train_args[:2], "--resume", run] if resuming else [*train_args, "--out", run]),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr[-2000:]
    return landed


def assert_same_run(a: Path, b: Path) -> None:
    wa = checkpoint.load(a / "checkpoints" / "last.safetensors")["model"]
    wb = checkpoint.load(b / "checkpoints" / "last.safetensors")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _rows(a) == _rows(b)  # no duplicated or missing rows
    assert (a / "eval_test.json").read_text() == (b / "eval_test.json").read_text()


CASES = {
    "fashion": [
        "fashion",
        "train",
        "--limit",
        3000,
        "--epochs",
        3,
        "--set",
        "train.threads=1",
        "--set",
        "train.checkpoint_every_s=0.3",
        "--no-progress",
    ],
    "facade": [
        "facade",
        "train",
        "--recipe",
        "unet",
        "--limit",
        48,
        "--epochs",
        3,
        "--batch-size",
        8,
        "--set",
        "augment.crop_size=64",
        "--set",
        "model.width=0.5",
        "--set",
        "data.val_fraction=0.03",
        "--set",
        "data.test_fraction=0.03",
        "--set",
        "train.tta_flip=false",
        "--set",
        "train.threads=1",
        "--set",
        "train.checkpoint_every_s=0.3",
        "--no-progress",
    ],
}


@pytest.mark.parametrize("task", CASES)
def test_kill9_then_resume_equals_uninterrupted(task, tmp_path, request):
    request.getfixturevalue("real_fashion" if task == "fashion" else "real_facade")
    args = CASES[task]
    started = time.perf_counter()
    ref = subprocess.run(
        [sys.executable, "-m", "cnnlab", *map(str, args), "--out", tmp_path / "ref"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr[:3000]
    # Kills within 25-45% of an uninterrupted run's time: a killed process has done at most 45% of the
    # work, so the second one always still has work left when its kill comes, however fast the machine.
    whole = time.perf_counter() - started
    landed = kill9_until_done(args, tmp_path / "run", kills=3, seed=1, window=(0.25 * whole, 0.45 * whole))
    assert landed >= 2
    assert_same_run(tmp_path / "ref", tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("task", CASES)
def test_kill9_long(task, tmp_path, request):
    request.getfixturevalue("real_fashion" if task == "fashion" else "real_facade")
    args = [a if a != 3 else 6 for a in CASES[task]]
    subprocess.run(
        [sys.executable, "-m", "cnnlab", *map(str, args), "--out", tmp_path / "ref"],
        env=ENV,
        check=True,
        capture_output=True,
        timeout=1200,
    )
    assert kill9_until_done(args, tmp_path / "run", kills=12, seed=7, window=(3.0, 15.0)) >= 8
    assert_same_run(tmp_path / "ref", tmp_path / "run")
