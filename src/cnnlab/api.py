"""The Python API: what the CLI does, callable from a notebook in a few lines.

import cnnlab
run = cnnlab.train("fashion", "seed-a", epochs=2)
cnnlab.evaluate(run.run_dir)["acc"]
cnnlab.predict(run.run_dir, ["shoe.png"])     # or cnnlab.predict("fashion", [...]): a shipped model
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import runs
from .catalog import TASKS
from .config import RunConfig, load_config, parse_override
from .engine.state import TrainResult, console
from .errors import CnnlabError, ConfigError
from .outputs import atomic_write, check_dir
from .resolve import resolve_config, shortcut_overrides

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .checks import Findings

__all__ = ["Run", "check", "evaluate", "explain", "load_model", "predict", "sweep_activations", "train", "tune"]


@dataclass
class Run(TrainResult):
    """What `train` returns: the run's folder (`run_dir`), its best validation result (`best`), every logged
    row (`history`) and whether it completed. In a notebook it shows its summary table and key figures;
    `figure(name)` is any of its figures as a matplotlib `Figure` (`figure_names()` lists them)."""

    def figure(self, name: str) -> Figure:
        from .report.notebook import run_figure

        return run_figure(self.run_dir, name)

    def figure_names(self) -> list[str]:
        from .report.notebook import figure_names

        return figure_names(self.run_dir)

    def _repr_html_(self) -> str:
        from .report.notebook import run_html

        return run_html(self.run_dir)


def train(
    task: str,
    recipe: str | None = None,
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    **shortcuts: Any,
) -> Run:
    """Train a model as `cnnlab TASK train` does and return the run (`.run_dir`, `.best`, `.history`; in a
    notebook it shows its summary and key figures, `.figure(name)` any of its figures).

    task: "fashion" or "facade" (built-in data), "classify" or "segment" (your folder: `data_dir`);
    recipe: a recipe name (see `recipes/TASK/`) or a YAML file, default the task's as on the CLI
    (`cnnlab TASK train --help` names it);
    overrides: `section.key=value` strings as `--set` takes them; shortcuts: epochs, batch_size, lr,
    seed, data_dir, limit, report ("full", "summary" or "none": see `explain.report`). The run folder is
    `out`, default runs/<task>-<recipe>-<time>.
    """
    cfg = resolve_config(task, recipe, overrides, **shortcuts)
    return train_config(cfg, Path(out) if out else None, progress=progress)


def train_config(cfg: RunConfig | None, run_dir: Path | None = None, **options: Any) -> Run:
    """`engine.trainer.train` (same arguments), then the run's report.html from what it wrote: a partial report
    for a stopped run, none where the config says `explain.report: none`. The loop itself writes figures
    and evaluations only."""
    from .engine import trainer

    result = trainer.train(cfg, run_dir, **options)
    if result.finished and runs.load_run_config(result.run_dir).explain.report != "none":
        from .report.run_page import write_report

        console.print(f"report: {write_report(result.run_dir, partial=not result.completed)}")
    return Run(**{f.name: getattr(result, f.name) for f in fields(result)})


def evaluate(
    run_dir: str | Path,
    split: str = "test",
    which: str = "best",
    data_dir: str | Path | None = None,
    external: str | Path | None = None,
    report: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run's `which` ("best" or "last") checkpoint on `split` ("test" or "val").

    Writes eval_<split>.json and that split's figures into the run, refreshes its report.html and returns
    the metrics: "acc" (and "per_class_acc") for Fashion-MNIST; "map", "miou", "ap", "iou", "acc" for
    facades; "n" images. `data_dir` is where the run's data set is now, if it moved; `external` is another
    labelled facade folder to evaluate on instead. `report` ("full", "summary", "none") draws this split's
    figures at another level than the run's `explain.report`: "full" adds a summary run's explanations
    and PDF copies. Prints nothing.
    """
    from .report.run_page import write_report
    from .zoo import is_shipped_name

    if is_shipped_name(run_dir):
        raise ConfigError(
            f"{run_dir} is a shipped model: its validation and test metrics are on its card (`cnnlab models`); "
            "evaluate takes a run folder"
        )
    from .engine import evaluation

    metrics = evaluation.evaluate(
        Path(run_dir),
        split=split,
        which=which,
        data_dir=data_dir,
        external=Path(external) if external is not None else None,
        report=report,
    )
    if (report or runs.load_run_config(Path(run_dir)).explain.report) != "none":
        write_report(Path(run_dir))
    return metrics


