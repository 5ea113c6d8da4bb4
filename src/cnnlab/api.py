"""The Python API: what the CLI does, callable from a notebook in a few lines.

import cnnlab
run = cnnlab.train("fashion", "seed-a", epochs=2)
cnnlab.evaluate(run.run_dir)["acc"]
cnnlab.predict(run.run_dir, ["shoe.png"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import engine
from .checkpoint import atomic_write
from .config import RunConfig, load_config
from .engine import TrainResult, load_model

__all__ = ["evaluate", "load_model", "predict", "sweep_activations", "train"]

_SHORTCUTS = {
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "seed": "train.seed",
    "data_dir": "data.dir",
    "limit": "data.limit",
}


def resolve_config(
    task: str, recipe: str | None, overrides: list[str] | tuple[str, ...] = (), **shortcuts: Any
) -> RunConfig:
    """Recipe + `section.key=value` overrides + keyword shortcuts (epochs, batch_size, lr, seed, ...)."""
    extra = [f"{_SHORTCUTS[k]}={v}" for k, v in shortcuts.items() if v is not None]
    return load_config(task, recipe, [*overrides, *extra])


def train(
    task: str,
    recipe: str | None = None,
    *,
    out: str | Path | None = None,
    overrides: list[str] = (),
    progress: bool = True,
    **shortcuts: Any,
) -> TrainResult:
    cfg = resolve_config(task, recipe, overrides, **shortcuts)
    return engine.train(cfg, Path(out) if out else None, progress=progress)


def evaluate(run_dir: str | Path, split: str = "test", which: str = "best", data_dir: str | None = None) -> dict:
    return engine.evaluate(Path(run_dir), split=split, which=which, data_dir=data_dir)


def predict(run_dir: str | Path, images: list[str | Path], **kwargs: Any) -> list[dict]:
    from .predict import predict_files

    return predict_files(Path(run_dir), [Path(p) for p in images], **kwargs)


def sweep_activations(
    recipe: str = "seed-a",
    out: str | Path | None = None,
    overrides: list[str] = (),
    progress: bool = True,
    **shortcuts: Any,
) -> dict[str, dict]:
    """Train one Fashion-MNIST run per activation and tabulate their validation and test accuracy."""
    from .report.figures import plot_sweep, write_json

    base = resolve_config("fashion", recipe, overrides, **shortcuts)
    out = Path(out) if out else engine.default_run_dir(base).with_name(f"sweep-activations-{base.recipe}")
    results: dict[str, dict] = {}
    for act in ("relu", "leaky_relu", "sigmoid"):
        cfg = base.model_copy(deep=True)
        cfg.model.activation = act
        res = engine.train(cfg, out / act, progress=progress)
        hist = [r for r in res.history if r["kind"] == "epoch"]
        test = engine.read_eval(out / act, "test")
        results[act] = {
            "best_val_acc": res.best,
            "final_val_acc": hist[-1]["val_acc"],
            "test_acc": test["acc"] if test else None,
            "run": str(out / act),
        }
    write_json(out / "sweep.json", results)
    lines = ["| activation | best val acc | final val acc | test acc |", "|---|---|---|---|"]
    lines += [
        f"| {a} | {r['best_val_acc']:.4f} | {r['final_val_acc']:.4f} | {r['test_acc']:.4f} |"
        for a, r in results.items()
    ]
    atomic_write(out / "sweep.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    plot_sweep({a: engine.read_history(out / a) for a in results}, out / "sweep")
    return results
