"""Issue 32: `cnnlab TASK tune` searches settings with Optuna; each trial a run folder, the study survives a
kill -9 of its tuner, bad spaces and storages are one line before any trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_classify_folder, one_error_line, run_cli

from cnnlab.config import load_config
from cnnlab.errors import ConfigError
from cnnlab.study.space import Param, param_option

optuna = pytest.importorskip("optuna")  # the cnnlab[tune] extra; make install has it

SMALL = ["--recipe", "small", "--epochs", "2", "--set", "explain.report=none"]


def _trials(study: Path) -> list:
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(study / "journal.log")))
    return optuna.load_study(study_name="cnnlab", storage=storage).get_trials(deepcopy=False)


def _tune(study: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab", "classify", "tune", "--data", str(data), "--study", str(study), *extra]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("optim.lr=1e-4..1e-2:log", Param("optim.lr", 1e-4, 1e-2, log=True)),
        ("train.batch_size=64,128", Param("train.batch_size", choices=(64, 128))),
        ("train.epochs=2..10:step=2", Param("train.epochs", 2, 10, step=2)),
        ("model.activation={choices: [relu, sigmoid]}", Param("model.activation", choices=("relu", "sigmoid"))),
    ],
)
def test_a_param_is_read_from_its_short_form(item, expected):
    assert param_option(item) == expected
    assert param_option(item).integer == (item.startswith("train.epochs"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--param", "optim.lrr=1..2"], "unknown key optim.lrr; did you mean optim.lr?"),
        (["--param", "optim.lr=0.1..0.1"], "optim.lr: empty range"),
        (["--param", "optim.lr=0.2..0.1"], "optim.lr: inverted range"),
        (["--param", "optim.lr=0..0.1:log"], "a log range must stay above 0"),
        (["--param", "optim.lr={low: 1, high: 2, foo: 3}"], "unknown foo"),
        (["--param", "model.freeze=bn,none"], "resnet has no freeze setting"),  # `small` is a resnet
        (["--param", "train.epochs=2.5..4"], "train.epochs = 2.5: Input should be a valid integer"),
        # The recipe's space less the keys set for every trial: here all of them.
        (
            ["--set", "optim.lr=0.1", "--set", "optim.weight_decay=0.001", "--set", "model.width=0.5"],
            "nothing to search",
        ),
        (["--param", "optim.lr=0.1..0.2", "--param", "optim.lr=0.3..0.4"], "optim.lr is searched twice"),
        (["--param", "optim.lr=0.1..0.2", "--pruner", "asha"], "--pruner asha: choose one of median"),
        (["--param", "optim.lr=0.1..0.2", "--prune-after", "0"], "--prune-after 0: give an epoch, 1 or later"),
    ],
)
def test_a_bad_space_is_one_line_before_any_trial(tmp_path, cache_dir, monkeypatch, capsys, args, expected):
    data = make_classify_folder(tmp_path / "data")
    study = tmp_path / "study"
    code, _, err = run_cli(monkeypatch, capsys, "classify", "tune", "--data", data, "--study", study, *SMALL[:2], *args)
    one_error_line(code, err, expected)
    assert not (study / "journal.log").exists()


def test_a_study_writes_a_recipe_that_reproduces_its_best_trial(tmp_path, cache_dir, monkeypatch, capsys):
    data = make_classify_folder(tmp_path / "data", per_class=12)
    (make_classify_folder(tmp_path / "t", per_class=4) / "train").rename(data / "test")
    study = tmp_path / "study"
    args = ["--param", "optim.lr=1e-3..3e-2:log", "--param", "train.batch_size=8,16", "--trials", "3"]
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "classify",
        "tune",
        "--data",
        data,
        "--study",
        study,
        *SMALL,
        *args,
        "--pruner",
        "none",
    )
    assert code == 0, err
    trials = _trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 3
    best = max(trials, key=lambda t: t.value)
    assert f"best: trial {best.number}, {best.value:.4f}" in out
    assert "its test acc (the study's one look at the test split): " in out
    for t in trials:  # each trial a normal run folder, its value the best epoch's validation accuracy
        epochs = [json.loads(r) for r in (study / t.user_attrs["run"] / "metrics.jsonl").read_text().splitlines()]
        assert max(r["val_acc"] for r in epochs if r["kind"] == "epoch") == t.value
        assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1, 2]
    again = tmp_path / "again"
    threads = str(os.cpu_count() or 1)  # as the trial ran: one worker, every core
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab", "classify", "train", "--recipe", str(study / "best.yaml"), "--out", str(again),
         "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(r) for r in (again / "metrics.jsonl").read_text().splitlines()]
    assert max(r["val_acc"] for r in rows if r["kind"] == "epoch") == best.value
    # The study read the test split once, the best trial's, when it ended; best.yaml's run reads its own.
    tested = [t.number for t in trials if (study / t.user_attrs["run"] / "eval_test.json").is_file()]
    assert tested == [best.number] and (again / "eval_test.json").is_file()
    test_acc = json.loads((study / best.user_attrs["run"] / "eval_test.json").read_text())["acc"]
    assert json.loads((again / "eval_test.json").read_text())["acc"] == test_acc
    page = (study / "report.html").read_text()
    assert f"test acc {test_acc:.4f} (read once)" in page
    assert "Optimization history" in page and "Parameter importance" in page and page.count("<tr>") >= 3 + 1
    assert (study / "figures" / "history.png").is_file() and (study / "figures" / "curves.png").is_file()

    code, _, err = run_cli(monkeypatch, capsys, "report", "--compare", study, "-o", tmp_path / "compare.html")
    assert code == 0, err  # the trials side by side: a study folder is a folder of runs
    assert all(f"<th>{t.number:04d}</th>" in (tmp_path / "compare.html").read_text() for t in trials)

    code, _, err = run_cli(monkeypatch, capsys, "classify", "tune", "--data", data, "--study", study, *SMALL[:2], *args)
    one_error_line(code, err, "already holds a study", f"--resume {study}")


@pytest.mark.slow  # a tuner process killed or stopped mid-trial: make test-hosts runs it
def test_kill_9_of_the_tuner_then_resume_keeps_every_completed_trial(tmp_path, cache_dir):
    data = make_classify_folder(tmp_path / "data", per_class=12)
    study = tmp_path / "study"
    cmd = _tune(study, data, *SMALL[:2], "--epochs", "12", "--set", "explain.report=none", "--trials", "3",
                "--param", "optim.lr=1e-3..3e-2:log", "--pruner", "none")  # fmt: skip
    tuner = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # one trial complete, the next one training
            trials = _trials(study) if (study / "journal.log").exists() else []
            running = [t for t in trials if t.state.name == "RUNNING"]
            if any(t.state.name == "COMPLETE" for t in trials) and running:
                metrics = study / "trials" / f"{running[0].number:04d}" / "metrics.jsonl"
                if metrics.exists() and '"kind":"epoch"' in metrics.read_text():
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the tuner never got to its second trial")
    finally:
        os.kill(tuner.pid, signal.SIGKILL)
        tuner.wait()
    before = {t.number: t.value for t in _trials(study) if t.state.name == "COMPLETE"}
    killed = next(t for t in _trials(study) if t.state.name == "RUNNING")
    time.sleep(1)  # the trial's process dies with its tuner (PR_SET_PDEATHSIG)
    alive = subprocess.run(["pgrep", "-f", str(study / "trials")], capture_output=True, text=True).stdout.split()
    assert not alive

    resumed = subprocess.run([*_tune(study, data)[:5], "--resume", str(study)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"trial {killed.number}: its tuner is gone" in resumed.stderr  # progress lines go to stderr
    trials = _trials(study)
    assert {t.number: t.value for t in trials if t.number in before} == before  # nothing completed was lost
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    [failed] = [t for t in trials if t.state.name == "FAIL"]
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == failed.number]
    assert failed.number == killed.number and retry.params == failed.params and retry.state.name == "COMPLETE"


def test_a_corrupt_or_unreachable_storage_is_one_line(tmp_path, cache_dir, monkeypatch, capsys):
    data = make_classify_folder(tmp_path / "data")
    study = tmp_path / "study"
    args = ["classify", "tune", "--data", data, *SMALL[:2], "--param", "optim.lr=1e-3..1e-2", "--trials", "1"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--study", study, "--storage", "sqlite:////nowhere/at/all.db")
    one_error_line(code, err, "storage sqlite:////nowhere/at/all.db: cannot use it")
    assert not study.exists()  # nothing half-made
    (tmp_path / "s2").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "classify", "tune", "--resume", tmp_path / "s2")
    one_error_line(code, err, "no study.json, not a study folder")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--study", study / "s3", "--epochs", "1")
    assert code == 0, err
    journal = study / "s3" / "journal.log"
    kept = journal.read_bytes()
    journal.write_bytes(kept + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, not json\n')
    code, _, err = run_cli(monkeypatch, capsys, "classify", "tune", "--resume", study / "s3")
    one_error_line(code, err, f"storage {journal}: cannot use it")
    assert journal.read_bytes().startswith(kept)  # the completed trial is still there


def test_a_host_without_the_best_trials_folder_still_writes_its_recipe(tmp_path, cache_dir, monkeypatch, capsys):
    # Hosts sharing a storage keep their trials' folders in their own --study: the best may be elsewhere.
    data = make_classify_folder(tmp_path / "data", per_class=12)
    journal = tmp_path / "shared.log"
    args = ["--param", "optim.lr=1e-3..3e-1:log", "--trials", "2", "--pruner", "none", "--storage", journal]
    for host in ("a", "b"):
        code, out, err = run_cli(
            monkeypatch, capsys, "classify", "tune", "--data", data, "--study", tmp_path / host, *SMALL, *args
        )
        assert code == 0, err
    assert not (tmp_path / "b" / "trials" / "0000").exists()  # b found the study done and ran nothing
    a, b = (load_config("classify", str(tmp_path / h / "best.yaml")) for h in ("a", "b"))
    # The same recipe; a's also holds what the trial learnt of the data (classes, size, mean), b's learns it again.
    assert a.model_dump(exclude={"data"}) == b.model_dump(exclude={"data"}) and a.data.dir == b.data.dir
    assert "its test" not in out  # the test split is read where the trial's checkpoint is


def test_resume_refuses_a_new_space(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError):
        param_option("optim.lr")
    code, _, err = run_cli(monkeypatch, capsys, "classify", "tune", "--resume", tmp_path, "--param", "optim.lr=1..2")
    one_error_line(code, err, "params with --resume")


def test_two_workers_share_one_study_and_the_count_adds_up(tmp_path, cache_dir, monkeypatch, capsys):
    data = make_classify_folder(tmp_path / "data", per_class=12)
    study = tmp_path / "study"
    args = ["--param", "optim.lr=1e-3..3e-1:log", "--trials", "4", "--workers", "2", "--pruner", "none"]
    code, _, err = run_cli(monkeypatch, capsys, "classify", "tune", "--data", data, "--study", study, *SMALL, *args)
    assert code == 0, err
    trials = _trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({t.user_attrs["run"] for t in trials}) == 4
    assert trials[0].params == {"optim.lr": 0.1} and trials[0].user_attrs["base"]  # the recipe's own, first
    first, second = sorted(trials, key=lambda t: t.datetime_start)[:2]
    assert second.datetime_start < first.datetime_complete  # two trials at once


@pytest.mark.slow  # a tuner process killed or stopped mid-trial: make test-hosts runs it
def test_ctrl_c_stops_the_trials_and_resume_runs_them_again(tmp_path, cache_dir):
    data = make_classify_folder(tmp_path / "data", per_class=12)
    study = tmp_path / "study"
    cmd = _tune(study, data, *SMALL[:2], "--epochs", "30", "--set", "explain.report=none", "--trials", "2",
                "--param", "optim.lr=1e-3..3e-2:log", "--pruner", "none")  # fmt: skip
    # SIGINT as a terminal leaves it: a job started in the background (nohup, &) inherits it ignored.
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    tuner = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore)
    deadline = time.time() + 120
    while time.time() < deadline:  # the first trial training
        metrics = study / "trials" / "0000" / "metrics.jsonl"
        if metrics.exists() and '"kind":"epoch"' in metrics.read_text():
            break
        time.sleep(0.2)
    tuner.send_signal(signal.SIGINT)  # as Ctrl-C in a terminal, to the tuner alone
    _, err = tuner.communicate(timeout=120)
    assert tuner.returncode == 130, err
    assert "trial 0 stopped" in err and f"--resume {study}" in err
    assert not subprocess.run(["pgrep", "-f", str(study / "trials")], capture_output=True).stdout  # none left
    stopped, queued = _trials(study)
    assert stopped.state.name == "FAIL" and queued.state.name == "WAITING"
    resumed = subprocess.run([*_tune(study, data)[:5], "--resume", str(study)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(study)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == stopped.params


def test_a_locked_storage_is_one_line_or_waited_out_and_keeps_its_trials(tmp_path, monkeypatch):
    import functools
    import sqlite3

    from optuna.storages import journal as oj

    from cnnlab.errors import CnnlabError
    from cnnlab.study import open_storage

    # A database another process holds locked: SQLite's own wait (5 s), then one line.
    db = tmp_path / "s.db"
    _, study = open_storage(f"sqlite:///{db}")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(CnnlabError) as e:
        open_storage(f"sqlite:///{db}")
    assert "\n" not in str(e.value) and "database is locked" in str(e.value)
    holder.execute("ROLLBACK")
    assert [t.value for t in open_storage(f"sqlite:///{db}")[1].get_trials()] == [0.5]

    # A journal whose lock a killed tuner left behind: Optuna breaks a lock older than its grace period
    # (30 s; 3 s here) and the study goes on with its completed trial.
    journal = tmp_path / "journal.log"
    _, study = open_storage(str(journal))
    study.add_trial(optuna.trial.create_trial(value=0.7))
    Path(f"{journal}.lock").touch()
    monkeypatch.setattr(oj, "JournalFileOpenLock", functools.partial(oj.JournalFileOpenLock, grace_period=3))
    start = time.monotonic()
    _, study = open_storage(str(journal))
    assert time.monotonic() - start >= 3
    assert [t.value for t in study.get_trials()] == [0.7]
    assert not Path(f"{journal}.lock").exists()


@pytest.mark.parametrize(
    ("task", "recipe"),
    [(t, r) for t in ("fashion", "facade", "classify") for r in __import__("cnnlab.config").config.recipe_names(t)],
)
def test_every_shipped_recipe_has_a_space_its_model_takes(tmp_path, task, recipe):
    from cnnlab.config import dump_config
    from cnnlab.resolve import resolve_config
    from cnnlab.study.space import check_space, recipe_space

    base = resolve_config(task, recipe, [])
    dump_config(base, tmp_path / "base.yaml")
    space = recipe_space(task, recipe)
    assert len(space) >= 3
    check_space(space, task, str(tmp_path / "base.yaml"), [], recipe)  # every edge value builds the model
    assert all(p.holds(getattr(getattr(base, p.key.split(".")[0]), p.key.split(".")[1])) for p in space)


def test_hyperbands_top_rung_is_the_longest_trial_the_space_allows():
    import optuna

    from cnnlab.resolve import resolve_config
    from cnnlab.study import _longest, _pruner
    from cnnlab.study.space import recipe_space

    seed_a, best = resolve_config("fashion", "seed-a", []), resolve_config("fashion", "best", [])
    assert _longest(seed_a, recipe_space("fashion", "seed-a")) == 20  # train.epochs: 4..20, step 4
    assert _longest(best, recipe_space("fashion", "best")) == 38  # epochs not searched: the recipe's own
    assert _longest(seed_a, [Param("train.epochs", choices=(5, 30, 10))]) == 30
    pruner = _pruner(optuna, "hyperband", 3, 20)
    assert (pruner._min_resource, pruner._max_resource) == (3, 20)