def predict(
    model: str | Path,
    images: Sequence[str | Path],
    *,
    top: int = 3,
    out: str | Path | None = None,
    max_side: int | None = None,
    tta: bool = False,
    alpha: float = 0.5,
    save_inputs: str | Path | None = None,
    progress: bool = False,
) -> list[dict]:
    """Predict on your own images with a run folder or a shipped model's name ("fashion", "facade").

    `images`: files, folders (their image files) and glob patterns such as "photos/*.jpg".
    Classifiers: one dict per image with "file", "top" (`top` pairs of class and probability), "notes"
    (what was done to the image) and "nothing_found": None, or why there is no guess (a photo in which
    no garment stands out: "top" is empty); `save_inputs` names a folder for NAME_input.png, exactly the
    pixels the model saw ("input" in the dict). Segmenters: also write NAME_labels.png, NAME_overlay.png
    (class colours at weight `alpha` over the photo, with a legend), NAME_side_by_side.jpg and
    NAME_areas.json into `out` (default: RUN/predictions, or ./predictions for a shipped model) and return
    "area" (class: share of the photo) and the paths written. Segmentation works at `max_side` px on the
    photo's longer side (default 256, the scale the facade nets learned), in overlapping tiles; `tta`
    averages the views the model's recipe evaluates with (mirrored, rescaled: slower). `progress` shows a
    progress bar on stderr.
    """
    from .data.images import image_files
    from .infer.predict import predict_files
    from .sizes import MAX_SIDE, MIN_WORK_SIDE
    from .zoo import resolve_any

    if not 1 <= top <= 10:
        raise ConfigError(f"top {top}: choose 1 to 10 classes")
    if max_side is not None and not MIN_WORK_SIDE <= max_side <= MAX_SIDE:
        raise ConfigError(f"max_side {max_side}: choose {MIN_WORK_SIDE} to {MAX_SIDE} px")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha {alpha}: choose 0 (the photo alone) to 1 (the class colours alone)")
    return predict_files(
        resolve_any(model),
        image_files([Path(p) for p in images]),
        top=top,
        out=Path(out) if out else None,
        max_side=max_side,
        tta=tta,
        alpha=alpha,
        save_inputs=Path(save_inputs) if save_inputs is not None else None,
        progress=progress,
    )


def explain(
    model: str | Path,
    images: Sequence[str | Path],
    *,
    out: str | Path = "explanations",
    class_name: str | None = None,
    max_side: int | None = None,
) -> list[dict]:
    """Explain a run's or shipped model's decisions on your images (files, folders, glob patterns); writes
    figures into `out`.

    Classifiers: NAME_explain.png shows the image, Grad-CAM maps of the predicted class and of a second
    one (`class_name`, default the runner-up), integrated gradients of the predicted class and the top
    probabilities; the dict (also NAME_explain.json) has "predicted", "top", "explained" and the
    attributions' numbers. Segmenters, at `max_side` px: NAME_explain.png (prediction, confidence,
    entropy) and NAME_cams.png (Grad-CAM of `class_name`, default every class); the dict has
    "mean_confidence", "unsure_share" (pixels under 50%), "mean_entropy" (nats) and "area". An image with
    nothing to explain (no garment found) gets no figures and a dict of "file", "notes", "nothing_found".
    """
    from .data.images import image_files
    from .infer.explain import explain_files
    from .sizes import MAX_WORK_SIDE
    from .zoo import resolve_any

    paths = image_files([Path(p) for p in images])
    if not paths:
        raise ConfigError("no image files given; e.g. `cnnlab explain fashion shoe.png`")

    return explain_files(resolve_any(model), paths, Path(out), class_name, max_side or MAX_WORK_SIDE)


