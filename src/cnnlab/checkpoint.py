"""Checkpoints: one safetensors file each, tensors plus JSON state in its header; never pickle.

A checkpoint is written to a temporary file, fsynced and renamed over the old one, so a crash leaves
either the old or the new file whole. The header carries a SHA-256 of the format, the JSON state and
the tensors; a file that fails it (or does not parse) is refused, and `load_latest` falls back to the
previous good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as serialize

from .errors import CheckpointError, CnnlabWarning

FORMAT = "cnnlab-checkpoint/2"
# Format 1 hashed the tensors only; the shipped pretrained models are in it, so it still loads.
FORMAT_1 = "cnnlab-checkpoint/1"
# atomic_write's temporary names: mkstemp's 8 random characters between our prefix and suffix.
_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
_UMASK = os.umask(0)
os.umask(_UMASK)


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


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def atomic_write(path: Path, write: Callable[[Path], Any], keep_previous: Path | None = None) -> None:
    """Call write(tmp_path), fsync it, then rename over `path` (same folder, so the rename is atomic).

    With `keep_previous`, the old `path` is moved there first, once the new file is safely on disk.
    A failed write (a full disk, say) leaves the old file untouched, removes the temporary file and
    raises CheckpointError; other exceptions from `write` pass through, also without a temporary file.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should read like any other file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _one_line(e)
        raise CheckpointError(
            f"{path}: cannot write ({reason}); free disk space or fix permissions; the previous file is unchanged"
        ) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(folder: Path) -> int:
    """Remove the temporary files that killed `atomic_write` calls left in `folder` and below; return how many.

    Only names made by `atomic_write` (`.NAME.XXXXXXXX.tmp`) are touched, never other files. Call it
    only while no other process writes into `folder`.
    """
    removed = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent, name)
            if _TEMP.fullmatch(name) and path.is_file() and not path.is_symlink():
                try:
                    path.unlink()
                    removed += 1
                except OSError:
                    pass  # a leftover that cannot be removed is harmless; it must not stop a resume
    return removed


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
