"""The user's own folders as tasks: facts learned from the data on the first run, then read from the config.

A new run fills `cfg.data` (classes, colours, channels, image size, normalisation) from the folder before
its config is written, so evaluate, predict, serve and export of that run know them without the data.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import RunConfig
from ..data import Rows, Split
from ..data import folders as fd
from ..data.splits import csv_groups, group_keys, group_split, stratified_group_split, stratified_split
from ..errors import DataError
from . import palette
from .classify import ClassifyTask
from .segment import SegmentTask


def _lazy(split: Split) -> Split:
    """Index the decoded arrays instead of copying them: subsets stay views of the map."""
    idx = torch.arange(len(split.y))
    return Split(Rows(split.x, idx), split.y if split.y.ndim == 1 else Rows(split.y, idx), split.names)


def _left_out(scans: dict[str, fd.Scan], data: dict[str, Split], name) -> list[str]:
    """The files skipped with data.skip_bad: those whose name (`name(path)`, as the split names them) is not
    in their decoded split. Not only the files whose header is unreadable: a truncated file fails later.
    A segmentation pair is listed under the file that is bad: its image, its mask or both."""
    out = []
    for k, scan in scans.items():
        kept = set(data[k].names)
        for i, p in enumerate(scan.files):
            if name(p) not in kept:
                out += [str(b) for b in fd.bad_files_of_pair(p, scan.masks[i])] if scan.masks else [str(p)]
    return out


class _FolderFacts:
    """Facts from `cfg.data` once known; `learn` sets them from the data on a new run."""

    skipped: list[str]

    def _read_facts(self, cfg: RunConfig) -> None:
        d = cfg.data
        self.name = cfg.task
        self.classes = tuple(d.classes or ())
        self.colors = tuple(d.colors or palette(len(self.classes)))
        self.channels = d.channels or 3
        self.mean, self.std = tuple(d.mean or ()), tuple(d.std or ())
        self.skipped = []
        # The folder's name, not its path: the server shows this to anyone who can reach it.
        self.data_description = f"the image folder {Path(d.dir).name}" if d.dir else "an image folder"

    def _learn(self, cfg: RunConfig, train: Split) -> None:
        d = cfg.data
        if d.mean is None or d.std is None:
            mean, std = fd.channel_stats(train.x)
            d.mean, d.std = d.mean or mean, d.std or std
        self._read_facts(cfg)


class FolderClassify(_FolderFacts, ClassifyTask):
    """DIR/train/<class>/*, optionally DIR/val/ and DIR/test/; or DIR/<class>/* alone."""

    groups_csv = True

    def __init__(self, cfg: RunConfig) -> None:
        self._read_facts(cfg)
        self.image_size = cfg.data.image_size

    def split_description(self, cfg: RunConfig) -> str:
        d = cfg.data
        by = f", whole groups by {d.group_key}" if d.group_key else ""
        carved = f"{d.val_fraction:.0%} of train (stratified{by})"
        val = "its val/ folder" if d.dir and (Path(d.dir) / "val").is_dir() else carved
        return f"{Path(d.dir or '.').name}: validation {val}, seed {cfg.train.seed}"

    def load_data(self, cfg: RunConfig, progress: bool = True) -> dict[str, Split]:
        d = cfg.data
        root = fd.existing(d.dir, fd.CLASS_LAYOUT)
        train_dir = fd.train_folder(root)
        scans = {"train": fd.scan_classes(train_dir, d.classes)}
        classes = d.classes or sorted({p.parent.name for p in scans["train"].files})
        if d.classes is None and len(set(scans["train"].labels)) < 2:
            raise DataError(f"{train_dir}: one class only; classification needs two or more")
        for name in ("val", "test"):
            if (root / name).is_dir():
                scans[name] = fd.scan_classes(root / name, classes)
        heads, _ = fd.survey([f for s in scans.values() for f in s.files], d.skip_bad)
        size = d.image_size or fd.default_size(heads, "classify")
        channels = d.channels or fd.detect_channels(heads)
        data = {
            k: _lazy(fd.load_classes(s, size, channels, skip_bad=d.skip_bad, cache=d.cache, progress=progress))
            for k, s in scans.items()
        }
        skipped = _left_out(scans, data, str)
        if "val" not in data:
            train = data["train"]
            if d.group_key:
                groups = (
                    csv_groups(root / "groups.csv", train.names, root)
                    if d.group_key == "csv"
                    else group_keys([Path(n).stem for n in train.names], d.group_key)
                )
                tr, va = stratified_group_split(train.targets, groups, d.val_fraction, cfg.train.seed)
            else:
                tr, va = stratified_split(train.targets, d.val_fraction, cfg.train.seed)
            data["train"], data["val"] = train.subset(tr), train.subset(va)
        if d.limit is not None:
            pick = torch.randperm(len(data["train"]), generator=torch.Generator().manual_seed(cfg.train.seed))
            data["train"] = data["train"].subset(pick[: d.limit].sort().values)
        d.classes, d.image_size, d.channels = list(classes), size, channels
        d.colors = d.colors or palette(len(classes))
        self._learn(cfg, data["train"])
        self.image_size = size
        self.skipped = skipped
        return data

    def load_external(self, folder: Path) -> Split:
        scan = fd.scan_classes(fd.existing(folder, fd.CLASS_LAYOUT), list(self.classes))
        fd.survey(scan.files, False)
        return fd.load_classes(scan, self.image_size, self.channels, skip_bad=False, cache=False, progress=True)


class FolderSegment(_FolderFacts, SegmentTask):
    """DIR/images/NAME.* + DIR/masks/NAME.png + DIR/classes.yaml, optionally DIR/val/ and DIR/test/."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self._read_facts(cfg)
        self.ignore_index = cfg.data.ignore_index

    def load_data(self, cfg: RunConfig, progress: bool = True) -> dict[str, Split]:
        d = cfg.data
        root = fd.existing(d.dir, fd.MASK_LAYOUT)
        info = fd.read_dataset_file(root)
        if d.classes is not None and d.classes != info.classes:
            raise DataError(f"{root}/classes.yaml: classes {info.classes} differ from this run's {d.classes}")
        if d.colors:
            info.colors = list(d.colors)
        info.ignore = d.ignore_index if d.ignore_index is not None else info.ignore
        scans = {"all": fd.scan_masks(root)}
        for name in ("val", "test"):
            if (root / name).is_dir():
                scans[name] = fd.scan_masks(root / name)
        heads, _ = fd.survey([f for s in scans.values() for f in s.files], d.skip_bad)
        shape, size = fd.segment_shape(heads, d.image_size)
        channels = d.channels or fd.detect_channels(heads)
        common = dict(skip_bad=d.skip_bad, cache=d.cache, progress=progress)
        data = {k: _lazy(fd.load_masks(s, shape, channels, info, **common)) for k, s in scans.items()}
        skipped = _left_out(scans, data, lambda p: p.stem)
        full = data.pop("all")
        d.group_key = d.group_key or info.group_key or "file"
        if "val" in data:
            data["train"] = full
            if "test" not in data:
                data["test"] = full.subset(torch.arange(0))
        else:
            groups = group_keys(full.names, d.group_key)
            test = 0.0 if "test" in data else d.test_fraction
            idx = group_split(groups, val_fraction=d.val_fraction, test_fraction=test, seed=cfg.train.seed)
            data |= {k: full.subset(v) for k, v in idx.items() if k != "test" or "test" not in data}
        if d.limit is not None:
            data["train"] = data["train"].subset(torch.arange(min(d.limit, len(data["train"]))))
        d.classes, d.channels, d.ignore_index = list(info.classes), channels, info.ignore
        d.image_size = size
        d.colors = [c or p for c, p in zip(info.colors, palette(len(info.classes)), strict=True)]
        d.mean, d.std = d.mean or info.mean, d.std or info.std
        self._learn(cfg, data["train"])
        self.ignore_index = info.ignore
        self.skipped = skipped
        return {k: data[k] for k in ("train", "val", "test")}

    def load_external(self, folder: Path) -> Split:
        info = fd.DatasetFile(list(self.classes), list(self.colors), self.ignore_index)
        scan = fd.scan_masks(fd.existing(folder, fd.MASK_LAYOUT))
        heads, _ = fd.survey(scan.files, False)
        shape, _ = fd.segment_shape(heads, None)
        return fd.load_masks(scan, shape, self.channels, info, skip_bad=False, cache=False, progress=True)
