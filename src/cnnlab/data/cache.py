"""Decode a folder once: uint8 arrays in memory-mapped .npy files under the user cache.

The key is a hash of what decoding depends on (every file's path, size and modification time, the
target size and channels), so a changed, added or removed file makes a new entry. A second run maps
the arrays in seconds; a set larger than RAM trains from the map, the kernel paging rows in and out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

VERSION = 1  # of the layout and the decoding; a change here invalidates every entry


def cache_root() -> Path:
    """$CNNLAB_CACHE_DIR, else $XDG_CACHE_HOME/cnnlab/decoded (~/.cache/cnnlab/decoded)."""
    if os.environ.get("CNNLAB_CACHE_DIR"):
        return Path(os.environ["CNNLAB_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cnnlab" / "decoded"


def cache_key(files: Sequence[Path], **params: object) -> str:
    """A hash of the files (path, size, mtime) and the decoding parameters."""
    h = hashlib.sha256(json.dumps({"version": VERSION, **params}, sort_keys=True).encode())
    for path in files:
        try:
            st, where = path.stat(), path.resolve()
        except (OSError, RuntimeError):  # a link that leads nowhere (named as a bad file later): the link itself
            st, where = path.lstat(), Path(os.path.abspath(path))
        h.update(f"{where}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _map(path: Path) -> torch.Tensor:
    array = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        # Read-only on purpose: the map is shared with the page cache and other runs; nothing writes to it.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def decoded(
    key: str,
    count: int,
    arrays: dict[str, tuple[tuple[int, ...], np.dtype]],
    fill: Callable[[int], dict[str, np.ndarray] | None],
    *,
    description: str,
    progress: bool = True,
    cache: bool = True,
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The cached arrays of `key` as read-only tensors, decoding them first if need be.

    `arrays` gives each array's per-item shape and dtype; `fill(i)` decodes item i (None: skip it, and
    its row is left out). Returns the tensors and the indices of the skipped items. The entry is built
    in a temporary folder and renamed into place, so an interrupted decode leaves nothing that looks done.
    `cache=False` decodes into memory and writes nothing.
    """
    if not cache:
        held = {name: np.empty((count, *shape), dtype) for name, (shape, dtype) in arrays.items()}
        skipped = _fill(held, count, fill, description, progress)
        return {name: torch.from_numpy(a[: count - len(skipped)]) for name, a in held.items()}, skipped
    final = cache_root() / key
    if not (final / "done.json").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            maps = {
                name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=(count, *shape))
                for name, (shape, dtype) in arrays.items()
            }
            skipped = _fill(maps, count, fill, description, progress)
            row = count - len(skipped)
            for m in maps.values():
                m.flush()
            del maps
            if skipped:  # shrink to the rows decoded: rewrite the header's length in a copy
                for name in arrays:
                    kept = np.load(tmp / f"{name}.npy", mmap_mode="r")[:row]
                    np.save(tmp / f"{name}.part.npy", kept)
                    os.replace(tmp / f"{name}.part.npy", tmp / f"{name}.npy")
            (tmp / "done.json").write_text(json.dumps({"count": row, "skipped": skipped}))
            try:
                tmp.rename(final)
            except OSError:  # another process finished the same entry first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    skipped = json.loads((final / "done.json").read_text())["skipped"]
    return {name: _map(final / f"{name}.npy") for name in arrays}, skipped


def _fill(
    out: dict[str, np.ndarray], count: int, fill: Callable[[int], dict[str, np.ndarray] | None], description: str,
    progress: bool,
) -> list[int]:
    skipped, row = [], 0
    for i in track(range(count), description=description, disable=not progress, transient=True):
        items = fill(i)
        if items is None:
            skipped.append(i)
            continue
        for name, value in items.items():
            out[name][row] = value
        row += 1
    return skipped
