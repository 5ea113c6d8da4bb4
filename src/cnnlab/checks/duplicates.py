"""Duplicates among a data set's images: exact ones (the same decoded pixels) and near ones (embeddings
whose cosine similarity passes a threshold), found over all splits pooled, then grouped.

Near duplicates are found by nearest neighbours in an embedding, a chunk of rows against all at a time
(matrix products: 70,000 x 70,000 pairs in seconds, in bounded memory):
- photos (RGB, sides of 32 px or more) with the cnnlab[pretrained] extra: EfficientNet-Lite0's pooled
  ImageNet features, centred on the set's mean. Crops and rescalings of one scene land close: on the
  facade set, an image's nearest neighbour is another view of its building for 98% of the images.
- anything else (grey, tiny, or without the extra): the image in grey at up to 32x32, centred and scaled
  per image (cosine = the pixels' correlation): re-saved, re-compressed or brightened copies. Candidates
  come from 16x16 thumbnails (4x cheaper), then are scored at full size.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F

from ..data import Images
from ..engine.features import backbone_digest, feature_table, images_digest
from ..engine.runtime import inference_runtime
from ..models import imagenet
from ..models.transfer import LiteNet
from ..outputs import progress_over
from ..tasks import Task

SIM_BYTES = 300 << 20  # similarities held at a time: 1,024 rows against 70,000 images
PIXEL_BYTES = 64 << 20  # images converted to float at a time
NEIGHBOURS = 20  # candidates kept per image; a larger cluster still joins through them
PHOTO_SIDE = 32
PIXEL_SIDE, COARSE_SIDE = 32, 16
COARSE_MARGIN = 0.02  # 16x16 thumbnails correlate a little differently from the full images
# Cosine similarity from which two images count as near duplicates, per embedding, and a looser one the
# summary also counts at. Measured on the facade set (three views of each building): other views of a
# building score a median of 0.79, while 1 in 10,000 pairs of different buildings passes 0.65. Pixels,
# on Fashion-MNIST's test against its training set: from 0.995 the pairs are one product photographed
# once (20 test images); between 0.99 and 0.995 mostly look-alikes (BENCHMARKS.md, "cnnlab check").
THRESHOLDS = {"backbone": (0.7, 0.6), "pixels": (0.995, 0.99)}


def exact_pairs(digests: list[bytes]) -> list[tuple[int, int]]:
    """Pairs (first, later) of images whose pixel digests are equal."""
    first: dict[bytes, int] = {}
    pairs = []
    for i, d in enumerate(digests):
        if d in first:
            pairs.append((first[d], i))
        else:
            first[d] = i
    return pairs


def embedding_kind(task: Task, x: Images) -> str:
    """ "backbone" for photos when the ImageNet weights are installed, "pixels" otherwise."""
    photo = x.shape[1] == 3 and min(x.shape[-2:]) >= PHOTO_SIDE
    return "backbone" if photo and imagenet.installed() else "pixels"


def embed(task: Task, x: Images, kind: str, progress: bool) -> torch.Tensor:
    """(N, D) rows of the embedding `kind`: pixel thumbnails as unit rows, backbone features raw (centre
    them on the mean of every split pooled, then scale to unit length)."""
    if kind == "backbone":
        rt = inference_runtime()
        net = LiteNet(num_classes=1, in_channels=x.shape[1], pretrained=True, mean=task.mean, std=task.std)
        key = f"features-{backbone_digest(net, task, rt, 'check-lite0')}-{images_digest(x)}-plain"
        f = feature_table(net, task, x, rt, key, flip=False, progress=progress, description="check: embeddings")
        return f
    return pixel_rows(x, PIXEL_SIDE)


def pixel_rows(x: Images, side: int) -> torch.Tensor:
    """Each image in grey, area-resized to at most `side` px square, centred and scaled to unit length."""
    rows = []
    step = max(1, PIXEL_BYTES // (4 * math.prod(x.shape[1:])))
    for i in range(0, len(x), step):
        b = x[i : i + step].float().mean(1, keepdim=True)
        if max(b.shape[-2:]) > side:
            b = F.interpolate(b, size=(side, side), mode="area")
        b = b.flatten(1)
        rows.append(b - b.mean(1, keepdim=True))
    return F.normalize(torch.cat(rows), dim=1)


def near_pairs(
    emb: torch.Tensor, threshold: float, coarse: torch.Tensor | None = None, progress: bool = False
) -> list[tuple[int, int, float]]:
    """(i, j, similarity) with i < j, similarity >= `threshold`, among each image's nearest neighbours,
    most similar first. With `coarse` (cheaper rows of the same images), candidates come from those
    and are scored on `emb`."""
    n = len(emb)
    k = min(NEIGHBOURS, n - 1)
    chunk = max(16, SIM_BYTES // (4 * n))
    search, floor = (emb, threshold) if coarse is None else (coarse, threshold - COARSE_MARGIN)
    found: dict[tuple[int, int], float] = {}
    if k < 1:
        return []
    for start in progress_over(range(0, n, chunk), "check: near duplicates", progress, total=-(-n // chunk)):
        sim = search[start : start + chunk] @ search.T
        rows = torch.arange(len(sim))
        sim[rows, start + rows] = -2.0  # not itself
        vals, idx = sim.topk(k, dim=1)
        r, c = (vals >= floor).nonzero(as_tuple=True)
        i, j = start + r, idx[r, c]
        score = (emb[i] * emb[j]).sum(1) if coarse is not None else vals[r, c]
        keep = score >= threshold
        for a, b, v in zip(i[keep].tolist(), j[keep].tolist(), score[keep].tolist(), strict=True):
            found[(min(a, b), max(a, b))] = v
    return sorted(((i, j, s) for (i, j), s in found.items()), key=lambda p: -p[2])


def connected(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Groups of two or more indices joined by `pairs` (union-find), largest first."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[root(i)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
