"""The training loop shared by every task: batches by index, checkpoints, resume, logging, evaluation.

Reproducibility by construction: the data order of an epoch and every random draw of a step come from
generators seeded with (seed, epoch) and (seed, step), and the learning rate is a pure function of the
step. A checkpoint therefore needs only counters besides model and optimizer tensors, and a resumed
run, mid-epoch or not, replays exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__, checkpoint
from .config import RunConfig, config_from_dict, dump_config
from .errors import CheckpointError, TrainingError
from .tasks import Batchable, Task, get_task

console = Console(stderr=True, highlight=False, soft_wrap=True)
_DEFAULT_THREADS = torch.get_num_threads()  # one per physical core: what torch picks, before any run changes it


@dataclass
class RunPaths:
    """Everything a run writes lives under one folder."""

    root: Path

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    env = property(lambda self: self.root / "environment.json")
    last = property(lambda self: self.root / "checkpoints" / "last.safetensors")
    best = property(lambda self: self.root / "checkpoints" / "best.safetensors")
    figures = property(lambda self: self.root / "figures")


def default_run_dir(cfg: RunConfig, base: Path = Path("runs")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return base / f"{cfg.task}-{cfg.recipe}-{stamp}"


def load_run_config(run_dir: Path) -> RunConfig:
    import yaml

    path = RunPaths(Path(run_dir)).config
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a cnnlab run folder (no config.yaml)")
    return config_from_dict(yaml.safe_load(path.read_text()), str(path))


# ---------------------------------------------------------------- runtime choices


@dataclass
class Runtime:
    device: torch.device
    bf16: bool
    channels_last: bool
    threads: int

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def describe(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "precision": "bf16-autocast" if self.bf16 else "fp32",
            "channels_last": self.channels_last,
            "threads": self.threads,
        }


def _bf16_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # Without native bf16 (AMX / AVX512-BF16) autocast emulates it and is slower than fp32.
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def make_runtime(cfg: RunConfig, device: str = "cpu") -> Runtime:
    dev = torch.device(device)
    torch.set_num_threads(cfg.train.threads or _DEFAULT_THREADS)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and _bf16_fast(dev))
    # Measured on the 2-core CPU: channels_last speeds every conv net here 1.3-2.5x (BENCHMARKS.md).
    cl = True if cfg.train.channels_last is None else cfg.train.channels_last
    return Runtime(dev, bf16, cl, torch.get_num_threads())


def environment(rt: Runtime) -> dict[str, Any]:
    return {
        "cnnlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        **rt.describe(),
    }


# ---------------------------------------------------------------- schedule and optimiser


def lr_at(cfg: RunConfig, step: int, total: int) -> float:
    o = cfg.optim
    warm = int(o.warmup_fraction * total)
    if step < warm:
        return o.lr * (step + 1) / warm
    if o.schedule == "constant":
        return o.lr
    t = (step - warm) / max(1, total - warm)
    if o.schedule == "cosine":
        return o.lr * 0.5 * (1 + math.cos(math.pi * t))
    return o.lr * max(0.0, 1 - t) + o.lr * 1e-3 * min(1.0, t)  # onecycle: linear anneal after warm-up


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay
        )
    opt = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return opt(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + p) % (2**63)
    return torch.Generator().manual_seed(seed)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=_generator(seed, 1, epoch))


# ---------------------------------------------------------------- metrics log


class MetricsLog:
    """Append-only JSONL; `offset()` is stored in checkpoints so a resume can cut off rows past them."""

    def __init__(self, path: Path, truncate_at: int | None = None):
        self.path = path
        if truncate_at is not None and path.exists():
            with open(path, "r+b") as f:
                f.truncate(truncate_at)
        self.f = open(path, "a", buffering=1 << 16)  # noqa: SIM115 (held open for the whole run)

    def write(self, row: dict[str, Any]) -> None:
        self.f.write(json.dumps(row, separators=(",", ":")) + "\n")

    def offset(self) -> int:
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()

    def close(self) -> None:
        self.f.close()


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = RunPaths(Path(run_dir)).metrics
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- evaluation


@torch.inference_mode()
def predict(
    model: torch.nn.Module, task: Task, x_u8: torch.Tensor, rt: Runtime, batch_size: int, tta_flip: bool = False
) -> torch.Tensor:
    """Class probabilities for uint8 inputs, in batches, as float32."""
    model.eval()
    out = []
    for i in range(0, len(x_u8), batch_size):
        x = task.eval_inputs(x_u8[i : i + batch_size]).to(rt.device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            p = model(x).float().softmax(1)
            if tta_flip:
                p = (p + task.unflip(model(x.flip(-1)).float().softmax(1))) / 2
        out.append(p.cpu())
    return torch.cat(out)


def evaluate_split(
    model: torch.nn.Module, task: Task, split: Batchable, rt: Runtime, cfg: RunConfig
) -> tuple[dict[str, Any], torch.Tensor]:
    probs = predict(model, task, split.x, rt, cfg.train.eval_batch_size, cfg.train.tta_flip)
    return task.metrics(probs, split.y, cfg), probs


# ---------------------------------------------------------------- training


@dataclass
class _EpochSums:
    loss: float = 0.0  # summed over samples
    samples: int = 0
    correct: int = 0  # predictions: images, or pixels for segmentation
    predictions: int = 0

    def line(self) -> str:
        return f"loss {self.loss / max(1, self.samples):.4f} acc {self.correct / max(1, self.predictions):.4f}"


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step; it saves and exits cleanly."""

    def __init__(self):
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum, frame):
            if self.requested:  # a second Ctrl-C means: stop now
                raise KeyboardInterrupt
            self.requested = True
            console.print("[yellow]stopping after this step; saving a checkpoint (Ctrl-C again to abort)[/]")

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


