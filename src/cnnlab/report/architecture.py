"""The network of a run as a table: every layer with its type, output shape, parameters and FLOPs for one
input of the run's image size, and the totals (figures/architecture.json, and a table on the report).

Nothing is cached: the numbers are worked out again for every report from the run's configuration, on
PyTorch's meta device (shapes without values), so even facade seed-b's 75 GFLOPs cost no arithmetic.
FLOPs are those of `torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix products, a
multiply-add counted as 2 FLOPs, biases, activations, pooling and normalisation not counted.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .. import runs
from ..outputs import write_json
from ..tasks import Task, get_task

# Segmentation nets take any size; without a size in the config or a recorded evaluation, the facade
# photos' 256x256 stands in (and the table says so).
DEFAULT_SEGMENT_SIDE = 256
FLOPS_NOTE = (
    "FLOPs: floating-point operations of one forward pass as torch.utils.flop_counter counts them: "
    "convolutions and matrix products, a multiply-add counted as 2 FLOPs (a k x k convolution from Cin to Cout "
    "channels at H x W output pixels: 2 Cin Cout k k H W); biases, activations, pooling and normalisation are "
    "not counted."
)


def _shape(out: Any) -> list[list[int]]:
    """Output shapes (batch left out) of a module's output: a tensor, or a tuple/list of them."""
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [list(t.shape[1:]) for t in items if isinstance(t, torch.Tensor)]


def _rows_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The table's layers: modules without children, and any container that holds parameters itself."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if name and (not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False)))
    ]


def describe(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Layers, output shapes, parameters and FLOPs of `model` on the input batch `x` (of one image).

    Returns {"input": shape, "layers": [{name, type, details, output, calls, params, flops}], "params",
    "trainable", "flops"}; a layer called more than once shows its first output and all its FLOPs.
    """
    layers = _rows_of(model)
    outputs: dict[str, list[list[int]]] = {}
    calls: dict[str, int] = {}

    def hook(name: str):
        def record(_module: nn.Module, _inputs: Any, out: Any) -> None:
            outputs.setdefault(name, _shape(out))
            calls[name] = calls.get(name, 0) + 1

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers]
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with counter, torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    # The counter names modules by their path under the model's class name ("SeedA.0").
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    rows = [
        {
            "name": name,
            "type": type(m).__name__,
            "details": m.extra_repr(),
            "output": outputs.get(name),
            "calls": calls.get(name, 0),
            "params": sum(p.numel() for p in m.parameters(recurse=False)),
            "flops": int(sum(per_module.get(f"{root}.{name}", {}).values())),
        }
        for name, m in layers
    ]
    return {
        "input": list(x.shape[1:]),
        "layers": rows,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops": int(counter.get_total_flops()),
    }


def input_side(run_dir: Path, task: Task, image_size: int | None) -> tuple[int, int, str]:
    """(H, W) of one input of the run and where it comes from: a classifier's square, the config's size,
    the size its segmentation evaluation recorded, or the facade photos' as a stand-in."""
    if task.image_size:
        return task.image_size, task.image_size, "the run's image size"
    if image_size:
        return image_size, image_size, "the run's image size (data.image_size)"
    for split in ("test", "val", "external"):
        path = runs.RunPaths(run_dir).figures / f"best_{split}.json"
        size = runs.read_json(path).get("image_size") if path.is_file() else None
        if size:
            return size[0], size[1], f"the size of the {split} images"
    return DEFAULT_SEGMENT_SIDE, DEFAULT_SEGMENT_SIDE, "a stand-in: the run records no image size"


def run_architecture(run_dir: Path) -> dict[str, Any]:
    """The architecture of a run's network for one input of its image size, written to
    figures/architecture.json (recomputed on every call: nothing can go stale)."""
    run_dir = Path(run_dir)
    cfg = runs.load_run_config(run_dir)
    task = get_task(cfg)
    # No weights: shapes, parameter counts and FLOPs depend on the configuration alone (every checkpoint
    # load checks its weights' shapes against it).
    with torch.device("meta"):
        model = task.build_model(cfg)
    h, w, source = input_side(run_dir, task, cfg.data.image_size)
    x = task.eval_inputs(torch.zeros(1, task.channels, h, w, dtype=torch.uint8)).to("meta")
    arch = {"model": cfg.model.name, "size_source": source, **describe(model.eval(), x), "flops_note": FLOPS_NOTE}
    folder = runs.RunPaths(run_dir).figures
    folder.mkdir(exist_ok=True)
    write_json(folder / "architecture.json", arch)
    return arch


def _count(n: int) -> str:
    return f"{n:,}"


def flops_text(n: float) -> str:
    """1234567 -> '1.23 M' (FLOPs in SI units)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}"


def _layer_row(i: int, r: dict[str, Any]) -> str:
    details = f'<span class="muted">({escape(r["details"])})</span>' if r["details"] else ""
    output = " + ".join("x".join(map(str, s)) for s in r["output"]) if r["output"] else "not run"
    if r["calls"] > 1:
        output += f" (called {r['calls']} times)"
    return (
        f'<tr><td class="num">{i}</td><td><code>{escape(r["name"])}</code></td><td>{escape(r["type"])}{details}</td>'
        f'<td class="num">{output}</td><td class="num">{_count(r["params"]) if r["params"] else ""}</td>'
        f'<td class="num">{_count(r["flops"]) if r["flops"] else ""}</td></tr>'
    )


def architecture_html(arch: dict[str, Any], number: str) -> str:
    """The layer table (`number`: its "Table N") with the totals in its foot, and a note on what the FLOPs
    count."""
    shape = "x".join(map(str, arch["input"]))
    rows = "".join(_layer_row(i, r) for i, r in enumerate(arch["layers"], 1))
    frozen = arch["params"] - arch["trainable"]
    note = f" ({_count(frozen)} not trained)" if frozen else ""
    return (
        f'<div class="scroll"><table id="architecture-table" class="arch"><caption><b>{number}</b>: The layers of '
        f"{escape(arch['model'])}, with the output shape, parameters and FLOPs of each for one {shape} input</caption>"
        '<thead><tr><th class="num">#</th><th>layer</th><th>type</th><th class="num">output (CxHxW)</th>'
        '<th class="num">parameters</th><th class="num">FLOPs</th></tr></thead>'
        f'<tbody>{rows}</tbody><tfoot><tr><td></td><td colspan="2">total for one {shape} input</td><td></td>'
        f'<td class="num">{_count(arch["params"])}</td><td class="num">{_count(arch["flops"])}</td></tr>'
        "</tfoot></table></div>"
        f'<p class="note">{_count(arch["params"])} parameters{note}; {_count(arch["flops"])} FLOPs '
        f"({flops_text(arch['flops'])}) per {shape} input ({escape(arch['size_source'])}). "
        f"{escape(arch['flops_note'])}</p>"
    )
