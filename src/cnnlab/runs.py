"""The run folder: what a run writes where (one folder per run), and reading it back.

config.yaml, environment.json, metrics.jsonl, checkpoints/{last,best}.safetensors,
eval_<split>.json, figures/, report.html, and skipped.json (files left out with data.skip_bad)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .config import RunConfig, config_from_dict, yaml_problem
from .distributed import is_restart_of
from .errors import CheckpointError, ConfigError
from .outputs import check_dir
from .tasks import get_task


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
    skipped = property(lambda self: self.root / "skipped.json")


def open_run(
    cfg: RunConfig | None, run_dir: Path | None, *, resume: bool, epochs: int | None, data_dir: str | Path | None
) -> tuple[RunConfig, Path, bool, bool]:
    """The configuration and folder of a run about to train: a new one (`cfg` into `run_dir`, which must
    not hold a run), or the one in `run_dir` when resuming or when torchrun restarts the job that made it.
    Returns (config, folder, resuming, restarted by torchrun)."""
    env = RunPaths(run_dir).env if run_dir is not None else None
    restarted = not resume and env is not None and env.is_file() and is_restart_of(json.loads(env.read_text()))
    if restarted:
        # torchrun --max-restarts restarted this job after a failure, with the same command: continue the
        # run from its last checkpoint (every process reads the same folder: a shared filesystem).
        resume = True
    if resume:
        if run_dir is None:
            raise CheckpointError("--resume needs a run folder")
        cfg = load_run_config(run_dir)
        if data_dir is not None:
            cfg.data.dir = str(Path(data_dir).expanduser().absolute())
        return cfg, run_dir, True, restarted
    if epochs is not None or data_dir is not None:
        raise ConfigError("epochs and data_dir are for resuming; set them in the configuration of a new run")
    run_dir = check_dir(run_dir or default_run_dir(cfg), "--out")
    if RunPaths(run_dir).config.exists():
        raise CheckpointError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out folder")
    if cfg.data.dir is not None:
        # Stored absolute: resume and evaluate run from any working folder.
        cfg.data.dir = str(Path(cfg.data.dir).expanduser().absolute())
    return cfg, run_dir, False, False


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


def load_model(run_dir: Path, which: str = "best", device: str = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """The network of a run folder (its `which` checkpoint: best or last) in eval mode, and its configuration."""
    if which not in ("best", "last"):
        raise ConfigError(f"checkpoint {which!r}: choose best or last")
    cfg = load_run_config(run_dir)
    paths = RunPaths(Path(run_dir))
    model = get_task(cfg).build_model(cfg)
    path = paths.best if which == "best" else paths.last
    load_weights(model, checkpoint.load_latest(path)["model"], path, cfg)
    return model.to(device).eval(), cfg


def read_eval(run_dir: Path, split: str) -> dict[str, Any] | None:
    path = Path(run_dir) / f"eval_{split}.json"
    return json.loads(path.read_text()) if path.is_file() else None
