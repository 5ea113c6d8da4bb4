"""Two hosts on this machine: two network namespaces joined by a veth pair, each running
`torchrun --nnodes=2 --nproc_per_node=1` with c10d rendezvous, gloo over TCP between them.

What a cluster does to a run: the same weights as one process, a host lost mid-epoch, an elastic
restart (`--max-restarts 1`, in both orders of events torchrun can take), and a dropped link. Traffic
stays on the namespaces' own addresses (10.213.13.0/24, no route anywhere else); every wait is
bounded. Needs root and iproute2 (as CI has).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import IN_CI

from cnnlab.engine import checkpoint

pytestmark = pytest.mark.slow

NET = "10.213.13"  # a private test range, assigned inside the two namespaces only
PORTS = itertools.count(29500)  # one rendezvous port per job: no wait for the last job's sockets
JOB_BOUND_S = 240  # no job here takes more than a minute on 2 cores; past this it is a hang
TIMEOUT_S = 5  # train.dist_timeout_s of the link test
LINK_BOUND_S = 60  # after the link drops, both hosts must have stopped within this
# torchrun's shared rendezvous store keeps the failed attempt's addresses, which a restarted process can
# read (pytorch#135712): with it, --max-restarts 1 ended the job in 2 of 6 tries here; without it, in none
# of 21 (and none of 6 in the held-process order).
SHARED_STORE_OFF = ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",)


@dataclass
class Host:
    ns: str
    addr: str
    ifname: str

    def torchrun(self, args: list, *, port: int, log: Path, restarts: int, rendezvous_host: bool, env: tuple):
        launcher = [
            "ip", "netns", "exec", self.ns,
            "env", f"GLOO_SOCKET_IFNAME={self.ifname}", "OMP_NUM_THREADS=1", "PYTHONUNBUFFERED=1", *env,
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes=2", "--nproc_per_node=1", f"--max-restarts={restarts}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={NET}.1:{port}", f"--rdzv-id=job{port}",
            # Both "hosts" share this machine's hostname: name each by its own address instead.
            f"--local-addr={self.addr}", f"--rdzv-conf=is_host={int(rendezvous_host)},read_timeout=10",
        ]  # fmt: skip
        with open(log, "w") as out:
            return subprocess.Popen([*launcher, "-m", "cnnlab", *map(str, args)], stdout=out, stderr=subprocess.STDOUT)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "two-host tests need root and iproute2 (network namespaces)"
        if IN_CI:
            pytest.fail(reason + " (CI=true: they must run)")
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    pair = [Host(f"cnl{tag}h{i}", f"{NET}.{i + 1}", f"cnl{tag}v{i}") for i in range(2)]
    try:
        for h in pair:
            _ip("netns", "add", h.ns)
        _ip("link", "add", pair[0].ifname, "type", "veth", "peer", "name", pair[1].ifname)
        for h in pair:
            _ip("link", "set", h.ifname, "netns", h.ns)
            _ip("-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", h.ifname)
            _ip("-n", h.ns, "link", "set", h.ifname, "up")
            _ip("-n", h.ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for h in pair:  # removing a namespace removes its end of the veth pair, and so the pair
            subprocess.run(["ip", "netns", "delete", h.ns], capture_output=True, timeout=30)


@dataclass
class Ended:
    rc: list[int]
    logs: list[str]
    seconds: float


def two_hosts(
    hosts: list[Host], args: list, logs: Path, *, restarts: int = 0, meanwhile=None, env: tuple = SHARED_STORE_OFF
) -> Ended:
    """Run `cnnlab ARGS` as one job over both hosts, with `env` for torchrun; `meanwhile(procs)` acts on the
    launchers while it runs."""
    port = next(PORTS)
    paths = [logs / f"{h.ns}-{port}.log" for h in hosts]
    start = time.monotonic()
    procs = [
        h.torchrun(args, port=port, log=p, restarts=restarts, rendezvous_host=i == 0, env=env)
        for i, (h, p) in enumerate(zip(hosts, paths, strict=True))
    ]
    try:
        if meanwhile:
            meanwhile(procs)
        for p in procs:
            p.wait(timeout=JOB_BOUND_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    return Ended([p.returncode for p in procs], [p.read_text() for p in paths], time.monotonic() - start)


def one_process(args: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cnnlab", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=JOB_BOUND_S)


def wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} did not appear within {seconds} s"


def workers(launcher: subprocess.Popen) -> list[int]:
    """The training processes torchrun started on that host."""
    found = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True, timeout=10)
    return [int(pid) for pid in found.stdout.split() if not _exited(int(pid))]


def _exited(pid: int) -> bool:
    """A zombie (exited, not yet collected by its launcher) or gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_worker(launcher: subprocess.Popen) -> None:
    """kill -9 the training process (the launcher's only child) on that host."""
    pids = workers(launcher)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run / "checkpoints" / "last.safetensors")["model"]


