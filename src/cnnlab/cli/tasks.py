"""The commands every task has: `cnnlab TASK train|evaluate|predict|tune`, plus fashion's activation sweep.

Torch-heavy modules are imported inside the commands, so that `--help` answers at once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import typer

from ..catalog import TASKS
from ..config import ReportLevel, recipe_names
from ..errors import CnnlabError
from ..sizes import MAX_SIDE, MAX_WORK_SIDE, MIN_WORK_SIDE
from .tune import add_tune

OVERRIDE_HELP = "Override a recipe value, e.g. --set train.epochs=3 --set optim.lr=3e-4 (repeatable)."
PROGRESS_HELP = "Show progress bars (on stderr)."
MODEL_HELP = "A shipped model's name (see `cnnlab models`) or a run folder; default: the shipped {task} model."
RUN_HELP = "A run folder of this task (trained with `cnnlab {task} train`)."
IMAGES_HELP = "Image files, folders of images or quoted patterns ('photos/*.jpg'), after an optional run folder"
JSON_HELP = "Print the results as one JSON document on stdout, for scripts (progress and notes go to stderr)."


def _train(sub: typer.Typer, task: str) -> None:
    info = TASKS[task]
    fallback = f"; {info.fallback_recipe} for images under 16 px or without cnnlab\\[pretrained]"
    default = info.default_recipe + (fallback if info.fallback_recipe else "")

    @sub.command()
    def train(
        recipe: str | None = typer.Option(
            None,
            metavar="NAME|FILE",
            help=f"Recipe name ({', '.join(recipe_names(task))}) or a YAML file (default: {default}).",
        ),
        set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=OVERRIDE_HELP),
        epochs: int | None = typer.Option(None, help="Shortcut for --set train.epochs=N; with --resume: train to N."),
        batch_size: int | None = typer.Option(None, help="Shortcut for --set train.batch_size=N."),
        lr: float | None = typer.Option(None, help="Shortcut for --set optim.lr=X."),
        seed: int | None = typer.Option(None, help="Shortcut for --set train.seed=N."),
        limit: int | None = typer.Option(None, help="Use only N training images (quick tries)."),
        report: ReportLevel | None = typer.Option(
            None,
            help="Shortcut for --set explain.report=X. full: every figure, with PDF copies, and the explanations; "
            "summary: curves and the splits' figures, no explanations (quicker); none: no figures or report.html. "
            "Default: the recipe's (full, but summary for the quick fashion recipe fast).",
        ),
        data_dir: str | None = typer.Option(None, "--data", "--data-dir", metavar="DIR", help=TASKS[task].data_help),
        out: Path | None = typer.Option(None, metavar="DIR", help="Run folder (default: runs/<task>-<recipe>-<time>)."),
        resume: Path | None = typer.Option(
            None,
            metavar="RUN",
            help="Continue the run in this folder where it stopped (also takes --epochs and --data-dir).",
        ),
        device: str = typer.Option("cpu", help="cpu or cuda (under torchrun: one GPU per process)."),
        max_steps: int | None = typer.Option(
            None, min=1, help="Stop after N optimizer steps in total and save a checkpoint; continue with --resume."
        ),
        tensorboard: bool = typer.Option(
            # Escaped: the help is rich markup, where [tensorboard] would be a style tag and vanish.
            False,
            help="Also log to RUN/tensorboard (needs the extra: pip install 'cnnlab\\[tensorboard]').",
        ),
        progress: bool = typer.Option(True, help=PROGRESS_HELP),
    ) -> None:
        """Train a model; writes config, metrics.jsonl, checkpoints, figures and report.html into one run folder.

        Each epoch's line shows the training loss, then the validation numbers that pick the best checkpoint.
        Under torchrun (`torchrun --nproc_per_node=N -m cnnlab ...`) the processes share each batch."""
        from .. import api

        if resume is not None:
            fixed = {"--recipe": recipe, "--set": set_, "--batch-size": batch_size, "--lr": lr, "--seed": seed}
            fixed |= {"--limit": limit, "--out": out, "--tensorboard": tensorboard, "--report": report}
            if given := [name for name, value in fixed.items() if value]:
                raise CnnlabError(
                    f"{given[0]} with --resume: a resumed run keeps its settings (only --epochs and --data-dir may "
                    "change); start a new run with --out to change them"
                )
            res = api.train_config(
                None, resume, resume=True, device=device, progress=progress, max_steps=max_steps, epochs=epochs,
                data_dir=data_dir,
            )  # fmt: skip
        else:
            cfg = api.resolve_config(
                task,
                recipe,
                [*set_, *(["train.tensorboard=true"] if tensorboard else [])],
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                limit=limit,
                data_dir=data_dir,
                report=report,
            )
            res = api.train_config(cfg, out, device=device, progress=progress, max_steps=max_steps)
        if res.interrupted:
            raise typer.Exit(130)
        if os.environ.get("RANK", "0") == "0":
            typer.echo(str(res.run_dir))


def _evaluate(sub: typer.Typer, task: str) -> None:
    @sub.command()
    def evaluate(
        run: Path = typer.Argument(..., metavar="RUN", help="Run folder."),
        split: Literal["test", "val"] = typer.Option("test", help="Split to evaluate."),
        checkpoint: Literal["best", "last"] = typer.Option("best", help="best (by validation) or last."),
        data_dir: str | None = typer.Option(None, metavar="DIR", help="Where the run's dataset is now, if it moved."),
        data: Path | None = typer.Option(
            None,
            metavar="DIR",
            # Fashion-MNIST runs evaluate on the official test set only: the option would just fail there.
            hidden=not TASKS[task].external_eval,
            help="Evaluate on another labelled folder instead (laid out like the run's data).",
        ),
        report: ReportLevel | None = typer.Option(
            None,
            help="Draw the split's figures at this level instead of the run's (full adds the explanations a summary "
            "run left out).",
        ),
    ) -> None:
        """Evaluate a run's checkpoint: prints the per-class table, writes eval_<split>.json and the split's
        figures into the run, and refreshes its report.html."""
        from rich.console import Console

        from .. import api

        m = api.evaluate(run, split=split, which=checkpoint, data_dir=data_dir, external=data, report=report)
        console = Console(highlight=False, soft_wrap=True)
        console.print(_per_class_table(run, m, checkpoint))
        figures = sorted(p.name for p in (run / "figures").glob(f"*_{m['split']}.png"))
        if figures:
            console.print(f"figures: {run / 'figures'} ({', '.join(figures)})")
        if (run / "report.html").is_file():
            console.print(f"report: {run / 'report.html'}")


def _per_class_table(run: Path, m: dict, checkpoint: str):
    """The split's per-class metrics as a rich Table, the task's totals as its last row (as in the report) and
    the summary as its title."""
    from rich.table import Table

    from ..runs import load_run_config
    from ..tasks import get_task

    task = get_task(load_run_config(run))
    fmt = "{:.2%}" if task.percent else "{:.4f}"
    title = f"{m['split']} ({checkpoint} checkpoint, {m['n']} images): {task.summary_line(m)}"
    table = Table("class", *(label for _, label, _ in task.per_class), title=title, title_justify="left", box=None)
    for c, name in enumerate(task.classes):
        table.add_row(name, *(fmt.format(m[key][c]) for key, _, _ in task.per_class))
    table.add_section()
    table.add_row(task.total_row, *(fmt.format(m[mean]) for _, _, mean in task.per_class))
    return table


def _model_and_files(task: str, files: list[Path], model: str | None) -> tuple[Path, list[Path]]:
    """`[RUN] FILE...` and --model -> the model folder and the files; a leading run folder is the model."""
    if files and (files[0] / "config.yaml").is_file():
        if model is not None:
            raise CnnlabError(f"{files[0]} and --model {model}: give the model once")
        model, files = str(files[0]), files[1:]
    if not files:
        raise CnnlabError(f"no image files given; e.g. `cnnlab {task} predict RUN photo.jpg`")
    from ..zoo import resolve_model

    return resolve_model(model, task), files


def _notes(r: dict, as_json: bool) -> None:
    for note in r["notes"]:
        typer.echo(f"{r['file']}: note: {note}" if as_json else f"  note: {note}", err=as_json)


def _classify_predict(sub: typer.Typer, task: str) -> None:
    model_help = (MODEL_HELP if TASKS[task].builtin else RUN_HELP).format(task=task)
    what = TASKS[task].photo_help

    @sub.command("predict")
    def predict(
        files: list[Path] = typer.Argument(..., metavar="[RUN] IMAGE...", help=f"{IMAGES_HELP} ({what})."),
        model: str | None = typer.Option(None, metavar="NAME|RUN", help=model_help),
        top: int = typer.Option(3, min=1, max=10, help="How many classes to show."),
        save_inputs: Path | None = typer.Option(
            None, metavar="DIR", help="Save the input the model saw for each image as DIR/NAME_input.png."
        ),
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
        progress: bool = typer.Option(True, help=PROGRESS_HELP),
    ) -> None:
        """Classify your own images; prints the top classes and what was done to each image."""
        from .. import api

        run, images = _model_and_files(task, files, model)
        results = api.predict(run, images, top=top, save_inputs=save_inputs, progress=progress)
        for r in results:
            if not as_json:
                guesses = r["nothing_found"] or ", ".join(f"{c} {p:.1%}" for c, p in r["top"])
                typer.echo(f"{r['file']}: {guesses}" + (f" (input: {r['input']})" if "input" in r else ""))
            _notes(r, as_json)
        if as_json:
            typer.echo(json.dumps([r | {"top": [{"class": c, "p": p} for c, p in r["top"]]} for r in results]))


def _segment_predict(sub: typer.Typer, task: str) -> None:
    model_help = (MODEL_HELP if TASKS[task].builtin else RUN_HELP).format(task=task)

    @sub.command("predict")
    def predict(
        files: list[Path] = typer.Argument(
            ..., metavar="[RUN] PHOTO...", help=f"{IMAGES_HELP} ({TASKS[task].photo_help})."
        ),
        model: str | None = typer.Option(None, metavar="NAME|RUN", help=model_help),
        out: Path | None = typer.Option(
            None,
            "-o",
            "--out",
            metavar="DIR",
            help="Output folder (default: RUN/predictions; ./predictions for a shipped model).",
        ),
        max_side: int = typer.Option(
            MAX_WORK_SIDE,
            min=MIN_WORK_SIDE,
            max=MAX_SIDE,
            help="Segment at this many px on the photo's longer side (overlapping tiles), then resize back.",
        ),
        tta: bool = typer.Option(False, help="Also average mirrored and rescaled views, as the recipe evaluates."),
        alpha: float = typer.Option(
            0.5, min=0.0, max=1.0, help="Weight of the class colours in the overlay (0: photo only, 1: colours only)."
        ),
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
        progress: bool = typer.Option(True, help=PROGRESS_HELP),
    ) -> None:
        """Segment your own photos: writes NAME_labels.png (class indices), NAME_overlay.png (with a legend),
        NAME_side_by_side.jpg (photo | overlay) and NAME_areas.json; prints each class's share of the photo."""
        from .. import api

        run, photos = _model_and_files(task, files, model)
        results = api.predict(run, photos, out=out, max_side=max_side, tta=tta, alpha=alpha, progress=progress)
        for r in results:
            if not as_json:
                shares = ", ".join(f"{c} {p:.1%}" for c, p in r["area"].items())
                typer.echo(f"{r['file']}: {shares} -> {r['overlay']}")
            _notes(r, as_json)
        if as_json:
            typer.echo(json.dumps(results))


