import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_facade_dir
from PIL import Image

from cnnlab import api, runs
from cnnlab.config import load_config
from cnnlab.engine import checkpoint, evaluation, runtime
from cnnlab.engine.tta import Views
from cnnlab.tasks.facade import FacadeTask
from cnnlab.tasks.segment import per_image_iou

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _cfg(data_dir, *extra):
    return load_config(
        "facade",
        "unet",
        [
            f"data.dir={data_dir}",
            "data.group_key=file",
            "data.val_fraction=0.25",
            "data.test_fraction=0.25",
            "train.epochs=2",
            "train.batch_size=4",
            "augment.crop_size=32",
            "train.threads=1",
            *extra,
        ],
    )


def test_per_image_iou_hand_computed():
    truth = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [2, 2]]])
    pred = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [2, 2]]])
    # image 0: class 0 IoU 1/2, class 1 IoU 2/3 -> 7/12; image 1: class 2 IoU 1.
    assert per_image_iou(pred, truth, 5).tolist() == pytest.approx([7 / 12, 1.0])


def test_batch_weighted_loss_is_mean_of_per_class_means():
    cfg = load_config("facade", "seed-a")
    logits = torch.randn(2, 5, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))  # classes 3 and 4 absent from the batch
    per_pixel = F.cross_entropy(logits, y, reduction="none")
    expected = torch.stack([per_pixel[y == c].mean() for c in y.unique()]).mean()
    assert FacadeTask().loss(logits, y, cfg).item() == pytest.approx(expected.item(), rel=1e-5)


def test_last_epochs_train_on_whole_images():
    cfg = load_config("facade", "unet", ["augment.crop_size=32", "train.epochs=5", "augment.full_size_epochs=2"])
    x, y = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8), torch.randint(0, 5, (2, 64, 48), dtype=torch.uint8)
    shapes = [FacadeTask().train_inputs(x, y, cfg, torch.Generator().manual_seed(0), e)[1].shape for e in range(5)]
    assert shapes == [(2, 32, 32)] * 3 + [(2, 64, 48)] * 2


class _SizeLogits(torch.nn.Module):
    """Logits (height / 8, 0) at every pixel: each resized view scores differently, by a known amount."""

    def forward(self, x):
        n, _, h, w = x.shape
        return torch.stack([torch.full((n, h, w), h / 8), torch.zeros(n, h, w)], 1)


def test_resized_test_time_views_are_averaged_at_the_input_size():
    rt = runtime.Runtime(torch.device("cpu"), bf16=False, channels_last=False, threads=1)
    x = torch.randint(0, 256, (3, 3, 8, 12), dtype=torch.uint8)
    got = evaluation.predict(
        _SizeLogits(), FacadeTask(), x, rt, batch_size=2, views=Views(flip=True, scales=(0.5, 1.0, 1.5))
    )
    # Views 4, 8 and 12 px high: logits 0.5, 1 and 1.5 for class 0.
    p0 = sum(torch.sigmoid(torch.tensor(v)) for v in (0.5, 1.0, 1.5)) / 3
    assert got.shape == (3, 2, 8, 12)
    assert torch.allclose(got[:, 0], p0.expand(3, 8, 12), atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(3, 8, 12), atol=1e-6)


def test_train_resume_evaluate_and_figures(tiny_facade, tmp_path):
    full = api.train_config(_cfg(tiny_facade), tmp_path / "full", progress=False)
    part = api.train_config(_cfg(tiny_facade), tmp_path / "part", progress=False, max_steps=3)
    done = api.train_config(None, part.run_dir, resume=True, progress=False, finish=False)
    a, b = (checkpoint.load(runs.RunPaths(r.run_dir).last)["model"] for r in (full, done))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ev = json.loads((full.run_dir / "eval_test.json").read_text())
    assert ev["n"] == 3 and len(ev["ap"]) == 5 and len(ev["iou"]) == 5 and 0 <= ev["map"] <= 1
    for fig in (
        "curves",
        "ap_per_class_over_epochs",
        "ap_iou_val",
        "ap_iou_test",
        "confusion_test",
        "best_val",
        "worst_val",
        "best_test",
        "worst_test",
    ):
        assert (full.run_dir / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    other = make_facade_dir(tmp_path / "other", n=5, size=48)
    out = evaluation.evaluate(full.run_dir, external=other)
    assert out["split"] == "external" and out["n"] == 5


def _photo(path, size, mode="RGB", exif_orientation=None):
    image, _ = __import__("conftest").synthetic_facade(64, 0)
    im = Image.fromarray(image).resize(size)
    if mode != "RGB":
        im = im.convert(mode)
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(path, exif=exif, quality=85)
    else:
        im.save(path)
    return path


def test_predict_big_rotated_jpeg_and_grey_png(tiny_facade, tmp_path):
    run = api.train_config(_cfg(tiny_facade, "train.epochs=1"), tmp_path / "run", progress=False, finish=False)
    big = _photo(tmp_path / "big.jpg", (3000, 2000), exif_orientation=6)  # stored landscape, shown portrait
    grey = _photo(tmp_path / "grey.png", (300, 200), mode="L")
    r = subprocess.run(
        [sys.executable, "-m", "cnnlab", "facade", "predict", run.run_dir, big, grey, "-o", tmp_path / "out"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "rotated per EXIF orientation 6" in r.stdout and "greyscale" in r.stdout
    assert "downscaled 3000x2000 to 2048x1365" in r.stdout  # decoded at most MAX_SIDE: memory stays bounded
    labels = Image.open(tmp_path / "out" / "big_labels.png")
    assert labels.size == (1365, 2048) and labels.mode == "P"
    assert set(np.unique(np.array(labels))) <= {0, 1, 2, 3, 4}
    overlay = Image.open(tmp_path / "out" / "big_overlay.png")
    assert overlay.width == 1365 and overlay.height > 2048  # the photo, then the legend below it
    assert Image.open(tmp_path / "out" / "big_side_by_side.jpg").size == (2 * 1365, overlay.height)
    areas = json.loads((tmp_path / "out" / "grey_areas.json").read_text())["area"]
    assert sum(areas.values()) == pytest.approx(1.0) and list(areas) == list(FacadeTask.classes)
    (tmp_path / "bomb.png").write_bytes(b"")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnlab",
            "facade",
            "predict",
            run.run_dir,
            tmp_path / "bomb.png",
            "-o",
            tmp_path / "out2",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bomb.png" in r.stderr
    assert not (tmp_path / "out2").exists()
