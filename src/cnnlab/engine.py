"""The training loop shared by every task: batches by index, checkpoints, resume, logging, evaluation.

Reproducibility by construction: the data order of an epoch and every random draw of a step come from
generators seeded with (seed, epoch) and (seed, step), and the learning rate is a pure function of the
step. A checkpoint therefore needs only counters besides model and optimizer tensors, and a resumed
run, mid-epoch or not, replays exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import math
import os
import platform
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.nn.parallel import DistributedDataParallel

from . import __version__, checkpoint, distributed
from .config import RunConfig, config_from_dict, dump_config, yaml_problem
from .errors import CheckpointError, ConfigError, DataError, TrainingError
from .outputs import check_dir
from .report.figures import write_json
from .report.html import write_report
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
    """The resolved configuration a run folder was trained with; CheckpointError if it is missing or damaged."""
    import yaml

    path = RunPaths(Path(run_dir)).config
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a cnnlab run folder (no config.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(
            f"{path}: the run's configuration is damaged ({yaml_problem(e)}); restore the file as training wrote it"
        ) from None
    return config_from_dict(data, str(path))


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path, cfg: RunConfig) -> None:
    """Load `weights` into `model`; CheckpointError naming the first mismatch if they do not fit it
    (a run folder whose config.yaml was edited after training)."""
    expected = model.state_dict()
    problems = [f"{k} is missing" for k in expected if k not in weights]
    problems += [f"{k} is not in model {cfg.model.name}" for k in weights if k not in expected]
    problems += [
        f"{k} is {'x'.join(map(str, v.shape))}, model {cfg.model.name} needs {'x'.join(map(str, expected[k].shape))}"
        for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"{source}: the weights do not fit the run's config.yaml ({problems[0]}{more}); config.yaml was changed "
            "after training: restore it"
        )
    model.load_state_dict(weights)


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


def make_runtime(cfg: RunConfig, device: str = "cpu", local_rank: int = 0) -> Runtime:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is visible to PyTorch here; use --device cpu")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dev = torch.device(device)
    torch.set_num_threads(cfg.train.threads or _DEFAULT_THREADS)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN to expose reads of uninitialised
        # memory, a debugging aid that took 11% of a ResNet training step here; results are the same
        # without it.
        torch.utils.deterministic.fill_uninitialized_memory = False
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
    # The fused kernels update every parameter in one call. Measured on seed-a, the default per-parameter
    # loop cost about 5% of a training step on a quiet machine and about 25% on a busy one.
    if o.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay, fused=True
        )
    opt = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return opt(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, fused=True)


def _match_state_layout(opt: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state its parameter's memory layout again. Checkpoints store tensors
    contiguous, but the fused kernels walk a parameter and its state in memory order: a channels-last
    weight beside a contiguous moment would pair the wrong elements."""
    for p, state in opt.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                state[key] = torch.empty_like(p).copy_(value)


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


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate the last two dims by (dy, dx) pixels (down, right), filling with zeros."""
    if not (dy or dx):
        return x
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    return padded[..., max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w]


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    task: Task,
    x_u8: torch.Tensor,
    rt: Runtime,
    batch_size: int,
    tta_flip: bool = False,
    tta_shift: int = 0,
    tta_scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Class probabilities for uint8 inputs, in batches, as float32; averaged over the test-time views
    (mirrored; shifted by `tta_shift` pixels up, down, left and right: classification only; resized by
    each of `tta_scales`, the probabilities resized back: segmentation only)."""
    model.eval()
    check_input_size(model, x_u8.shape, tta_scales)
    s = tta_shift
    shifts = [(0, 0), (s, 0), (-s, 0), (0, s), (0, -s)] if s else [(0, 0)]
    views = len(shifts) * len(tta_scales) * (1 + tta_flip)
    out = []
    for i in range(0, len(x_u8), batch_size):
        p = 0
        for (dy, dx), scale in itertools.product(shifts, tta_scales):
            x = task.eval_inputs(shift(x_u8[i : i + batch_size], dy, dx)).to(rt.device)
            size = x.shape[-2:]
            if scale != 1:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                q = model(x).float().softmax(1)
                if tta_flip:
                    q = q + task.unflip(model(x.flip(-1)).float().softmax(1))
            p = p + (q if scale == 1 else F.interpolate(q, size=size, mode="bilinear", align_corners=False))
        out.append((p / views).cpu())
    return torch.cat(out)


