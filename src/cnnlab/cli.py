"""Command line: `cnnlab fashion|facade|classify|segment train|evaluate|predict ...`. Bad input: one line, exit 2."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Literal

import typer

from . import api, runs
from .config import DEFAULT_RECIPES, KINDS, recipe_names
from .errors import CnnlabError
from .explain_photos import MAX_EXPLAIN_SIDE
from .outputs import check_file
from .segment import MAX_SIDE, MAX_WORK_SIDE, MIN_WORK_SIDE
from .tasks import get_task

app = typer.Typer(
    help="Train, evaluate and explain small CNNs: image classification and segmentation, on the built-in "
    "Fashion-MNIST and facade sets or on your own folders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

OVERRIDE_HELP = "Override a recipe value, e.g. --set train.epochs=3 --set optim.lr=3e-4 (repeatable)."


DATA_HELP = {
    "fashion": "Folder holding the Fashion-MNIST files (default: auto-detect); with --resume: where it is now.",
    "facade": "Folder of NAME.jpg + NAME.png pairs (default: auto-detect); with --resume: where it is now.",
    "classify": "Your image folder: DIR/train/<class>/*.png|jpg (optional DIR/val/, DIR/test/ alike).",
    "segment": "Your folder: DIR/images/NAME.jpg, DIR/masks/NAME.png, DIR/classes.yaml (optional val/, test/).",
}


def _task_app(task: str, title: str) -> typer.Typer:
    """The commands every task shares, bound to one task."""
    sub = typer.Typer(help=title, no_args_is_help=True)
    default_recipe = DEFAULT_RECIPES[task]

    @sub.command()
    def train(
        recipe: str | None = typer.Option(
            None, help=f"Recipe name ({', '.join(recipe_names(task))}) or a YAML file (default: {default_recipe})."
        ),
        set_: list[str] = typer.Option([], "--set", help=OVERRIDE_HELP),
        epochs: int | None = typer.Option(None, help="Shortcut for --set train.epochs=N; with --resume: train to N."),
        batch_size: int | None = typer.Option(None, help="Shortcut for --set train.batch_size=N."),
        lr: float | None = typer.Option(None, help="Shortcut for --set optim.lr=X."),
        seed: int | None = typer.Option(None, help="Shortcut for --set train.seed=N."),
        limit: int | None = typer.Option(None, help="Use only N training images (quick tries)."),
        data_dir: str | None = typer.Option(None, "--data", "--data-dir", help=DATA_HELP[task]),
        out: Path | None = typer.Option(None, help="Run folder (default: runs/<task>-<recipe>-<time>)."),
        resume: Path | None = typer.Option(
            None, help="Continue the run in this folder where it stopped (also takes --epochs and --data-dir)."
        ),
        device: str = typer.Option("cpu", help="cpu or cuda (under torchrun: one GPU per process)."),
        max_steps: int | None = typer.Option(
            None, min=1, help="Stop after N optimizer steps in total and save a checkpoint; continue with --resume."
        ),
        tensorboard: bool = typer.Option(
            False, help="Also log to RUN/tensorboard (pip install 'cnnlab[tensorboard]')."
        ),
        progress: bool = typer.Option(True, help="Show progress bars."),
    ) -> None:
        """Train a model; writes config, metrics.jsonl, checkpoints, figures and report.html into one run folder.

        Under torchrun (`torchrun --nproc_per_node=N -m cnnlab ...`) the processes share each batch."""
        if resume is not None:
            fixed = {"--recipe": recipe, "--set": set_, "--batch-size": batch_size, "--lr": lr, "--seed": seed}
            fixed |= {"--limit": limit, "--out": out, "--tensorboard": tensorboard}
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
                recipe or default_recipe,
                [*set_, *(["train.tensorboard=true"] if tensorboard else [])],
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                limit=limit,
                data_dir=data_dir,
            )
            res = api.train_config(cfg, out, device=device, progress=progress, max_steps=max_steps)
        if res.interrupted:
            raise typer.Exit(130)
        if os.environ.get("RANK", "0") == "0":
            typer.echo(str(res.run_dir))

    @sub.command()
    def evaluate(
        run: Path = typer.Argument(..., help="Run folder."),
        split: Literal["test", "val"] = typer.Option("test", help="Split to evaluate."),
        checkpoint: Literal["best", "last"] = typer.Option("best", help="best (by validation) or last."),
        data_dir: str | None = typer.Option(None, help="Where the run's dataset is now, if it moved."),
        data: Path | None = typer.Option(
            None, help="Evaluate on another labelled folder instead (laid out like the run's data; not Fashion-MNIST)."
        ),
    ) -> None:
        """Evaluate a run's checkpoint; writes eval_<split>.json and the split's figures into the run."""
        m = api.evaluate(run, split=split, which=checkpoint, data_dir=data_dir, external=data)
        summary = get_task(runs.load_run_config(run)).summary_line(m)
        typer.echo(f"{m['split']} ({checkpoint} checkpoint, {m['n']} images): {summary}")

    return sub


TITLES = {
    "fashion": "Fashion-MNIST classification (10 classes, 28x28 grey).",
    "facade": "Facade segmentation (others, facade, pillar, window, balcony).",
    "classify": "Classify your own images: a folder with a subfolder per class.",
    "segment": "Segment your own images: a folder of images, masks and classes.yaml.",
}
MODEL_HELP = "A shipped model's name (see `cnnlab models`) or a run folder; default: the shipped {task} model."
RUN_HELP = "A run folder of this task (trained with `cnnlab {task} train`)."


def _model_and_files(task: str, files: list[Path], model: str | None) -> tuple[Path, list[Path]]:
    """`[RUN] FILE...` and --model -> the model folder and the files; a leading run folder is the model."""
    if files and (files[0] / "config.yaml").is_file():
        if model is not None:
            raise CnnlabError(f"{files[0]} and --model {model}: give the model once")
        model, files = str(files[0]), files[1:]
    if not files:
        raise CnnlabError(f"no image files given; e.g. `cnnlab {task} predict RUN photo.jpg`")
    from .pretrained import resolve_model

    return resolve_model(model, task), files


def _classify_predict(sub: typer.Typer, task: str) -> None:
    model_help = MODEL_HELP.format(task=task) if task == "fashion" else RUN_HELP.format(task=task)
    what = "any size/colour; made 28x28 grey" if task == "fashion" else "any size; resized as the training images"

    @sub.command("predict")
    def predict(
        files: list[Path] = typer.Argument(..., metavar="[RUN] IMAGE", help=f"Image files ({what}), after a run."),
        model: str | None = typer.Option(None, help=model_help),
        top: int = typer.Option(3, min=1, max=10, help="How many classes to show."),
    ) -> None:
        """Classify your own images; prints the top classes and what was done to each image."""
        run, images = _model_and_files(task, files, model)
        for r in api.predict(run, images, top=top):
            guesses = ", ".join(f"{c} {p:.1%}" for c, p in r["top"])
            typer.echo(f"{r['file']}: {guesses}")
            for note in r["notes"]:
                typer.echo(f"  note: {note}")


def _segment_predict(sub: typer.Typer, task: str) -> None:
    model_help = MODEL_HELP.format(task=task) if task == "facade" else RUN_HELP.format(task=task)

    @sub.command("predict")
    def predict(
        files: list[Path] = typer.Argument(
            ..., metavar="[RUN] PHOTO", help="Photos (any size; EXIF rotation honoured), after an optional run."
        ),
        model: str | None = typer.Option(None, help=model_help),
        out: Path | None = typer.Option(
            None, "-o", "--out", help="Output folder (default: RUN/predictions; ./predictions for a shipped model)."
        ),
        max_side: int = typer.Option(
            MAX_WORK_SIDE,
            min=MIN_WORK_SIDE,
            max=MAX_SIDE,
            help="Segment at this many px on the photo's longer side (overlapping tiles), then resize back.",
        ),
        tta: bool = typer.Option(False, help="Also average mirrored and rescaled views, as the recipe evaluates."),
    ) -> None:
        """Segment your own photos: colour label map, overlay and per-class area percentages."""
        run, photos = _model_and_files(task, files, model)
        for r in api.predict(run, photos, out=out, max_side=max_side, tta=tta):
            shares = ", ".join(f"{c} {p:.1%}" for c, p in r["area"].items())
            typer.echo(f"{r['file']}: {shares} -> {r['overlay']}")
            for note in r["notes"]:
                typer.echo(f"  note: {note}")


task_apps = {task: _task_app(task, title) for task, title in TITLES.items()}
for _task, _sub in task_apps.items():
    (_classify_predict if KINDS[_task] == "classify" else _segment_predict)(_sub, _task)
    app.add_typer(_sub, name=_task)


@task_apps["fashion"].command("sweep-activations")
def fashion_sweep(
    recipe: str = typer.Option("seed-a", help="Recipe to vary."),
    set_: list[str] = typer.Option([], "--set", help=OVERRIDE_HELP),
    epochs: int | None = typer.Option(None, help="Shortcut for --set train.epochs=N."),
    limit: int | None = typer.Option(None, help="Use only N training images (quick tries)."),
    out: Path | None = typer.Option(None, help="Folder for the three runs and the table."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train with relu, leaky_relu and sigmoid; tabulate validation and test accuracy."""
    results = api.sweep_activations(recipe, out, set_, progress=progress, epochs=epochs, limit=limit)
    for act, r in results.items():
        typer.echo(f"{act:>10}: best val {r['best_val_acc']:.2%}  test {r['test_acc']:.2%}")


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="A run folder; with --compare, several runs or folders of runs."),
    compare: bool = typer.Option(False, "--compare", help="One page comparing the runs side by side."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Where the compare page goes (default: compare.html)."),
) -> None:
    """Write RUN/report.html (self-contained: open it offline or copy it anywhere), or a comparison page."""
    from .report.compare import find_runs, write_compare
    from .report.run_page import write_report

    if compare:
        out = check_file(out or Path("compare.html"), "--out", "compare.html")
        typer.echo(str(write_compare(find_runs(runs), out)))
        return
    if out is not None:
        raise CnnlabError("--out is for --compare; a run's report is always RUN/report.html")
    if len(runs) != 1:
        raise CnnlabError(f"report takes one run folder ({len(runs)} given); add --compare to compare several")
    typer.echo(str(write_report(runs[0])))


