"""Datasets as uint8 tensors: in memory, or rows of a memory-mapped cache read batch by batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class Rows:
    """Some rows of a tensor (often a memory map of a whole folder), read only when indexed: a split of
    a set larger than RAM costs its index, not a copy. Indexes like a tensor along the first axis."""

    def __init__(self, base: torch.Tensor, index: torch.Tensor):
        self.base, self.index = base, index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.base.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, *rest = key
        rows = self.index[key]
        # Sorted reads walk the map forwards; the rows come back in the order asked for.
        if rows.ndim:
            order = rows.argsort()
            out = torch.empty((len(rows), *self.base.shape[1:]), dtype=self.base.dtype)
            out[order] = self.base[rows[order]]
        else:
            out = self.base[int(rows)]
        return out[(slice(None), *rest)] if rows.ndim else out[tuple(rest)]

    def subset(self, idx: torch.Tensor) -> Rows:
        return Rows(self.base, self.index[idx])

    def materialize(self) -> torch.Tensor:
        return self[:]


Images = torch.Tensor | Rows


@dataclass
class Split:
    """Inputs as uint8 (N,C,H,W); targets as int64 (N,) class labels or uint8 (N,H,W) label maps.
    Either may be `Rows` of a memory map; `targets` is always a tensor in memory."""

    x: Images
    y: Images
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def targets(self) -> torch.Tensor:
        return self.y.materialize() if isinstance(self.y, Rows) else self.y

    def subset(self, idx: torch.Tensor) -> Split:
        names = [self.names[i] for i in idx.tolist()] if self.names else []
        return Split(_take(self.x, idx), _take(self.y, idx), names)


def _take(data: Images, idx: torch.Tensor) -> Images:
    if isinstance(data, Rows):
        return data.subset(idx)
    return data[idx]