def check_input_size(model: torch.nn.Module, shape: Sequence[int], scales: Sequence[float] = (1.0,)) -> None:
    """DataError if images of `shape` (..., H, W), at any of the test-time `scales`, are smaller than
    the smallest input `model` takes (its `min_side` attribute, 1 px if it has none)."""
    need = getattr(model, "min_side", 1)
    h, w = shape[-2:]
    for scale in scales:
        side = math.floor(min(h, w) * scale)
        if side < need:
            at = f" at test-time scale {scale} ({side} px)" if scale != 1 else ""
            raise DataError(
                f"images of {w}x{h} px{at} are too small for {type(model).__name__}, which needs at least {need} px "
                f"on a side; use larger images" + (" or drop that factor from train.tta_scales" if at else "")
            )


def evaluate_split(
    model: torch.nn.Module, task: Task, split: Batchable, rt: Runtime, cfg: RunConfig, final: bool = True
) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics and probabilities of `model` on a split, with the test-time views of `cfg`. `final=False`
    leaves out the shifted and resized views: per-epoch validation, where 10 views of 6000 images would
    cost ~10 s an epoch."""
    probs = predict(
        model,
        task,
        split.x,
        rt,
        cfg.train.eval_batch_size,
        cfg.train.tta_flip,
        cfg.train.tta_shift if final else 0,
        cfg.train.tta_scales if final else (1.0,),
    )
    return task.metrics(probs, split.y, cfg), probs


# ---------------------------------------------------------------- training


@dataclass
class _EpochSums:
    loss: float = 0.0  # summed over samples
    samples: int = 0
    correct: int = 0  # predictions: images, or pixels for segmentation
    predictions: int = 0

    def add(self, loss: float, samples: int, correct: int, predictions: int) -> None:
        self.loss += loss
        self.samples += samples
        self.correct += correct
        self.predictions += predictions

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
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM (not by max_steps)


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


class Trainer:
    """One training run: set up (fresh or resumed), then `run()` the epochs. Works in one process or
    many (torchrun): each process takes a disjoint shard of every global batch, gradients are averaged
    by DDP, and only the main process writes files."""

    def __init__(
        self,
        cfg: RunConfig | None,
        run_dir: Path | None,
        *,
        resume: bool,
        device: str,
        progress: bool,
        epochs: int | None = None,
        data_dir: str | Path | None = None,
    ):
        self.dist = distributed.init(device)
        self.created = False  # whether this process made the run folder (and may remove it if nothing was saved)
        if resume:
            if run_dir is None:
                raise CheckpointError("--resume needs a run folder")
            cfg = load_run_config(run_dir)
            if data_dir is not None:
                cfg.data.dir = str(Path(data_dir).expanduser().absolute())
        else:
            if epochs is not None or data_dir is not None:
                raise ConfigError("epochs and data_dir are for resuming; set them in the configuration of a new run")
            run_dir = check_dir(run_dir or default_run_dir(cfg), "--out")
            if RunPaths(run_dir).config.exists():
                raise CheckpointError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out folder")
            if cfg.data.dir is not None:
                # Stored absolute: resume and evaluate run from any working folder.
                cfg.data.dir = str(Path(cfg.data.dir).expanduser().absolute())
        self.cfg = cfg
        self.run_dir = Path(self.dist.broadcast(str(run_dir)))
        self.paths = RunPaths(self.run_dir)
        self.task = get_task(cfg.task)
        self.rt = make_runtime(cfg, device, self.dist.local_rank)
        self.progress = progress and self.dist.main
        torch.manual_seed(cfg.train.seed)

        if cfg.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("train.tensorboard needs the tensorboard package: pip install 'cnnlab[tensorboard]'")
        self.data = self.task.load_data(cfg)
        self.train_set, self.val_set = self.data["train"], self.data["val"]
        self.net = self.task.build_model(cfg).to(self.rt.device)
        self.check_data()
        if self.rt.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.model = self.net if self.dist.world == 1 else DistributedDataParallel(self.net)
        self.opt = make_optimizer(cfg, self.net)
        self.steps_per_epoch = math.ceil(len(self.train_set) / cfg.train.batch_size)
        self.task.prepare_training(cfg, self.train_set)

        self.state: dict[str, Any] = {
            "epoch": 0,
            "batch": 0,
            "step": 0,
            "best": None,
            "best_epoch": None,
            "elapsed_s": 0.0,
            "sums": _EpochSums().__dict__,
        }
        if resume and not (self.paths.last.exists() or self.paths.last.with_suffix(".prev").exists()):
            # Stopped before its first checkpoint: start over in the same folder.
            self.log = MetricsLog(self.paths.metrics, truncate_at=0) if self.dist.main else None
            self.say(f"{self.run_dir} has no checkpoint yet: starting it from the beginning")
        elif resume:
            saved = checkpoint.load_latest(self.paths.last)
            load_weights(self.net, saved["model"], self.paths.last, cfg)
            self.opt.load_state_dict(saved["optim"])
            _match_state_layout(self.opt)
            self.state = saved["state"]
            self.log = (
                MetricsLog(self.paths.metrics, truncate_at=self.state["metrics_offset"]) if self.dist.main else None
            )
        elif self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.created = True
            dump_config(cfg, self.paths.config)
            write_json(self.paths.env, {**environment(self.rt), "processes": self.dist.world})
            self.log = MetricsLog(self.paths.metrics)
        else:
            self.log = None
        if resume:
            self.extend(epochs)
            if self.dist.main:
                checkpoint.remove_stale_temps(self.run_dir)
                if epochs is not None or data_dir is not None:
                    dump_config(cfg, self.paths.config)  # what the run now trains with, for evaluate and reports
            if self.state["epoch"] < cfg.train.epochs:
                self.say(f"resuming {self.run_dir} at epoch {self.state['epoch'] + 1}, step {self.state['step']}")
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.sums = _EpochSums(**self.state["sums"])
        self.tb = None
        if cfg.train.tensorboard and self.dist.main:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events past the checkpoint, as the metrics log does, so a resume adds no duplicates.
            self.tb = SummaryWriter(self.run_dir / "tensorboard", purge_step=self.state["step"] + 1 if resume else None)

    def check_data(self) -> None:
        """Refuse data the run cannot use, before the run folder is made: an empty split, or images
        smaller than the model takes."""
        for name in ("train", "val"):
            if not len(self.data[name]):
                raise DataError(
                    f"{self.cfg.task} data: the {name} split is empty ({sum(map(len, self.data.values()))} images in "
                    f"all, data.val_fraction {self.cfg.data.val_fraction}); use more images or change the fraction"
                )
        try:
            check_input_size(self.net, self.train_set.x.shape, self.cfg.train.tta_scales)
        except DataError as e:
            raise DataError(f"{self.cfg.data.dir or self.cfg.task + ' data'}: {e}") from None

    def extend(self, epochs: int | None) -> None:
        """Resume with `epochs`: train to that many epochs in all (not fewer than are done)."""
        done, planned = self.state["epoch"], self.cfg.train.epochs
        if epochs is None or epochs == planned:
            if done >= planned:
                self.say(
                    f"{self.run_dir} has finished its {planned} epochs: writing its evaluations and report again "
                    f"(pass --epochs N over {done} to train on)"
                )
            return
        least = max(1, done + (1 if self.state["batch"] else 0))  # an epoch under way is finished, not cut
        if epochs < least:
            raise ConfigError(
                f"--epochs {epochs}: {self.run_dir} has already trained {done} epochs; give {least} or more"
            )
        if self.cfg.optim.schedule != "constant" or self.cfg.optim.warmup_fraction:
            self.say(
                f"note: the {self.cfg.optim.schedule} learning-rate schedule is recomputed for {epochs} epochs "
                f"(planned: {planned}); from step {self.state['step']} on the rate follows the new plan"
            )
        self.cfg.train.epochs = epochs

    def discard_if_unsaved(self) -> None:
        """Remove the run folder this process made if it holds no checkpoint: there is nothing to resume,
        and the same --out must be usable again."""
        if self.created and not (self.paths.last.exists() or self.paths.last.with_suffix(".prev").exists()):
            if self.log:
                self.log.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def say(self, message: str) -> None:
        if self.dist.main:
            console.print(message)

    def save_last(self) -> None:
        if not self.dist.main:
            return
        self.state["sums"] = self.sums.__dict__
        self.state["metrics_offset"] = self.log.offset()
        checkpoint.save(
            self.paths.last,
            {"model": self.net.state_dict(), "optim": self.opt.state_dict(), "state": self.state},
            keep_previous=True,
        )

    def step(self, idx: torch.Tensor) -> tuple[float, int, int, float]:
        """One optimizer step on global batch `idx`; returns its summed loss, correct, predictions, lr."""
        cfg, rt, step = self.cfg, self.rt, self.state["step"]
        gen = _generator(cfg.train.seed, 2, step)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
        # The whole global batch is augmented on every process, then sharded: the same random draws as in
        # one process, so a run's result does not depend on how many processes computed it.
        x, y = self.task.train_inputs(self.train_set.x[idx], self.train_set.y[idx], cfg, gen, self.state["epoch"])
        if self.dist.world > 1:
            mine = self.dist.shard(torch.arange(len(idx)))
            x, y = x[mine], y[mine]
        x, y = x.to(rt.device), y.to(rt.device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = lr_at(cfg, step, self.total_steps)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with rt.autocast():
            logits = self.model(x)
            loss = self.task.loss(logits.float(), y, cfg)
        # DDP averages gradients over processes; weighting each shard by its size makes that the mean
        # over the global batch even when the last batch does not split evenly.
        (loss * (len(y) * self.dist.world / len(idx))).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        correct, count = self.task.batch_correct(logits.detach(), y)
        return loss.item() * len(y), correct, count, lr

    def run(self, max_steps: int | None = None, finish: bool = True) -> TrainResult:
        cfg, state = self.cfg, self.state
        stop = _StopRequest()
        started = time.perf_counter() - state["elapsed_s"]
        last_save = time.perf_counter()
        self.say(
            f"[bold]{cfg.task}/{cfg.recipe}[/] {cfg.model.name}: {len(self.train_set)} train, {len(self.val_set)} val, "
            f"{cfg.train.epochs} epochs x {self.steps_per_epoch} steps, batch {cfg.train.batch_size}, "
            f"{self.rt.describe()['precision']}, {self.dist.world} process(es) x {self.rt.threads} threads -> "
            f"{self.run_dir}"
        )
        with stop.installed(), _progress() if self.progress else contextlib.nullcontext() as bar:
            while state["epoch"] < cfg.train.epochs:
                epoch = state["epoch"]
                batches = epoch_order(cfg.train.seed, epoch, len(self.train_set)).split(cfg.train.batch_size)
                tid = (
                    bar.add_task(
                        f"epoch {epoch + 1}/{cfg.train.epochs}", total=len(batches), completed=state["batch"], stats=""
                    )
                    if bar
                    else None
                )
                self.model.train()
                while state["batch"] < len(batches):
                    idx = batches[state["batch"]]
                    loss_sum, correct, count, lr = self.step(idx)
                    wants_stop = stop.requested or (max_steps is not None and state["step"] + 1 >= max_steps)
                    # One all-reduce per step carries the statistics and the stop decision, so every
                    # process stops at the same step.
                    loss_sum, correct, count, stops = self.dist.sum([loss_sum, correct, count, float(wants_stop)])
                    loss_v = loss_sum / len(idx)
                    if not math.isfinite(loss_v):
                        saved = (
                            f"the last good checkpoint is {self.paths.last}"
                            if self.paths.last.exists()
                            else "nothing was saved yet, so the run folder is removed"
                        )
                        raise TrainingError(
                            f"loss became {loss_v} at step {state['step']} (epoch {epoch + 1}); {saved}; "
                            "try a lower optim.lr"
                        )
                    self.sums.add(loss_sum, len(idx), int(correct), int(count))
                    if self.tb:
                        for key, value in (("loss", loss_v), ("acc", correct / count), ("lr", lr)):
                            self.tb.add_scalar(f"batch/{key}", value, state["step"] + 1)
                    if self.log:
                        self.log.write(
                            {
                                "kind": "batch",
                                "epoch": epoch + 1,
                                "step": state["step"] + 1,
                                "loss": loss_v,
                                "acc": correct / count,
                                "lr": lr,
                            }
                        )
                    state["step"] += 1
                    state["batch"] += 1
                    if bar and (state["batch"] % 10 == 0 or state["batch"] == len(batches)):
                        bar.update(tid, completed=state["batch"], stats=self.sums.line())
                    if stops or time.perf_counter() - last_save > cfg.train.checkpoint_every_s:
                        state["elapsed_s"] = time.perf_counter() - started
                        self.save_last()
                        last_save = time.perf_counter()
                    if stops:
                        self.say(
                            f"stopped at step {state['step']} (epoch {epoch + 1}); checkpoint saved, "
                            f"continue with --resume {self.run_dir}"
                        )
                        if finish and self.dist.main:
                            self.write_reports(partial=True)
                        self.dist.barrier()
                        return self.result(completed=False, interrupted=stop.requested)
                if bar:
                    bar.remove_task(tid)
                self.end_epoch(epoch, started)
                last_save = time.perf_counter()
        if finish and self.dist.main:
            self.write_reports(partial=False)
        self.dist.barrier()
        return self.result(completed=True)

    def write_reports(self, partial: bool) -> None:
        """Figures of training, the final evaluations (not for a partial run) and report.html."""
        if self.log:
            self.log.offset()  # flush, so the figures see every row
        history = read_history(self.run_dir)
        if any(r["kind"] == "epoch" for r in history):
            self.task.report_training(self.run_dir, history, self.net, self.cfg)
        if not partial:
            evaluate(self.run_dir, split="val", device=str(self.rt.device), data=self.data)
            if len(self.data.get("test", [])):
                m = evaluate(self.run_dir, split="test", device=str(self.rt.device), data=self.data)
                self.say(f"[bold]test[/] (best checkpoint, {m['n']} images): {self.task.summary_line(m)}")
        path = write_report(self.run_dir, partial=partial)
        self.say(f"report: {path}")

    def end_epoch(self, epoch: int, started: float) -> None:
        """Validate (main process only; the others wait), log, keep the best weights, checkpoint."""
        state = self.state
        if self.dist.main:
            val, _ = evaluate_split(self.net, self.task, self.val_set, self.rt, self.cfg, final=False)
            row = {
                "kind": "epoch",
                "epoch": epoch + 1,
                "step": state["step"],
                "train_loss": self.sums.loss / self.sums.samples,
                "train_acc": self.sums.correct / self.sums.predictions,
                **{f"val_{k}": v for k, v in val.items()},
                "lr": lr_at(self.cfg, state["step"] - 1, self.total_steps),
                "time_s": time.perf_counter() - started,
            }
            self.log.write(row)
            if self.tb:
                for key, value in row.items():
                    if isinstance(value, float):
                        self.tb.add_scalar(f"epoch/{key}", value, state["step"])
            primary = val[self.task.primary]
            improved = state["best"] is None or primary > state["best"]
            if improved:
                state["best"], state["best_epoch"] = primary, epoch + 1
                checkpoint.save(
                    self.paths.best,
                    {"model": self.net.state_dict(), "state": {"epoch": epoch + 1, self.task.primary: primary}},
                )
            self.say(
                f"epoch {epoch + 1:>3}/{self.cfg.train.epochs}  train loss {row['train_loss']:.4f}  "
                f"{self.task.summary_line(val)}  {row['time_s']:.0f}s" + ("  [green]*best[/]" if improved else "")
            )
        self.dist.barrier()
        state.update(epoch=epoch + 1, batch=0, elapsed_s=time.perf_counter() - started)
        self.sums = _EpochSums()
        self.save_last()

    def result(self, completed: bool, interrupted: bool = False) -> TrainResult:
        if self.log:
            self.log.close()
        if self.tb:
            self.tb.close()
        history = read_history(self.run_dir) if self.dist.main else []
        return TrainResult(self.run_dir, completed, self.state["step"], self.state["best"], history, interrupted)


def train(
    cfg: RunConfig | None,
    run_dir: Path | None = None,
    *,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    max_steps: int | None = None,
    finish: bool = True,
    epochs: int | None = None,
    data_dir: str | Path | None = None,
) -> TrainResult:
    """Train `cfg` into `run_dir` (or continue the run there when `resume`). Returns when done or stopped.

    `max_steps` stops after that many optimizer steps in total, as an interruption would (resume later):
    for tests and quick tries. `finish=False` skips the end-of-run figures and evaluations. When
    resuming, `epochs` changes the number of epochs to train in all and `data_dir` says where the data
    set is now. A run that fails before its first checkpoint leaves no run folder behind.
    """
    trainer = Trainer(cfg, run_dir, resume=resume, device=device, progress=progress, epochs=epochs, data_dir=data_dir)
    try:
        return trainer.run(max_steps, finish)
    except BaseException as e:
        trainer.discard_if_unsaved()
        if trainer.dist.world > 1 and isinstance(e, (torch.distributed.DistError, RuntimeError)):
            # gloo/nccl report a peer that died as a RuntimeError from the next collective.
            raise TrainingError(
                f"process {trainer.dist.rank}: lost the other processes of this job ({str(e).splitlines()[0][:160]}); "
                f"the last checkpoint is in {trainer.run_dir}; continue with --resume {trainer.run_dir}"
            ) from None
        raise
    finally:
        if trainer.dist.world > 1:
            # A process group left to the interpreter's exit can abort it ("terminate called without an
            # active exception" from gloo's threads, seen in about 1 run in 15).
            distributed.shutdown()


def load_model(run_dir: Path, which: str = "best", device: str = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """The network of a run folder (its `which` checkpoint: best or last) in eval mode, and its configuration."""
    if which not in ("best", "last"):
        raise ConfigError(f"checkpoint {which!r}: choose best or last")
    cfg = load_run_config(run_dir)
    paths = RunPaths(Path(run_dir))
    model = get_task(cfg.task).build_model(cfg)
    path = paths.best if which == "best" else paths.last
    load_weights(model, checkpoint.load_latest(path)["model"], path, cfg)
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
) -> dict[str, Any]:
    """Evaluate a run's checkpoint on one split, write `eval_<split>.json` and that split's figures.

    `data_dir` points the run's own data elsewhere; `external` evaluates on a whole other labelled
    folder instead (split name "external"). Prints nothing: `task.summary_line` formats the result.
    """
    run_dir = Path(run_dir)
    if split not in ("test", "val"):
        raise ConfigError(f"split {split!r}: choose test or val")
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
    try:
        metrics, probs = evaluate_split(model, task, data[split], rt, cfg)
    except DataError as e:
        raise DataError(f"{external or f'{run_dir} ({split} split)'}: {e}") from None
    out = {"split": split, "checkpoint": which, "n": len(data[split]), **metrics}
    write_json(run_dir / f"eval_{split}.json", out)
    task.report_split(run_dir, split, data[split], probs, metrics, model)
    return out
