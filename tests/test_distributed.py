"""torchrun with gloo on the CPU: same weights as one process, same accuracy, and a killed rank."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cnnlab.engine import checkpoint

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _cnnlab(nproc: int, *args, wait: bool = True):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "cnnlab", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def _weights(run):
    return checkpoint.load(run / "checkpoints" / "last.safetensors")["model"]


def test_two_processes_give_the_weights_of_one(tiny_fashion, tmp_path):
    common = [
        "fashion",
        "train",
        "--data-dir",
        tiny_fashion,
        "--batch-size",
        30,
        "--max-steps",
        25,
        "--set",
        "train.threads=1",
        # bf16 autocast rounds differently when a batch is split in two: equality holds in fp32.
        "--set",
        "train.precision=fp32",
        "--no-progress",
    ]
    one = _cnnlab(1, *common, "--out", tmp_path / "one")
    two = _cnnlab(2, *common, "--out", tmp_path / "two")
    # The head holds what the workers printed; the tail only the launcher's summary.
    assert one.returncode == 0 and two.returncode == 0, two.stderr[:3000]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    rows = [
        [
            r
            for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "batch"
        ]
        for run in ("one", "two")
    ]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == list(range(1, 26))
    assert [r["loss"] for r in rows[0]] == pytest.approx([r["loss"] for r in rows[1]], rel=1e-4)
    assert json.loads((tmp_path / "two" / "environment.json").read_text())["processes"] == 2


def test_two_processes_reach_the_accuracy_of_one(real_fashion, tmp_path):
    common = [
        "fashion",
        "train",
        "--data-dir",
        real_fashion,
        "--limit",
        6000,
        "--epochs",
        1,
        "--set",
        "train.threads=1",
        "--no-progress",
    ]
    accs = []
    for n in (1, 2):
        r = _cnnlab(n, *common, "--out", tmp_path / f"p{n}")
        assert r.returncode == 0, r.stderr[:3000]
        accs.append(json.loads((tmp_path / f"p{n}" / "eval_val.json").read_text())["acc"])
    assert accs[0] > 0.75 and abs(accs[0] - accs[1]) <= 0.005, accs


def test_killed_rank_stops_the_job_and_it_resumes(tiny_fashion, tmp_path):
    run = tmp_path / "run"
    proc = _cnnlab(
        2,
        "fashion",
        "train",
        "--data-dir",
        tiny_fashion,
        "--batch-size",
        8,
        "--epochs",
        40,
        "--set",
        "train.threads=1",
        "--set",
        "train.checkpoint_every_s=0.2",
        "--no-progress",
        "--out",
        run,
        wait=False,
    )
    ckpt = run / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.1)
    assert ckpt.exists()
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "lost the other processes" in err or "SIGKILL" in err, err[-3000:]
    stopped = checkpoint.load(ckpt)["state"]["step"]
    assert 0 < stopped < 40 * 68
    done = _cnnlab(1, "fashion", "train", "--resume", run, "--no-progress")  # world-size independent checkpoint
    assert done.returncode == 0, done.stderr[:3000]
    assert "resuming" in done.stderr and json.loads((run / "eval_test.json").read_text())["n"] == 200


def test_restarts_on_torchruns_shared_store_are_warned_of(monkeypatch):
    # The environment torchrun gives its workers: --max-restarts, and whether they share its store.
    from cnnlab.engine import distributed

    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    assert "start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in distributed.restart_hazard()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # what that variable gives
    assert distributed.restart_hazard() is None
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert distributed.restart_hazard() is None
    monkeypatch.delenv("TORCHELASTIC_MAX_RESTARTS")  # not torchrun
    assert distributed.restart_hazard() is None
