"""Training a head on a frozen backbone's cached features: a linear probe in seconds.

While the backbone does not learn (`model.freeze: backbone`, or the first `train.head_epochs` of a
fine-tuning run), every epoch would compute the same features again. They are computed once per image
(and per mirror image, with `augment.hflip`), stored memory-mapped beside the decoded-image cache and
keyed by the backbone's weights, its input side and precision, and the images' bytes; the head then
trains on rows of that table. A second run on the same folder reads them in a second.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..data import Images, Split
from ..data.cache import decoded
from ..errors import ConfigError
from ..tasks import Task
from .runtime import Runtime

BATCH = 64
VERSION = 1  # of what a row holds; a change here makes new entries


def head_epochs(cfg: RunConfig, net: torch.nn.Module) -> int:
    """How many epochs train the head alone on cached features (0: none); refuses settings that need a
    backbone the model does not have."""
    frozen = getattr(net, "freeze", None) == "backbone"
    n = cfg.train.epochs if frozen else cfg.train.head_epochs
    if n and not hasattr(net, "features"):
        raise ConfigError(
            f"train.head_epochs: {cfg.model.name} has no pretrained backbone; choose lite0, lite1 or lite2"
        )
    return 10**9 if frozen else n  # a frozen backbone never learns, however far a resume extends the run


def _digest(chunks: Iterable[torch.Tensor], **params: object) -> str:
    h = hashlib.blake2b(repr(sorted(params.items())).encode(), digest_size=12)
    for t in chunks:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def backbone_digest(net: torch.nn.Module, task: Task, rt: Runtime, model: str) -> str:
    """What a feature row depends on besides the image: the backbone's weights, input side and precision,
    and the task's normalisation."""
    return _digest(
        (t.float() for name, t in net.state_dict().items() if not name.startswith("head.")),
        v=VERSION, model=model, side=net.input_size, bf16=rt.bf16, mean=tuple(task.mean),
        std=tuple(task.std), torch=torch.__version__,
    )  # fmt: skip


def images_digest(x: Images) -> str:
    """The images' bytes, hashed a slice at a time (a memory-mapped folder is never read whole)."""
    step = max(1, (64 << 20) // max(1, math.prod(x.shape[1:])))  # 64 MB of pixels at a time
    return _digest(x[i : i + step] for i in range(0, len(x), step))


@torch.inference_mode()
def feature_table(
    net: torch.nn.Module, task: Task, x: Images, rt: Runtime, key: str, *, flip: bool, progress: bool, description: str
) -> torch.Tensor:
    """(N, D) float32 pooled features (`net.features`) of images `x`, mirrored with `flip`, read from the
    cache entry `key` or computed a batch at a time and stored there."""
    was_training = net.training
    net.eval()
    held: dict[str, np.ndarray] = {}

    def fill(i: int) -> dict[str, np.ndarray]:
        if i % BATCH == 0:  # the cache asks row by row; the backbone runs a batch at a time
            b = task.eval_inputs(x[i : i + BATCH])
            b = (b.flip(-1) if flip else b).to(rt.device)
            if rt.channels_last:
                b = b.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                held["batch"] = net.features(b).float().cpu().numpy()
        return {"f": held["batch"][i % BATCH]}

    arrays = {"f": ((net.head[-1].in_features,), np.dtype(np.float32))}
    found, _ = decoded(key, len(x), arrays, fill, description=description, progress=progress)
    net.train(was_training)
    return found["f"]


class CachedFeatures:
    """The train and val splits' pooled features under one backbone (`net.features`), as float32 tensors
    (N, D): `train` and, with mirroring, `train_flipped`; `val`."""

    def __init__(
        self, net: torch.nn.Module, task: Task, data: dict[str, Split], rt: Runtime, cfg: RunConfig, progress: bool
    ):
        self.net, self.task, self.rt, self.cfg = net, task, rt, cfg
        self.targets = data["train"].targets
        self.val_targets = data["val"].targets
        backbone = backbone_digest(net, task, rt, cfg.model.name)
        images = {}  # each split's bytes hashed once, for its plain and its mirrored table
        self.tables = {}
        views = {"train": (data["train"], False), "val": (data["val"], False)}
        if cfg.augment.hflip:
            views["train_flipped"] = (data["train"], True)
        if cfg.train.tta_flip:  # validated as evaluate_split does: the image and its mirror image
            views["val_flipped"] = (data["val"], True)
        for name, (split, flip) in views.items():
            if id(split) not in images:
                images[id(split)] = images_digest(split.x)
            key = f"features-{backbone}-{images[id(split)]}-{'flipped' if flip else 'plain'}"
            description = f"features: {name.replace('_', ' ')}"
            self.tables[name] = feature_table(
                net, task, split.x, rt, key, flip=flip, progress=progress, description=description
            )

    def train_batch(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The features of training images `idx`, each mirrored at random (p = 0.5) with augment.hflip."""
        x = self.tables["train"][idx]
        if "train_flipped" in self.tables:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None], self.tables["train_flipped"][idx], x)
        return x.to(self.rt.device)

    @torch.inference_mode()
    def validate(self) -> dict[str, Any]:
        """The head's validation metrics, as evaluate_split's per-epoch ones (with the mirror view if
        train.tta_flip)."""
        self.net.eval()

        def probs(feats: torch.Tensor) -> torch.Tensor:
            with self.rt.autocast():
                return self.net.head(feats.to(self.rt.device)).float().softmax(1).cpu()

        views = [self.tables[v] for v in ("val", "val_flipped") if v in self.tables]
        p = sum(probs(v) for v in views) / len(views)
        return self.task.metrics(p, self.val_targets, self.cfg)
