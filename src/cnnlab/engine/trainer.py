"""The training loop shared by every task: batches by index, checkpoints, resume, logging.

Reproducibility by construction: the data order of an epoch and every random draw of a step come from
generators seeded with (seed, epoch) and (seed, step), and the learning rate is a pure function of the
step. A checkpoint therefore needs only counters besides model and optimizer tensors, and a resumed
run, mid-epoch or not, replays exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import shutil
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import RunConfig, dump_config
from ..errors import ConfigError, TrainingError
from ..outputs import remove_stale_temps, write_json
from ..runs import MetricsLog, RunPaths, read_history
from ..tasks import get_task
from . import checkpoint, distributed
from .checkpoint import load_weights, open_run
from .evaluation import check_training_data, evaluate, evaluate_split
from .features import CachedFeatures, head_epochs
from .optim import lr_at, make_optimizer, match_state_layout
from .runtime import environment, make_runtime
from .state import EpochSums, LoopState, StopRequest, TrainResult, console, epoch_order, progress_bars, seeded


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
        self.created = False  # whether this process made the run folder (and may remove it if nothing was saved)
        cfg, run_dir, resume, restarted = open_run(cfg, run_dir, resume=resume, epochs=epochs, data_dir=data_dir)
        self.dist = distributed.init(device, cfg.train.dist_timeout_s)
        self.cfg = cfg
        self.run_dir = Path(self.dist.broadcast(str(run_dir)))
        self.paths = RunPaths(self.run_dir)
        self.task = get_task(cfg)
        self.rt = make_runtime(cfg, device, self.dist.local_rank)
        self.progress = progress and self.dist.main
        if hazard := distributed.restart_hazard():
            self.say(f"[yellow]warning[/]: {hazard}")
        torch.manual_seed(cfg.train.seed)

        if cfg.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("train.tensorboard needs the tensorboard package: pip install 'cnnlab[tensorboard]'")
        self.data = self.task.load_data(cfg, progress=self.progress)
        self.train_set, self.val_set = self.data["train"], self.data["val"]
        started = resume and (self.paths.last.exists() or self.paths.last.with_suffix(".prev").exists())
        self.net = self.task.build_model(cfg, init=not started).to(self.rt.device)
        check_training_data(self.data, self.net, self.cfg, warn=self.dist.main)  # a warning once, not per process
        if self.rt.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.model = self.net if self.dist.world == 1 else DistributedDataParallel(self.net)
        self.opt = make_optimizer(cfg, self.net)
        self.head_epochs, self.features = head_epochs(cfg, self.net), None  # checked before the run folder is made
        self.steps_per_epoch = math.ceil(len(self.train_set) / cfg.train.batch_size)
        self.task.prepare_training(cfg, self.train_set)

        self.state = LoopState()
        self.finished = False
        if resume and not started:
            # Stopped before its first checkpoint: start over in the same folder.
            self.log = MetricsLog(self.paths.metrics, truncate_at=0) if self.dist.main else None
            self.say(f"{self.run_dir} has no checkpoint yet: starting it from the beginning")
        elif resume:
            saved = checkpoint.load_latest(self.paths.last)
            load_weights(self.net, saved["model"], self.paths.last, cfg)
            self.opt.load_state_dict(saved["optim"])
            match_state_layout(self.opt)
            self.state = LoopState.from_dict(saved["state"])
            self.log = MetricsLog(self.paths.metrics, truncate_at=self.state.metrics_offset) if self.dist.main else None
        elif self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.created = True
            dump_config(cfg, self.paths.config)
            write_json(
                self.paths.env,
                {**environment(self.rt), "processes": self.dist.world, "torchrun_job": distributed.job_id()},
            )
            if self.task.skipped:
                write_json(self.paths.skipped, self.task.skipped)
                n = len(self.task.skipped)
                self.say(f"[yellow]skipped {n} unreadable files[/]: listed in {self.paths.skipped}")
            self.log = MetricsLog(self.paths.metrics)
        else:
            self.log = None
        if resume:
            self.extend(epochs)
            if self.dist.main:
                remove_stale_temps(self.run_dir)
                if epochs is not None or data_dir is not None:
                    dump_config(cfg, self.paths.config)  # what the run now trains with, for evaluate and reports
            if self.state.epoch < cfg.train.epochs:
                why = "torchrun restarted the job: " if restarted else ""
                self.say(f"{why}resuming {self.run_dir} at epoch {self.state.epoch + 1}, step {self.state.step}")
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.tb = None
        if cfg.train.tensorboard and self.dist.main:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events past the checkpoint, as the metrics log does, so a resume adds no duplicates.
            self.tb = SummaryWriter(self.run_dir / "tensorboard", purge_step=self.state.step + 1 if resume else None)

    def extend(self, epochs: int | None) -> None:
        """Resume with `epochs`: train to that many epochs in all (not fewer than are done)."""
        done, planned = self.state.epoch, self.cfg.train.epochs
        if epochs is None or epochs == planned:
            if done >= planned:
                self.say(
                    f"{self.run_dir} has finished its {planned} epochs: writing its evaluations and report again "
                    f"(pass --epochs N over {done} to train on)"
                )
            return
        least = max(1, done + (1 if self.state.batch else 0))  # an epoch under way is finished, not cut
        if epochs < least:
            raise ConfigError(
                f"--epochs {epochs}: {self.run_dir} has already trained {done} epochs; give {least} or more"
            )
        if self.cfg.optim.schedule != "constant" or self.cfg.optim.warmup_fraction:
            self.say(
                f"note: the {self.cfg.optim.schedule} learning-rate schedule is recomputed for {epochs} epochs "
                f"(planned: {planned}); from step {self.state.step} on the rate follows the new plan"
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
        self.state.metrics_offset = self.log.offset()
        checkpoint.save(
            self.paths.last,
            {"model": self.net.state_dict(), "optim": self.opt.state_dict(), "state": self.state.to_dict()},
            keep_previous=True,
        )

    def step(self, idx: torch.Tensor) -> tuple[float, int, int, float]:
        """One optimizer step on global batch `idx`; returns its summed loss, correct, predictions, lr."""
        cfg, rt, step = self.cfg, self.rt, self.state.step
        gen = seeded(cfg.train.seed, 2, step)
        seed = int(torch.randint(2**62, (1,), generator=gen))
        # Only the generators this run draws from: torch.manual_seed also seeds every other device
        # type's, which took 6% of a seed-a step (benchmarks/step_profile.py).
        torch.default_generator.manual_seed(seed)
        if rt.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        # The whole global batch is augmented on every process, then sharded: the same random draws as in
        # one process, so a run's result does not depend on how many processes computed it.
        model, head_only = self.model, self.state.epoch < self.head_epochs
        if head_only:  # the backbone does not learn yet: its cached features
            x, y, model = self.features.train_batch(idx, gen), self.train_set.y[idx], self.net.head
        else:
            x, y = self.task.train_inputs(self.train_set.x[idx], self.train_set.y[idx], cfg, gen, self.state.epoch)
        if self.dist.world > 1:
            mine = self.dist.shard(torch.arange(len(idx)))  # (the same shard of the features for a head step)
            x, y = x[mine], y[mine]
        x, y = x.to(rt.device), y.to(rt.device)
        if rt.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = lr_at(cfg, step, self.total_steps)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_share", 1.0)  # optimizer states saved before encoder_lr have none
        with rt.autocast():
            logits = model(x)
            loss = self.task.loss(logits.float(), y, cfg)
        # DDP averages gradients over processes; weighting each shard by its size makes that the mean
        # over the global batch even when the last batch does not split evenly.
        (loss * (len(y) * self.dist.world / len(idx))).backward()
        if head_only and self.dist.world > 1:  # the head alone, outside DDP: average as DDP would
            for p in self.net.head.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.dist.world
        if cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.optim.clip_grad, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        correct, count = self.task.batch_correct(logits.detach(), y)
        return loss.item() * len(y), correct, count, lr

    def run(self, max_steps: int | None = None, finish: bool = True) -> TrainResult:
        cfg, state = self.cfg, self.state
        stop = StopRequest()
        started = time.perf_counter() - state.elapsed_s
        last_save = time.perf_counter()
        self.say(
            f"[bold]{cfg.task}/{cfg.recipe}[/] {cfg.model.name}: {len(self.train_set)} train, {len(self.val_set)} val, "
            f"{cfg.train.epochs} epochs x {self.steps_per_epoch} steps, batch {cfg.train.batch_size}, "
            f"{self.rt.describe()['precision']}, {self.dist.world} process(es) x {self.rt.threads} threads -> "
            f"{self.run_dir}"
        )
        if state.epoch < min(self.head_epochs, cfg.train.epochs):  # inside train()'s cleanup: Ctrl-C leaves nothing
            self.features = CachedFeatures(self.net, self.task, self.data, self.rt, cfg, self.progress)
        with stop.installed(), progress_bars() if self.progress else contextlib.nullcontext() as bar:
            while state.epoch < cfg.train.epochs:
                epoch = state.epoch
                batches = epoch_order(cfg.train.seed, epoch, len(self.train_set)).split(cfg.train.batch_size)
                tid = (
                    bar.add_task(
                        f"epoch {epoch + 1}/{cfg.train.epochs}", total=len(batches), completed=state.batch, stats=""
                    )
                    if bar
                    else None
                )
                self.model.train()
                while state.batch < len(batches):
                    idx = batches[state.batch]
                    loss_sum, correct, count, lr = self.step(idx)
                    wants_stop = stop.requested or (max_steps is not None and state.step + 1 >= max_steps)
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
                            f"loss became {loss_v} at step {state.step} (epoch {epoch + 1}); {saved}; "
                            "try a lower optim.lr"
                        )
                    self.state.sums.add(loss_sum, len(idx), int(correct), int(count))
                    if self.tb:
                        for key, value in (("loss", loss_v), ("acc", correct / count), ("lr", lr)):
                            self.tb.add_scalar(f"batch/{key}", value, state.step + 1)
                    if self.log:
                        self.log.write(
                            {
                                "kind": "batch",
                                "epoch": epoch + 1,
                                "step": state.step + 1,
                                "loss": loss_v,
                                "acc": correct / count,
                                "lr": lr,
                            }
                        )
                    state.step += 1
                    state.batch += 1
                    if bar and (state.batch % 10 == 0 or state.batch == len(batches)):
                        bar.update(tid, completed=state.batch, stats=self.state.sums.line())
                    if stops or time.perf_counter() - last_save > cfg.train.checkpoint_every_s:
                        state.elapsed_s = time.perf_counter() - started
                        self.save_last()
                        last_save = time.perf_counter()
                    if stops:
                        self.say(
                            f"stopped at step {state.step} (epoch {epoch + 1}); checkpoint saved, "
                            f"continue with --resume {self.run_dir}"
                        )
                        if finish and self.dist.main:
                            self.finish_outputs(partial=True)
                        self.dist.barrier()
                        return self.result(completed=False, interrupted=stop.requested)
                if bar:
                    bar.remove_task(tid)
                self.end_epoch(epoch, started)
                last_save = time.perf_counter()
        if finish and self.dist.main:
            self.finish_outputs(partial=False)
        self.dist.barrier()
        return self.result(completed=True)

    def finish_outputs(self, partial: bool) -> None:
        """Figures of training and the final evaluations (not for a partial run); the caller writes the
        report from them (`api.train_config`): the loop knows nothing of pages."""
        if self.log:
            self.log.offset()  # flush, so the figures see every row
        history = read_history(self.run_dir)
        if self.cfg.explain.report != "none" and any(r["kind"] == "epoch" for r in history):
            self.task.report_training(self.run_dir, history, self.net, self.cfg)
        if not partial:
            evaluate(self.run_dir, split="val", device=str(self.rt.device), data=self.data)
            if self.cfg.train.test and len(self.data.get("test", [])):
                m = evaluate(self.run_dir, split="test", device=str(self.rt.device), data=self.data)
                self.say(f"[bold]test[/] (best checkpoint, {m['n']} images): {self.task.summary_line(m)}")
        self.finished = True

    def end_epoch(self, epoch: int, started: float) -> None:
        """Validate (main process only; the others wait), log, keep the best weights, checkpoint."""
        state = self.state
        if self.dist.main:
            if epoch < self.head_epochs:
                val = self.features.validate()
            else:
                val, _ = evaluate_split(self.net, self.task, self.val_set, self.rt, self.cfg, final=False)
            row = {
                "kind": "epoch",
                "epoch": epoch + 1,
                "step": state.step,
                "train_loss": self.state.sums.loss / self.state.sums.samples,
                "train_acc": self.state.sums.correct / self.state.sums.predictions,
                **{f"val_{k}": v for k, v in val.items()},
                "lr": lr_at(self.cfg, state.step - 1, self.total_steps),
                "time_s": time.perf_counter() - started,
            }
            self.log.write(row)
            if self.tb:
                for key, value in row.items():
                    if isinstance(value, float):
                        self.tb.add_scalar(f"epoch/{key}", value, state.step)
            primary = val[self.task.primary]
            improved = state.best is None or primary > state.best
            if improved:
                state.best, state.best_epoch = primary, epoch + 1
                checkpoint.save(
                    self.paths.best,
                    {"model": self.net.state_dict(), "state": {"epoch": epoch + 1, self.task.primary: primary}},
                )
            self.say(
                f"epoch {epoch + 1:>3}/{self.cfg.train.epochs}  train loss {row['train_loss']:.4f}  "
                f"| val {self.task.summary_line(val)}  {row['time_s']:.0f}s" + ("  [green]*best[/]" if improved else "")
            )
        self.dist.barrier()
        state.epoch, state.batch, state.elapsed_s = epoch + 1, 0, time.perf_counter() - started
        state.sums = EpochSums()
        self.save_last()

    def result(self, completed: bool, interrupted: bool = False) -> TrainResult:
        if self.log:
            self.log.close()
        if self.tb:
            self.tb.close()
        history = read_history(self.run_dir) if self.dist.main else []
        state = self.state
        return TrainResult(self.run_dir, completed, state.step, state.best, history, interrupted, self.finished)


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
    lost = False
    try:
        return trainer.run(max_steps, finish)
    except BaseException as e:
        trainer.discard_if_unsaved()
        if trainer.dist.world > 1 and isinstance(e, (torch.distributed.DistError, RuntimeError)):
            # gloo/nccl report a peer that died as a RuntimeError from the next collective. No orderly
            # shutdown with a lost peer: leave at once, so that torchrun sees this process fail promptly and
            # can start the next round (tests/test_two_hosts.py covers both orders that round can take).
            lost = True
            raise TrainingError(
                f"process {trainer.dist.rank}: lost the other processes of this job ({str(e).splitlines()[0][:160]}); "
                f"the last checkpoint is in {trainer.run_dir}; continue with --resume {trainer.run_dir}"
            ) from None
        raise
    finally:
        if trainer.dist.world > 1 and not lost:
            # A process group left to the interpreter's exit can abort it ("terminate called without an
            # active exception" from gloo's threads, seen in about 1 run in 15).
            distributed.shutdown()
