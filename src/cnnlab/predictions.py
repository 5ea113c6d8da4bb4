"""Predictions on the user's own images, for both task kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .data.images import load_photo
from .errors import ConfigError
from .outputs import check_dir
from .runs import load_model
from .tasks import Task, get_task


def predict_files(
    run_dir: Path,
    paths: list[Path],
    top: int = 3,
    out: Path | None = None,
    max_side: int | None = None,
    tta: bool = False,
) -> list[dict[str, Any]]:
    """Predictions of the model in `run_dir` on image files (see `cnnlab.predict`)."""
    model, cfg = load_model(run_dir)
    task = get_task(cfg)
    if task.kind == "segment":
        from .pretrained import is_shipped
        from .segment import MAX_WORK_SIDE, recipe_views, segment_files

        # A shipped model lives inside the installed package: its outputs go to the working folder.
        default = Path("predictions") if is_shipped(run_dir) else run_dir / "predictions"
        folder = check_dir(out or default, "--out")
        side = max_side or MAX_WORK_SIDE
        return segment_files(model, task, paths, folder, side, recipe_views(cfg, tta))
    if out is not None:
        raise ConfigError(f"out {out}: {cfg.task} predictions write no files; drop the out argument")
    if max_side is not None or tta:
        raise ConfigError(f"{cfg.task} predictions take no max_side or tta (segmentation only); drop them")
    results = []
    min_side, max_side = task.photo_sides
    for path in paths:
        img, notes = load_photo(path, mode=task.photo_mode, min_side=min_side, max_side=max_side)
        x, more = task.photo_input(img)
        results.append({"file": str(path), "notes": notes + more, "top": classify(model, task, x, top)})
    return results


@torch.inference_mode()
def classify(model: torch.nn.Module, task: Task, x: torch.Tensor, top: int = 3) -> list[tuple[str, float]]:
    """The `top` most likely classes (at most all of them) of one prepared uint8 (C,H,W) image, with
    their probabilities."""
    probs = model(task.eval_inputs(x[None]))[0].softmax(0)
    p, c = probs.topk(min(top, len(task.classes)))
    return [(task.classes[i], float(q)) for q, i in zip(p, c.tolist(), strict=True)]
