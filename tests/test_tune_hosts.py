"""Issue 32: one study, two hosts. The two network namespaces of test_two_hosts.py, a PostgreSQL server
(Debian's package) in the first listening on its address only, a tuner on each host sharing the study
through it; the second host's tuner is killed with -9 mid-trial, and the first runs that trial again."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import IN_CI, make_classify_folder
from test_two_hosts import NET, hosts  # noqa: F401 - the namespaces fixture

pytestmark = pytest.mark.slow
optuna = pytest.importorskip("optuna")
PORT = 29432
BOUND_S = 300  # the whole study takes about a minute here
TRIALS = 6


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found or shutil.which("runuser") is None:
        reason = "PostgreSQL (Debian's postgresql package) is not installed; make system-deps installs it"
        if IN_CI:
            pytest.fail(reason + " (CI=true: the test must run)")
        pytest.skip(reason)
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def database(hosts):  # noqa: F811 - the fixture imported above
    """A PostgreSQL server in the first namespace, on its own address; yields its URL there, and one over
    its unix socket for this test, which stays outside the namespaces."""
    bin_dir = _pg_bin()
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-pg-", dir="/tmp"))  # the postgres user must reach it
    shutil.chown(folder, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, bin_dir / "initdb", "-D", folder / "db", "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    with open(folder / "db" / "pg_hba.conf", "a") as f:
        f.write(f"host all all {NET}.0/24 trust\n")
    server = subprocess.Popen(
        ["ip", "netns", "exec", hosts[0].ns, *as_pg, bin_dir / "postgres", "-D", folder / "db", "-p", str(PORT),
         "-c", f"listen_addresses={hosts[0].addr}", "-k", folder],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"postgresql://postgres@{hosts[0].addr}:{PORT}/postgres"  # as people write it
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = subprocess.run(["ip", "netns", "exec", hosts[1].ns, bin_dir / "pg_isready", "-h", hosts[0].addr,
                                    "-p", str(PORT)], capture_output=True)  # fmt: skip
            if ready.returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail("PostgreSQL did not start")
        yield url, f"postgresql+psycopg://postgres@/postgres?host={folder}&port={PORT}"
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _tuner(host, study: Path, data: Path, url: str, log: Path) -> subprocess.Popen:
    cmd = ["ip", "netns", "exec", host.ns, "env", "OMP_NUM_THREADS=1", "CNNLAB_TUNE_HEARTBEAT_S=1",
           sys.executable, "-m", "cnnlab", "classify", "tune", "--data", str(data), "--study", str(study),
           "--storage", url, "--recipe", "small", "--epochs", "10", "--set", "explain.report=none",
           "--param", "optim.lr=1e-3..3e-2:log", "--trials", str(TRIALS), "--pruner", "none"]  # fmt: skip
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})


def test_two_hosts_share_a_study_and_a_killed_hosts_trial_is_run_again(hosts, database, tmp_path, cache_dir):  # noqa: F811
    data = make_classify_folder(tmp_path / "data", per_class=12)
    a_dir, b_dir = tmp_path / "host-a", tmp_path / "host-b"
    url, here = database
    a = _tuner(hosts[0], a_dir, data, url, tmp_path / "a.log")
    storage = optuna.storages.RDBStorage(here)
    killed = None
    try:
        deadline = time.monotonic() + BOUND_S
        while not (a_dir / "study.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        b = _tuner(hosts[1], b_dir, data, url, tmp_path / "b.log")
        while killed is None and time.monotonic() < deadline:  # kill B while its trial trains
            study = optuna.load_study(study_name="cnnlab", storage=storage)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                run = b_dir / t.user_attrs.get("run", "-") / "metrics.jsonl"
                if run.exists() and '"kind":"epoch"' in run.read_text():
                    b.kill()
                    killed = t.number
                    break
            time.sleep(0.2)
        assert killed is not None, (tmp_path / "b.log").read_text()
        b.wait(timeout=30)
        assert a.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, (tmp_path / "a.log").read_text()
    finally:
        for p in (a, locals().get("b")):
            if p is not None and p.poll() is None:
                p.kill()
    trials = optuna.load_study(study_name="cnnlab", storage=storage).get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == TRIALS and states.count("FAIL") == 1, states
    [failed] = [t for t in trials if t.state.name == "FAIL"]
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == failed.number]
    assert failed.number == killed and retry.params == failed.params and retry.state.name == "COMPLETE"
    ran_a = {p.name for p in (a_dir / "trials").iterdir() if p.is_dir()}
    ran_b = {p.name for p in (b_dir / "trials").iterdir() if p.is_dir()}
    assert ran_b and not ran_a & ran_b  # both hosts trained, no trial on both
    assert len(ran_a | ran_b) == len(trials)  # every trial ran once, the killed one included
    assert f"trial {killed}: its tuner is gone" in (tmp_path / "a.log").read_text()
