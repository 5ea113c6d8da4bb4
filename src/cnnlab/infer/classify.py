"""A classifier on people's photos: the top classes of each (with the input the model saw, if asked), and
its explanation: Grad-CAM of the prediction and of a second class beside integrated gradients."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from .. import attribution
from ..config import RunConfig
from ..errors import ConfigError, NothingFound
from ..outputs import atomic_write, check_dir, progress_over
from ..tasks import Task
from . import photos

if TYPE_CHECKING:
    from .predict import Options

# Integration steps: on the shipped resnet (max-pooling) the completeness gap was 3-10% of the logit's rise
# at 64 steps, 2% at 128 and under 1% at 256 (about 0.8 s an image on 2 cores).
IG_STEPS = 256
EXPLAIN_SIDES = None  # a classifier's input has its own size: explain takes no working size


def predict_files(
    run_dir: Path, model: torch.nn.Module, cfg: RunConfig, task: Task, paths: list[Path], opts: Options
) -> list[dict[str, Any]]:
    """The `opts.top` classes of each image, and NAME_input.png in `opts.save_inputs` if given; for an
    image in which the task finds nothing to classify, no classes and "nothing_found" saying why."""
    if opts.out is not None:
        raise ConfigError(f"out {opts.out}: {cfg.task} predictions write no files; drop the out argument")
    if opts.max_side is not None or opts.tta:
        raise ConfigError(f"{cfg.task} predictions take no max_side or tta (segmentation only); drop them")
    folder = check_dir(opts.save_inputs, "--save-inputs") if opts.save_inputs is not None else None
    results = []
    for path, stem, img, notes in progress_over(photos(task, paths), "classifying", opts.progress, len(paths)):
        try:
            x, more = task.photo_input(img)
        except NothingFound as e:
            results.append({"file": str(path), "notes": notes, "top": [], "nothing_found": str(e)})
            continue
        top = classify(model, task, x, opts.top)
        result = {"file": str(path), "notes": notes + more, "top": top, "nothing_found": None}
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


def explain_photo(
    model: torch.nn.Module,
    task: Task,
    img: torch.Tensor,
    notes: list[str],
    target: int | None,
    out: Path,
    stem: str,
    max_side: int | None = None,
) -> dict[str, Any]:
    """OUT/STEM_explain.png: the image, Grad-CAM of the prediction and of `target` (default the runner-up),
    integrated gradients of the prediction and the top probabilities; returns the numbers. `max_side` is
    not used (a classifier sees its own input size): the signature is every kind's `explain_photo`."""
    from ..plots.explain import plot_attributions

    x_u8, more = task.photo_input(img)
    notes += more
    x = task.eval_inputs(x_u8[None])
    with torch.no_grad():
        probs = model(x)[0].softmax(0)
    ranked = probs.argsort(descending=True).tolist()
    pred = ranked[0]
    other = target if target is not None and target != pred else ranked[1]
    if target == pred:
        notes.append(f"--class {task.classes[target]} is the prediction; the runner-up is shown beside it")
    cams = attribution.grad_cam(model, x.expand(2, -1, -1, -1), torch.tensor([pred, other]))
    baseline = attribution.normalised_black(task.normalise, x_u8.shape)
    attr, delta = attribution.integrated_gradients(model, x, pred, baseline, IG_STEPS)
    names = task.classes
    top = [[names[i], float(probs[i])] for i in ranked[: min(5, len(names))]]
    why = "your class" if other == target else "runner-up"
    panels = [
        (f"Grad-CAM: {names[pred]} ({probs[pred]:.0%})", cams[0], "cam"),
        (f"Grad-CAM: {names[other]} ({probs[other]:.0%}, {why})", cams[1], "cam"),
        (f"integrated gradients: {names[pred]}", attr[0].sum(0), "signed"),
    ]
    png = plot_attributions(x_u8, panels, top, out / f"{stem}_explain", f"{names[pred]} ({probs[pred]:.1%})")
    return {
        **json.loads(png.with_suffix(".json").read_text()),  # the figure's own numbers, kept in one file
        "figure": str(png),
        "predicted": names[pred],
        "explained": [names[pred], names[other]],
        "top": top,
        "cam_peak": [attribution.peak(c) for c in cams],
        "integrated_gradients": {
            "baseline": "black image",
            "steps": IG_STEPS,
            "sum": float(attr.sum()),
            "completeness_gap": float(delta[0]),
        },
    }
