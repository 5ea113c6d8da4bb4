"""`cnnlab explain`: why a model decided what it did on the user's own images, as figures and numbers.

Classifiers: Grad-CAM for the predicted class and for a second one (the runner-up, or `--class`), beside
integrated gradients (a gradient-path method, another family) and the probabilities. Segmenters: the
per-pixel confidence and entropy maps and each class's Grad-CAM over the photo. All in full precision:
gradients under bf16 would be too coarse to attribute with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .. import attribution as interpret
from ..data.images import load_photo, shrink
from ..engine.checkpoint import load_model
from ..errors import ConfigError
from ..outputs import check_dir, unique_stems, write_json
from ..sizes import MAX_EXPLAIN_SIDE, MAX_SIDE, MAX_WORK_SIDE, MIN_WORK_SIDE
from ..tasks import Task, get_task

# Integration steps: on the shipped resnet (max-pooling) the completeness gap was 3-10% of the logit's rise
# at 64 steps, 2% at 128 and under 1% at 256 (about 0.8 s an image on 2 cores).
IG_STEPS = 256


def _class_index(task: Task, name: str | None) -> int | None:
    if name is None:
        return None
    if name not in task.classes:
        raise ConfigError(f"--class {name}: not a class of this model; choose one of {', '.join(task.classes)}")
    return task.classes.index(name)


def explain_files(
    run_dir: Path, paths: list[Path], out: Path, class_name: str | None = None, max_side: int = MAX_WORK_SIDE
) -> list[dict[str, Any]]:
    """Write NAME_explain.png and NAME_explain.json per image into `out` (segmentation: also NAME_cams.png)
    and return the numbers. `class_name`: the class to explain besides the prediction (classification)
    or the only class whose activation map is drawn (segmentation; default: every class)."""
    model, cfg = load_model(run_dir)
    model.float().eval()
    task = get_task(cfg)
    target = _class_index(task, class_name)
    if task.kind == "segment" and not MIN_WORK_SIDE <= max_side <= MAX_EXPLAIN_SIDE:
        raise ConfigError(f"max_side {max_side}: choose {MIN_WORK_SIDE} to {MAX_EXPLAIN_SIDE} px for explanations")
    out = check_dir(out, "--out")
    sides = task.photo_sides if task.kind == "classify" else (32, MAX_SIDE)
    # Every image is read before anything is written: a bad file stops the command with nothing half done.
    photos = [(p, *load_photo(p, mode=task.photo_mode, min_side=sides[0], max_side=sides[1])) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for (path, img, notes), stem in zip(photos, unique_stems(paths), strict=True):
        if task.kind == "classify":
            info = _explain_classification(model, task, img, notes, target, out / f"{stem}_explain")
        else:
            info = _explain_segmentation(model, task, img, notes, target, max_side, out / stem)
        info = {"file": str(path), "notes": notes, **info}
        write_json(out / f"{stem}_explain.json", info)
        results.append(info)
    return results


def _explain_classification(
    model: torch.nn.Module, task: Task, img: torch.Tensor, notes: list[str], target: int | None, path: Path
) -> dict[str, Any]:
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
    cams = interpret.grad_cam(model, x.expand(2, -1, -1, -1), torch.tensor([pred, other]))
    baseline = interpret.normalised_black(task.normalise, x_u8.shape)
    attr, delta = interpret.integrated_gradients(model, x, pred, baseline, IG_STEPS)
    names = task.classes
    top = [[names[i], float(probs[i])] for i in ranked[: min(5, len(names))]]
    why = "your class" if other == target else "runner-up"
    panels = [
        (f"Grad-CAM: {names[pred]} ({probs[pred]:.0%})", cams[0], "cam"),
        (f"Grad-CAM: {names[other]} ({probs[other]:.0%}, {why})", cams[1], "cam"),
        (f"integrated gradients: {names[pred]}", attr[0].sum(0), "signed"),
    ]
    png = plot_attributions(x_u8, panels, top, path, f"{names[pred]} ({probs[pred]:.1%})")
    return {
        **json.loads(png.with_suffix(".json").read_text()),  # the figure's own numbers, kept in one file
        "figure": str(png),
        "predicted": names[pred],
        "explained": [names[pred], names[other]],
        "top": top,
        "cam_peak": [_peak(c) for c in cams],
        "integrated_gradients": {
            "baseline": "black image",
            "steps": IG_STEPS,
            "sum": float(attr.sum()),
            "completeness_gap": float(delta[0]),
        },
    }


def _peak(cam: torch.Tensor) -> list[float]:
    """(row, column) of a map's maximum as fractions of its height and width."""
    h, w = cam.shape
    r, c = divmod(int(cam.argmax()), w)
    return [round((r + 0.5) / h, 3), round((c + 0.5) / w, 3)]


def _explain_segmentation(
    model: torch.nn.Module,
    task: Task,
    img: torch.Tensor,
    notes: list[str],
    target: int | None,
    max_side: int,
    stem: Path,
) -> dict[str, Any]:
    from ..plots.explain import plot_class_cams, plot_confidence_cases

    _, h, w = img.shape
    img = shrink(img, max_side)
    if img.shape[1:] != (h, w):
        notes.append(f"explained at {img.shape[2]}x{img.shape[1]} px (max side {max_side})")
    x = task.eval_inputs(img[None])
    with torch.no_grad():
        probs = model(x).softmax(1)
    conf, ent = interpret.confidence_maps(probs)
    pred = probs.argmax(1)
    colors = task.rgb
    name = stem.name
    figure = plot_confidence_cases(
        img[None], None, pred, conf, ent, [name], None, task.classes, colors, Path(f"{stem}_explain"),
        f"{name}: prediction, confidence and entropy", interpret.max_entropy(len(task.classes)),
    )  # fmt: skip
    chosen = [target] if target is not None else range(len(task.classes))
    layer = interpret.cam_layer(model, x, "segment")[1]
    cams = {task.classes[c]: interpret.grad_cam(model, x, c, "segment", layer)[0] for c in chosen}
    cam_png = plot_class_cams(
        img, cams, pred[0], colors, task.classes, Path(f"{stem}_cams"),
        f"{name}: Grad-CAM of {'each class' if target is None else task.classes[target]}",
    )  # fmt: skip
    area = torch.bincount(pred.flatten(), minlength=len(task.classes)).double() / pred.numel()
    return {
        **json.loads(figure.with_suffix(".json").read_text()),
        "figure": str(figure),
        "cams": str(cam_png),
        "size": [int(img.shape[2]), int(img.shape[1])],
        "mean_confidence": float(conf.mean()),
        "unsure_share": float((conf < 0.5).double().mean()),
        "mean_entropy": float(ent.mean()),
        "area": {c: float(a) for c, a in zip(task.classes, area, strict=True)},
        "cam_peak": {c: _peak(m) for c, m in cams.items()},
    }