def _sweep(sub: typer.Typer) -> None:
    @sub.command("sweep-activations")
    def sweep(
        recipe: str = typer.Option("seed-a", metavar="NAME|FILE", help="Recipe to vary."),
        set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=OVERRIDE_HELP),
        epochs: int | None = typer.Option(None, help="Shortcut for --set train.epochs=N."),
        limit: int | None = typer.Option(None, help="Use only N training images (quick tries)."),
        out: Path | None = typer.Option(None, metavar="DIR", help="Folder for the three runs and the table."),
        progress: bool = typer.Option(True, help=PROGRESS_HELP),
    ) -> None:
        """Train with relu, leaky_relu and sigmoid; tabulate validation and test accuracy."""
        from .. import api

        results = api.sweep_activations(recipe, out, set_, progress=progress, epochs=epochs, limit=limit)
        for act, r in results.items():
            typer.echo(f"{act:>10}: best val {r['best_val_acc']:.2%}  test {r['test_acc']:.2%}  {r['time_s']:.0f}s")


def task_app(task: str) -> typer.Typer:
    """`cnnlab TASK ...`: the commands of one task, with only the options that task takes."""
    sub = typer.Typer(help=TASKS[task].title, no_args_is_help=True)
    _train(sub, task)
    _evaluate(sub, task)
    {"classify": _classify_predict, "segment": _segment_predict}[TASKS[task].kind](sub, task)
    if TASKS[task].activation_sweep:
        _sweep(sub)
    add_tune(sub, task)
    return sub
