"""The report's explanation figures of one evaluated split: what the network looks at (class activation
maps, feature maps, filters), how it arranges the classes (embedding) and how far its confidence can be
trusted (calibration, confidence and entropy maps)."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import attribution
from ..config import RunConfig
from ..data import Split
from ..plots import explain as xf
from ..plots.embedding import plot_embedding
from . import Task

FEATURE_MAP_CHANNELS = 12  # per layer: the most active ones; 64 tiles a row would be too small to read
# Layers drawn, spread from the first convolution to the last: an ImageNet backbone has 50, whose figures
# took 20 s of a probe's report and were too many to read.
FEATURE_MAP_LAYERS = 8


def _inputs(task: Task, images: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    device = next(model.parameters()).device
    return task.eval_inputs(images).to(device)


def deep_filters(model: torch.nn.Module, out: Path) -> list[Path]:
    """Readable figures of the second and the last convolution's kernels (their largest-norm filters);
    the first layer's are drawn whole by `figures.plot_filters`."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    paths = []
    for number in sorted({2, len(convs)} if len(convs) >= 2 else set()):
        conv = convs[number - 1]
        o, i, k, _ = conv.weight.shape
        title = f"conv{number}: the {min(16, o)} of {o} filters ({i}x{k}x{k}) with the largest weights"
        paths.append(xf.plot_top_filters(conv.weight.detach().float().cpu(), out / f"filters_conv{number}", title))
    return paths


def classify_explanations(
    task: Task, run_dir: Path, split: str, data: Split, probs: torch.Tensor, model: torch.nn.Module, cfg: RunConfig
) -> None:
    """Grad-CAMs of the examples figure's images, feature maps of the convolutions (up to
    FEATURE_MAP_LAYERS, from the first to the last) for the most confident image of each class, the
    embedding of the penultimate features and the reliability diagram."""
    out = run_dir / "figures"
    model.eval()
    k = len(task.classes)
    conf, pred = probs.max(1)
    true = data.targets

    picks = attribution.pick_examples(true, pred, k)
    shown = [i for right, wrong in picks.values() for i in right + wrong]
    if shown:
        images = data.x[shown]
        cams = attribution.grad_cam(model, _inputs(task, images, model), pred[shown]).cpu()
        where = {i: n for n, i in enumerate(shown)}
        local = {c: ([where[i] for i in r], [where[i] for i in w]) for c, (r, w) in picks.items()}
        xf.plot_cam_examples(
            images, cams, true[shown], pred[shown], conf[shown], task.classes, local, out / f"cams_{split}",
            f"Grad-CAM ({split}): where the evidence for the predicted class lies", shown,
        )  # fmt: skip

    best = attribution.most_confident(true, pred, conf, k)
    if best:
        idx = list(best.values())
        images = data.x[idx]
        names = [task.classes[c] for c in best]
        maps = attribution.feature_maps(model, _inputs(task, images, model))
        m = min(FEATURE_MAP_LAYERS, len(maps))
        drawn = {round(i * (len(maps) - 1) / max(1, m - 1)) for i in range(m)}
        for number, (layer, fmap) in enumerate(maps, 1):
            if number - 1 not in drawn:
                continue
            xf.plot_feature_maps(
                images, names, fmap.cpu(), f"conv{number} ({layer})", out / f"feature_maps_conv{number}_{split}",
                FEATURE_MAP_CHANNELS,
            )  # fmt: skip

    if cfg.explain.embedding != "none" and len(true) >= 10:
        idx = attribution.subsample(len(true), cfg.explain.embedding_points, cfg.train.seed)
        images = data.subset(idx).x  # a memory-mapped split stays on disk: read a chunk at a time
        feats = attribution.penultimate(model, images, lambda x: _inputs(task, x, model))
        xy = attribution.embed(feats, cfg.explain.embedding, cfg.train.seed)
        plot_embedding(
            xy, true[idx], task.classes, task.colors, images, cfg.explain.embedding, out / f"embedding_{split}"
        )

    cal = attribution.calibration(conf, pred == true)
    xf.plot_reliability(cal, out / f"calibration_{split}", f"{split}: confidence against accuracy")


def segment_explanations(
    task: Task,
    run_dir: Path,
    split: str,
    data: Split,
    probs: torch.Tensor,
    model: torch.nn.Module,
    cases: dict[str, list[int]],
    scores: list[float],
) -> None:
    """Confidence and entropy maps of the best and worst cases, the Grad-CAM of every class on the best
    case, and the pixels' reliability diagram."""
    out = run_dir / "figures"
    model.eval()
    y = data.targets
    colors = task.rgb
    conf, pred = probs.max(1)
    for name, pick in cases.items():
        # Entropy of the drawn images only: for the whole split it would be another copy of its probabilities.
        ent = attribution.entropy(probs[pick])
        xf.plot_confidence_cases(
            data.x[pick], y[pick], pred[pick], conf[pick], ent, [data.names[i] for i in pick],
            [scores[i] for i in pick], task.classes, colors, out / f"confidence_{name}_{split}",
            f"Confidence and entropy, {name} cases ({split})", attribution.max_entropy(len(task.classes)),
        )  # fmt: skip

    first = cases["best"][0]
    image = data.x[[first]]
    x = _inputs(task, image, model)
    layer = attribution.cam_layer(model, x, per_pixel=True)[1]
    cams = {
        c: attribution.grad_cam(model, x, i, per_pixel=True, layer=layer)[0].cpu() for i, c in enumerate(task.classes)
    }
    xf.plot_class_cams(
        image[0], cams, pred[first], colors, task.classes, out / f"class_cams_{split}",
        f"Grad-CAM of each class on {data.names[first]} ({split}): the evidence the network's deepest layer sees",
    )  # fmt: skip

    keep = slice(None) if task.ignore_index is None else y != task.ignore_index
    cal = attribution.calibration(conf[keep], (pred == y)[keep])
    xf.plot_reliability(cal, out / f"calibration_{split}", f"{split} pixels: confidence against accuracy")
