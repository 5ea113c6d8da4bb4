"""Label issues: images whose given label the rest of the data disputes.

Classification: every image gets class probabilities from a model that never saw it (k-fold, out of
fold), those are calibrated by one temperature, and cleanlab's confident learning (`find_label_issues`)
proposes the images that may be mislabelled; of those, the ones whose given label keeps a calibrated
probability under `THRESHOLD` are flagged, the least likely first. The out-of-fold model:
- photos with backbone embeddings (see duplicates.py): logistic regression on the cached features;
- anything else: a small net per fold (seed-a, or the small ResNet under 12 px), trained about as long
  in all as one `fashion fast` training.

Why the extra cut: on Fashion-MNIST (10,000 images, 2% of labels flipped) confident learning alone flags
3-4x as many images as were flipped (precision 0.2-0.3), mostly shirts it cannot tell from T-shirts; its
set with calibrated self-confidence under 0.05 keeps recall 0.81-0.88 at precision 0.52-0.61, whether
the fold nets trained 2, 4 or 8 epochs (BENCHMARKS.md, "label issues").

Segmentation: a mask is scored against a trained run's predictions (cleanlab's per-image label quality,
softmin over pixels), so the check of a segmentation run folder ranks its masks; a data folder alone is not.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import AugmentConfig, LossConfig, ModelConfig, OptimConfig, RunConfig
from ..data import Images
from ..engine.evaluation import predict
from ..engine.optim import lr_at, make_optimizer
from ..engine.runtime import Runtime, inference_runtime, make_runtime
from ..engine.state import epoch_order, seeded
from ..models.classify import SeedA
from ..outputs import progress_over
from ..tasks import Task

FOLDS = 4
THRESHOLD = 0.05  # calibrated probability of the given label under which a proposed image is flagged
MIN_STEPS = 320  # optimizer steps per fold net: 1 epoch of 56,000 images, 6 of 7,500
MAX_EPOCHS = 8
SHOWN = 20  # the most suspicious images listed even when fewer are flagged
MAX_LISTED = 5_000


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold, classes spread evenly over the folds (a class smaller than `folds` as far as it goes)."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out[idx] = (offset + np.arange(len(idx))) % folds
        offset += len(idx)
    return out


def out_of_fold_linear(features: np.ndarray, labels: np.ndarray, folds: np.ndarray, classes: int) -> np.ndarray:
    """(N, classes) probabilities of a standardised logistic regression fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probs = np.zeros((len(labels), classes), np.float32)
    for k in np.unique(folds):
        fit, held = folds != k, folds == k
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
        clf.fit(features[fit], labels[fit])
        probs[np.ix_(held, clf.classes_)] = clf.predict_proba(features[held])
    return probs


def fold_config(cfg: RunConfig, task: Task, n: int) -> RunConfig:
    """The fold nets' settings: the `fashion fast` recipe's net and optimizer without label smoothing (it
    would cap the confidence the ranking reads), trained for about MIN_STEPS steps."""
    small = (task.image_size or 0) < SeedA.min_side
    model = ModelConfig(name="resnet", width=0.5) if small else ModelConfig(name="seed-a", activation="relu")
    batch = 128
    epochs = min(MAX_EPOCHS, max(1, math.ceil(MIN_STEPS / math.ceil(n / batch))))
    return cfg.model_copy(
        update={
            "model": model,
            "augment": AugmentConfig(),
            "loss": LossConfig(),
            "optim": OptimConfig(name="adamw", lr=4e-3, weight_decay=5e-4, schedule="onecycle", warmup_fraction=0.15),
            "train": cfg.train.model_copy(update={"epochs": epochs, "batch_size": batch}),
        }
    )


def _fit(task: Task, cfg: RunConfig, x: torch.Tensor, y: torch.Tensor, rt: Runtime, seed: int, tick) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = task.build_model(cfg, init=True)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    opt = make_optimizer(cfg, net)
    bs, epochs = cfg.train.batch_size, cfg.train.epochs
    total, step = epochs * math.ceil(len(y) / bs), 0
    for epoch in range(epochs):
        order = epoch_order(seed, epoch, len(y))
        for i in range(0, len(y), bs):
            idx = order[i : i + bs]
            xb, yb = task.train_inputs(x[idx], y[idx], cfg, seeded(seed, 2, step), epoch)
            if rt.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step, total)
            with rt.autocast():
                loss = task.loss(net(xb).float(), yb, cfg)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tick()
    return net


def out_of_fold_nets(
    task: Task, cfg: RunConfig, x: torch.Tensor, labels: np.ndarray, folds: np.ndarray, progress: bool
) -> tuple[np.ndarray, int]:
    """(N, classes) probabilities of a small net per fold trained on the other folds, and its epochs."""
    fold_cfg = fold_config(cfg, task, int((folds != 0).sum()))
    rt = make_runtime(fold_cfg)
    y = torch.from_numpy(labels)
    probs = np.zeros((len(labels), len(task.classes)), np.float32)
    bs = fold_cfg.train.batch_size
    steps = sum(fold_cfg.train.epochs * math.ceil(int((folds != k).sum()) / bs) for k in range(FOLDS))
    bar = iter(progress_over(range(steps), "check: label issues", progress))
    for k in range(FOLDS):
        fit, held = torch.from_numpy(folds != k), torch.from_numpy(folds == k)
        net = _fit(task, fold_cfg, x[fit], y[fit], rt, cfg.train.seed + k, lambda: next(bar, None))
        probs[held.numpy()] = predict(net, task, x[held], rt, 256).numpy()
    next(bar, None)  # let the bar close
    return probs, fold_cfg.train.epochs


