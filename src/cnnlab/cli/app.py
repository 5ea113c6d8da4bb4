"""Command line: `cnnlab fashion|facade|classify|segment train|evaluate|predict ...`. Bad input: one line, exit 2.

Torch and the modules that need it are imported inside the commands: `cnnlab --help` answers in a
fraction of a second instead of the ~1.5 s importing torch takes."""

from __future__ import annotations

import inspect
import os
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from typer._click import Context
from typer.core import TyperArgument, TyperOption

from .. import __version__
from ..catalog import TASKS
from ..errors import CnnlabError
from .tasks import task_app

if TYPE_CHECKING:
    from typer._click import Command
from ..sizes import MAX_EXPLAIN_SIDE, MAX_WORK_SIDE, MIN_WORK_SIDE

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnnlab {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version, help="Print the version."),
) -> None:
    """Train, evaluate and explain small CNNs: image classification and segmentation, on the built-in
    Fashion-MNIST and facade sets or on your own folders."""


for _task in TASKS:
    app.add_typer(task_app(_task), name=_task)


@app.command()
def report(
    runs: list[Path] = typer.Argument(
        ..., metavar="RUN...", help="A run folder; with --compare, several runs or folders of runs."
    ),
    compare: bool = typer.Option(False, "--compare", help="One page comparing the runs side by side."),
    out: Path | None = typer.Option(
        None, "-o", "--out", metavar="FILE", help="Where the compare page goes (default: compare.html)."
    ),
) -> None:
    """Write RUN/report.html (self-contained: open it offline or copy it anywhere), or a comparison page."""
    from ..outputs import check_file
    from ..report.compare import write_compare
    from ..report.run_page import write_report

    if compare:
        out = check_file(out or Path("compare.html"), "--out", "compare.html")
        typer.echo(str(write_compare(runs, out)))
        return
    if out is not None:
        raise CnnlabError("--out is for --compare; a run's report is always RUN/report.html")
    if len(runs) != 1:
        raise CnnlabError(f"report takes one run folder ({len(runs)} given); add --compare to compare several")
    typer.echo(str(write_report(runs[0])))


@app.command()
def check(
    data: str = typer.Argument(
        ..., metavar="DATA", help="fashion, facade, a folder of either kind, or a run folder (its data and split)."
    ),
    out: Path | None = typer.Option(
        None, "--out", metavar="DIR", help="Where check.json and check.html go (default: runs/check-NAME)."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Exit 1 when images of one split have duplicates in another (for pipelines)."
    ),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        help="Cosine similarity from which images count as near duplicates (default: the embedding's).",
    ),
    labels: bool = typer.Option(
        True, "--labels/--no-labels", help="Look for mislabelled images (out-of-fold models; the slow part)."
    ),
    label_threshold: float | None = typer.Option(
        None,
        "--label-threshold",
        help="Flag an image when its given label's calibrated out-of-fold probability is below this (default 0.05).",
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Override how the data is read or split, e.g. --set data.val_fraction=0.2.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars (on stderr)."),
) -> None:
    """Check a data set before training: exact and near duplicates within and across splits, what a random
    split would leak and the data.group_key rule that prevents it, images whose label the rest of the data
    disputes (for masks: check a segmentation run folder), class balance, and a folder's files (unreadable,
    truncated, CMYK, 16-bit, rotated, blank, odd sizes).

    Writes check.json and check.html; exits 0 with findings (1 with --strict when splits leak)."""
    from ..api import check as run
    from ..checks import summary

    found = run(
        data, out, overrides=overrides, threshold=threshold, labels=labels, label_threshold=label_threshold,
        progress=progress,
    )  # fmt: skip
    for line in summary(found.report):
        typer.echo(line)
    typer.echo(str(found.folder / "check.html"))
    if strict and found.leaks:
        raise typer.Exit(1)


