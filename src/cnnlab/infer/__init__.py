"""Inference on people's own files: predict (`predict.py`) and explain (`explain.py`) any model; what one kind
does with a photo lives in `classify.py` and `segment.py`. `handler` is the one place outside tasks/ that
picks code by a task's kind; everything else asks the task."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from types import ModuleType

import torch

from ..data.images import load_photo
from ..outputs import unique_stems
from ..tasks import Task


def handler(task: Task) -> ModuleType:
    """The module that handles people's files for the task's kind: `infer.classify` or `infer.segment`."""
    return import_module({"classify": ".classify", "segment": ".segment"}[task.kind], __name__)


def photos(task: Task, paths: list[Path]) -> Iterator[tuple[Path, str, torch.Tensor, list[str]]]:
    """(path, output stem, uint8 image, notes) of each file, decoded as the task's models see photos.

    Every file is read before the first is handed out, so a bad file late in a folder stops the command
    before anything is written; each is decoded again when its turn comes, since a folder of decoded
    photos held at once could take ~12 MB each. Inputs with the same name get distinct stems (NAME, NAME-2)."""
    lo, hi = task.photo_sides
    for path in paths:
        load_photo(path, mode=task.photo_mode, min_side=lo, max_side=hi)
    for path, stem in zip(paths, unique_stems(paths), strict=True):
        img, notes = load_photo(path, mode=task.photo_mode, min_side=lo, max_side=hi)
        yield path, stem, img, notes
