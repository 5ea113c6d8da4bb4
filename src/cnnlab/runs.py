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

from .config import RunConfig, config_from_dict
from .errors import CheckpointError
from .yaml_input import load_yaml, yaml_problem


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
        data = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(
            f"{path}: the run's configuration is damaged ({yaml_problem(e)}); restore the file as training wrote it"
        ) from None
    return config_from_dict(data, str(path))


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


def read_json(path: Path) -> Any:
    """A JSON file the run wrote; CheckpointError naming it if it is unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e}); delete it or write it again") from None


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl ([] before the first). A torn last line (a training still writing it, or
    killed while it did) is left out; a damaged line before it is a CheckpointError."""
    path = RunPaths(Path(run_dir)).metrics
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); the metrics log is damaged") from None
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise CheckpointError(f"{path}: line {i + 1} is not JSON; the metrics log is corrupt") from None
    return rows


def eval_path(run_dir: Path, split: str) -> Path:
    """Where a run's evaluation of `split` lives."""
    return Path(run_dir) / f"eval_{split}.json"


def read_eval(run_dir: Path, split: str) -> dict[str, Any] | None:
    """eval_<split>.json of a run: None if the split was not evaluated, CheckpointError if it is damaged."""
    path = eval_path(run_dir, split)
    return read_json(path) if path.is_file() else None
