"""Datasets held in memory as uint8 tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Split:
    """Inputs as uint8 (N,C,H,W); targets as int64 (N,) class labels or uint8 (N,H,W) label maps."""

    x: torch.Tensor
    y: torch.Tensor
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> Split:
        return Split(self.x[idx], self.y[idx], [self.names[i] for i in idx.tolist()] if self.names else [])
