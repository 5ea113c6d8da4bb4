"""The report's architecture table: layers, output shapes, parameters and FLOPs, checked by hand for seed-a
and for consistency on the network of every recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.config import dump_config, load_config
from cnnlab.report.architecture import DEFAULT_SEGMENT_SIDE, describe, flops_text, run_architecture
from cnnlab.tasks import get_task

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FOLDER_FACTS = {
    "classify": ["data.classes=[a,b,c]", "data.image_size=20", "data.channels=3", "data.mean=[0.5,0.5,0.5]",
                 "data.std=[0.25,0.25,0.25]"],
    "segment": ["data.classes=[ground,blob]", "data.channels=1", "data.mean=[0.5]", "data.std=[0.25]"],
}  # fmt: skip


def _conv_flops(cin: int, cout: int, k: int, h: int, w: int) -> int:
    return 2 * cin * cout * k * k * h * w


def test_seed_a_fashion_by_hand():
    cfg = load_config("fashion", "seed-a")
    task = get_task(cfg)
    arch = describe(task.build_model(cfg).eval(), task.eval_inputs(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)))
    rows = [(r["name"], r["type"], r["output"], r["params"], r["flops"]) for r in arch["layers"]]
    # conv 3x3 1->32: 28 -> 26, pool 13; conv 4x4 32->64: 13 -> 10, pool 5; 64*5*5 = 1600 -> 128 -> 10.
    assert rows == [
        ("0", "Conv2d", [[32, 26, 26]], 32 * 1 * 9 + 32, _conv_flops(1, 32, 3, 26, 26)),
        ("1", "MaxPool2d", [[32, 13, 13]], 0, 0),
        ("2", "ReLU", [[32, 13, 13]], 0, 0),
        ("3", "Conv2d", [[64, 10, 10]], 64 * 32 * 16 + 64, _conv_flops(32, 64, 4, 10, 10)),
        ("4", "MaxPool2d", [[64, 5, 5]], 0, 0),
        ("5", "ReLU", [[64, 5, 5]], 0, 0),
        ("6", "Flatten", [[1600]], 0, 0),
        ("7", "Linear", [[128]], 1600 * 128 + 128, 2 * 1600 * 128),
        ("8", "ReLU", [[128]], 0, 0),
        ("9", "Linear", [[10]], 128 * 10 + 10, 2 * 128 * 10),
    ]
    assert arch["input"] == [1, 28, 28]
    assert arch["params"] == arch["trainable"] == 239_370
    assert arch["flops"] == 389_376 + 6_553_600 + 409_600 + 2_560 == 7_355_136
    assert [r["calls"] for r in arch["layers"]] == [1] * 10
    assert flops_text(arch["flops"]) == "7.36 M"


def _recipes() -> list[tuple[str, str]]:
    return [(task.name, path.stem) for task in sorted(RECIPES.iterdir()) for path in sorted(task.glob("*.yaml"))]


@pytest.mark.parametrize(("task_name", "recipe"), _recipes())
def test_every_recipes_network_adds_up(task_name, recipe):
    """Every layer runs; the layers' parameters and FLOPs are the network's; each convolution's FLOPs are
    2 Cin/groups Cout k k per output pixel (per input pixel for a transposed one); the logits have the
    input's size (segmentation) or one per class."""
    cfg = load_config(task_name, recipe, FOLDER_FACTS.get(task_name, []))
    task = get_task(cfg)
    # Classifiers take their square; segmentation nets any size, here a non-square one.
    h, w = (task.image_size, task.image_size) if task.image_size else (64, 96)
    with torch.device("meta"):
        model = task.build_model(cfg).eval()
    x = task.eval_inputs(torch.zeros(1, task.channels, h, w, dtype=torch.uint8)).to("meta")
    arch = describe(model, x)
    assert all(r["calls"] >= 1 for r in arch["layers"]), [r["name"] for r in arch["layers"] if not r["calls"]]
    assert sum(r["params"] for r in arch["layers"]) == arch["params"] == sum(p.numel() for p in model.parameters())
    assert sum(r["flops"] for r in arch["layers"]) == arch["flops"] > 0
    modules = dict(model.named_modules())
    for r in arch["layers"]:
        m = modules[r["name"]]
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            c, oh, ow = r["output"][0]
            (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
            # A transposed convolution is counted per input pixel: H_in = (H_out + 2 p - k) / s + 1.
            ih, iw = (oh + 2 * ph - kh) // sh + 1, (ow + 2 * pw - kw) // sw + 1
            pixels = ih * iw if isinstance(m, nn.ConvTranspose2d) else oh * ow
            assert r["flops"] == 2 * m.in_channels // m.groups * c * kh * kw * pixels, r
    last = arch["layers"][-1]["output"][0]
    assert last == ([len(task.classes), h, w] if task.kind == "segment" else [len(task.classes)])


def test_run_architecture_writes_the_numbers_for_the_runs_image_size(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config("facade", "unet")
    dump_config(cfg, run / "config.yaml")
    arch = run_architecture(run)
    assert json.loads((run / "figures" / "architecture.json").read_text()) == arch
    side = DEFAULT_SEGMENT_SIDE
    assert arch["input"] == [3, side, side] and "stand-in" in arch["size_source"]
    # Once evaluated, the cases figure records the images' size: the table follows it.
    (run / "figures" / "best_test.json").write_text(json.dumps({"names": [], "image_size": [96, 128]}))
    arch = run_architecture(run)
    assert arch["input"] == [3, 96, 128] and arch["layers"][-1]["output"] == [[5, 96, 128]]
    assert arch["size_source"] == "the size of the test images"
    # A 96x128 input has 3/16 the pixels of 256x256: every convolution's FLOPs scale with the pixels.
    assert arch["flops"] * 256 * 256 == _flops_at(cfg, 256, 256) * 96 * 128
    assert arch["model"] == "unet" and arch["params"] == 482_805


def _flops_at(cfg, h: int, w: int) -> int:
    task = get_task(cfg)
    with torch.device("meta"):
        model = task.build_model(cfg).eval()
    return describe(model, torch.zeros(1, 3, h, w, device="meta"))["flops"]
