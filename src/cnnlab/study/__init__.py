"""`cnnlab TASK tune`: a hyperparameter search on Optuna. A study is a folder:

    STUDY/study.json   what is searched (task, space, trials, metric, storage): for --resume and other hosts
    STUDY/base.yaml    the resolved config every trial starts from (recipe + --set + the shortcuts)
    STUDY/journal.log  Optuna's storage (JournalFileBackend), unless --storage names a database
    STUDY/trials/NNNN  each trial: a normal run folder (report, resume, everything); NNNN.log its output
    STUDY/best.yaml    the best trial's config, a recipe: `cnnlab TASK train --recipe STUDY/best.yaml`
    STUDY/report.html  the study's page

Workers (`workers` threads here, or tuners on other hosts sharing the storage) take trials until the study
holds `trials` complete or pruned ones. A trial whose tuner died (kill -9, a lost host) stops sending its
heartbeat; the next worker to look marks it failed and queues its parameters again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import RunConfig, dump_config, load_config
from ..engine.evaluation import evaluate
from ..errors import CheckpointError, CnnlabError, ConfigError
from ..outputs import check_dir, write_json
from ..report.study_page import shown, write_study_page
from ..runs import read_json
from ..tasks import get_task
from . import trials as tr
from .space import Param, check_space, value_text

HOST = socket.gethostname()
PRUNERS = ("median", "hyperband", "none")
MAX_FAILED = 3  # trials failing on their own (a crash, not a lost process) before the study stops
NAME = "cnnlab"  # the Optuna study's name in its storage


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise CnnlabError("cnnlab tune needs Optuna: pip install 'cnnlab[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(url: str) -> tuple[Any, Any]:
    """(storage, Optuna study) at `url`, a database URL or a journal file, the study made if new; one line
    if it cannot be opened or read."""
    optuna = _optuna()
    try:
        if "://" in url:
            # psycopg (3) is the driver cnnlab[postgres] installs; SQLAlchemy's default would be psycopg2.
            dsn = url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url
            storage = optuna.storages.RDBStorage(dsn, engine_kwargs={"pool_pre_ping": True})
        else:
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

            storage = optuna.storages.JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))
        study = optuna.create_study(study_name=NAME, storage=storage, direction="maximize", load_if_exists=True)
        study.get_trials(deepcopy=False)  # reads the whole journal: a corrupt one fails here, not mid-study
        return storage, study
    except Exception as e:  # drivers and the journal raise their own types; each becomes one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CnnlabError(
            f"storage {url}: cannot use it ({first}); check the path, its permissions, or the database server"
        ) from None


def _pruner(optuna: Any, name: str, after: int, longest: int | None) -> Any:
    # `after`: the first epoch at which a trial may be stopped. Epoch 1 ranks settings badly (a large batch or a
    # small rate starts slowly): pruning from there lost to no pruning; from epoch 3 it reached the same best
    # 1.35x sooner (BENCHMARKS.md, tune-pruning).
    if name == "median":  # a trial below the median of the finished trials at the same epoch stops
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=after)
    if name == "hyperband":
        # Its top rung is the longest trial the space allows: Optuna's "auto" takes the first finished trial's
        # length, which differs between workers and is short when the space searches the epochs.
        return optuna.pruners.HyperbandPruner(min_resource=after, max_resource=longest or "auto")
    return optuna.pruners.NopPruner()


def _longest(base: RunConfig, space: Sequence[Param]) -> int:
    """The most epochs a trial may run."""
    p = next((p for p in space if p.key == "train.epochs"), None)
    if p is None:
        return base.train.epochs
    return int(max(p.choices) if p.choices is not None else p.high)


def create(
    folder: Path,
    base: RunConfig,
    space: Sequence[Param],
    trials: int,
    pruner: str,
    storage: str | None,
    prune_after: int,
) -> dict[str, Any]:
    """A new study folder (refused if it holds anything) for `trials` trials of `space` on top of `base`."""
    if trials < 1:
        raise ConfigError(f"--trials {trials}: give at least 1")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner}: choose one of {', '.join(PRUNERS)}")
    if prune_after < 1:
        raise ConfigError(f"--prune-after {prune_after}: give an epoch, 1 or later")
    check_dir(folder, "--study")
    if storage:
        open_storage(storage)  # an unreachable database: one line, before the folder is made
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder}: already holds a study or other files; --resume {folder} continues it")
    folder.mkdir(parents=True, exist_ok=True)
    dump_config(base, folder / "base.yaml")
    check_space(space, base.task, str(folder / "base.yaml"), [], "search space")
    first = _values(base, space)
    spec = {
        "task": base.task,
        "metric": get_task(base).primary,
        "trials": trials,
        "pruner": pruner,
        "prune_after": prune_after,
        "longest": _longest(base, space),
        "storage": _stored(storage),
        "space": [asdict(p) for p in space],
        "seed": base.train.seed,
        # The recipe as it stands is the first trial, where the space holds its values: the study starts from
        # the hand-picked settings and reports whether it beat them.
        "first": first if all(p.holds(first[p.key]) for p in space) else None,
    }
    write_json(folder / "study.json", spec)
    return spec


def _stored(storage: str | None) -> str:
    """How study.json names the storage: a database URL as given; a journal file absolute, or by default
    journal.log relative to the study folder (so that --resume works from any folder, and after a move)."""
    if storage is None:
        return "journal.log"
    return storage if "://" in storage else str(Path(storage).resolve())


def _values(cfg: RunConfig, space: Sequence[Param]) -> dict[str, Any]:
    out = {}
    for p in space:
        node: Any = cfg
        for part in p.key.split("."):
            node = getattr(node, part)
        out[p.key] = node
    return out


def best_test(run: Path) -> dict[str, Any] | None:
    """The best trial's test metrics: the one test evaluation of a study, made when it ends (trials skip
    theirs, so that nothing in the study can be chosen by the test split). None for data without one."""
    if (run / "eval_test.json").is_file():
        return read_json(run / "eval_test.json")
    try:
        return evaluate(run, split="test", report="none")
    except CheckpointError:
        return None  # the data has no test split (the trial's own checkpoint loaded at every epoch)


def read_spec(folder: Path) -> dict[str, Any]:
    path = folder / "study.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no study.json, not a study folder; start one with --study {folder}")
    return read_json(path)


def counts(trials: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead(study: Any, storage: Any) -> list[int]:
    """Mark failed the running trials whose tuner is gone (on this host: its process; elsewhere: a heartbeat
    older than GRACE_S) and queue their parameters again. Returns the numbers failed."""
    optuna = _optuna()
    now, failed = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid", 0)
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
        if host == HOST and pid == os.getpid():
            continue  # one of this tuner's workers: alive
        gone = (host == HOST and not _alive(pid)) or now - beat > tr.GRACE_S
        if not gone:
            continue
        try:
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker was first
        if any(o.user_attrs.get("retry_of") == t.number for o in study.get_trials(deepcopy=False)):
            continue  # another worker queued it again already
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        failed.append(t.number)
    return failed


class Study:
    """An open study: its folder, spec and Optuna study; `work` takes trials until the study is done."""

    def __init__(self, folder: Path, spec: dict[str, Any], storage_url: str | None = None):
        self.folder, self.spec = folder, spec
        self.space = [Param(**{**p, "choices": tuple(p["choices"]) if p["choices"] else None}) for p in spec["space"]]
        url = storage_url or spec["storage"]  # given: as given; study.json's journal: relative to the folder
        if not storage_url and "://" not in url:
            url = str(folder / url)
        self.storage, self.study = open_storage(url)
        if spec.get("first") and not self.study.get_trials(deepcopy=False):
            self.study.enqueue_trial(spec["first"], user_attrs={"base": True})
        self.lock = threading.Lock()
        self.halt = threading.Event()  # set on Ctrl-C: the workers stop their trials and ask for no more
        self.failed_own = 0
        (folder / "trials").mkdir(exist_ok=True)

    def sampler(self, worker: int) -> Any:
        # Each worker its own seed: two workers with one seed would draw the same first, random trials.
        seed = self.spec["seed"] + 1000 * worker + os.getpid() % 1000
        return _optuna().samplers.TPESampler(seed=seed, n_startup_trials=5)

    def done(self) -> tuple[int, int]:
        """(complete + pruned, running) trials."""
        c = counts(self.study.get_trials(deepcopy=False))
        return c.get("complete", 0) + c.get("pruned", 0), c.get("running", 0)

    def work(self, worker: int, threads: int, deadline: float | None, say: Any) -> None:
        optuna = _optuna()
        # Older studies: pruned from epoch 1, Hyperband's top rung "auto".
        pruner = _pruner(optuna, self.spec["pruner"], self.spec.get("prune_after", 1), self.spec.get("longest"))
        study = optuna.load_study(study_name=NAME, storage=self.storage, sampler=self.sampler(worker), pruner=pruner)
        n = self.spec["trials"]
        while True:
            with self.lock:
                for number in fail_dead(study, self.storage):
                    say(f"trial {number}: its tuner is gone; marked failed, its parameters queued again")
                done, running = self.done()
                if done >= n or (deadline and time.time() > deadline) or self.failed_own >= MAX_FAILED:
                    return
                if self.halt.is_set():
                    return
                if done + running >= n:
                    trial = None  # the last trials are running elsewhere: wait, in case one of them dies
                else:
                    trial = study.ask()
                    trial.set_user_attr("host", HOST)
                    trial.set_user_attr("pid", os.getpid())
                    trial.set_user_attr("heartbeat", time.time())
            if trial is None:
                time.sleep(min(tr.HEARTBEAT_S, 5.0))
                continue
            self.run(study, trial, threads, say)

    def run(self, study: Any, trial: Any, threads: int, say: Any) -> None:
        optuna = _optuna()
        params = {p.key: p.suggest(trial) for p in self.space}
        run_dir = self.folder / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir.relative_to(self.folder)))
        cmd = tr.train_command(
            self.spec["task"], self.folder / "base.yaml", [f"{k}={value_text(v)}" for k, v in params.items()], run_dir
        )
        started = time.perf_counter()
        state, value = tr.run_trial(
            trial, cmd, run_dir, run_dir.with_suffix(".log"), self.spec["metric"], threads,
            lambda: self.storage.set_trial_user_attr(trial._trial_id, "heartbeat", time.time()), self.halt,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        self.storage.set_trial_user_attr(trial._trial_id, "seconds", round(seconds, 1))
        text = ", ".join(f"{k.split('.')[-1]}={shown(v)}" for k, v in params.items())
        if state == "complete":
            study.tell(trial, value)
        elif state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif state == "interrupted":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
            say(f"trial {trial.number} stopped ({text}); its parameters are queued for --resume")
            return
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            with self.lock:
                self.failed_own += 1
            say(f"trial {trial.number} failed ({text}): see {run_dir.with_suffix('.log')}")
            return
        metric = f"val {self.spec['metric']}"
        say(f"trial {trial.number} {state}: {metric} {value:.4f} ({text}) in {seconds:.0f} s")

    def finish(self) -> dict[str, Any]:
        """best.yaml from the best trial (when there is one) and the summary study.json's readers want."""
        trials = self.study.get_trials(deepcopy=False)
        summary: dict[str, Any] = {"counts": counts(trials), "metric": self.spec["metric"]}
        try:
            best = self.study.best_trial
        except ValueError:
            return summary
        run = self.folder / best.user_attrs["run"]
        here = (run / "config.yaml").is_file()
        if here:
            best_cfg = load_config(self.spec["task"], str(run / "config.yaml"))
        else:  # it ran on another host, its folder there: its config is the base and its params
            params = [f"{k}={value_text(v)}" for k, v in best.params.items()]
            best_cfg = load_config(self.spec["task"], str(self.folder / "base.yaml"), params)
        best_cfg.train.test = True  # best.yaml is a recipe for a normal run
        dump_config(best_cfg, self.folder / "best.yaml")
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params, best_run=str(run))
        if not here:
            summary["best_run"] = f"{best.user_attrs.get('host', 'another host')}:{run}"
        elif test := best_test(run):
            summary["best_test"] = test
        base = [t for t in trials if t.user_attrs.get("base") and t.value is not None]
        if base:
            summary["base_value"] = base[0].value
        return summary