@dataclass
class TrainResult:
    run_dir: Path
    completed: bool
    step: int
    best: float | None
    history: list[dict[str, Any]]


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
        transient=True,
    )


def train(
    cfg: RunConfig,
    run_dir: Path | None = None,
    *,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    max_steps: int | None = None,
    finish: bool = True,
) -> TrainResult:
    """Train `cfg` into `run_dir` (or continue the run there when `resume`). Returns when done or stopped.

    `max_steps` stops after that many optimizer steps in total (as an interruption would): for tests
    and quick tries. `finish=False` skips the end-of-run figures and evaluations.
    """
    if resume:
        if run_dir is None:
            raise CheckpointError("--resume needs a run folder")
        cfg = load_run_config(run_dir)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    paths = RunPaths(run_dir)
    task = get_task(cfg.task)
    rt = make_runtime(cfg, device)
    torch.manual_seed(cfg.train.seed)

    data = task.load_data(cfg)
    train_set, val_set = data["train"], data["val"]
    model = task.build_model(cfg).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    bs = cfg.train.batch_size
    steps_per_epoch = math.ceil(len(train_set) / bs)
    total_steps = steps_per_epoch * cfg.train.epochs
    task.prepare_training(cfg, train_set)

    state: dict[str, Any] = {
        "epoch": 0,
        "batch": 0,
        "step": 0,
        "best": None,
        "best_epoch": None,
        "elapsed_s": 0.0,
        "sums": _EpochSums().__dict__,
    }
    if resume:
        saved = checkpoint.load_latest(paths.last)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optim"])
        state = saved["state"]
        log = MetricsLog(paths.metrics, truncate_at=state["metrics_offset"])
        console.print(f"resuming {run_dir} at epoch {state['epoch'] + 1}, step {state['step']}")
    else:
        if paths.config.exists():
            raise CheckpointError(f"{run_dir}: already holds a run; use --resume or another --out folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, paths.config)
        paths.env.write_text(json.dumps(environment(rt), indent=2))
        log = MetricsLog(paths.metrics)
    sums = _EpochSums(**state["sums"])

    def save_last() -> None:
        state["sums"] = sums.__dict__
        state["metrics_offset"] = log.offset()
        checkpoint.save_rotating(paths.last, {"model": model.state_dict(), "optim": opt.state_dict(), "state": state})

    stop = _StopRequest()
    started = time.perf_counter() - state["elapsed_s"]
    last_save = time.perf_counter()
    steps_this_call = 0
    console.print(
        f"[bold]{cfg.task}/{cfg.recipe}[/] {cfg.model.name}: {len(train_set)} train, {len(val_set)} val, "
        f"{cfg.train.epochs} epochs x {steps_per_epoch} steps, batch {bs}, {rt.describe()['precision']}, "
        f"{rt.threads} threads -> {run_dir}"
    )
    with stop.installed(), _progress() if progress else contextlib.nullcontext() as bar:
        while state["epoch"] < cfg.train.epochs:
            epoch = state["epoch"]
            batches = epoch_order(cfg.train.seed, epoch, len(train_set)).split(bs)
            tid = (
                bar.add_task(
                    f"epoch {epoch + 1}/{cfg.train.epochs}", total=len(batches), completed=state["batch"], stats=""
                )
                if bar
                else None
            )
            model.train()
            while state["batch"] < len(batches):
                step = state["step"]
                idx = batches[state["batch"]]
                gen = _generator(cfg.train.seed, 2, step)
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
                x, y = task.train_inputs(train_set.x[idx], train_set.y[idx], cfg, gen)
                x, y = x.to(rt.device), y.to(rt.device)
                if rt.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = lr_at(cfg, step, total_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                with rt.autocast():
                    logits = model(x)
                    loss = task.loss(logits.float(), y, cfg)
                loss_v = loss.item()
                if not math.isfinite(loss_v):
                    log.close()
                    raise TrainingError(
                        f"loss became {loss_v} at step {step} (epoch {epoch + 1}); the last good checkpoint "
                        f"is {paths.last}; try a lower optim.lr"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                correct, count = task.batch_correct(logits.detach(), y)
                sums.loss += loss_v * len(idx)
                sums.samples += len(idx)
                sums.correct += correct
                sums.predictions += count
                log.write(
                    {
                        "kind": "batch",
                        "epoch": epoch + 1,
                        "step": step + 1,
                        "loss": loss_v,
                        "acc": correct / count,
                        "lr": lr,
                    }
                )
                state["step"] += 1
                state["batch"] += 1
                steps_this_call += 1
                if bar and (state["batch"] % 10 == 0 or state["batch"] == len(batches)):
                    bar.update(tid, completed=state["batch"], stats=sums.line())
                interrupted = stop.requested or (max_steps is not None and state["step"] >= max_steps)
                if interrupted or time.perf_counter() - last_save > cfg.train.checkpoint_every_s:
                    state["elapsed_s"] = time.perf_counter() - started
                    save_last()
                    last_save = time.perf_counter()
                if interrupted:
                    log.close()
                    console.print(
                        f"stopped at step {state['step']} (epoch {epoch + 1}); checkpoint saved, "
                        f"continue with --resume {run_dir}"
                    )
                    return TrainResult(run_dir, False, state["step"], state["best"], read_history(run_dir))
            if bar:
                bar.remove_task(tid)

            val, _ = evaluate_split(model, task, val_set, rt, cfg)
            row = {
                "kind": "epoch",
                "epoch": epoch + 1,
                "step": state["step"],
                "train_loss": sums.loss / sums.samples,
                "train_acc": sums.correct / sums.predictions,
                **{f"val_{k}": v for k, v in val.items()},
                "lr": lr_at(cfg, state["step"] - 1, total_steps),
                "time_s": time.perf_counter() - started,
            }
            log.write(row)
            primary = val[task.primary]
            improved = state["best"] is None or primary > state["best"]
            if improved:
                state["best"], state["best_epoch"] = primary, epoch + 1
                checkpoint.save(
                    paths.best, {"model": model.state_dict(), "state": {"epoch": epoch + 1, task.primary: primary}}
                )
            console.print(
                f"epoch {epoch + 1:>3}/{cfg.train.epochs}  train loss {row['train_loss']:.4f}  "
                f"{task.summary_line(val)}  {row['time_s']:.0f}s" + ("  [green]*best[/]" if improved else "")
            )
            state.update(epoch=epoch + 1, batch=0, elapsed_s=time.perf_counter() - started)
            sums = _EpochSums()
            save_last()
            last_save = time.perf_counter()
    log.close()
    history = read_history(run_dir)
    if finish:
        task.report_training(run_dir, history, model, cfg)
        evaluate(run_dir, split="val", device=device, data=data, quiet=True)
        if "test" in data and len(data["test"]):
            evaluate(run_dir, split="test", device=device, data=data)
    return TrainResult(run_dir, True, state["step"], state["best"], history)


def load_model(run_dir: Path, which: str = "best", device: str = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    cfg = load_run_config(run_dir)
    paths = RunPaths(Path(run_dir))
    model = get_task(cfg.task).build_model(cfg)
    path = paths.best if which == "best" else paths.last
    model.load_state_dict(checkpoint.load_latest(path)["model"])
    return model.to(device).eval(), cfg


def read_eval(run_dir: Path, split: str) -> dict[str, Any] | None:
    path = Path(run_dir) / f"eval_{split}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def evaluate(
    run_dir: Path,
    *,
    split: str = "test",
    which: str = "best",
    device: str = "cpu",
    data: dict[str, Batchable] | None = None,
    data_dir: str | None = None,
    external: Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint on one split, write `eval_<split>.json` and that split's figures.

    `data_dir` points the run's own data elsewhere; `external` evaluates on a whole other labelled
    folder instead (split name "external").
    """
    run_dir = Path(run_dir)
    model, cfg = load_model(run_dir, which, device)
    task = get_task(cfg.task)
    rt = make_runtime(cfg, device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if data_dir is not None:
        cfg.data.dir = str(data_dir)
    if external is not None:
        data, split = {"external": task.load_external(Path(external))}, "external"
    elif data is None:
        data = task.load_data(cfg)
    if split not in data or not len(data[split]):
        raise CheckpointError(f"{run_dir}: this run has no '{split}' split; choose one of {sorted(data)}")
    metrics, probs = evaluate_split(model, task, data[split], rt, cfg)
    out = {"split": split, "checkpoint": which, "n": len(data[split]), **metrics}
    (run_dir / f"eval_{split}.json").write_text(json.dumps(out, indent=2))
    task.report_split(run_dir, split, data[split], probs, metrics, model)
    if not quiet:
        console.print(f"[bold]{split}[/] ({which} checkpoint, {len(data[split])} images): {task.summary_line(metrics)}")
    return out
