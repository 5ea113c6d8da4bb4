"""Command line: `cnnlab fashion|facade train|evaluate|predict ...`. Bad input: one line, exit 2."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Literal

import typer

from . import api, engine, runs
from .config import recipe_names
from .errors import CnnlabError
from .outputs import check_file
from .tasks import get_task

app = typer.Typer(
    help="Train, evaluate and explain small CNNs: Fashion-MNIST classification and facade segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

OVERRIDE_HELP = "Override a recipe value, e.g. --set train.epochs=3 --set optim.lr=3e-4 (repeatable)."


def _task_app(task: str, title: str) -> typer.Typer:
    """The commands both tasks share, bound to one task."""
    sub = typer.Typer(help=title, no_args_is_help=True)

    @sub.command()
    def train(
        recipe: str | None = typer.Option(
            None, help=f"Recipe name ({', '.join(recipe_names(task))}) or a YAML file. [default: seed-a]"
        ),
        set_: list[str] = typer.Option([], "--set", help=OVERRIDE_HELP),
        epochs: int | None = typer.Option(None, help="Shortcut for --set train.epochs=N; with --resume: train to N."),
        batch_size: int | None = typer.Option(None, help="Shortcut for --set train.batch_size=N."),
        lr: float | None = typer.Option(None, help="Shortcut for --set optim.lr=X."),
        seed: int | None = typer.Option(None, help="Shortcut for --set train.seed=N."),
        limit: int | None = typer.Option(None, help="Use only N training images (quick tries)."),
        data_dir: str | None = typer.Option(
            None, help="Folder holding the dataset (default: auto-detect); with --resume: where it is now."
        ),
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
            res = engine.train(
                None, resume, resume=True, device=device, progress=progress, max_steps=max_steps, epochs=epochs,
                data_dir=data_dir,
            )  # fmt: skip
        else:
            cfg = api.resolve_config(
                task,
                recipe or "seed-a",
                [*set_, *(["train.tensorboard=true"] if tensorboard else [])],
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                limit=limit,
                data_dir=data_dir,
            )
            res = engine.train(cfg, out, device=device, progress=progress, max_steps=max_steps)
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
        data: Path | None = typer.Option(None, help="Evaluate on another labelled folder instead (facades)."),
    ) -> None:
        """Evaluate a run's checkpoint; writes eval_<split>.json and the split's figures into the run."""
        m = api.evaluate(run, split=split, which=checkpoint, data_dir=data_dir, external=data)
        summary = get_task(runs.load_run_config(run).task).summary_line(m)
        typer.echo(f"{m['split']} ({checkpoint} checkpoint, {m['n']} images): {summary}")

    return sub


fashion_app = _task_app("fashion", "Fashion-MNIST classification (10 classes, 28x28 grey).")
facade_app = _task_app("facade", "Facade segmentation (others, facade, pillar, window, balcony).")
app.add_typer(fashion_app, name="fashion")
app.add_typer(facade_app, name="facade")


MODEL_HELP = "A shipped model's name (see `cnnlab models`) or a run folder; default: the shipped {task} model."


def _model_and_files(task: str, files: list[Path], model: str | None) -> tuple[Path, list[Path]]:
    """`[RUN] FILE...` and --model -> the model folder and the files; a leading run folder is the model."""
    if files and (files[0] / "config.yaml").is_file():
        if model is not None:
            raise CnnlabError(f"{files[0]} and --model {model}: give the model once")
        model, files = str(files[0]), files[1:]
    if not files:
        raise CnnlabError("no image files given; e.g. `cnnlab fashion predict shoe.png`")
    from .pretrained import resolve_model

    return resolve_model(model, task), files


@fashion_app.command("predict")
def fashion_predict(
    files: list[Path] = typer.Argument(
        ..., metavar="[RUN] IMAGE", help="Image files (any size/colour; made 28x28 grey), after an optional run."
    ),
    model: str | None = typer.Option(None, help=MODEL_HELP.format(task="fashion")),
    top: int = typer.Option(3, min=1, max=10, help="How many classes to show."),
) -> None:
    """Classify your own images; prints the top classes and what was done to each image."""
    run, images = _model_and_files("fashion", files, model)
    for r in api.predict(run, images, top=top):
        guesses = ", ".join(f"{c} {p:.1%}" for c, p in r["top"])
        typer.echo(f"{r['file']}: {guesses}")
        for note in r["notes"]:
            typer.echo(f"  note: {note}")


@fashion_app.command("sweep-activations")
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


@facade_app.command("predict")
def facade_predict(
    files: list[Path] = typer.Argument(
        ..., metavar="[RUN] PHOTO", help="Facade photos (any size; EXIF rotation honoured), after an optional run."
    ),
    model: str | None = typer.Option(None, help=MODEL_HELP.format(task="facade")),
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Output folder (default: RUN/predictions; ./predictions for a shipped model)."
    ),
) -> None:
    """Segment your own photos: colour label map, overlay and per-class area percentages."""
    run, photos = _model_and_files("facade", files, model)
    for r in api.predict(run, photos, out=out):
        shares = ", ".join(f"{c} {p:.1%}" for c, p in r["area"].items())
        typer.echo(f"{r['file']}: {shares} -> {r['overlay']}")
        for note in r["notes"]:
            typer.echo(f"  note: {note}")


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


_CARD_METRICS = {
    "fashion": {"acc": ("accuracy", "{:.2%}")},
    "facade": {"map": ("mAP", "{:.3f}"), "miou": ("mIoU", "{:.3f}")},
}


@app.command()
def models() -> None:
    """List the shipped models (usable without a run folder) and their validation and test metrics."""
    from rich.console import Console
    from rich.table import Table

    from .pretrained import list_models

    cards = list_models()
    if not cards:
        typer.echo("no shipped models installed; predict and export take a run folder instead")
        return
    console = Console(highlight=False)
    for task in sorted({c["task"] for c in cards}):
        metrics = _CARD_METRICS[task]
        headers = [f"{split} {label}" for split in ("val", "test") for label, _ in metrics.values()]
        table = Table("name", "recipe", "model", *headers, "trained", title=f"{task} models", box=None)
        for c in (c for c in cards if c["task"] == task):
            scores = [fmt.format(c[s][k]) if c[s] else "-" for s in ("val", "test") for k, (_, fmt) in metrics.items()]
            table.add_row(c["name"], c["recipe"], c["model"], *scores, c["trained"])
        console.print(table)


@app.command()
def export(
    model: str = typer.Argument(..., help="A run folder or a shipped model's name (see `cnnlab models`)."),
    format_: str = typer.Option("onnx", "--format", help="Only onnx for now."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output file (default: ./<model folder name>.onnx)."),
) -> None:
    """Export the network to ONNX: normalised float NCHW in, logits out, dynamic batch (and facade size)."""
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
    fashion: str | None = typer.Option(None, help="Shipped model name or run folder (default: the shipped one)."),
    facade: str | None = typer.Option(None, help="Shipped model name or run folder (default: the shipped one)."),
    workers: int = typer.Option(2, min=1, max=8, help="Inferences at once; one per CPU core is fastest."),
    queue: int = typer.Option(16, min=0, max=32, help="Requests that may wait for a worker; more get 503."),
    max_upload_mb: float = typer.Option(20, min=0.01, help="Largest upload, in MB."),
) -> None:
    """Serve a web page and a JSON API (/api/..., OpenAPI at /docs) for the fashion and facade models."""
    import uvicorn

    from .serve import Limits, create_app

    web = create_app(fashion, facade, Limits(max_upload_bytes=int(max_upload_mb * 2**20), workers=workers, queue=queue))
    for task, served in web.state.served.items():
        if served.model is None:
            typer.echo(f"cnnlab: note: /api/{task} will answer 503: {served.error}", err=True)
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
    sys.exit(code if isinstance(code, int) else 0)
