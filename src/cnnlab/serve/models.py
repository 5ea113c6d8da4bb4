"""The models `cnnlab serve` holds, one per slot (classify, segment), and what /api/health says of each:
its classes and colours, and its model card (the validation and test metrics, the recipe and the split)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import runs
from ..config import KINDS, RunConfig
from ..engine.checkpoint import load_model
from ..engine.runtime import Runtime, inference_runtime
from ..errors import CheckpointError, CnnlabError
from ..tasks import Task, get_task
from ..zoo import is_shipped, resolve_any, resolve_model
from .schema import Metric, ModelCard, ModelStatus

DEFAULT_MODELS = {"classify": "fashion", "segment": "facade"}  # each slot's shipped model when none is given
SPLITS = ("val", "test")  # the held-out splits a card reports, in the order the page shows them


@dataclass
class Served:
    """One slot's model as the server holds it, or why it holds none."""

    kind: str  # the slot: "classify" or "segment"
    task: Task | None = None
    model: torch.nn.Module | None = None
    name: str | None = None
    error: str | None = None
    config: RunConfig | None = None  # the run's configuration: its data folder and split pick the samples
    card: ModelCard | None = None
    runtime: Runtime = field(default_factory=inference_runtime)
    # Grad-CAM hooks a layer of the shared model while it runs: no other request may use that model then.
    lock: threading.Lock = field(default_factory=threading.Lock)


def resolve_slot(ref: str | Path | None, kind: str) -> Path:
    """The folder of a run or shipped model of `kind` (any dataset), or of the slot's default shipped model."""
    if ref is None:
        return resolve_model(None, DEFAULT_MODELS[kind])
    folder = resolve_any(ref)
    found = runs.load_run_config(folder).task
    if KINDS[found] != kind:
        raise CheckpointError(f"{ref}: a {found} model, not a {kind} one; serve it with --{KINDS[found]}")
    return folder


def model_card(folder: Path, cfg: RunConfig, task: Task) -> ModelCard | None:
    """The task's headline metrics on validation and test, from a shipped model's card.json or a run's
    eval_val.json and eval_test.json; None if those files are unreadable (the model still serves)."""
    try:
        if is_shipped(folder):
            card = json.loads((folder / "card.json").read_text())
            evals, recipe, split = {s: card.get(s) for s in SPLITS}, card["recipe"], card["split"]
        else:
            evals = {s: runs.read_eval(folder, s) for s in SPLITS}
            recipe, split = cfg.recipe, task.split_description(cfg)
    except (OSError, ValueError, KeyError, CnnlabError):
        return None
    metrics = [
        Metric(split=s, key=key, label=label, value=float(e[key]), shown=fmt.format(e[key]), images=e.get("n"))
        for s in SPLITS
        if (e := evals[s])
        for key, (label, fmt) in task.headline.items()
        if key in e
    ]
    return ModelCard(shipped=is_shipped(folder), recipe=recipe, split=split, metrics=metrics)


def load_served(ref: str | Path | None, kind: str) -> Served:
    """A slot's model from a shipped name, a run folder or None (the default); a missing one is an error, not a
    crash, so the other slot still serves."""
    try:
        folder = resolve_slot(ref, kind)
        model, cfg = load_model(folder)
        task = get_task(cfg)
    except CnnlabError as e:
        return Served(kind, error=str(e))
    return Served(kind, task, model, Path(folder).name, config=cfg, card=model_card(Path(folder), cfg, task))


def model_status(held: Served) -> ModelStatus:
    """A slot as /api/health shows it: the page takes its headings, legend, upload labels and model card from this."""
    t = held.task
    return ModelStatus(
        ready=held.model is not None,
        name=held.name,
        error=held.error,
        task=t.name if t else None,
        description=t.data_description if t else None,
        classes=list(t.classes) if t else [],
        colors=list(t.colors) if t else [],
        card=held.card,
    )
