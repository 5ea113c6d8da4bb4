"""Train, validation and test splits: stratified by class (classification) or by group, so that files of one
scene (the views of one building) never sit on both sides of a split."""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from . import Images


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) with `fraction` of every class in val, chosen by a seeded shuffle."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    train, val = [], []
    for c in labels.unique():
        members = order[labels[order] == c]
        k = round(len(members) * fraction)
        val.append(members[:k])
        train.append(members[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def stratified_group_split(
    labels: torch.Tensor, groups: list[int], fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): whole groups in val, `fraction` of each class's groups (a group counts for
    its most common class), chosen by a seeded shuffle: stratified as `stratified_split`, without a scene
    on both sides."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    distinct = sorted(members)
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    label_of = labels.tolist()
    major = {g: Counter(label_of[i] for i in members[g]).most_common(1)[0][0] for g in distinct}
    held: set[int] = set()
    for c in sorted(set(major.values())):
        of_class = [distinct[i] for i in order if major[distinct[i]] == c]
        held.update(of_class[: round(len(of_class) * fraction)])
    val = [i for i, g in enumerate(groups) if g in held]
    if not val or len(val) == len(groups):
        raise DataError(
            f"split of {len(distinct)} groups: too few to hold out {fraction:.0%} of each class's groups for "
            "validation; use more data, another val_fraction, a finer group spec or a val/ folder"
        )
    train = [i for i, g in enumerate(groups) if g not in held]
    return torch.tensor(train, dtype=torch.int64), torch.tensor(val, dtype=torch.int64)


CHUNK = 512  # images hashed at a time: a folder's memory map is read a slice at once, never whole


def digests(x: Images) -> list[bytes]:
    """A 16-byte hash of each image's decoded pixels: equal hashes, the same pixels."""
    out = []
    for start in range(0, len(x), CHUNK):
        rows = x[start : start + CHUNK].numpy()
        out += [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]
    return out


def exact_copies(train: Images, val: Images) -> int:
    """How many of `val`'s images have an exact copy (the same pixels) among `train`'s."""
    seen = set(digests(train))
    return sum(d in seen for d in digests(val))


def group_keys(names: list[str], spec: str) -> list[int]:
    """Group number of each file stem, so that views of one building can be kept together.

    spec: "index-mod:N" (trailing number of the name, mod N), "file" (every file its own group) or
    "regex:PATTERN" (the first capture group of PATTERN searched in the name).
    """
    if spec == "file":
        return list(range(len(names)))
    if spec.startswith("index-mod:"):
        modulus = spec.removeprefix("index-mod:")
        if not modulus.isdigit() or int(modulus) == 0:
            raise ConfigError(f"group spec {spec!r}: N must be a positive integer; write e.g. index-mod:302")
        pattern, modulus = re.compile(r"(\d+)$"), int(modulus)
    elif spec.startswith("regex:"):
        try:
            pattern = re.compile(spec.removeprefix("regex:"))
        except re.error as e:
            raise ConfigError(f"group spec {spec!r}: bad regular expression ({e}); fix the pattern") from e
        if pattern.groups < 1:
            raise ConfigError(f"group spec {spec!r}: pattern has no capture group; put the key in (...)")
        modulus = None
    else:
        raise ConfigError(f"group spec {spec!r}: unknown; use index-mod:N, file or regex:PATTERN")
    keys = []
    for name in names:
        match = pattern.search(name)
        if match is None or match.group(1) is None:
            raise DataError(
                f"{name}: file name does not match group spec {spec!r}; use a spec that fits every name, or 'file'"
            )
        keys.append(match.group(1))
    if modulus is not None:
        return [int(key) % modulus for key in keys]
    ids: dict[str, int] = {}
    return [ids.setdefault(key, len(ids)) for key in keys]


def csv_groups(path: Path, files: list[str], root: Path) -> list[int]:
    """Group number of each of `files` from a CSV of `file,group` rows (a header row `file,group` is
    allowed): `file` is a path relative to `root`, or a bare file name where that names one file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; data.group_key csv reads DIR/groups.csv of file,group rows") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}); write UTF-8 text, file,group per line") from None
    if rows and [c.strip().lower() for c in rows[0]] == ["file", "group"]:
        rows = rows[1:]
    if (bad := next((i for i, r in enumerate(rows) if len(r) != 2), None)) is not None:
        raise DataError(f"{path}: row {bad + 1} has {len(rows[bad])} fields; write file,group per line")
    groups = {r[0].strip().replace("\\", "/"): r[1].strip() for r in rows}
    names = Counter(Path(k).name for k in groups)
    ids: dict[str, int] = {}
    out = []
    for file in files:
        rel = Path(file).resolve().relative_to(root.resolve()).as_posix()
        train_rel = rel.removeprefix("train/")
        key = next((k for k in (rel, train_rel) if k in groups), None)
        if key is None and names[Path(file).name] == 1:
            key = next(k for k in groups if Path(k).name == Path(file).name)
        if key is None:
            raise DataError(f"{path}: no row for {train_rel}; give every training image a group")
        out.append(ids.setdefault(groups[key], len(ids)))
    return out


def group_split(groups: list[int], *, val_fraction: float, test_fraction: float, seed: int) -> dict[str, Tensor]:
    """Indices (int64) of "train", "val" and "test" files; every group falls in exactly one split.

    The distinct groups are shuffled with `seed`; val and test get round(fraction * groups) groups each.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val fraction {val_fraction} + test fraction {test_fraction}: each must be >= 0 "
            "and together < 1; lower them"
        )
    distinct = sorted(set(groups))
    n_val, n_test = (math.floor(f * len(distinct) + 0.5) for f in (val_fraction, test_fraction))
    too_few = (val_fraction > 0 and n_val == 0) or (test_fraction > 0 and n_test == 0)
    if too_few or n_val + n_test >= len(distinct):
        raise DataError(
            f"split of {len(distinct)} groups: too few for val {val_fraction} and test {test_fraction} "
            "with a non-empty train split; use more data, other fractions or a finer group spec"
        )
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    split_of_group = {distinct[i]: "test" for i in order[:n_test]}
    split_of_group |= {distinct[i]: "val" for i in order[n_test : n_test + n_val]}
    file_split = [split_of_group.get(g, "train") for g in groups]
    return {
        split: torch.tensor([i for i, s in enumerate(file_split) if s == split], dtype=torch.int64)
        for split in ("train", "val", "test")
    }
