"""What a trained network looks at and how sure it is, for both task kinds: class activation maps
(Captum's Grad-CAM), integrated gradients, feature maps, penultimate features, per-pixel confidence and
entropy, and calibration. Tensors in, tensors out; the figures live in plots/explain.py."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Images go through the network this many at a time: memory bounded by the chunk, not the split.
CHUNK = 256
IG_BATCH = 32  # integrated-gradient steps evaluated at once (256 steps of a 224 px image would take GBs)


def _outputs(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, output shape) of every submodule whose output is an image-like (N,C,H,W) tensor,
    in the order the modules finish during one forward pass."""
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def hook(name: str):
        def record(module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.dim() == 4:
                seen.append((name, module, tuple(output.shape)))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return seen


def cam_layer(model: nn.Module, x: Tensor, per_pixel: bool = False) -> tuple[str, nn.Module]:
    """The layer Grad-CAM reads, found by one forward pass on `x`'s first image.

    Classifiers: the last module to finish with a map larger than 1x1, i.e. the deepest features that
    still know *where* (seed-a's last conv block, resnet's last residual pair). Segmenters (`per_pixel`): the last
    module with the smallest map, the bottleneck, whose features see the widest context; the decoder's
    later layers would mostly repeat the output.
    """
    maps = [(n, m, s) for n, m, s in _outputs(model, x) if s[2] * s[3] > 1]
    if not maps:
        raise ValueError("the model has no convolutional feature map larger than 1x1 to explain")
    if per_pixel:
        smallest = min(s[2] * s[3] for _, _, s in maps)
        maps = [t for t in maps if t[2][2] * t[2][3] == smallest]
    name, module, _ = maps[-1]
    return name, module


class RegionScore(nn.Module):
    """A segmenter seen as a classifier for attribution: class k's score is its mean logit over the
    pixels predicted as k (over all pixels where k is predicted nowhere), so a class map answers "what
    made these pixels pillar" rather than "what raises pillar everywhere"."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        _, k, h, w = logits.shape
        with torch.no_grad():
            region = F.one_hot(logits.argmax(1), k).permute(0, 3, 1, 2).to(logits.dtype)
            count = region.sum((2, 3), keepdim=True)
            region = torch.where(count > 0, region / count.clamp_min(1), torch.full_like(region, 1 / (h * w)))
        return (logits * region).sum((2, 3))


def grad_cam(
    model: nn.Module, x: Tensor, target: Tensor | int, per_pixel: bool = False, layer: nn.Module | None = None
) -> Tensor:
    """Grad-CAM maps (N,H,W) at the input size, each scaled to [0, 1] by its maximum (all zeros where
    nothing speaks for the class), for normalised inputs `x` (N,C,H,W) and one target class per image.

    Segmenters (`per_pixel`) are explained through `RegionScore`. `layer`: default `cam_layer`.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    layer = layer or cam_layer(model, x, per_pixel)[1]
    forward = RegionScore(model) if per_pixel else model
    target = torch.as_tensor(target).expand(len(x)) if not torch.is_tensor(target) or target.dim() == 0 else target
    with torch.enable_grad():
        cam = LayerGradCam(forward, layer).attribute(x, target=target.tolist(), relu_attributions=True)
    cam = LayerAttribution.interpolate(cam.detach().float(), tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    peak = cam.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam)).clamp(0, 1)


def integrated_gradients(
    model: nn.Module, x: Tensor, target: Tensor | int, baseline: Tensor, steps: int = 64
) -> tuple[Tensor, Tensor]:
    """Integrated-gradient attributions (N,C,H,W) of each image's `target` logit against `baseline`
    (broadcast to `x`, e.g. a black image in the model's input scale), and Captum's convergence deltas
    (N,): sum of attributions minus the logit difference; near 0 means the path integral converged."""
    from captum.attr import IntegratedGradients

    with torch.enable_grad():
        attr, delta = IntegratedGradients(model).attribute(
            x,
            baselines=baseline.expand_as(x),
            target=target,
            n_steps=steps,
            return_convergence_delta=True,
            internal_batch_size=IG_BATCH,
        )
    return attr.detach(), delta.detach()


def entropy(probs: Tensor) -> Tensor:
    """Entropy in nats of class distributions along dim 1: (N,K,...) -> (N,...); 0 log 0 counts 0."""
    return -torch.special.xlogy(probs, probs).sum(1)


