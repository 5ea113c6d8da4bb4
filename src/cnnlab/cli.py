"""Command line: `cnnlab fashion|facade train|evaluate|predict ...`. Bad input: one line, exit 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from . import api, engine
from .config import recipe_names
from .errors import CnnlabError

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
        recipe: str = typer.Option("seed-a", help=f"Recipe name ({', '.join(recipe_names(task))}) or a YAML file."),
        set_: list[str] = typer.Option([], "--set", help=OVERRIDE_HELP),
        epochs: int | None = typer.Option(None, help="Shortcut for --set train.epochs=N."),
        batch_size: int | None = typer.Option(None, help="Shortcut for --set train.batch_size=N."),
        lr: float | None = typer.Option(None, help="Shortcut for --set optim.lr=X."),
        seed: int | None = typer.Option(None, help="Shortcut for --set train.seed=N."),
        limit: int | None = typer.Option(None, help="Use only N training images (quick tries)."),
        data_dir: str | None = typer.Option(None, help="Folder holding the dataset (default: auto-detect)."),
        out: Path | None = typer.Option(None, help="Run folder (default: runs/<task>-<recipe>-<time>)."),
        resume: Path | None = typer.Option(None, help="Continue the run in this folder where it stopped."),
        device: str = typer.Option("cpu", help="cpu or cuda (under torchrun: one GPU per process)."),
        max_steps: int | None = typer.Option(
            None, min=1, help="Stop after N optimizer steps in total and save a checkpoint; continue with --resume."
        ),
        progress: bool = typer.Option(True, help="Show progress bars."),
    ) -> None:
        """Train a model; writes config, metrics.jsonl, checkpoints and figures into one run folder.

        Under torchrun (`torchrun --nproc_per_node=N -m cnnlab ...`) the processes share each batch."""
        if resume is not None:
            res = engine.train(None, resume, resume=True, device=device, progress=progress, max_steps=max_steps)
        else:
            cfg = api.resolve_config(
                task,
                recipe,
                set_,
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
        split: str = typer.Option("test", help="Split to evaluate: test or val."),
        checkpoint: str = typer.Option("best", help="best (by validation) or last."),
        data_dir: str | None = typer.Option(None, help="Where the run's dataset is now, if it moved."),
        data: Path | None = typer.Option(None, help="Evaluate on another labelled folder instead (facades)."),
    ) -> None:
        """Evaluate a run's checkpoint; writes eval_<split>.json and the split's figures into the run."""
        if checkpoint not in ("best", "last"):
            raise CnnlabError(f"--checkpoint {checkpoint}: choose best or last")
        engine.evaluate(run, split=split, which=checkpoint, data_dir=data_dir, external=data)

    return sub


fashion_app = _task_app("fashion", "Fashion-MNIST classification (10 classes, 28x28 grey).")
facade_app = _task_app("facade", "Facade segmentation (others, facade, pillar, window, balcony).")
app.add_typer(fashion_app, name="fashion")
app.add_typer(facade_app, name="facade")


@fashion_app.command("predict")
def fashion_predict(
    run: Path = typer.Argument(..., help="Run folder."),
    images: list[Path] = typer.Argument(..., help="Image files (any size/colour; made 28x28 grey)."),
    top: int = typer.Option(3, min=1, max=10, help="How many classes to show."),
) -> None:
    """Classify your own images; prints the top classes and what was done to each image."""
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
    run: Path = typer.Argument(..., help="Run folder."),
    photos: list[Path] = typer.Argument(..., help="Photos of facades (any size; EXIF rotation honoured)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output folder (default: RUN/predictions)."),
) -> None:
    """Segment your own photos: colour label map, overlay and per-class area percentages."""
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
    from .report.html import find_runs, write_compare, write_report

    if compare:
        typer.echo(str(write_compare(find_runs(runs), out or Path("compare.html"))))
        return
    if len(runs) != 1:
        raise CnnlabError(f"report takes one run folder ({len(runs)} given); add --compare to compare several")
    typer.echo(str(write_report(runs[0])))


def main() -> None:
    try:
        app()
    except CnnlabError as e:
        typer.echo(f"cnnlab: error: {e}", err=True)
        sys.exit(2)
