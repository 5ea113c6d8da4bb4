"""The mini facade set, the built-in segmentation dataset: its facts and its folder of NAME.jpg + NAME.png."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import RunConfig
from ..data import Split
from ..data import facade as fdata
from ..data.splits import group_keys, group_split
from .segment import IMAGENET_MEAN, IMAGENET_STD, SegmentTask

GROUP_KEY = "index-mod:302"  # files i, i+302 and i+604 show one building


def _split(fs: fdata.FacadeSet, idx: torch.Tensor) -> Split:
    return Split(fs.images[idx], fs.labels[idx], [fs.names[i] for i in idx.tolist()])


class FacadeTask(SegmentTask):
    name = "facade"
    classes = fdata.CLASSES
    colors = tuple("#{:02X}{:02X}{:02X}".format(*c) for c in fdata.COLORS)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    channels = 3
    data_description = "CS194-26 mini facade set: 256x256 photos of facades with 5-class label maps"
    samples_in_data = True  # test photos of the held-out buildings

    def load_data(self, cfg: RunConfig, progress: bool = True) -> dict[str, Split]:
        d = cfg.data
        d.group_key = d.group_key or GROUP_KEY
        fs = fdata.load_folder(fdata.find_facade_dir(d.dir), progress=progress)
        groups = group_keys(fs.names, d.group_key)
        idx = group_split(groups, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=cfg.train.seed)
        if d.limit is not None:
            idx["train"] = idx["train"][: d.limit]
        return {k: _split(fs, v) for k, v in idx.items()}

    def load_external(self, folder: Path) -> Split:
        fs = fdata.load_folder(folder)
        return _split(fs, torch.arange(len(fs.names)))