@app.command()
def models() -> None:
    """List the shipped models (usable without a run folder) and their validation and test metrics."""
    from rich.console import Console
    from rich.table import Table

    from ..runs import load_run_config
    from ..tasks import get_task
    from ..zoo import list_models, models_dir

    cards = list_models()
    if not cards:
        typer.echo("no shipped models installed; predict and export take a run folder instead")
        return
    # A pipe or a file has no width: rich would cut the table at 80 columns ("2026-1…"); print it whole.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 1000)
    for task in sorted({c["task"] for c in cards}):
        # The columns are the task's headline metrics; a folder task's facts live in its model's config.
        first = next(c for c in cards if c["task"] == task)
        metrics = get_task(load_run_config(models_dir() / first["name"])).headline
        headers = [f"{split} {label}" for split in ("val", "test") for label, _ in metrics.values()]
        table = Table("name", "recipe", "model", "ImageNet", *headers, "trained", title=f"{task} models", box=None)
        for c in (c for c in cards if c["task"] == task):
            scores = [fmt.format(c[s][k]) if c[s] else "-" for s in ("val", "test") for k, (_, fmt) in metrics.items()]
            imagenet = "yes" if c.get("imagenet_encoder") else "no"  # cards shipped before the field: from scratch
            table.add_row(c["name"], c["recipe"], c["model"], imagenet, *scores, c["trained"])
        console.print(table)


@app.command()
def explain(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="A run folder or a shipped model's name (see `cnnlab models`)."
    ),
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="Your images or photos (any size)."),
    out: Path = typer.Option(
        Path("explanations"), "-o", "--out", metavar="DIR", help="Output folder (created if missing)."
    ),
    class_name: str | None = typer.Option(
        None,
        "--class",
        metavar="CLASS",
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
    from .. import api

    for r in api.explain(model, images, out=out, class_name=class_name, max_side=max_side):
        if "nothing_found" in r:
            typer.echo(f"{r['file']}: {r['nothing_found']}; nothing to explain")
        elif "predicted" in r:
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
    model: str = typer.Argument(
        ..., metavar="MODEL", help="A run folder or a shipped model's name (see `cnnlab models`)."
    ),
    format_: str = typer.Option("onnx", "--format", metavar="onnx", help="Only onnx for now."),
    out: Path | None = typer.Option(
        None, "-o", "--out", metavar="FILE", help="Output file (default: ./<model folder name>.onnx)."
    ),
) -> None:
    """Export the network to ONNX: normalised float NCHW in, logits out, dynamic batch (and segmentation size)."""
    from ..export import export_onnx
    from ..outputs import check_file
    from ..zoo import resolve_any

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
        None,
        metavar="NAME|RUN",
        help="/api/classify's model: any classification run folder or shipped model (default: fashion).",
    ),
    segment: str | None = typer.Option(
        None,
        metavar="NAME|RUN",
        help="/api/segment's model: any segmentation run folder or shipped model (default: facade).",
    ),
    fashion: str | None = typer.Option(None, hidden=True),  # the names of --classify/--segment before folder tasks
    facade: str | None = typer.Option(None, hidden=True),
    workers: int = typer.Option(2, min=1, max=8, help="Inferences at once; one per CPU core is fastest."),
    queue: int = typer.Option(16, min=0, max=32, help="Requests that may wait for a worker; more get 503."),
    max_upload_mb: float = typer.Option(20, min=0.01, help="Largest upload, in MB."),
) -> None:
    """Serve a web page and a JSON API (/api/..., OpenAPI at /docs) for a classifier and a segmenter."""
    import uvicorn

    from ..serve.app import Limits, create_app

    if (classify is not None and fashion is not None) or (segment is not None and facade is not None):
        raise CnnlabError("--fashion and --facade are the old names of --classify and --segment; give each once")
    limits = Limits(max_upload_bytes=int(max_upload_mb * 2**20), workers=workers, queue=queue)
    named = {"classify": classify or fashion, "segment": segment or facade}
    web = create_app(named["classify"], named["segment"], limits)
    for kind, served in web.state.served.items():
        if served.model is None and named[kind] is not None:
            # A model the user named and cannot have is a mistake to fix now, not a slot that answers 503.
            raise CnnlabError(served.error or f"--{kind} {named[kind]}: cannot be served")
        if served.model is None:
            typer.echo(f"cnnlab: note: /api/{kind} will answer 503: {served.error}", err=True)
    # Connections past the queue get uvicorn's own 503; this bounds the memory held by uploads in flight.
    uvicorn.run(web, host=host, port=port, limit_concurrency=4 * (workers + queue))


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    # Python's format (source file, line number, the code line) speaks to developers, not users.
    typer.echo(f"cnnlab: warning: {' '.join(str(message).split())}", err=True)


