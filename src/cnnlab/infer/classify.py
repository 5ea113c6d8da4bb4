"""Predictions on the user's own images, for both task kinds."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.images import load_photo
from ..engine.checkpoint import load_model
from ..errors import ConfigError
from ..outputs import atomic_write, check_dir, progress_over, unique_stems
from ..sizes import MAX_WORK_SIDE
from ..tasks import Task, get_task


def predict_files(
    run_dir: Path,
    paths: list[Path],
    top: int = 3,
    out: Path | None = None,
    max_side: int | None = None,
    tta: bool = False,
    alpha: float = 0.5,
    save_inputs: Path | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Predictions of the model in `run_dir` on image files (see `cnnlab.predict`)."""
    model, cfg = load_model(run_dir)
    task = get_task(cfg)
    if task.kind == "segment":
        from ..zoo import is_shipped
        from .segment import recipe_views, segment_files

        if save_inputs is not None:
            raise ConfigError(f"save_inputs {save_inputs}: {cfg.task} models see the photo itself; drop it")
        # A shipped model lives inside the installed package: its outputs go to the working folder.
        default = Path("predictions") if is_shipped(run_dir) else run_dir / "predictions"
        folder = check_dir(out or default, "--out")
        views = recipe_views(cfg, tta)
        return segment_files(model, task, paths, folder, max_side or MAX_WORK_SIDE, views, None, alpha, progress)
    if out is not None:
        raise ConfigError(f"out {out}: {cfg.task} predictions write no files; drop the out argument")
    if max_side is not None or tta:
        raise ConfigError(f"{cfg.task} predictions take no max_side or tta (segmentation only); drop them")
    min_side, max_side = task.photo_sides
    # Every file is read before the first answer, so a bad one late in a folder leaves nothing half-saved.
    for path in paths:
        load_photo(path, mode=task.photo_mode, min_side=min_side, max_side=max_side)
    folder = check_dir(save_inputs, "--save-inputs") if save_inputs is not None else None
    results = []
    stems = unique_stems(paths)
    for path, stem in progress_over(list(zip(paths, stems, strict=True)), "classifying", progress):
        img, notes = load_photo(path, mode=task.photo_mode, min_side=min_side, max_side=max_side)
        x, more = task.photo_input(img)
        result = {"file": str(path), "notes": notes + more, "top": classify(model, task, x, top)}
        if folder is not None:
            target = folder / f"{stem}_input.png"
            atomic_write(target, partial(_save_png, x))
            result["input"] = str(target)
        results.append(result)
    return results


def _save_png(x: torch.Tensor, path: Path) -> None:
    """A prepared uint8 (C,H,W) image as the PNG of exactly the pixels the model sees."""
    pixels = x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path, format="PNG")


@torch.inference_mode()
def classify(model: torch.nn.Module, task: Task, x: torch.Tensor, top: int = 3) -> list[tuple[str, float]]:
    """The `top` most likely classes (at most all of them) of one prepared uint8 (C,H,W) image, with
    their probabilities."""
    probs = model(task.eval_inputs(x[None]))[0].softmax(0)
    p, c = probs.topk(min(top, len(task.classes)))
    return [(task.classes[i], float(q)) for q, i in zip(p, c.tolist(), strict=True)]
