"""The training loop's state and its small helpers: counters saved in every checkpoint, the seeded
generators of each epoch's order and each step's draws, the epoch's running sums, the stop request of
Ctrl-C / SIGTERM, the progress bars and the result of a run."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)


def seeded(*parts: int) -> torch.Generator:
    """A generator seeded by a tuple of integers, e.g. (seed, 2, step) for a step's random draws."""
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + p) % (2**63)
    return torch.Generator().manual_seed(seed)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the `n` training images in `epoch`: the same in every process and on every resume."""
    return torch.randperm(n, generator=seeded(seed, 1, epoch))


@dataclass
class EpochSums:
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


class StopRequest:
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
class LoopState:
    """Where the loop is: all a checkpoint needs besides the model and optimizer tensors (saved as JSON)."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches finished in the epoch under way
    step: int = 0  # optimizer steps in all
    best: float | None = None  # the best validation value of the task's primary metric so far
    best_epoch: int | None = None
    elapsed_s: float = 0.0
    sums: EpochSums = field(default_factory=EpochSums)  # of the epoch under way
    metrics_offset: int = 0  # bytes of metrics.jsonl that belong to this state

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> LoopState:
        return cls(**{**saved, "sums": EpochSums(**saved["sums"])})


@dataclass
class TrainResult:
    run_dir: Path
    completed: bool
    step: int
    best: float | None
    history: list[dict[str, Any]]
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM (not by max_steps)
    finished: bool = False  # this process wrote the end-of-run outputs (training figures, evaluations)


def progress_bars() -> Progress:
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