class _PlainArgument(TyperArgument):
    """An argument shown by its metavar alone. typer 0.29 adds a developer's type (`<list[Path]>`) to the
    help and braces to the usage line (`{[RUN] IMAGE}...`); users read `[RUN] IMAGE...`."""

    def display_type_rich(self, ctx: Context) -> None:
        return None

    def get_usage_pieces(self, ctx: Context) -> list[str]:
        return [self.metavar or self.name.upper()]


_WORDS = {int: "N", float: "X", str: "TEXT", Path: "PATH"}


_PARAGRAPH_BREAK = re.compile(r"(?<!\n)\n(?!\n)")


def _plain_help(command: Command) -> Command:
    """Readable help for `command` and its subcommands: options show a word (N, X, PATH, a choice) in
    place of typer's `<int>`/`<bool>` types, flags show none, arguments their metavar."""
    if command.help:
        # A docstring's line breaks are the source's width, not sentences: rich would keep them, breaking
        # lines mid-sentence; paragraphs (blank lines) stay.
        command.help = _PARAGRAPH_BREAK.sub(" ", inspect.cleandoc(command.help))
    help_option = command.get_help_option(Context(command))  # made on first use, then kept by the command
    for param in [*command.params, *([help_option] if help_option else [])]:
        if isinstance(param, TyperArgument):
            param.__class__ = _PlainArgument
        elif isinstance(param, TyperOption) and param.metavar is None:
            kind = param.type_descriptor
            if param.is_flag:
                param.metavar = ""
            elif kind.is_choice:
                param.metavar = "|".join(map(str, kind.choices or ()))
            else:
                param.metavar = _WORDS.get(kind.annotation, "TEXT")
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)
    return command


def _exit(code: int) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker: its files are written and closed, but the C++ teardown of gloo's threads at
        # interpreter exit can still abort it ("terminate called without an active exception", SIGABRT),
        # which torchrun reports as a failed job. Leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main() -> None:
    """The `cnnlab` command: any CnnlabError is one `cnnlab: error:` line and exit code 2."""
    warnings.showwarning = _warning_line
    try:
        # Not standalone: click's usage errors come here, to be one line like every other error.
        code = _plain_help(typer.main.get_command(app)).main(prog_name="cnnlab", standalone_mode=False)
    except typer.Abort:
        _exit(130)
    except typer.TyperException as e:  # a usage error from the click that typer carries inside
        ctx = getattr(e, "ctx", None)
        command = ctx.command_path if ctx else "cnnlab"
        message = " ".join(e.format_message().replace("Value error, ", "").split()).rstrip(".")
        typer.echo(f"cnnlab: error: {message}; see `{command} --help`", err=True)
        _exit(2)
    except CnnlabError as e:
        typer.echo(f"cnnlab: error: {' '.join(str(e).split())}", err=True)
        _exit(2)
    except (MemoryError, RuntimeError) as e:
        # numpy raises MemoryError, torch's allocator a RuntimeError: either way the work did not fit.
        if not isinstance(e, MemoryError) and "can't allocate memory" not in str(e):
            raise
        typer.echo(
            "cnnlab: error: out of memory; lower train.batch_size or data.image_size, and keep data.cache on "
            "so images are read from the memory map",
            err=True,
        )
        _exit(2)
    _exit(code if isinstance(code, int) else 0)