@app.command()
def models() -> None:
    """List the shipped models (usable without a run folder) and their validation and test metrics."""
    from rich.console import Console
    from rich.table import Table

    from .pretrained import list_models, models_dir

    cards = list_models()
    if not cards:
        typer.echo("no shipped models installed; predict and export take a run folder instead")
        return
    console = Console(highlight=False)
    for task in sorted({c["task"] for c in cards}):
        # The columns are the task's headline metrics; a folder task's facts live in its model's config.
        first = next(c for c in cards if c["task"] == task)
        metrics = get_task(runs.load_run_config(models_dir() / first["name"])).headline
        headers = [f"{split} {label}" for split in ("val", "test") for label, _ in metrics.values()]
        table = Table("name", "recipe", "model", "ImageNet", *headers, "trained", title=f"{task} models", box=None)
        for c in (c for c in cards if c["task"] == task):
            scores = [fmt.format(c[s][k]) if c[s] else "-" for s in ("val", "test") for k, (_, fmt) in metrics.items()]
            imagenet = "yes" if c.get("imagenet_encoder") else "no"  # cards shipped before the field: from scratch
            table.add_row(c["name"], c["recipe"], c["model"], imagenet, *scores, c["trained"])
        console.print(table)


@app.command()
def explain(
    model: str = typer.Argument(..., help="A run folder or a shipped model's name (see `cnnlab models`)."),
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="Your images or photos (any size)."),
    out: Path = typer.Option(Path("explanations"), "-o", "--out", help="Output folder (created if missing)."),
    class_name: str | None = typer.Option(
        None,
        "--class",
        help="Classifiers: the class to explain beside the prediction (default: the runner-up). "
        "Segmenters: the only class whose activation map is drawn (default: every class).",
    ),
    max_side: int = typer.Option(
        MAX_WORK_SIDE,
        min=MIN_WORK_SIDE,
        max=MAX_EXPLAIN_SIDE,
        help="Segmenters: explain at this many px on the photo's longer side.",
    ),
) -> None:
    """Why the model decided: class activation maps (Grad-CAM), integrated gradients and probabilities for a
    classifier; confidence, entropy and per-class activation maps for a segmenter. Writes NAME_explain.png
    and NAME_explain.json per image (segmenters also NAME_cams.png)."""
    for r in api.explain(model, images, out=out, class_name=class_name, max_side=max_side):
        if "predicted" in r:
            top = ", ".join(f"{c} {p:.1%}" for c, p in r["top"][:3])
            typer.echo(f"{r['file']}: {top} -> {r['figure']}")
        else:
            typer.echo(
                f"{r['file']}: mean confidence {r['mean_confidence']:.1%}, {r['unsure_share']:.1%} of pixels under 50% "
                f"-> {r['figure']}, {r['cams']}"
            )
        for note in r["notes"]:
            typer.echo(f"  note: {note}")


