"""`cnnlab explain`: why a model decided what it did on people's own images, as figures and numbers.

Classifiers: Grad-CAM for the predicted class and for a second one (the runner-up, or `--class`), beside
integrated gradients (a gradient-path method, another family) and the probabilities. Segmenters: the
per-pixel confidence and entropy maps and each class's Grad-CAM over the photo. All in full precision:
gradients under bf16 would be too coarse to attribute with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine.checkpoint import load_model
from ..errors import ConfigError, NothingFound
from ..outputs import check_dir, suffix_slug, write_json
from ..sizes import MAX_WORK_SIDE
from ..tasks import Task, get_task
from . import handler, photos


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
    or the only class whose activation map is drawn (segmentation; default: every class); its files are
    NAME_<class>_explain.png and so on, beside the plain explanation's, not over them. An image in which
    the task finds nothing to explain (a classifier's photo with no garment) gets no files and
    "nothing_found" saying why."""
    model, cfg = load_model(run_dir)
    model.float().eval()
    task = get_task(cfg)
    kind = handler(task)
    target = _class_index(task, class_name)
    if kind.EXPLAIN_SIDES and not kind.EXPLAIN_SIDES[0] <= max_side <= kind.EXPLAIN_SIDES[1]:
        lo, hi = kind.EXPLAIN_SIDES
        raise ConfigError(f"max_side {max_side}: choose {lo} to {hi} px for explanations")
    out = check_dir(out, "--out")
    results = []
    tag = f"_{suffix_slug(class_name)}" if class_name is not None else ""
    for path, stem, img, notes in photos(task, paths):
        stem += tag
        try:
            info = kind.explain_photo(model, task, img, notes, target, out, stem, max_side)
        except NothingFound as e:
            results.append({"file": str(path), "notes": notes, "nothing_found": str(e)})
            continue
        info = {"file": str(path), "notes": notes, **info}
        write_json(out / f"{stem}_explain.json", info)
        results.append(info)
    return results
