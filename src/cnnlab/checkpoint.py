"""Checkpoints: one safetensors file each, tensors plus JSON state in its header; never pickle.

A checkpoint is written to a temporary file, fsynced and renamed over the old one, so a crash leaves
either the old or the new file whole. The header carries a SHA-256 of the tensor bytes; a file that
fails it (or does not parse) is refused, and `load_latest` falls back to the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

FORMAT = "cnnlab-checkpoint/1"
_UMASK = os.umask(0)
os.umask(_UMASK)


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


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_write(path: Path, write, keep_previous: Path | None = None) -> None:
    """Call write(tmp_path), fsync it, then rename over `path` (same folder, so the rename is atomic).

    With `keep_previous`, the old `path` is moved there first, once the new file is safely on disk.
    A failed write (a full disk, say) leaves the old file untouched and raises CheckpointError.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should read like any other file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(
            f"{path}: cannot write ({e.strerror or e}); free disk space or fix permissions; the previous file "
            f"is unchanged"
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Save a nested state (tensors anywhere inside) as one verified safetensors file.

    `keep_previous` keeps the file it replaces as `<name>.prev`, for `load_latest` to fall back on.
    """
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "s", tensors)
    meta = {"format": FORMAT, "sha256": _digest(tensors), "state": json.dumps(tree)}
    previous = path.with_suffix(".prev") if keep_previous else None
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), previous)


def load(path: Path) -> dict[str, Any]:
    """Load and verify a checkpoint written by `save`; CheckpointError if missing, torn or foreign."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cnnlab checkpoint (format {meta.get('format')!r})")
    if _digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch, the checkpoint is corrupt")
    return _unflatten(json.loads(meta["state"]), tensors)


def load_latest(path: Path) -> dict[str, Any]:
    """Load `path`, or its `.prev` with a warning when `path` is missing or fails verification."""
    try:
        return load(path)
    except CheckpointError as first:
        prev = path.with_suffix(".prev")
        if not prev.is_file():
            raise
        warnings.warn(f"{first}; using the previous checkpoint {prev.name}", stacklevel=2)
        return load(prev)
