"""Export a run's or a shipped model's network to ONNX, for use without cnnlab or PyTorch.

The ONNX graph takes the *normalised* float32 NCHW tensor and returns logits; how to normalise
(mean, std), the layout and the class names are written into the file's metadata_props.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checkpoint import atomic_write
from .data import fashion as fashion_data
from .errors import CheckpointError
from .runs import load_model
from .tasks import facade as facade_task
from .tasks import get_task

# H and W the exported facade nets handle as PyTorch does. SeedA/SeedB resize their output back to the
# input size only for other sizes, and that branch is fixed when the graph is traced (their docstrings).
SIZE_MULTIPLE = {"seed-a": 4, "seed-b": 4, "unet": 1}
TOLERANCE = 1e-4


def _normalisation(task: str) -> tuple[list[float], list[float]]:
    if task == "fashion":
        return [fashion_data.MEAN], [fashion_data.STD]
    # Rounded: the float32 tensors would print as 0.48500001430511475.
    mean, std = ([round(v, 6) for v in t.flatten().tolist()] for t in (facade_task.MEAN, facade_task.STD))
    return mean, std


def _sizes(multiple: int) -> str:
    return "RGB, any height and width" if multiple == 1 else f"RGB, height and width multiples of {multiple}"


@contextlib.contextmanager
def _quiet_exporter():
    # torch.export's internal deprecation warnings and "torchvision is not installed" notices are not
    # the user's to act on.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model_dir: Path, out: Path) -> dict[str, Any]:
    """Write the model in `model_dir` (a run or shipped model folder) to `out` as one self-contained
    ONNX file, checked against PyTorch in onnxruntime first. Returns its metadata and input shape."""
    import onnx_ir as ir
    import onnxruntime as ort

    model, cfg = load_model(model_dir)
    task = get_task(cfg.task)
    mean, std = _normalisation(cfg.task)
    batch = torch.export.Dim("batch")
    if cfg.task == "fashion":
        example, axes, multiple = torch.randn(2, 1, 28, 28), {0: batch}, None
    else:
        example = torch.randn(2, 3, 64, 64)
        axes = {0: batch, 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
        multiple = SIZE_MULTIPLE[cfg.model.name]
    metadata = {
        "cnnlab_version": __version__,
        "task": cfg.task,
        "model": cfg.model.name,
        "source": Path(model_dir).resolve().name,
        "input": "float32 NCHW, " + ("grey 28x28" if cfg.task == "fashion" else _sizes(multiple)),
        "normalisation": "input = (pixel / 255 - mean[c]) / std[c], pixel in 0..255",
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        "output": "logits: (N, classes)" if cfg.task == "fashion" else "logits: (N, classes, H, W)",
        "classes": json.dumps(list(task.classes)),
    }
    if multiple is not None:
        metadata["size_multiple"] = str(multiple)
    # The dynamo exporter (torch.export), not the TorchScript one: that one is deprecated and warns it
    # will be removed. external_data=False keeps the weights inside the .onnx: one file to hand on.
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            external_data=False,
            verbose=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=(axes,),
        )
    program.model.metadata_props.update(metadata)
    graph = program.model.graph
    if cfg.task == "facade":
        # torch.export names the output's height and width by its own arithmetic ("Min(height, 8*(...")
        # although they are the input's.
        n, _, height, width = graph.inputs[0].shape
        graph.outputs[0].shape = ir.Shape([n, len(task.classes), height, width])

    def write(tmp: Path) -> None:
        program.save(tmp, external_data=False)
        # Check the file as written, on a batch and size other than the traced example.
        size = (28, 28) if cfg.task == "fashion" else (96, 128)
        x = torch.randn(3, example.shape[1], *size, generator=torch.Generator().manual_seed(0))
        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        with torch.inference_mode():
            diff = float(np.abs(got - model(x).numpy()).max())
        if not diff <= TOLERANCE:  # NaN included
            raise CheckpointError(f"{out}: the ONNX model differs from PyTorch by {diff:.2g}; not written")

    atomic_write(Path(out), write)
    return {"file": str(out), "input_shape": [str(d) for d in graph.inputs[0].shape], **metadata}
