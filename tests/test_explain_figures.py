"""Explanation figures: each one drawn from tiny hand-made inputs, with the numbers in its JSON checked."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from cnnlab.plots import explain as ef
from cnnlab.plots.embedding import plot_embedding

CLASSES = ["shirt", "T-shirt", "coat"]
HEX = ["#1f77b4", "#ff7f0e", "#2ca02c"]
RGB = [(0, 0, 0), (0, 128, 255), (255, 128, 0)]


def _images(n: int = 4, channels: int = 1, side: int = 16) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, channels, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def _left_half(n: int, side: int = 16) -> torch.Tensor:
    cam = torch.zeros(n, side, side)
    cam[:, :, : side // 2] = 1
    return cam


def _read(png) -> dict:
    """The figure is a readable PNG of a sensible size; its numbers."""
    assert png.suffix == ".png" and png.exists()
    with Image.open(png) as im:
        assert im.width >= 300 and im.height >= 200, im.size
    return json.loads(png.with_suffix(".json").read_text())


@pytest.fixture
def titles(monkeypatch) -> list[str]:
    """Every title and suptitle of the figures saved while the test runs."""
    seen: list[str] = []
    save = ef.save

    def spy(fig, path, data, layout=True):
        seen.extend(ax.get_title() for ax in fig.axes)
        seen.append(fig._suptitle.get_text() if fig._suptitle else "")
        return save(fig, path, data, layout)

    monkeypatch.setattr(ef, "save", spy)
    return seen


@pytest.mark.parametrize("channels", [1, 3])
def test_heat_overlay_leaves_the_image_where_there_is_no_heat(channels):
    image = _images(1, channels)[0]
    out = ef.heat_overlay(image, torch.zeros(16, 16))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.array_equal(out, image.permute(1, 2, 0).expand(16, 16, 3).numpy())


def test_heat_overlay_blends_the_colour_map_and_clips():
    image = torch.zeros(1, 4, 4, dtype=torch.uint8)
    full = ef.heat_overlay(image, torch.ones(4, 4), alpha=1.0, cmap="viridis")
    top = np.rint(np.array(colormaps["viridis"](1.0)[:3]) * 255)
    assert np.array_equal(full[0, 0], top)
    assert np.array_equal(ef.heat_overlay(image, torch.full((4, 4), 7.0)), ef.heat_overlay(image, torch.ones(4, 4)))
    half = ef.heat_overlay(image, torch.ones(4, 4), alpha=0.5, cmap="viridis")
    assert np.abs(half[0, 0].astype(int) - top / 2).max() <= 1


def test_heat_overlay_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match"):
        ef.heat_overlay(_images(1)[0], torch.zeros(8, 16))
    with pytest.raises(ValueError, match="C 1 or 3"):
        ef.heat_overlay(torch.zeros(2, 16, 16, dtype=torch.uint8), torch.zeros(16, 16))


def test_cam_examples_centre_of_mass_and_picks(tmp_path):
    images = _images(4, 3)
    true, pred = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 0])
    conf = torch.tensor([0.93, 0.61, 0.8, 0.5])
    cams = _left_half(4)
    cams[2] = 0  # an image with no evidence at all
    png = ef.plot_cam_examples(images, cams, true, pred, conf, CLASSES, {0: ([0], [1]), 1: ([2], [3])},
                               tmp_path / "cams_test", "Grad-CAM on test images")  # fmt: skip
    data = _read(png)
    assert data["picks"] == {"shirt": {"correct": [0], "wrong": [1]}, "T-shirt": {"correct": [2], "wrong": [3]}}
    row, col = data["cam_mass_centre"]["0"]
    assert row == pytest.approx(0.5) and col == pytest.approx(0.25) and col < 0.5
    assert data["cam_mass_centre"]["2"] is None
    assert set(data["cam_mass_centre"]) == {"0", "1", "2", "3"}


def test_attributions_stats_and_top(tmp_path, titles):
    image = _images(1, 1)[0]
    signed = torch.zeros(16, 16)
    signed[0, 0], signed[5, 5] = -2.0, 3.0
    panels = [("Grad-CAM", _left_half(1)[0], "cam"), ("integrated gradients", signed, "signed")]
    top = [("shirt", 0.7), ("coat", 0.2), ("T-shirt", 0.1)]
    data = _read(ef.plot_attributions(image, panels, top, tmp_path / "explain", "shirt (70%)"))
    assert data["panels"] == ["Grad-CAM", "integrated gradients"]
    assert data["top"] == [list(t) for t in top]
    assert data["stats"][0] == {"min": 0.0, "max": 1.0, "sum": 128.0}
    assert data["stats"][1] == {"min": -2.0, "max": 3.0, "sum": 1.0}
    assert "shirt (70%)" in titles
    with pytest.raises(ValueError, match="'cam' or 'signed'"):
        ef.plot_attributions(image, [("x", signed, "heat")], top, tmp_path / "bad", "bad")


@pytest.mark.parametrize("negative", [True, False])
def test_feature_maps_choose_the_strongest_channels(tmp_path, negative):
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 20, 4, 4, generator=g) * 0.01
    if negative:
        maps -= 0.005
    for ch, scale in ((7, 5.0), (3, 3.0), (15, 2.0)):
        maps[:, ch] = scale
    maps[:, 11] = 0
    maps[0, 11] = 20.0  # strong in one image only: ranked by its mean over the three images, 20 / 3
    data = _read(ef.plot_feature_maps(_images(3, 3), CLASSES, maps, "features.conv2", tmp_path / "fm", channels=4))
    assert data["channels"] == [11, 7, 3, 15]
    assert data["mean_abs"] == pytest.approx([20 / 3, 5.0, 3.0, 2.0], rel=1e-5)
    assert data["layer"] == "features.conv2" and data["shape"] == [20, 4, 4]


def test_top_filters_are_the_largest_norm_ones(tmp_path, titles):
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(10, 6, 3, 3, generator=g) * 0.1
    weight[4] *= 9
    weight[8] *= 6
    weight[1] *= 4
    weight[4, 2] *= 5  # filter 4's strongest input slice
    expected = np.argsort(-np.linalg.norm(weight.reshape(10, -1).numpy(), axis=1), kind="stable")
    data = _read(ef.plot_top_filters(weight, tmp_path / "filters_conv2", "conv2 filters", top=3, slices=4))
    assert data["filters"] == [4, 8, 1] == expected[:3].tolist()
    assert data["norms"] == pytest.approx([float(weight[f].norm()) for f in (4, 8, 1)], rel=1e-5)
    assert data["norms"] == sorted(data["norms"], reverse=True)
    assert data["shape"] == [10, 6, 3, 3]
    assert len(data["slices"]) == 3 and all(len(s) == 4 for s in data["slices"])
    assert data["slices"][0][0] == 2
    slice_norms = weight[8].reshape(6, -1).norm(dim=1)
    assert data["slices"][1] == torch.argsort(slice_norms, descending=True)[:4].tolist()
    assert [t for t in titles if "filters" in t] == ["conv2 filters"]  # said once: no second line repeating it
    # More asked for than there are: all of them.
    assert len(_read(ef.plot_top_filters(weight, tmp_path / "all", "all", top=50, slices=50))["slices"][0]) == 6


def test_embedding_overlap_separated_and_interleaved(tmp_path):
    g = np.random.default_rng(3)
    blobs = np.concatenate([g.normal(0, 1, (40, 2)), g.normal(50, 1, (40, 2))])
    labels = torch.tensor([0] * 40 + [1] * 40)
    images = _images(80, 1)
    data = _read(plot_embedding(blobs, labels, CLASSES, HEX, images, "t-SNE", tmp_path / "emb"))
    assert data["overlap"]["shirt"] == {"mixed": 0.0, "with": None}
    assert data["overlap"]["T-shirt"] == {"mixed": 0.0, "with": None}
    assert data["overlap"]["coat"] == {"mixed": None, "with": None}  # no points of this class
    assert data["n"] == 80 and data["method"] == "t-SNE" and data["labels"] == labels.tolist()
    assert data["points"][0] == [round(float(v), 3) for v in blobs[0]]

    mixed = g.normal(0, 1, (80, 2))
    labels = torch.tensor([0, 1] * 40)
    data = _read(plot_embedding(mixed, labels, CLASSES, HEX, _images(80, 3), "PCA", tmp_path / "emb2", 3))
    assert data["overlap"]["shirt"]["mixed"] > 0.3 and data["overlap"]["shirt"]["with"] == "T-shirt"
    assert data["overlap"]["T-shirt"]["mixed"] > 0.3 and data["overlap"]["T-shirt"]["with"] == "shirt"


def test_reliability_passes_the_numbers_and_the_ece(tmp_path, titles):
    nan = float("nan")
    cal = {
        "edges": [0.0, 0.25, 0.5, 0.75, 1.0],
        "confidence": [nan, 0.4, 0.6, 0.95],
        "accuracy": [nan, 0.5, 0.55, 0.9],
        "count": [0, 3, 40, 5000],
        "ece": 0.0468,
        "n": 5043,
    }
    data = _read(ef.plot_reliability(cal, tmp_path / "reliability_test", "Calibration (test)"))
    assert data["confidence"][0] is None and data["accuracy"][0] is None
    assert data["accuracy"][1:] == [0.5, 0.55, 0.9] and data["count"] == cal["count"]
    assert data["ece"] == 0.0468 and data["n"] == 5043
    assert "Calibration (test): ECE 0.047" in titles


def test_confidence_cases(tmp_path):
    truths = torch.zeros(2, 16, 16, dtype=torch.long)
    truths[:, 8:] = 2
    preds = truths.clone()
    preds[1, :4] = 1
    conf = torch.stack([torch.full((16, 16), 0.9), torch.linspace(0.3, 1, 256).reshape(16, 16)])
    entropy = 1 - conf
    data = _read(ef.plot_confidence_cases(_images(2, 3), truths, preds, conf, entropy, ["a.jpg", "b.jpg"], [1.0, 0.6],
                                          CLASSES, RGB, tmp_path / "unsure", "Where the model is unsure",
                                          math.log(3)))  # fmt: skip
    assert data["names"] == ["a.jpg", "b.jpg"] and data["mean_iou"] == [1.0, 0.6]
    assert data["mean_confidence"] == pytest.approx([0.9, 0.65], rel=1e-5)
    assert data["mean_entropy"] == pytest.approx([0.1, 0.35], rel=1e-5)


@pytest.mark.parametrize("n_cams", [2, 3])
def test_class_cams(tmp_path, n_cams):
    pred = torch.zeros(16, 16, dtype=torch.long)
    pred[4:] = 1
    cams = {"background": _left_half(1)[0], "window": torch.zeros(16, 16), "door": _left_half(1)[0].T * 0.5}
    cams = dict(list(cams.items())[:n_cams])
    data = _read(ef.plot_class_cams(_images(1, 3)[0], cams, pred, RGB, CLASSES, tmp_path / "cams", "photo.jpg"))
    assert data["classes"] == list(cams)
    assert data["mass_centre"]["background"] == pytest.approx([0.5, 0.25])
    assert data["mass_centre"]["window"] is None
    assert data["peak"]["background"] == 1.0 and data["peak"]["window"] == 0.0
    if n_cams == 3:
        assert data["mass_centre"]["door"] == pytest.approx([0.25, 0.5]) and data["peak"]["door"] == 0.5