@app.command()
def export(
    model: str = typer.Argument(..., help="A run folder or a shipped model's name (see `cnnlab models`)."),
    format_: str = typer.Option("onnx", "--format", help="Only onnx for now."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output file (default: ./<model folder name>.onnx)."),
) -> None:
    """Export the network to ONNX: normalised float NCHW in, logits out, dynamic batch (and segmentation size)."""
    from .export import export_onnx
    from .pretrained import resolve_any

    if format_ != "onnx":
        raise CnnlabError(f"--format {format_}: only onnx is supported")
    folder = resolve_any(model)
    name = folder.resolve().name
    info = export_onnx(folder, check_file(out or Path(f"{name}.onnx"), "--out", f"{name}.onnx"))
    typer.echo(info["file"])
    typer.echo(f"  input:  {' x '.join(info['input_shape'])}, {info['input']}; {info['normalisation']}")
    typer.echo(f"          mean {info['mean']}, std {info['std']}")
    typer.echo(f"  output: {info['output']}, classes {info['classes']}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 opens it to your network (no login)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port; 0 picks a free one (the log says which)."),
    classify: str | None = typer.Option(
        None, help="/api/classify's model: any classification run folder or shipped model (default: fashion)."
    ),
    segment: str | None = typer.Option(
        None, help="/api/segment's model: any segmentation run folder or shipped model (default: facade)."
    ),
    fashion: str | None = typer.Option(None, hidden=True),  # the names of --classify/--segment before folder tasks
    facade: str | None = typer.Option(None, hidden=True),
    workers: int = typer.Option(2, min=1, max=8, help="Inferences at once; one per CPU core is fastest."),
    queue: int = typer.Option(16, min=0, max=32, help="Requests that may wait for a worker; more get 503."),
    max_upload_mb: float = typer.Option(20, min=0.01, help="Largest upload, in MB."),
) -> None:
    """Serve a web page and a JSON API (/api/..., OpenAPI at /docs) for a classifier and a segmenter."""
    import uvicorn

    from .serve import Limits, create_app

    if (classify is not None and fashion is not None) or (segment is not None and facade is not None):
        raise CnnlabError("--fashion and --facade are the old names of --classify and --segment; give each once")
    limits = Limits(max_upload_bytes=int(max_upload_mb * 2**20), workers=workers, queue=queue)
    web = create_app(classify or fashion, segment or facade, limits)
    for kind, served in web.state.served.items():
        if served.model is None:
            typer.echo(f"cnnlab: note: /api/{kind} will answer 503: {served.error}", err=True)
    # Connections past the queue get uvicorn's own 503; this bounds the memory held by uploads in flight.
    uvicorn.run(web, host=host, port=port, limit_concurrency=4 * (workers + queue))


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    # Python's format (source file, line number, the code line) speaks to developers, not users.
    typer.echo(f"cnnlab: warning: {' '.join(str(message).split())}", err=True)


def main() -> None:
    """The `cnnlab` command: any CnnlabError is one `cnnlab: error:` line and exit code 2."""
    warnings.showwarning = _warning_line
    try:
        # Not standalone: click's usage errors come here, to be one line like every other error.
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as e:  # a usage error from the click that typer carries inside
        ctx = getattr(e, "ctx", None)
        command = ctx.command_path if ctx else "cnnlab"
        message = " ".join(e.format_message().replace("Value error, ", "").split()).rstrip(".")
        typer.echo(f"cnnlab: error: {message}; see `{command} --help`", err=True)
        sys.exit(2)
    except CnnlabError as e:
        typer.echo(f"cnnlab: error: {' '.join(str(e).split())}", err=True)
        sys.exit(2)
    except (MemoryError, RuntimeError) as e:
        # numpy raises MemoryError, torch's allocator a RuntimeError: either way the work did not fit.
        if not isinstance(e, MemoryError) and "can't allocate memory" not in str(e):
            raise
        typer.echo(
            "cnnlab: error: out of memory; lower train.batch_size or data.image_size, and keep data.cache on "
            "so images are read from the memory map",
            err=True,
        )
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
