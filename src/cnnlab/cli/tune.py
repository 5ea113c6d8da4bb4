"""`cnnlab TASK tune`: the train command's base options, a search space, and where the study lives."""

from __future__ import annotations

from pathlib import Path

import typer

from ..catalog import TASKS
from ..config import recipe_names

PARAM_HELP = (
    "A searched key: KEY=LOW..HIGH, KEY=LOW..HIGH:log, KEY=LOW..HIGH:step=S or KEY=A,B,C (choices), e.g. "
    "--param optim.lr=1e-4..1e-2:log (repeatable)."
)


def add_tune(sub: typer.Typer, task: str) -> None:
    """Register `cnnlab TASK tune` on `sub`."""

    @sub.command()
    def tune(
        recipe: str | None = typer.Option(
            None, metavar="NAME|FILE", help=f"The base recipe ({', '.join(recipe_names(task))}) or a YAML file."
        ),
        param: list[str] = typer.Option([], "--param", metavar="KEY=SPEC", help=PARAM_HELP),
        space: Path | None = typer.Option(
            None, metavar="FILE", help="The search space as YAML (key: {low, high, log, step} or {choices: [...]})."
        ),
        trials: int = typer.Option(20, help="Complete or pruned trials the study holds when done (all workers)."),
        timeout: float | None = typer.Option(None, metavar="S", help="Start no trial after S seconds."),
        study: Path | None = typer.Option(
            None, metavar="DIR", help="The study folder (default: runs/tune-<task>-<recipe>-<time>)."
        ),
        storage: str | None = typer.Option(
            None,
            metavar="URL",
            help="A database several hosts share, e.g. postgresql://user@host/db (default: STUDY/journal.log).",
        ),
        workers: int = typer.Option(1, help="Trials run at once here; the cores are split between them."),
        resume: Path | None = typer.Option(
            None, metavar="STUDY", help="Continue a study (after a stop or kill), or join it from another host."
        ),
        pruner: str = typer.Option("median", metavar="NAME", help="Stop poor trials early: median, hyperband or none."),
        prune_after: int = typer.Option(3, metavar="EPOCH", help="The first epoch at which a trial may be stopped."),
        set_: list[str] = typer.Option(
            [], "--set", metavar="KEY=VALUE", help="Set a base value for every trial, e.g. --set train.epochs=3."
        ),
        epochs: int | None = typer.Option(None, help="Shortcut for --set train.epochs=N (every trial)."),
        limit: int | None = typer.Option(None, help="Use only N training images in every trial (quick studies)."),
        data_dir: str | None = typer.Option(None, "--data", "--data-dir", metavar="DIR", help=TASKS[task].data_help),
    ) -> None:
        """Search settings with Optuna: each trial a normal run under the study folder, poor ones stopped early.

        Writes STUDY/best.yaml (train it with --recipe STUDY/best.yaml) and STUDY/report.html. The search space
        comes from --param, --space or the recipe's tune: section. Other hosts join with --resume STUDY on a
        shared folder, or the same --storage URL."""
        from .. import api

        summary = api.tune(
            task, recipe, params=param, space=space, trials=trials, timeout=timeout, study=study, storage=storage,
            workers=workers, resume=resume, pruner=pruner, prune_after=prune_after, overrides=set_, epochs=epochs,
            limit=limit, data_dir=data_dir,
        )  # fmt: skip
        if "best_trial" in summary:
            typer.echo(f"best: trial {summary['best_trial']}, {summary['best_value']:.4f} ({summary['best_run']})")
        if "best_test" in summary:
            metric = summary["metric"]
            test = summary["best_test"][metric]
            typer.echo(f"its test {metric} (the study's one look at the test split): {test:.4f}")
        if "base_value" in summary:
            typer.echo(f"the recipe's own settings: {summary['base_value']:.4f}")
        typer.echo(summary["report"])
