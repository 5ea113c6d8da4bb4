"""Checkpoints: one safetensors file each, tensors plus JSON state in its header; never pickle.

A checkpoint is written to a temporary file, fsynced and renamed over the old one, so a crash leaves
either the old or the new file whole. The header carries a SHA-256 of the format, the JSON state and
the tensors; a file that fails it (or does not parse) is refused, and `load_latest` falls back to the
previous good one.

Also a run's weights as a model (`load_model`, `load_weights`) and the folder a training opens or resumes
(`open_run`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as serialize

from ..config import RunConfig
from ..errors import CheckpointError, CnnlabWarning, ConfigError
from ..outputs import _one_line, atomic_write, check_dir
from ..runs import RunPaths, default_run_dir, load_run_config, read_json
from ..tasks import get_task
from .distributed import is_restart_of

FORMAT = "cnnlab-checkpoint/2"
# Format 1 hashed the tensors only; the shipped pretrained models are in it, so it still loads.
FORMAT_1 = "cnnlab-checkpoint/1"


class _Damaged(Exception):
    """A checkpoint file that is missing or fails to read or verify; the message says why."""


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors by references into `tensors`; keep dict key types (optimizer state uses ints)."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _raw(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _digest(state: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the format, the JSON state and each tensor's name, dtype, shape and bytes."""
    # The JSON prefix fixes every tensor's length, so no two checkpoints hash the same bytes.
    layout = [[key, str(t.dtype), list(t.shape)] for key, t in sorted(tensors.items())]
    h = hashlib.sha256(json.dumps([FORMAT, state, layout]).encode())
    for key in sorted(tensors):
        h.update(_raw(tensors[key]))
    return h.hexdigest()


def _digest_1(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(_raw(tensors[key]))
    return h.hexdigest()


def save(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Save a nested state (tensors anywhere inside) as one verified safetensors file.

    `keep_previous` keeps the file it replaces as `<name>.prev`, for `load_latest` to fall back on,
    unless that file fails verification: then it is overwritten and the existing `.prev` stays.
    """
    tensors: dict[str, torch.Tensor] = {}
    state_json = json.dumps(_flatten(state, "s", tensors))
    meta = {"format": FORMAT, "sha256": _digest(state_json, tensors), "state": state_json}
    previous = path.with_suffix(".prev") if keep_previous else None
    if previous is not None and path.exists() and not _verifies(path):
        # This is the file load_latest just fell back from: rotating it would replace the good .prev.
        previous = None
    # Bytes written by us, not save_file: that writes a temporary file of its own (left behind by a
    # kill -9, under a name remove_stale_temps does not know) and renames it over ours.
    data = serialize(tensors, metadata=meta)
    atomic_write(path, lambda tmp: tmp.write_bytes(data), previous)


def _read(path: Path) -> dict[str, Any]:
    """Load and verify one checkpoint; `_Damaged` says why it cannot be used."""
    if not path.is_file():
        raise _Damaged("missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _Damaged(f"unreadable or truncated checkpoint ({_one_line(e)})") from None
    fmt = meta.get("format")
    if fmt == FORMAT:
        expected = _digest(meta.get("state", ""), tensors)
    elif fmt == FORMAT_1:
        expected = _digest_1(tensors)
    else:
        raise _Damaged(f"not a cnnlab checkpoint (format {fmt!r})")
    if meta.get("sha256") != expected:
        raise _Damaged("checksum mismatch, the checkpoint is corrupt")
    try:
        state = _unflatten(json.loads(meta["state"]), tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise _Damaged(f"malformed state in the header ({type(e).__name__}: {_one_line(e)})") from None
    if not isinstance(state, dict):
        raise _Damaged(f"malformed state in the header (a {type(state).__name__}, not a dict)")
    return state


def _verifies(path: Path) -> bool:
    try:
        _read(path)
    except _Damaged:
        return False
    return True


def load(path: Path) -> dict[str, Any]:
    """Load and verify a checkpoint written by `save`; CheckpointError if missing, torn or foreign."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path, or train until the run saves one")
    try:
        return _read(path)
    except _Damaged as e:
        raise CheckpointError(f"{path}: {e}; restore it from a backup or train again") from None


def load_latest(path: Path) -> dict[str, Any]:
    """Load `path`, or its `.prev` with a CnnlabWarning when `path` is missing or fails verification.

    CheckpointError when both fail, or when `path` fails and there is no `.prev`.
    """
    prev = path.with_suffix(".prev")
    if not prev.is_file():
        return load(path)
    try:
        return _read(path)
    except _Damaged as e:
        problem = str(e)
    try:
        saved = _read(prev)
    except _Damaged as e:
        raise CheckpointError(
            f"{path}: {problem}, and {prev.name}: {e}; both checkpoints are damaged: restart the run with a "
            "new --out, or restore the files from a backup"
        ) from None
    warnings.warn(f"{path}: {problem}; using the previous checkpoint {prev.name}", CnnlabWarning, stacklevel=2)
    return saved


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


def load_model(run_dir: Path, which: str = "best", device: str = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """The network of a run folder (its `which` checkpoint: best or last) in eval mode, and its configuration."""
    if which not in ("best", "last"):
        raise ConfigError(f"checkpoint {which!r}: choose best or last")
    cfg = load_run_config(run_dir)
    paths = RunPaths(Path(run_dir))
    model = get_task(cfg).build_model(cfg)
    path = paths.best if which == "best" else paths.last
    load_weights(model, load_latest(path)["model"], path, cfg)
    return model.to(device).eval(), cfg


def open_run(
    cfg: RunConfig | None, run_dir: Path | None, *, resume: bool, epochs: int | None, data_dir: str | Path | None
) -> tuple[RunConfig, Path, bool, bool]:
    """The configuration and folder of a run about to train: a new one (`cfg` into `run_dir`, which must
    not hold a run), or the one in `run_dir` when resuming or when torchrun restarts the job that made it.
    Returns (config, folder, resuming, restarted by torchrun). Paths are kept normalised (`main/../flat`
    is `flat`), as every message prints them."""
    run_dir = Path(os.path.normpath(run_dir)) if run_dir is not None else None
    env = RunPaths(run_dir).env if run_dir is not None else None
    restarted = not resume and env is not None and env.is_file() and is_restart_of(read_json(env))
    if restarted:
        # torchrun --max-restarts restarted this job after a failure, with the same command: continue the
        # run from its last checkpoint (every process reads the same folder: a shared filesystem).
        resume = True
    if resume:
        if run_dir is None:
            raise CheckpointError("--resume needs a run folder")
        cfg = load_run_config(run_dir)
        if data_dir is not None:
            cfg.data.dir = os.path.abspath(Path(data_dir).expanduser())
        return cfg, run_dir, True, restarted
    if epochs is not None or data_dir is not None:
        raise ConfigError("epochs and data_dir are for resuming; set them in the configuration of a new run")
    run_dir = check_dir(run_dir or default_run_dir(cfg), "--out")
    if RunPaths(run_dir).config.exists():
        raise CheckpointError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out folder")
    if cfg.data.dir is not None:
        # Stored absolute: resume and evaluate run from any working folder.
        cfg.data.dir = os.path.abspath(Path(cfg.data.dir).expanduser())
    return cfg, run_dir, False, False
