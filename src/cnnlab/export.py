"""Export a run's or a shipped model's network to ONNX, for use without cnnlab or PyTorch.

The ONNX graph takes the *normalised* float32 NCHW tensor and returns logits; how to normalise
(mean, std), the input layout and shape, the task and its kind, and the class names and colours are
written into the file's metadata_props.
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
from .engine.checkpoint import load_model
from .errors import CheckpointError, ConfigError
from .outputs import atomic_write
from .tasks import Task, get_task

# H and W the exported segmentation nets handle as PyTorch does. SeedA/SeedB resize their output back to
# the input size only for other sizes, and that branch is fixed when the graph is traced (their docstrings).
SIZE_MULTIPLE = {"seed-a": 4, "seed-b": 4, "unet": 1, "lite0-unet": None, "lite1-unet": None, "lite2-unet": None}
# lite*-unet: its TensorFlow-style padding depends on each layer's input size, and tracing it with dynamic
# height and width did not finish in 10 minutes (torch 2.13); predict and serve run it.
TOLERANCE = 1e-4
SEGMENT_EXAMPLE = (64, 64)  # px: the traced example's size; H and W stay dynamic
SEGMENT_CHECK = (96, 128)  # px: the check runs at another size than the traced one


def _input_text(task: Task, multiple: int | None) -> str:
    """The input layout in words, for the metadata and the command's output."""
    colour = "grey" if task.channels == 1 else "RGB"
    if task.image_size is not None:
        return f"float32 NCHW, {colour} {task.image_size}x{task.image_size}"
    sizes = "any height and width" if multiple == 1 else f"height and width multiples of {multiple}"
    return f"float32 NCHW, {colour}, {sizes}"


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
    ONNX file, checked against PyTorch in onnxruntime first. Returns its metadata, with the input shape
    as a list of strings (e.g. ["batch", "3", "height", "width"])."""
    import onnx_ir as ir
    import onnxruntime as ort

    model, cfg = load_model(model_dir)
    task = get_task(cfg)
    batch = torch.export.Dim("batch")
    if task.image_size is not None:
        # A classifier's head is built for one square size: only the batch is dynamic.
        size, axes, multiple = (task.image_size, task.image_size), {0: batch}, None
        check = size
    elif SIZE_MULTIPLE[cfg.model.name] is None:
        raise ConfigError(f"{model_dir}: {cfg.model.name} models cannot be exported to ONNX; predict and serve run it")
    else:
        size, multiple, check = SEGMENT_EXAMPLE, SIZE_MULTIPLE[cfg.model.name], SEGMENT_CHECK
        axes = {0: batch, 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    example = torch.randn(2, task.channels, *size)
    metadata = {
        "cnnlab_version": __version__,
        "task": task.name,
        "kind": task.kind,
        "model": cfg.model.name,
        "source": Path(model_dir).resolve().name,
        "input": _input_text(task, multiple),
        "normalisation": "input = (pixel / 255 - mean[c]) / std[c], pixel in 0..255",
        # Rounded: float32 values would print as 0.48500001430511475.
        "mean": json.dumps([round(v, 6) for v in task.mean]),
        "std": json.dumps([round(v, 6) for v in task.std]),
        "output": "logits: (N, classes)" if task.image_size is not None else "logits: (N, classes, H, W)",
        "classes": json.dumps(list(task.classes)),
        "colors": json.dumps(list(task.colors)),
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
    graph = program.model.graph
    if task.image_size is None:  # a segmenter
        # torch.export names the output's height and width by its own arithmetic ("Min(height, 8*(...")
        # although they are the input's.
        n, _, height, width = graph.inputs[0].shape
        graph.outputs[0].shape = ir.Shape([n, len(task.classes), height, width])
    shape = [d if isinstance(d, int) else str(d) for d in graph.inputs[0].shape]  # e.g. ["batch", 3, 28, 28]
    metadata["input_shape"] = json.dumps(shape)
    program.model.metadata_props.update(metadata)

    def write(tmp: Path) -> None:
        program.save(tmp, external_data=False)
        # Check the file as written, on a batch (and, segmentation, a size) other than the traced example's.
        x = torch.randn(3, task.channels, *check, generator=torch.Generator().manual_seed(0))
        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        with torch.inference_mode():
            diff = float(np.abs(got - model(x).numpy()).max())
        if not diff <= TOLERANCE:  # NaN included
            raise CheckpointError(f"{out}: the ONNX model differs from PyTorch by {diff:.2g}; not written")

    atomic_write(Path(out), write)
    return {"file": str(out), **metadata, "input_shape": [str(d) for d in shape]}