def run_study(
    folder: Path,
    spec: dict[str, Any],
    *,
    workers: int = 1,
    timeout: float | None = None,
    storage: str | None = None,
    say: Any = print,
) -> dict[str, Any]:
    """Take trials in `workers` threads (each trial a process with its share of the cores) until the study
    is done or `timeout` seconds have passed; then write best.yaml and report.html."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1")
    study = Study(folder, spec, storage)
    threads = max(1, (os.cpu_count() or 1) // workers)
    deadline = time.time() + timeout if timeout else None
    ended = [threading.Event() for _ in range(workers)]

    def worker(w: int) -> None:
        try:
            study.work(w, threads, deadline, say)
        finally:
            ended[w].set()

    for w in range(workers):
        threading.Thread(target=worker, args=(w,), daemon=True).start()

    # Waiting by sleeping, not Thread.join: a join that Ctrl-C interrupts can mark a running thread as ended
    # (CPython before 3.13), and the tuner would leave before its trials had saved.
    def wait(seconds: float) -> None:
        limit = time.monotonic() + seconds
        while not all(e.is_set() for e in ended) and time.monotonic() < limit:
            time.sleep(0.2)

    try:
        wait(float("inf"))
    except KeyboardInterrupt:
        study.halt.set()
        say(f"stopping: the running trials save and are queued again; continue with --resume {folder}")
        wait(120)
        raise
    summary = study.finish()
    if study.failed_own >= MAX_FAILED:
        raise CnnlabError(f"{MAX_FAILED} trials failed on their own; see the .log files in {folder / 'trials'}")
    summary["report"] = str(write_study_page(folder, spec, study.study))
    return summary
