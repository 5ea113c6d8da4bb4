"""Segmenting large photos: blended tiles, the working size, test-time views, full-size labels a band at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from cnnlab.engine.runtime import Runtime
from cnnlab.engine.tta import Views
from cnnlab.infer import segment as seg
from cnnlab.tasks import get_task

FP32 = Runtime(torch.device("cpu"), bf16=False, channels_last=False, threads=1)


class PixelNet(torch.nn.Module):
    """Per-pixel logits (a 1x1 conv): what a tile sees at its border cannot change them, so tiled and
    whole-image probabilities must agree exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 1)

    def forward(self, x):
        return self.conv(x)


class EdgeNet(torch.nn.Module):
    """Logits that see 9x9 neighbourhoods (zero-padded at a tile's border): tiles differ near their edges."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 9, padding=4)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def photo():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (3, 700, 500), generator=gen, dtype=torch.uint8)


def _whole(model, photo):
    x = get_task("facade").eval_inputs(photo[None])
    return model(x).softmax(1)[0]


def test_tiles_blend_to_the_whole_image_result(photo, monkeypatch):
    task = get_task("facade")
    model = PixelNet()
    probs = seg.segment(model, task, photo, max_side=700, rt=FP32)  # 700x500: 3x2 tiles of 384
    assert probs.shape == (5, 700, 500)
    torch.testing.assert_close(probs, _whole(model, photo), atol=1e-5, rtol=0)
    # where tiles overlap, their border effects are faded out: closer to the whole image than plain averaging
    edge = EdgeNet()
    whole = _whole(edge, photo).detach()
    seam = slice(seg.TILE - seg.OVERLAP, seg.TILE)  # the overlap of the first two tile rows

    def seam_error() -> float:
        tiled = seg.segment(edge, task, photo, max_side=700, rt=FP32)
        return float((tiled[:, seam] - whole[:, seam]).abs().mean())

    blended = seam_error()
    monkeypatch.setattr(seg, "_ramp", torch.ones)  # plain averaging of the overlapping tiles
    assert blended < seam_error() / 5


def test_working_size_and_views(photo):
    task = get_task("facade")
    model = PixelNet()
    probs = seg.segment(model, task, photo, max_side=350, rt=FP32)
    assert probs.shape == (5, 350, 250)  # the longer side brought to max_side
    torch.testing.assert_close(probs.sum(0), torch.ones(350, 250))
    small = F.interpolate(task.eval_inputs(photo[None]), size=(350, 250), mode="area")
    torch.testing.assert_close(probs, model(small).softmax(1)[0], atol=1e-5, rtol=0)
    # a per-pixel net is blind to mirroring; resizing by 2 and back averages neighbouring pixels
    mirrored = seg.segment(model, task, photo, 350, Views(flip=True), rt=FP32)
    torch.testing.assert_close(mirrored, probs, atol=1e-5, rtol=0)
    scaled = seg.segment(model, task, photo, 350, Views(scales=(1.0, 2.0)), rt=FP32)
    assert scaled.shape == probs.shape and 0 < (scaled - probs).abs().max() < 0.5


def test_full_size_labels_match_one_whole_resize():
    gen = torch.Generator().manual_seed(2)
    for h, w, height, width in [(10, 7, 37, 23), (96, 128, 1000, 1333), (8, 6, 4, 3), (5, 5, 5, 5)]:
        probs = torch.rand(5, h, w, generator=gen)
        whole = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0].argmax(0)
        got = seg.full_size_labels(probs, height, width)
        assert got.dtype == torch.uint8 and got.shape == (height, width)
        # the same arithmetic in another order: only exact ties between classes could differ
        assert (got != whole.to(torch.uint8)).float().mean() < 1e-4


def test_max_side_out_of_range_is_one_line(tmp_path, monkeypatch, capsys):
    from cnnlab import api
    from cnnlab.errors import ConfigError

    with pytest.raises(ConfigError, match="max_side 20: choose 64 to 2048 px"):
        api.predict("facade", [tmp_path / "x.jpg"], max_side=20)
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "predict", "--max-side", "300", tmp_path / "x.png")
    assert code == 2 and "--max-side" in err  # a classifier has no working size
    with pytest.raises(ConfigError, match="take no max_side or tta"):
        api.predict("fashion", [tmp_path / "x.png"], tta=True)


def test_a_folder_of_photos_and_their_masks_segments_the_photos_only(tmp_path, monkeypatch, capsys):
    """`facade predict FOLDER` on the layout `evaluate --data` takes (NAME.jpg + NAME.png label maps): the
    label maps are skipped with one warning, not segmented as photos (NAME-2_overlay.png)."""
    import numpy as np
    from conftest import make_facade_dir
    from PIL import Image

    folder = make_facade_dir(tmp_path / "set", n=2, size=64)
    grey = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(grey).save(folder / "lone.png")  # a grey photo with no photo beside it: segmented
    code, _, err = run_cli(monkeypatch, capsys, "facade", "predict", folder, "-o", tmp_path / "out", "--no-progress")
    assert code == 0, err
    made = sorted(p.name for p in (tmp_path / "out").glob("*_overlay.png"))
    assert made == ["eecs442_0000_overlay.png", "eecs442_0001_overlay.png", "lone_overlay.png"]
    warnings = [line for line in err.splitlines() if line.startswith("cnnlab: warning:")]
    assert warnings == ["cnnlab: warning: skipped 2 label map(s) beside their photos (eecs442_0000.png next to "
                        "eecs442_0000.jpg)"]  # fmt: skip
