"""Shipped models: trained weights that come with the package, each laid out as a minimal run folder.

    pretrained/NAME/config.yaml                    the training run's configuration
    pretrained/NAME/checkpoints/best.safetensors   its best weights only (no optimizer state)
    pretrained/NAME/environment.json               where and with what it was trained
    pretrained/NAME/card.json                      the model card: data, split, metrics, provenance

so `engine.checkpoint.load_model` reads a shipped model exactly as it reads a run. The models called like their
task (`fashion`, `facade`) are that task's defaults. $CNNLAB_MODELS_DIR points elsewhere (tests).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import RunConfig, dump_config
from .engine import checkpoint
from .errors import CheckpointError
from .outputs import write_json
from .runs import RunPaths, load_run_config, read_eval, read_history, read_json
from .tasks import get_task

ENV_VAR = "CNNLAB_MODELS_DIR"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # also keeps names from escaping the models folder


def models_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or Path(__file__).resolve().parent / "pretrained")


def _card(name: str) -> dict[str, Any] | None:
    path = models_dir() / name / "card.json"
    return json.loads(path.read_text()) if _NAME.fullmatch(name) and path.is_file() else None


def list_models() -> list[dict[str, Any]]:
    """The cards of every shipped model, sorted by task, then name."""
    folder = models_dir()
    names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    cards = [c for c in map(_card, names) if c is not None]
    return sorted(cards, key=lambda c: (c["task"], c["name"]))


def is_shipped(folder: Path) -> bool:
    """Whether `folder` is a shipped model (its outputs must not go inside the installed package)."""
    return Path(folder).resolve().parent == models_dir().resolve()


def resolve_model(ref: str | Path | None, task: str) -> Path:
    """A folder for `load_model`: a run folder of `task`, a shipped model's name, or None for
    the task's default shipped model."""
    if ref is not None and RunPaths(Path(ref)).config.is_file():
        found = load_run_config(Path(ref)).task
        if found != task:
            raise CheckpointError(f"{ref}: a {found} run, not a {task} one; use `cnnlab {found} ...` or a {task} run")
        return Path(ref)
    name = task if ref is None else str(ref)
    card = _card(name)
    if card is None:
        if ref is None:
            raise CheckpointError(
                f"no shipped {task} model is installed; give a run folder (train one with `cnnlab {task} train`)"
            )
        raise CheckpointError(f"{ref}: neither a run folder nor a shipped model; see `cnnlab models`")
    if card["task"] != task:
        raise CheckpointError(f"{name}: a shipped {card['task']} model, not a {task} one; see `cnnlab models`")
    return models_dir() / name


def is_shipped_name(ref: str | Path) -> bool:
    """Whether `ref` names a shipped model rather than a run folder."""
    return not RunPaths(Path(ref)).config.is_file() and _card(str(ref)) is not None


def resolve_any(ref: str | Path) -> Path:
    """A run folder or a shipped model's name, of either task."""
    if RunPaths(Path(ref)).config.is_file():
        return Path(ref)
    if _card(str(ref)) is None:
        raise CheckpointError(f"{ref}: neither a run folder nor a shipped model; see `cnnlab models`")
    return models_dir() / str(ref)


def _how_trained(cfg: RunConfig) -> str:
    """One sentence on the recipe's training, for people reading the card."""
    o, a, t = cfg.optim, cfg.augment, cfg.train
    start = "encoder from ImageNet weights (EfficientNet-Lite0)" if cfg.model.pretrained else "from scratch"
    rate = f"{o.name} lr {o.lr:g} ({o.schedule})" + (f", encoder at {o.encoder_lr:g}x" if o.encoder_lr != 1 else "")
    crops = f"{a.crop_size} px crops, then {a.full_size_epochs} epochs on whole images"
    crops = crops if a.crop_size else "whole images"
    sizes = f"sizes {', '.join(f'{s:g}x' for s in t.tta_scales)}"
    views = ["mirrored"] * t.tta_flip + [sizes] * (t.tta_scales != [1.0])
    return (
        f"{start}; {t.epochs} epochs of batch {t.batch_size}, {crops}; loss {cfg.loss.name}"
        f"{f' + {cfg.loss.dice:g} dice' if cfg.loss.dice else ''}; {rate}; final evaluations "
        f"{' and '.join(views) if views else 'one view'}"
    )


def _card_for(run_dir: Path, name: str, cfg: RunConfig, weights: dict[str, Any], chosen: str | None) -> dict[str, Any]:
    env = read_json(RunPaths(run_dir).env)
    epochs = [r for r in read_history(run_dir) if r["kind"] == "epoch"]
    task = get_task(cfg)
    model = task.build_model(cfg)
    model.load_state_dict(weights)  # refuses weights that do not fit the config before anything ships
    return {
        "name": name,
        "task": cfg.task,
        "recipe": cfg.recipe,
        "model": cfg.model.name,
        "imagenet_encoder": cfg.model.pretrained,
        "training": _how_trained(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": task.data_description,
        "split": task.split_description(cfg),
        "val": read_eval(run_dir, "val"),
        "test": read_eval(run_dir, "test"),
        "epochs": len(epochs),
        "train_time_s": round(epochs[-1]["time_s"], 1) if epochs else None,
        "trained": datetime.fromtimestamp(RunPaths(run_dir).best.stat().st_mtime, timezone.utc).date().isoformat(),
        "shipped": datetime.now(timezone.utc).date().isoformat(),
        "cnnlab": env.get("cnnlab"),
        "torch": env.get("torch"),
        "source_run": run_dir.resolve().name,
    } | ({"chosen": chosen} if chosen else {})


def ship(run_dir: Path, name: str, chosen: str | None = None) -> Path:
    """Copy a finished run's best weights, config, environment and a model card into the shipped models
    as `name`, replacing any model of that name; `chosen` (the card's "chosen") says how the run was
    picked. Returns the shipped folder."""
    run_dir = Path(run_dir)
    if not _NAME.fullmatch(name):
        raise CheckpointError(f"model name {name!r}: use lower-case letters, digits, '-' and '_'")
    cfg = load_run_config(run_dir)
    paths = RunPaths(run_dir)
    if read_eval(run_dir, "val") is None or not paths.env.is_file():
        raise CheckpointError(f"{run_dir}: not a finished run (no eval_val.json or environment.json); finish it first")
    best = checkpoint.load(paths.best)
    card = _card_for(run_dir, name, cfg, best["model"], chosen)
    root = models_dir()
    target, old = root / name, root / f".{name}.old"
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Built beside its final place and renamed in: a failure never leaves a half-shipped model.
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.new-"))
    except OSError as e:
        raise CheckpointError(f"{root}: cannot write shipped models ({e.strerror}); fix permissions") from None
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a shipped model is read by every user
        dump_config(cfg, tmp / "config.yaml")
        checkpoint.save(tmp / "checkpoints" / "best.safetensors", {"model": best["model"], "state": best["state"]})
        shutil.copyfile(paths.env, tmp / "environment.json")
        write_json(tmp / "card.json", card)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        try:
            tmp.rename(target)
        except OSError:
            if old.exists():
                old.rename(target)
            raise
    except OSError as e:
        raise CheckpointError(f"{target}: cannot ship ({e.strerror or e}); the previous model is unchanged") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target