def load_model(model: str | Path, which: str = "best", device: str = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """The network of a run folder or shipped model as a plain `torch.nn.Module` in eval mode, and its
    configuration. It takes normalised float NCHW input (see `cnnlab export`) and returns logits."""
    from .engine.checkpoint import load_model as load
    from .zoo import resolve_any

    return load(resolve_any(model), which, device)


def sweep_activations(
    recipe: str = "seed-a",
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    **shortcuts: Any,
) -> dict[str, dict]:
    """Train one Fashion-MNIST run per activation (relu, leaky_relu, sigmoid) into `out` and tabulate
    their validation and test accuracy and training time (also in sweep.md, sweep.json and sweep_curves.png)."""
    from .outputs import write_json
    from .plots.figures import plot_sweep

    base = resolve_config("fashion", recipe, overrides, **shortcuts)
    out = Path(out) if out else runs.default_run_dir(base).with_name(f"sweep-activations-{base.recipe}")
    check_dir(out, "--out")
    results: dict[str, dict] = {}
    for act in ("relu", "leaky_relu", "sigmoid"):
        cfg = base.model_copy(deep=True)
        cfg.model.activation = act
        res = train_config(cfg, out / act, progress=progress)
        hist = [r for r in res.history if r["kind"] == "epoch"]
        test = runs.read_eval(out / act, "test")
        results[act] = {
            "best_val_acc": res.best,
            "final_val_acc": hist[-1]["val_acc"],
            "test_acc": test["acc"] if test else None,
            "time_s": hist[-1]["time_s"],
            "run": str(out / act),
        }
    write_json(out / "sweep.json", results)
    lines = ["| activation | best val acc | final val acc | test acc | training time |", "|---|--:|--:|--:|--:|"]
    lines += [
        f"| {a} | {r['best_val_acc']:.2%} | {r['final_val_acc']:.2%} | {r['test_acc']:.2%} | {r['time_s']:.1f} s |"
        for a, r in results.items()
    ]
    atomic_write(out / "sweep.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    # Not "sweep": the figure's numbers (NAME.json) would replace the results' sweep.json.
    plot_sweep({a: runs.read_history(out / a) for a in results}, out / "sweep_curves")
    return results


def tune(
    task: str,
    recipe: str | None = None,
    *,
    params: Sequence[str] = (),
    space: str | Path | None = None,
    trials: int = 20,
    timeout: float | None = None,
    study: str | Path | None = None,
    storage: str | None = None,
    workers: int = 1,
    resume: str | Path | None = None,
    pruner: str = "median",
    prune_after: int = 3,
    overrides: Sequence[str] = (),
    **shortcuts: Any,
) -> dict[str, Any]:
    """Search settings with Optuna as `cnnlab TASK tune` does; returns the study's summary (counts; the best
    trial, its value, params and run folder; `best_test`, its test metrics, the only trial whose test split is
    read; `base_value`, the recipe's own settings' value; the report).
    Every trial starts from `recipe` + `overrides` + shortcuts (epochs, limit, data_dir, ...) and varies
    the keys of the search space: `params` ("optim.lr=1e-4..1e-2:log", "train.batch_size=64,128"), a `space`
    YAML file, else the recipe's `tune:` section. The study folder is `study` (default
    runs/tune-<task>-<recipe>-<time>); `resume` continues one (or joins it from another process or host);
    `storage` a database URL several hosts share. `pruner` (median, hyperband, none) may stop a trial from
    epoch `prune_after` on."""
    from .study import create, read_spec, run_study
    from .study.space import param_option, recipe_space, space_file

    if resume is not None:
        given = {"recipe": recipe, "params": params, "space": space, "study": study, "overrides": overrides}
        if named := [k for k, v in {**given, **shortcuts}.items() if v]:
            raise ConfigError(f"{named[0]} with --resume: a study keeps its base and space; start a new one")
        folder = Path(resume)
        spec = read_spec(folder)
    else:
        base = resolve_config(task, recipe, overrides, **shortcuts)
        fixed = {parse_override(o).key for o in overrides} | {o.key for o in shortcut_overrides(**shortcuts)}
        if "explain.report" not in fixed and base.explain.report == "full":
            base.explain.report = "summary"  # many trials: each a cheap report, unless asked for more
        if "train.test" not in fixed:
            base.train.test = False  # choices by validation only; the best trial's test is read once, at the end
        searched = [*(space_file(Path(space)) if space else []), *map(param_option, params)]
        if not searched:  # the recipe's space, less the keys the user set for every trial (--epochs 2: not searched)
            searched = [p for p in recipe_space(task, recipe or base.recipe) if p.key not in fixed]
        folder = (
            Path(study) if study else runs.default_run_dir(base).with_name(f"tune-{runs.default_run_dir(base).name}")
        )
        spec = create(folder, base, searched, trials, pruner, storage, prune_after)
    return run_study(folder, spec, workers=workers, timeout=timeout, storage=storage, say=console.print)


def check(
    data: str | Path,
    out: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    threshold: float | None = None,
    labels: bool = True,
    label_threshold: float | None = None,
    progress: bool = True,
) -> Findings:
    """Check a data set before training, as `cnnlab check` does: duplicates (exact and near, within and
    across splits, what a random split would leak, the `data.group_key` rule that keeps them together),
    label issues (`labels`; an image is flagged when its given label's calibrated out-of-fold
    probability is under `label_threshold`, default 0.05), class balance and, for a folder, its files.
    Writes check.json and check.html into `out` (default runs/check-NAME) and returns the findings
    (`.report` as check.json holds it, `.leaks`).

    `data`: a built-in dataset ("fashion", "facade"), a folder of either kind (DIR/<class>/* for
    classify; DIR/images, DIR/masks and classes.yaml for segment), or a run folder (its data and split).
    """
    from .checks import run_check, save
    from .report.check_page import write_check_page

    if threshold is not None and not 0.5 <= threshold <= 1:  # written so that NaN fails too
        raise ConfigError(f"threshold {threshold}: give a cosine similarity from 0.5 to 1 (1: identical)")
    if label_threshold is not None and not 0 < label_threshold < 1:
        raise ConfigError(f"label threshold {label_threshold}: give a probability between 0 and 1, e.g. 0.05")
    cfg, name, run = _check_config(data, overrides)
    folder = check_dir(Path(out) if out is not None else Path("runs") / f"check-{name}", "--out")
    found = run_check(cfg, folder, source=str(data), progress=progress, threshold=threshold, labels=labels,
                      label_threshold=label_threshold, run=run)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    write_check_page(folder / "check.html", found.report, found.thumbs)
    save(found)  # check.json last: a folder with one holds a whole check
    return found


def _check_config(data: str | Path, overrides: Sequence[str]) -> tuple[RunConfig, str, Path | None]:
    """The configuration whose data and split `check` reads, a name for its output folder, and the run
    folder it came from (if it did)."""
    if isinstance(data, str) and data in TASKS and TASKS[data].builtin:
        return load_config(data, TASKS[data].default_recipe, list(overrides)), data, None
    path = Path(data).expanduser()
    if (path / "config.yaml").is_file():
        if overrides:
            raise ConfigError(f"{path}: a run folder is checked as it was split; --set is for a data set")
        cfg = runs.load_run_config(path)
        if cfg.data.dir is not None and not Path(cfg.data.dir).is_dir():
            raise CnnlabError(
                f"{path}: its data folder {cfg.data.dir} is gone (moved?); check the folder where it is now"
            )
        return cfg, path.resolve().name, path
    if not path.is_dir():
        names = ", ".join(t for t, info in TASKS.items() if info.builtin)
        raise CnnlabError(f"{data}: no such folder; give a folder of images, a run folder or one of {names}")
    # classes.yaml (or images/ beside masks/) makes a segmentation folder; a class may be called "images".
    masks = (path / "classes.yaml").is_file() or ((path / "images").is_dir() and (path / "masks").is_dir())
    task = "segment" if masks else "classify"
    return load_config(task, TASKS[task].default_recipe, [f"data.dir={path}", *overrides]), path.resolve().name, None