def calibrate(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """`probs` sharpened or softened by the one temperature that fits the given labels best (NLL), so that
    one threshold means the same for a net trained briefly or long, or a linear model; and that temperature."""
    logp = torch.from_numpy(np.log(np.clip(probs, 1e-12, 1.0))).double()
    y = torch.from_numpy(labels)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], max_iter=100, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logp / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(nll)
    t = float(log_t.detach().exp())
    return (logp / t).softmax(1).numpy(), t


def rank_issues(probs: np.ndarray, labels: np.ndarray, threshold: float = THRESHOLD) -> dict[str, Any]:
    """Calibrate out-of-fold `probs`, then flag: confident learning's proposals whose given label keeps a
    calibrated probability under `threshold`. Returns the ranking's facts and `order` (least likely first)."""
    from cleanlab.filter import find_label_issues

    calibrated, t = calibrate(probs, labels)
    quality = calibrated[np.arange(len(labels)), labels]
    proposed = find_label_issues(labels, calibrated, filter_by="prune_by_noise_rate")
    flagged = proposed & (quality < threshold)
    order = np.argsort(quality, kind="stable")
    return {
        "temperature": round(t, 3),
        "threshold": threshold,
        "proposed": int(proposed.sum()),
        "proposed_mask": proposed,
        "flagged_mask": flagged,
        "quality": quality,
        "suggested": calibrated.argmax(1),
        "order": order,
    }


def out_of_fold(
    task: Task, cfg: RunConfig, x: Images | None, labels: np.ndarray, features: torch.Tensor | None, progress: bool
) -> tuple[np.ndarray, str, int | None]:
    """(N, classes) out-of-fold probabilities, how they were made, and the fold nets' epochs (None: linear)."""
    folds = fold_of(labels, FOLDS, cfg.train.seed)
    if features is not None:
        probs = out_of_fold_linear(features.numpy(), labels, folds, len(task.classes))
        return probs, "logistic regression on backbone features", None
    assert x is not None
    probs, epochs = out_of_fold_nets(task, cfg, torch.as_tensor(x[:]), labels, folds, progress)
    return probs, "a small net per fold, on the pixels", epochs


def classify_issues(
    task: Task,
    cfg: RunConfig,
    x: Images | None,
    labels: np.ndarray,
    features: torch.Tensor | None,
    progress: bool,
    threshold: float = THRESHOLD,
) -> dict[str, Any]:
    """Label issues of labelled images `x` (all splits pooled): out-of-fold probabilities from
    `features` (a linear model) or from the pixels (small nets), ranked by `rank_issues`."""
    started = time.perf_counter()
    probs, method, epochs = out_of_fold(task, cfg, x, labels, features, progress)
    found = rank_issues(probs, labels, threshold)
    del found["proposed_mask"]
    flagged, order = found.pop("flagged_mask"), found.pop("order")
    quality, suggested = found.pop("quality"), found.pop("suggested")
    ranked = [int(i) for i in order if flagged[i]][:MAX_LISTED]
    ranked += [int(i) for i in order if not flagged[i]][: max(0, SHOWN - len(ranked))]  # the suspicious
    rows = [
        {"row": i, "given": int(labels[i]), "suggested": int(suggested[i]), "quality": round(float(quality[i]), 4),
         "flagged": bool(flagged[i])}
        for i in ranked
    ]  # fmt: skip
    return {
        "method": method,
        "folds": FOLDS,
        "fold_epochs": epochs,
        "out_of_fold_accuracy": round(float((probs.argmax(1) == labels).mean()), 4),
        **found,
        "flagged": int(flagged.sum()),
        "issues": rows,
        "seconds": round(time.perf_counter() - started, 2),
    }


def mask_quality(task: Task, model: torch.nn.Module, x: Images, masks: Images, progress: bool) -> np.ndarray:
    """Each mask's label quality against `model`'s predicted probabilities (cleanlab's softmin over its
    pixels: low where many pixels' given class is unlikely). Pixels the task ignores count as agreeing."""
    from cleanlab.segmentation.rank import get_label_quality_scores

    rt = inference_runtime()
    scores = np.zeros(len(masks), np.float64)
    batch = 8
    for i in progress_over(range(0, len(masks), batch), "check: masks", progress, total=-(-len(masks) // batch)):
        probs = predict(model, task, torch.as_tensor(x[i : i + batch]), rt, batch)
        y = torch.as_tensor(masks[i : i + batch]).long()
        if task.ignore_index is not None:
            y = torch.where(y == task.ignore_index, probs.argmax(1), y)
        scores[i : i + len(y)], _ = get_label_quality_scores(y.numpy(), probs.numpy(), verbose=False)
    return scores
