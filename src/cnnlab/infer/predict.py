"""`cnnlab predict`: a run's or shipped model's answers on people's image files, for either kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.checkpoint import load_model
from ..tasks import get_task
from . import handler


@dataclass(frozen=True)
class Options:
    """What `cnnlab.predict` takes. Classifiers refuse out, max_side and tta, segmenters save_inputs: given
    to the other kind, they would be ignored."""

    top: int = 3  # classification: classes listed
    out: Path | None = None  # segmentation: folder of the outputs
    max_side: int | None = None  # segmentation: working size
    tta: bool = False  # segmentation: the recipe's test-time views
    alpha: float = 0.5  # segmentation: the class colours' weight in the overlay
    save_inputs: Path | None = None  # classification: folder for the inputs the model saw
    progress: bool = False


def predict_files(run_dir: Path, paths: list[Path], **options: Any) -> list[dict[str, Any]]:
    """Predictions of the model in `run_dir` (a run or a shipped model's folder) on image files (see
    `cnnlab.predict` for the options and the results)."""
    model, cfg = load_model(run_dir)
    task = get_task(cfg)
    return handler(task).predict_files(run_dir, model, cfg, task, paths, Options(**options))
