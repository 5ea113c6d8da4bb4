"""What duplicates do to a split: how many validation images a random split would leak, and the
`data.group_key` rule that keeps every group of duplicates on one side, if one exists."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import torch

from ..data.splits import group_keys, stratified_split
from ..errors import CnnlabError

KEEPS = 0.95  # share of duplicate pairs a rule must keep together to be suggested
MIN_GROUPS = 10  # a rule that makes fewer groups leaves too few to split by
_NUMBER = re.compile(r"(\d+)$")
_REGEXES = (r"regex:^(.+?)[_\- ]?\d+$", r"regex:^([^_\- ]+)[_\- ]", r"regex:^(.+)[_\- ][^_\- ]+$")


def _candidates(stems: list[str], pairs: list[tuple[int, int]]) -> list[str]:
    """index-mod:N for the most common distances between the numbers of paired files (and their greatest
    common divisor: views i, i+302 and i+604 share 302), then a few name patterns."""
    numbers = [int(m.group(1)) if (m := _NUMBER.search(s)) else None for s in stems]
    gaps = Counter(abs(numbers[i] - numbers[j]) for i, j in pairs if numbers[i] is not None and numbers[j] is not None)
    common = [g for g, _ in gaps.most_common(3) if g > 0]
    mods = dict.fromkeys(common + ([math.gcd(*common)] if len(common) > 1 else []))
    return [f"index-mod:{m}" for m in mods if m > 1] + list(_REGEXES)


def suggest_rule(names: list[str], pairs: list[tuple[int, int]]) -> dict | None:
    """The finest group spec that keeps at least KEEPS of the duplicate `pairs` in one group, as
    {"rule", "keeps" (share of pairs), "groups" (distinct keys)}; None when no candidate does."""
    if not pairs:
        return None
    stems = [Path(n).stem for n in names]
    best = None
    for spec in _candidates(stems, pairs):
        try:
            keys = group_keys(stems, spec)
        except CnnlabError:  # the pattern does not fit every name
            continue
        kept = sum(keys[i] == keys[j] for i, j in pairs) / len(pairs)
        groups = len(set(keys))
        if (
            kept >= KEEPS
            and groups >= MIN_GROUPS
            and (best is None or (kept, groups) > (best["keeps"], best["groups"]))
        ):
            best = {"rule": spec, "keeps": kept, "groups": groups}
    return best


def random_split_leak(
    n: int, pairs: list[tuple[int, int]], labels: torch.Tensor | None, val_fraction: float, seed: int
) -> dict:
    """How many validation images have a duplicate in training under a random split of the pooled images
    (stratified by class where there are labels), as cnnlab carves one without `data.group_key`."""
    if labels is not None:
        train, val = stratified_split(labels, val_fraction, seed)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        k = round(n * val_fraction)
        train, val = order[k:], order[:k]
    in_val = torch.zeros(n, dtype=torch.bool)
    in_val[val] = True
    leaked = {b for i, j in pairs for a, b in ((i, j), (j, i)) if in_val[b] and not in_val[a]}
    return {
        "val_images": len(val),
        "leaked": len(leaked),
        "val_fraction": val_fraction,
        "seed": seed,
        "of": len(train) + len(val),
    }
