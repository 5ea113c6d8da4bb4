"""Evaluation: batched class probabilities with test-time views, metrics of a split, and `evaluate`,
which scores a run's checkpoint and writes eval_<split>.json and that split's figures."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError, DataError
from ..outputs import write_json
from ..tasks import Batchable, Task, get_task
from .checkpoint import load_model
from .runtime import Runtime, make_runtime


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate the last two dims by (dy, dx) pixels (down, right), filling with zeros."""
    if not (dy or dx):
        return x
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    return padded[..., max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w]


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    task: Task,
    x_u8: torch.Tensor,
    rt: Runtime,
    batch_size: int,
    tta_flip: bool = False,
    tta_shift: int = 0,
    tta_scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Class probabilities for uint8 inputs, in batches, as float32; averaged over the test-time views
    (mirrored; shifted by `tta_shift` pixels up, down, left and right: classification only; resized by
    each of `tta_scales`, the probabilities resized back: segmentation only)."""
    model.eval()
    check_input_size(model, x_u8.shape, tta_scales)
    s = tta_shift
    shifts = [(0, 0), (s, 0), (-s, 0), (0, s), (0, -s)] if s else [(0, 0)]
    views = len(shifts) * len(tta_scales) * (1 + tta_flip)
    out = []
    for i in range(0, len(x_u8), batch_size):
        p = 0
        for (dy, dx), scale in itertools.product(shifts, tta_scales):
            x = task.eval_inputs(shift(x_u8[i : i + batch_size], dy, dx)).to(rt.device)
            size = x.shape[-2:]
            if scale != 1:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                q = model(x).float().softmax(1)
                if tta_flip:
                    q = q + task.unflip(model(x.flip(-1)).float().softmax(1))
            p = p + (q if scale == 1 else F.interpolate(q, size=size, mode="bilinear", align_corners=False))
        out.append((p / views).cpu())
    return torch.cat(out)


def check_input_size(model: torch.nn.Module, shape: Sequence[int], scales: Sequence[float] = (1.0,)) -> None:
    """DataError if images of `shape` (..., H, W), at any of the test-time `scales`, are smaller than
    the smallest input `model` takes (its `min_side` attribute, 1 px if it has none)."""
    need = getattr(model, "min_side", 1)
    h, w = shape[-2:]
    for scale in scales:
        side = math.floor(min(h, w) * scale)
        if side < need:
            at = f" at test-time scale {scale} ({side} px)" if scale != 1 else ""
            raise DataError(
                f"images of {w}x{h} px{at} are too small for {type(model).__name__}, which needs at least {need} px "
                f"on a side; use larger images" + (" or drop that factor from train.tta_scales" if at else "")
            )


def evaluate_split(
    model: torch.nn.Module, task: Task, split: Batchable, rt: Runtime, cfg: RunConfig, final: bool = True
) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics and probabilities of `model` on a split, with the test-time views of `cfg`. `final=False`
    leaves out the shifted and resized views: per-epoch validation, where 10 views of 6000 images would
    cost ~10 s an epoch."""
    probs = predict(
        model,
        task,
        split.x,
        rt,
        cfg.train.eval_batch_size,
        cfg.train.tta_flip,
        cfg.train.tta_shift if final else 0,
        cfg.train.tta_scales if final else (1.0,),
    )
    return task.metrics(probs, split.targets, cfg), probs


def evaluate(
    run_dir: Path,
    *,
    split: str = "test",
    which: str = "best",
    device: str = "cpu",
    data: dict[str, Batchable] | None = None,
    data_dir: str | None = None,
    external: Path | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint on one split, write `eval_<split>.json` and that split's figures.

    `data_dir` points the run's own data elsewhere; `external` evaluates on a whole other labelled
    folder instead (split name "external"). Prints nothing: `task.summary_line` formats the result.
    """
    run_dir = Path(run_dir)
    if split not in ("test", "val"):
        raise ConfigError(f"split {split!r}: choose test or val")
    model, cfg = load_model(run_dir, which, device)
    task = get_task(cfg)
    rt = make_runtime(cfg, device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if data_dir is not None:
        cfg.data.dir = str(data_dir)
    if external is not None:
        data, split = {"external": task.load_external(Path(external))}, "external"
    elif data is None:
        data = task.load_data(cfg)
    if split not in data or not len(data[split]):
        raise CheckpointError(f"{run_dir}: this run has no '{split}' split; choose one of {sorted(data)}")
    try:
        metrics, probs = evaluate_split(model, task, data[split], rt, cfg)
    except DataError as e:
        raise DataError(f"{external or f'{run_dir} ({split} split)'}: {e}") from None
    out = {"split": split, "checkpoint": which, "n": len(data[split]), **metrics}
    write_json(run_dir / f"eval_{split}.json", out)
    task.report_split(run_dir, split, data[split], probs, metrics, model, cfg)
    # Explanations once per evaluation of a model: on the test (or an external) split, on validation only
    # where there is no test split, so a finished run is explained once.
    if cfg.explain.figures and (split != "val" or not len(data.get("test", []))):
        task.report_explanations(run_dir, split, data[split], probs, model, cfg)
    return out