def confidence_maps(probs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel confidence (the largest probability) and entropy (nats) of (N,K,H,W) probabilities."""
    return probs.amax(1), entropy(probs)


def calibration(confidence: Tensor, correct: Tensor, bins: int = 15) -> dict[str, Any]:
    """Reliability of predictions: `bins` equal-width confidence bins over [0, 1] (a bin holds
    (lo, hi]; the first also 0), each with its count, mean confidence and accuracy (NaN when empty),
    and the expected calibration error: sum over bins of count/total * |accuracy - confidence|."""
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    # Edges in the confidences' own precision: float32 0.8 belongs to (0.6, 0.8] as written.
    index = torch.bucketize(confidence.reshape(-1), edges[1:-1])
    conf = confidence.reshape(-1).double()
    ok = correct.reshape(-1).double()
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=conf, minlength=bins)
    ok_sum = torch.bincount(index, weights=ok, minlength=bins)
    mean_conf, acc = conf_sum / count, ok_sum / count  # NaN where a bin is empty
    ece = float(((count / count.sum().clamp_min(1)) * (acc - mean_conf).abs()).nansum())
    return {
        "edges": edges.tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": acc.tolist(),
        "count": count.long().tolist(),
        "ece": ece,
        "n": len(conf),
    }


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no fully connected layer whose inputs are its penultimate features")
    return linears[-1]


@torch.no_grad()
def penultimate(model: nn.Module, images: Any, prepare: Callable[[Tensor], Tensor]) -> Tensor:
    """The features (N, D) a classifier's last fully connected layer reads, for N uint8 images (any
    indexable of (N,C,H,W)) that `prepare` turns into model inputs a chunk at a time."""
    kept: list[Tensor] = []
    handle = _last_linear(model).register_forward_pre_hook(lambda _m, args: kept.append(args[0].float().cpu()))
    try:
        for i in range(0, len(images), CHUNK):
            model(prepare(images[i : i + CHUNK]))
    finally:
        handle.remove()
    return torch.cat(kept)


@torch.no_grad()
def feature_maps(model: nn.Module, x: Tensor) -> list[tuple[str, Tensor]]:
    """(layer name, output (N,C,H,W)) of every convolution, in the order they run, for a few inputs."""
    kept: list[tuple[str, Tensor]] = []
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=n: kept.append((name, out.detach().float()))) for n, m in convs
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return kept


def pick_examples(true: Tensor, pred: Tensor, classes: int, per_class: int = 2) -> dict[int, tuple[list, list]]:
    """Per class, the first `per_class` images classified right and the first `per_class` wrong: the
    examples figure's choice, so the class activation maps explain the same images."""
    return {
        c: (
            torch.nonzero((true == c) & (pred == c)).flatten()[:per_class].tolist(),
            torch.nonzero((true == c) & (pred != c)).flatten()[:per_class].tolist(),
        )
        for c in range(classes)
    }


def most_confident(true: Tensor, pred: Tensor, conf: Tensor, classes: int) -> dict[int, int]:
    """Per class, the image classified right with the highest confidence (classes with none left out)."""
    out = {}
    for c in range(classes):
        hits = torch.nonzero((true == c) & (pred == c)).flatten()
        if len(hits):
            out[c] = int(hits[conf[hits].argmax()])
    return out


def embed(features: Tensor, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D embedding (N,2) of features (N,D): "pca" (instant) or "tsne" (scikit-learn's t-SNE: classes
    that overlap show as mixed clusters, but about 20 s more for 2,000 points on 2 cores, BENCHMARKS.md)."""
    x = features.double().numpy()
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed).fit_transform(x)
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(x)


def subsample(n: int, limit: int, seed: int = 0) -> Tensor:
    """Indices of at most `limit` of `n` items, a fixed random choice in increasing order."""
    if n <= limit:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def max_entropy(classes: int) -> float:
    """The entropy (nats) of the uniform distribution over `classes`: the top of an entropy scale."""
    return math.log(classes)


def normalised_black(task_normalise: Any, shape: Sequence[int]) -> Tensor:
    """A black image (pixel 0) in the model's input scale: the integrated-gradients baseline."""
    return task_normalise(torch.zeros(1, *shape, dtype=torch.uint8))


def peak(cam: Tensor) -> list[float]:
    """(row, column) of a map's maximum as fractions of its height and width."""
    h, w = cam.shape
    r, c = divmod(int(cam.argmax()), w)
    return [round((r + 0.5) / h, 3), round((c + 0.5) / w, 3)]
