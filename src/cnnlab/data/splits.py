"""Train, validation and test splits: stratified by class (classification) or by group, so that files of one
scene (the views of one building) never sit on both sides of a split."""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..errors import ConfigError, DataError


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
