"""Where cnnlab writes. Every command checks its output paths here before it does any work, so a path
it cannot use is one line at the start, not a traceback after an hour of training.

Writing itself goes through `atomic_write` (temporary file, fsync, rename); JSON files
(metrics, evaluations, figure data) through `write_json`.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError

from .errors import CheckpointError, CnnlabError

# atomic_write's temporary names: mkstemp's 8 random characters between our prefix and suffix.
_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(CnnlabError):
    """An output path cannot be written: a file where a folder must be, or no permission."""


def _check_ancestors(path: Path, option: str) -> None:
    for parent in path.parents:
        if parent.is_dir():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{option} {path}: cannot write in {parent} (permission denied); choose another path")
            return
        if parent.exists() or parent.is_symlink():
            raise OutputError(f"{option} {path}: {parent} is a file, not a folder; choose another path")


def check_dir(path: str | Path, option: str) -> Path:
    """`path` is a folder cnnlab may create or write into; OutputError (one line naming `option`) if not."""
    path = Path(path)
    _check_name(path, option)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a folder; give a folder (it is created if missing)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {path}: cannot write in this folder (permission denied); choose another")
        return path
    _check_ancestors(path, option)
    return path


def check_file(path: str | Path, option: str, example: str = "out") -> Path:
    """`path` is a file cnnlab may create or replace; OutputError (one line naming `option`) if not.
    `example` is a file name to suggest inside a folder given by mistake."""
    path = Path(path)
    _check_name(path, option)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file name, e.g. {path / example}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path}: the file is read-only; choose another name")
    _check_ancestors(path, option)
    return path


NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, APFS)
# A stem leaves room for the longest suffix cnnlab adds ("_side_by_side.jpg", "_<class>_explain.json") and
# atomic_write's temporary name (".NAME.XXXXXXXX.tmp", 14 bytes more).
MAX_STEM_BYTES = 160
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _fit(stem: str) -> str:
    """`stem` without control characters (a newline would break the one-line messages that name it) and cut
    to MAX_STEM_BYTES of UTF-8, marked with "~" where it was cut."""
    stem = _CONTROL.sub("_", stem)
    raw = stem.encode()
    if len(raw) <= MAX_STEM_BYTES:
        return stem
    return raw[: MAX_STEM_BYTES - 1].decode(errors="ignore") + "~"


def unique_stems(paths: Sequence[str | Path]) -> list[str]:
    """Output name stems for input files, one per input, never two alike: `a/IMG_1.jpg` and
    `b/IMG_1.jpg` become `IMG_1` and `IMG_1-2`, so one input's outputs never replace another's. Every
    stem fits a file name with cnnlab's suffixes (`_fit`), so no command fails on a name after its work."""
    taken: set[str] = set()
    stems = []
    for p in paths:
        stem, n = _fit(Path(p).stem), 1
        while (stem if n == 1 else f"{stem}-{n}").lower() in taken:  # case-insensitive file systems too
            n += 1
        stem = stem if n == 1 else f"{stem}-{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def suffix_slug(text: str, limit: int = 40) -> str:
    """`text` (a class name) as part of a file name: runs of anything but letters, digits, '.', '-' and '_'
    become '-', at most `limit` characters."""
    return re.sub(r"[^\w.-]+", "-", text).strip("-")[:limit] or "class"


def _check_name(path: Path, option: str) -> None:
    if len(path.name.encode()) > NAME_MAX - 14:  # atomic_write's temporary name is 14 bytes longer
        raise OutputError(
            f"{option} {excerpt_path(path)}: the name is {len(path.name.encode())} bytes, over the "
            f"{NAME_MAX - 14} a file name can take here; choose a shorter one"
        )


def excerpt_path(path: Path, limit: int = 80) -> str:
    """A path for a message, its name cut to `limit` characters."""
    name = path.name if len(path.name) <= limit else path.name[: limit - 3] + "..."
    return str(path.with_name(name)) if path.name else str(path)


T = TypeVar("T")


def progress_over(items: Iterable[T], description: str, show: bool, total: int | None = None) -> Iterable[T]:
    """`items` (`total` of them, default their len), with a progress bar on stderr while there are several
    and `show` is on. On stderr, so that stdout stays a clean answer (--json) for scripts; transient, so
    the log keeps only the results."""
    from rich.console import Console
    from rich.progress import track

    total = len(items) if total is None else total  # type: ignore[arg-type]
    disable = not show or total < 2
    return track(
        items, total=total, description=description, disable=disable, transient=True, console=Console(stderr=True)
    )


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        obj = obj.tolist()
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    return obj


def json_bytes(obj: Any) -> bytes:
    """`obj` as indented JSON (tensors and arrays as lists, non-finite floats as null)."""
    return json.dumps(_to_jsonable(obj), indent=1).encode()


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON to `path`, atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(json_bytes(obj)))


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
