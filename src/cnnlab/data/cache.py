"""Decode a folder once: uint8 arrays in memory-mapped .npy files under the user cache.

The key is a hash of what decoding depends on (every file's path, size and modification time, the
target size and channels), so a changed, added or removed file makes a new entry. A second run maps
the arrays in seconds; a set larger than RAM trains from the map, the kernel paging rows in and out.

A cache is a convenience, never a reason to stop: an entry that is damaged on disk (cut short, bytes
changed, its index torn) fails its checksum, is said in one warning line and decoded again; a cache
folder that cannot be written (a file, no permission) is said once, and the set is decoded into memory.
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

from ..errors import CnnlabWarning

VERSION = 2  # of the layout and the decoding; a change here invalidates every entry (2: checksums)
_CHUNK = 8 << 20


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
    if cache:
        final = cache_root() / key
        found, damage = _entry(final, arrays)
        if found is not None:
            return found
        if damage is not None:
            warnings.warn(f"decoded-image cache {final}: {damage}; decoding again", CnnlabWarning, stacklevel=2)
            shutil.rmtree(final, ignore_errors=True)
        try:
            _build(final, key, count, arrays, fill, description, progress)
        except OSError as e:
            why = "a file, not a folder" if final.parent.exists() and not final.parent.is_dir() else e.strerror or e
            warnings.warn(
                f"decoded-image cache {final.parent}: cannot write ({why}); decoding into memory "
                "(set CNNLAB_CACHE_DIR to a folder you may write)", CnnlabWarning, stacklevel=2,
            )  # fmt: skip
        else:
            found, damage = _entry(final, arrays)
            if found is not None:
                return found
    held = {name: np.empty((count, *shape), dtype) for name, (shape, dtype) in arrays.items()}
    skipped = _fill(held, count, fill, description, progress)
    return {name: torch.from_numpy(a[: count - len(skipped)]) for name, a in held.items()}, skipped


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _entry(
    final: Path, arrays: dict[str, tuple[tuple[int, ...], np.dtype]]
) -> tuple[tuple[dict[str, torch.Tensor], list[int]] | None, str | None]:
    """The entry's tensors and skipped items, or None and what is damaged (None too if there is no entry).
    Every array is checked against the checksum written with it: damaged pixels are never trained on."""
    index = final / "done.json"
    try:
        if not index.is_file():
            return None, None
        done = json.loads(index.read_text())
        skipped, count, digests = [int(i) for i in done["skipped"]], int(done["count"]), done["digests"]
        out = {}
        for name, (shape, dtype) in arrays.items():
            path = final / f"{name}.npy"
            if _digest(path) != digests[name]:
                return None, f"{name}.npy does not match its checksum"
            tensor = _map(path)
            if tuple(tensor.shape) != (count, *shape) or tensor.numpy().dtype != np.dtype(dtype):
                return None, f"{name}.npy has the wrong shape"
            out[name] = tensor
        return (out, skipped), None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"unreadable ({type(e).__name__})"


def _build(
    final: Path, key: str, count: int, arrays: dict[str, tuple[tuple[int, ...], np.dtype]],
    fill: Callable[[int], dict[str, np.ndarray] | None], description: str, progress: bool,
) -> None:  # fmt: skip
    """Decode into a temporary folder, checksum each array, and rename it into place: an interrupted decode
    leaves nothing that looks done."""
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
        digests = {name: _digest(tmp / f"{name}.npy") for name in arrays}
        (tmp / "done.json").write_text(json.dumps({"count": row, "skipped": skipped, "digests": digests}))
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fill(
    out: dict[str, np.ndarray],
    count: int,
    fill: Callable[[int], dict[str, np.ndarray] | None],
    description: str,
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
