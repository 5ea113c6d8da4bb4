"""Evaluation: batched class probabilities with test-time views (`tta`), metrics of a split, and `evaluate`,
which scores a run's checkpoint and writes eval_<split>.json and that split's figures."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import REPORTS, RunConfig
from ..data.splits import exact_copies
from ..errors import CheckpointError, CnnlabWarning, ConfigError, DataError
from ..outputs import write_json
from ..runs import eval_path
from ..tasks import Batchable, Task, get_task
from .checkpoint import load_model
from .runtime import Runtime, make_runtime
from .tta import Views, average


@torch.inference_mode()
def predict(
    model: torch.nn.Module, task: Task, x_u8: torch.Tensor, rt: Runtime, batch_size: int, views: Views = Views()
) -> torch.Tensor:
    """Class probabilities for uint8 inputs, in batches, as float32, averaged over the test-time `views`."""
    model.eval()
    check_input_size(model, x_u8.shape, views.scales)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return task.eval_inputs(x).to(rt.device)

    def probs(x: torch.Tensor) -> torch.Tensor:
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            return model(x).float().softmax(1)

    return torch.cat(
        [
            average(probs, x_u8[i : i + batch_size], views, task.unflip, prepare).cpu()
            for i in range(0, len(x_u8), batch_size)
        ]
    )


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


def check_training_data(data: dict[str, Batchable], model: torch.nn.Module, cfg: RunConfig, warn: bool = True) -> None:
    """Refuse data a run cannot train on, before its folder is made: an empty train or val split, or
    images smaller than the model takes; with `warn`, say when a split has copies of training images."""
    for name in ("train", "val"):
        if not len(data[name]):
            raise DataError(
                f"{cfg.task} data: the {name} split is empty ({sum(map(len, data.values()))} images in "
                f"all, data.val_fraction {cfg.data.val_fraction}); use more images or change the fraction"
            )
    try:
        check_input_size(model, data["train"].x.shape, cfg.train.tta_scales)
    except DataError as e:
        raise DataError(f"{cfg.data.dir or cfg.task + ' data'}: {e}") from None
    if warn:
        warn_of_copies(data, cfg)


def warn_of_copies(data: dict[str, Batchable], cfg: RunConfig) -> None:
    """One warning line when validation or test images have exact copies (the same pixels) in an earlier
    split: such a split measures memory, not what the model learned (and validation picks the wrong
    checkpoint). Hashing costs about a second per 100,000 small images; `data.check: false` skips it."""
    if not cfg.data.check:
        return
    said = []
    for later, earlier in (("val", "train"), ("test", "train"), ("test", "val")):
        if not (len(data.get(later, ())) and len(data.get(earlier, ()))):
            continue
        if copies := exact_copies(data[earlier].x, data[later].x):
            name = "validation" if later == "val" else "test"
            said.append(f"{copies} of {len(data[later])} {name} images have an exact copy in {earlier}")
    if said:
        warnings.warn(
            f"{cfg.data.dir or cfg.task}: {'; '.join(said)}, so those splits overstate accuracy; remove the "
            "copies, or keep each scene on one side with data.group_key (`cnnlab check` lists them and finds the rule)",
            CnnlabWarning,
            stacklevel=2,
        )


def evaluate_split(
    model: torch.nn.Module, task: Task, split: Batchable, rt: Runtime, cfg: RunConfig, final: bool = True
) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics and probabilities of `model` on a split, with the test-time views of `cfg`. `final=False`
    leaves out the shifted and resized views: per-epoch validation, where 10 views of 6000 images would
    cost ~10 s an epoch."""
    probs = predict(model, task, split.x, rt, cfg.train.eval_batch_size, Views.of(cfg, final))
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
    report: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint on one split, write `eval_<split>.json` and that split's figures.

    `data_dir` points the run's own data elsewhere; `external` evaluates on a whole other labelled
    folder instead (split name "external"). `report` ("full", "summary", "none") overrides the run's
    `explain.report` for these figures: a summary run gets its explanations later with "full". Prints
    nothing: `task.summary_line` formats the result.
    """
    run_dir = Path(run_dir)
    if split not in ("test", "val"):
        raise ConfigError(f"split {split!r}: choose test or val")
    if report not in (None, *REPORTS):
        raise ConfigError(f"report {report!r}: choose one of {', '.join(REPORTS)}")
    model, cfg = load_model(run_dir, which, device)
    task = get_task(cfg)
    rt = make_runtime(cfg, device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if data_dir is not None:
        cfg.data.dir = str(data_dir)
    if report is not None:
        cfg.explain.report = report
    if external is not None:
        data, split = {"external": task.load_external(Path(external))}, "external"
    elif data is None:
        data = task.load_data(cfg)
    if split not in data or not len(data[split]):
        held_out = [s for s in ("val", "test") if len(data.get(s, []))]  # the splits `--split` takes
        choice = f"evaluate --split {' or '.join(held_out)}" if held_out else "give --data, a labelled folder"
        raise CheckpointError(f"{run_dir}: this run has no '{split}' split; {choice}")
    try:
        metrics, probs = evaluate_split(model, task, data[split], rt, cfg)
    except DataError as e:
        raise DataError(f"{external or f'{run_dir} ({split} split)'}: {e}") from None
    out = {"split": split, "checkpoint": which, "n": len(data[split]), **metrics}
    write_json(eval_path(run_dir, split), out)
    if cfg.explain.report == "none":
        return out
    task.report_split(run_dir, split, data[split], probs, metrics, model, cfg)
    # Explanations once per evaluation of a model: on the test (or an external) split, on validation only
    # where there is no test split, so a finished run is explained once.
    full = cfg.explain.report == "full" and cfg.explain.figures
    if full and (split != "val" or not len(data.get("test", []))):
        task.report_explanations(run_dir, split, data[split], probs, model, cfg)
    return out