def batch_rows(run: Path) -> list[dict]:
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "batch"]


def fashion(data: Path, out: Path, limit: int = 6000, epochs: int = 3) -> list:
    # fp32: bf16 autocast rounds differently when a batch is split in two, so equality holds in fp32.
    return [
        "fashion", "train", "--recipe", "seed-a", "--data-dir", data, "--limit", limit, "--epochs", epochs,
        "--set", "train.threads=1", "--set", "train.precision=fp32", "--set", "explain.figures=false",
        "--set", "train.checkpoint_every_s=0.3", "--no-progress", "--out", out,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(hosts, real_fashion, tmp_path_factory) -> Path:
    """The fashion run, uninterrupted on both hosts: what a killed or restarted run must end as."""
    tmp = tmp_path_factory.mktemp("two-hosts")
    ended = two_hosts(hosts, fashion(real_fashion, tmp / "run"), tmp)
    assert ended.rc == [0, 0], ended.logs
    assert "2 process(es) x 1 threads" in ended.logs[0]
    return tmp / "run"


def assert_same_training(a: Path, b: Path) -> None:
    """Weights and per-step losses equal up to summation order (two processes sum gradients in two parts).

    Adam moves a weight by about its learning rate whatever the gradient's size, so a weight whose
    gradient is ~0 can take a step in either direction depending on the last bits of that sum: a few
    weights may differ by up to one step (1e-3 here); on average they agree to 1e-4 of their size."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        diff = (wa[k] - wb[k]).abs()
        assert diff.max() < 1e-3 and diff.mean() < 1e-4 * wb[k].abs().mean(), (k, diff.max(), diff.mean())
    ra, rb = batch_rows(a), batch_rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, len(ra) + 1))
    assert [r["loss"] for r in ra] == pytest.approx([r["loss"] for r in rb], rel=1e-4)


def test_fashion_on_two_hosts_trains_the_weights_of_one_process(hosts, real_fashion, tmp_path):
    # 30 steps: fp32 sums in another order drift apart over hundreds of steps, as any two runs would.
    args = fashion(real_fashion, tmp_path / "two", limit=1920, epochs=1)
    ended = two_hosts(hosts, args, tmp_path)
    assert ended.rc == [0, 0], ended.logs
    one = one_process(fashion(real_fashion, tmp_path / "one", limit=1920, epochs=1))
    assert one.returncode == 0, one.stderr[-3000:]
    two, one = tmp_path / "two", tmp_path / "one"
    assert_same_training(two, one)
    assert len(batch_rows(two)) == 30
    assert json.loads((two / "environment.json").read_text())["processes"] == 2
    for split in ("val", "test"):
        a, b = (json.loads((run / f"eval_{split}.json").read_text()) for run in (two, one))
        assert a["n"] == b["n"] and abs(a["acc"] - b["acc"]) <= 2 / a["n"], (split, a["acc"], b["acc"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert a["acc"] > 0.6  # 30 steps on real images, from 10% at the start


def test_segmentation_on_two_hosts_trains_the_weights_of_one_process(hosts, real_facade, tmp_path):
    args = [
        # Report A's net: no batch norm, whose statistics are per process under DDP (README), and plain
        # cross-entropy, as its class weights would come from each process's half of the batch.
        "facade", "train", "--recipe", "seed-a", "--data-dir", real_facade, "--limit", 32, "--epochs", 2,
        "--batch-size", 8, "--set", "augment.crop_size=64", "--set", "loss.name=ce",
        "--set", "train.threads=1", "--set", "train.precision=fp32", "--set", "explain.figures=false",
        "--no-progress",
    ]  # fmt: skip
    ended = two_hosts(hosts, [*args, "--out", tmp_path / "two"], tmp_path)
    assert ended.rc == [0, 0], ended.logs
    one = one_process([*args, "--out", tmp_path / "one"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert_same_training(tmp_path / "two", tmp_path / "one")
    a, b = (json.loads((tmp_path / run / "eval_val.json").read_text()) for run in ("two", "one"))
    assert a["map"] == pytest.approx(b["map"], abs=1e-3) and a["acc"] == pytest.approx(b["acc"], abs=1e-3)


def test_a_host_killed_mid_epoch_stops_the_other_and_resume_continues_exactly(hosts, real_fashion, reference, tmp_path):
    run = tmp_path / "run"
    stopped_at = {}

    def kill_host_1(procs):
        wait_for(run / "checkpoints" / "last.safetensors")
        kill_worker(procs[1])
        stopped_at["kill"] = time.monotonic()
        procs[0].wait(timeout=JOB_BOUND_S)
        stopped_at["host 0"] = time.monotonic()

    ended = two_hosts(hosts, fashion(real_fashion, run), tmp_path, meanwhile=kill_host_1)
    assert ended.rc[0] != 0 and ended.rc[1] != 0
    assert stopped_at["host 0"] - stopped_at["kill"] < 30
    assert "lost the other processes of this job" in ended.logs[0], ended.logs[0][-3000:]
    assert f"continue with --resume {run}" in ended.logs[0]
    assert "Signal 9 (SIGKILL)" in ended.logs[1], ended.logs[1][-3000:]
    step = checkpoint.load(run / "checkpoints" / "last.safetensors")["state"]["step"]
    assert 0 < step < 3 * 94
    alone = tmp_path / "alone"
    shutil.copytree(run, alone)

    resumed = two_hosts(hosts, ["fashion", "train", "--resume", run, "--no-progress"], tmp_path)
    assert resumed.rc == [0, 0], resumed.logs
    assert f"resuming {run}" in resumed.logs[0]
    two = reference
    a, b = weights(run), weights(two)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: the same two processes, resumed
    assert [r["loss"] for r in batch_rows(run)] == [r["loss"] for r in batch_rows(two)]

    # The same checkpoint on one host, as one process: the same steps and data from where it stopped, and
    # the numbers of two processes up to their summation order.
    one = one_process(["fashion", "train", "--resume", alone, "--no-progress"])
    assert one.returncode == 0 and f"resuming {alone}" in one.stdout + one.stderr, one.stderr[-3000:]
    ra, rb = batch_rows(alone), batch_rows(two)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, 3 * 94 + 1))
    assert [r["loss"] for r in ra[:step]] == [r["loss"] for r in rb[:step]]
    assert ra[step]["loss"] == pytest.approx(rb[step]["loss"], rel=1e-4)  # the first step after: same weights
    # Steps later, fp32 sums in two orders have drifted apart, by how much depends on where the kill fell:
    # at most 2.3% in a step's loss on an Intel Xeon, 5.5% in one step near the end on an AMD EPYC. The
    # last epoch's mean loss stays within 2%.
    assert [r["loss"] for r in ra] == pytest.approx([r["loss"] for r in rb], rel=0.1)
    last = slice(-94, None)
    mean_a, mean_b = (sum(r["loss"] for r in rows[last]) / 94 for rows in (ra, rb))
    assert mean_a == pytest.approx(mean_b, rel=0.02)
    a, b = (json.loads((r / "eval_test.json").read_text()) for r in (alone, two))
    assert abs(a["acc"] - b["acc"]) <= 0.005 and a["loss"] == pytest.approx(b["loss"], rel=0.02), (a, b)


def test_torchrun_restarts_a_killed_worker_and_the_run_ends_as_an_uninterrupted_one(
    hosts, real_fashion, reference, tmp_path
):
    run = tmp_path / "run"

    def kill_host_1(procs):
        wait_for(run / "checkpoints" / "last.safetensors")
        kill_worker(procs[1])

    ended = two_hosts(hosts, fashion(real_fashion, run), tmp_path, restarts=1, meanwhile=kill_host_1)
    assert_ends_as(reference, run, ended)


def test_a_restart_that_finds_the_other_host_healthy_ends_as_an_uninterrupted_one(
    hosts, real_fashion, reference, tmp_path
):
    """The other order of events: host 0's process is still healthy when host 1's launcher, its process
    killed, asks for a new round. torchrun then stops host 0's process as a "membership change", which is
    not counted as a restart (so host 0 restarts with restart count 0, host 1 with 1). Host 0's process
    is held (SIGSTOP) until its launcher has sent it SIGTERM, so this order is certain."""
    run = tmp_path / "run"

    def hold_0_kill_1(procs):
        wait_for(run / "checkpoints" / "last.safetensors")
        [held] = workers(procs[0])
        os.kill(held, signal.SIGSTOP)
        try:
            kill_worker(procs[1])
            deadline = time.monotonic() + 60
            while not sigterm_pending(held) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sigterm_pending(held), "host 0's launcher did not stop its process for the new round"
        finally:
            os.kill(held, signal.SIGCONT)

    env = (*SHARED_STORE_OFF, "LOGLEVEL=INFO")  # torchrun's INFO lines say which kind of restart it made
    ended = two_hosts(hosts, fashion(real_fashion, run), tmp_path, restarts=1, meanwhile=hold_0_kill_1, env=env)
    assert "Detected 1 new nodes from group_rank=0; will restart worker group" in ended.logs[0]
    assert "restart_count=0" in ended.logs[0].rsplit("Rendezvous complete", 1)[1]
    assert_ends_as(reference, run, ended)


def sigterm_pending(pid: int) -> bool:
    """Whether SIGTERM waits to be delivered to that (stopped) process: bit 15 of its pending signals."""
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return bool((int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)) >> (signal.SIGTERM - 1) & 1)


def assert_ends_as(reference: Path, run: Path, ended: Ended) -> None:
    """torchrun restarted the job once, cnnlab continued from the checkpoint, and the run is the
    uninterrupted one bit for bit: weights, every per-step loss, test metrics."""
    assert ended.rc == [0, 0], ended.logs
    assert f"torchrun restarted the job: resuming {run}" in ended.logs[0], ended.logs[0][-3000:]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in ended.logs[0]  # set: no warning
    a, b = weights(run), weights(reference)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in batch_rows(run)] == [r["loss"] for r in batch_rows(reference)]
    assert json.loads((run / "eval_test.json").read_text()) == json.loads((reference / "eval_test.json").read_text())


def test_a_dropped_link_stops_both_hosts_with_an_error_within_the_timeout(hosts, real_fashion, tmp_path):
    run = tmp_path / "run"
    args = [*fashion(real_fashion, run, epochs=50), "--set", f"train.dist_timeout_s={TIMEOUT_S}"]
    times = {}

    def drop_link(procs):
        wait_for(run / "checkpoints" / "last.safetensors")
        _ip("-n", hosts[0].ns, "link", "set", hosts[0].ifname, "down")
        times["down"] = time.monotonic()
        try:
            deadline = times["down"] + LINK_BOUND_S
            while any(workers(p) for p in procs) and time.monotonic() < deadline:
                time.sleep(0.1)
            times["workers stopped"] = time.monotonic()
            procs[0].wait(timeout=30)
            # torchrun's agent on the host cut off from the rendezvous host keeps waiting on the
            # rendezvous store (its own c10d calls, not cnnlab's): it is stopped here, as a job
            # scheduler's time limit would (README).
            try:
                procs[1].wait(timeout=15)
            except subprocess.TimeoutExpired:
                procs[1].terminate()
        finally:
            _ip("-n", hosts[0].ns, "link", "set", hosts[0].ifname, "up")

    ended = two_hosts(hosts, args, tmp_path, meanwhile=drop_link)
    assert times["workers stopped"] - times["down"] < TIMEOUT_S + 10, ended.logs
    assert ended.rc[0] not in (0, None) and ended.rc[1] != 0
    for rank, log in enumerate(ended.logs):
        assert f"process {rank}: lost the other processes of this job" in log, log[-3000:]
        assert f"Timed out waiting {TIMEOUT_S * 1000}ms" in log
        assert f"continue with --resume {run}" in log
