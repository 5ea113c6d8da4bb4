"""Issue 17: a person's photo of a garment is prepared as Fashion-MNIST's images were (`tasks/fashion_photo.py`).

The photos are real test images rendered by `benchmarks/robustness.py` under each of its conditions.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from cnnlab.data import fashion
from cnnlab.engine.checkpoint import load_model
from cnnlab.errors import NothingFound
from cnnlab.tasks import get_task
from cnnlab.tasks.fashion import FashionTask
from cnnlab.tasks.fashion_photo import prepare
from cnnlab.zoo import resolve_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """benchmarks/robustness.py: its renderer, its conditions and the "before" preparation."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("robustness")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def test_split(real_fashion):
    return fashion.read_split(real_fashion, "t10k")


def _photo(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))[None]


def _similarity(out: np.ndarray, original: np.ndarray) -> float:
    """Correlation with the original, at the best shift of up to 2 px: the garment's box is found from the
    photo, and where its dim edges went under noise it can sit a pixel or two from the dataset's."""
    shifts = [np.roll(out, (dy, dx), (0, 1)) for dy in range(-2, 3) for dx in range(-2, 3)]
    return max(float(np.corrcoef(s.ravel(), original.ravel())[0, 1]) for s in shifts)


def _condition(bench, name: str):
    return next(c for c in bench.CONDITIONS if c.name == name)


def _box(x: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(x.any(1)), np.flatnonzero(x.any(0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def test_every_condition_gives_back_the_dataset_image(bench, test_split):
    for index, cond in enumerate(bench.CONDITIONS):
        # JPEG 30 keeps colour at half the resolution and in coarse 16 px blocks that bleed past the garment:
        # that photo's own damage (with its background known the model scores 80% on it, not 93%).
        damaged = cond.garment != "grey" and cond.jpeg is not None
        similar = []
        for i in range(8):
            original = test_split.x[i, 0].numpy()
            photo = bench.render(original, cond, np.random.default_rng([0, index, i]))
            x, _ = FashionTask().photo_input(photo.tensor())
            assert x.shape == (1, 28, 28) and x.dtype == torch.uint8
            out = x[0].numpy().astype(float)
            similar.append(_similarity(out, original.astype(float)))
            assert out.max() >= 254, cond.name  # contrast stretched as the dataset's (some of whose peak at 254)
            # Background black: nothing lit 3 px or more away from the garment (it may sit 2 px off).
            far = ~ndimage.binary_dilation(original > 0, iterations=3)
            assert (out[far] == 0).mean() >= (0.8 if damaged else 0.98), (cond.name, i)
        assert np.median(similar) > (0.8 if damaged else 0.9) and min(similar) > (0.45 if damaged else 0.75), (
            cond.name,
            similar,
        )


def test_the_old_preparation_fails_the_same_check(bench, test_split):
    """The check above can fail: on a light-grey photo the old path left the background grey."""
    cond = _condition(bench, "light-grey background")
    original = test_split.x[0, 0].numpy()
    photo = bench.render(original, cond, np.random.default_rng(0))
    out = bench.before_pixels(_photo(photo.pixels))[0].numpy().astype(float)
    assert _similarity(out, original.astype(float)) < 0.75


def test_a_dataset_image_is_used_as_it_is_and_a_negated_one_is_prepared(test_split):
    x = test_split.x[0]
    out, notes = prepare(x)
    assert torch.equal(out, x) and notes == ["already 28x28, light on black as Fashion-MNIST's images: used as it is"]
    out, notes = prepare(255 - x)
    assert notes[:2] == [
        "cropped to the garment (28x15 of 28x28)",
        "inverted: light background (grey 255); the model knows light garments on black",
    ]
    assert _similarity(out[0].numpy().astype(float), x[0].numpy().astype(float)) > 0.95


def test_a_tall_thin_garment_stays_tall_and_centred():
    photo = np.full((200, 200), 235, np.uint8)
    photo[20:180, 80:120] = 30  # 40x160, dark on light
    x, notes = prepare(_photo(photo))
    top, bottom, left, right = _box(x[0].numpy())
    # 160 px -> 28: 40 px -> 7 (one more where the box takes in the soft edge), centred as the dataset's.
    assert (top, bottom) == (0, 27) and 7 <= right - left + 1 <= 8
    assert abs((left + right) / 2 - 13.75) <= 0.75
    w, h = map(int, re.match(r"cropped to the garment \((\d+)x(\d+) of 200x200\)", notes[0]).groups())
    assert abs(w - 40) <= 4 and abs(h - 160) <= 4
    assert notes[1] == "inverted: light background (grey 235); the model knows light garments on black"
    # Turned a quarter: a wide one stays wide.
    x, _ = prepare(_photo(photo.T))
    top, bottom, left, right = _box(x[0].numpy())
    assert (left, right) == (0, 27) and 7 <= bottom - top + 1 <= 8


def test_the_notes_say_what_was_done(bench, test_split):
    grey, dark = _condition(bench, "off-centre"), _condition(bench, "dark background, light garment")
    photo = bench.render(test_split.x[0, 0].numpy(), grey, np.random.default_rng(1))
    h, w = photo.pixels.shape
    _, notes = prepare(_photo(photo.pixels))
    assert notes[0].startswith("cropped to the garment (") and notes[0].endswith(f" of {w}x{h})")
    cw, ch = map(int, re.search(r"\((\d+)x(\d+) of", notes[0]).groups())
    assert cw < 0.7 * w and ch < 0.7 * h  # the garment fills 40-60% of the frame
    level = int(re.match(r"inverted: light background \(grey (\d+)\)", notes[1]).group(1))
    assert abs(level - photo.behind.mean()) < 3
    assert re.fullmatch(r"resized to \d+x\d+, sharpened and centred on 28x28", notes[2])
    assert re.fullmatch(r"background set to black, contrast stretched x\d+\.\d", notes[3])
    photo = bench.render(test_split.x[0, 0].numpy(), dark, np.random.default_rng(1))
    _, notes = prepare(_photo(photo.pixels))
    assert not any("inverted" in n for n in notes) and notes[0].startswith("cropped to the garment")


@pytest.mark.parametrize("noise", [0.0, 3.0])
@pytest.mark.parametrize("colour", [None, (200, 180, 150)])
def test_a_blank_photo_says_no_garment_instead_of_a_guess(noise, colour):
    grey = np.full((60, 90), 128.0) + np.random.default_rng(0).normal(0, noise, (60, 90))
    if colour is None:
        img, shade = _photo(grey.round()), "grey 128"
    else:  # a beige photo: the same noise in every channel, over the colour
        rgb = np.clip(grey[..., None] - 128 + np.array(colour), 0, 255).round().astype(np.uint8)
        img, shade = torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), "#c8b496"
    with pytest.raises(NothingFound) as e:
        prepare(img)
    assert str(e.value) == f"no garment found: nothing stands out from the background ({shade})"


def test_a_grey_photo_decoded_in_colour_is_prepared_exactly_as_in_grey(bench, test_split):
    """Photos are decoded in colour since issue 29; a grey one (three equal channels) must not change."""
    for index, cond in enumerate(bench.CONDITIONS[:14]):
        photo = bench.render(test_split.x[index, 0].numpy(), cond, np.random.default_rng([2, index]))
        grey = photo.tensor()
        x, notes = prepare(grey)
        x3, notes3 = prepare(grey.expand(3, -1, -1).contiguous())
        assert torch.equal(x, x3) and notes == notes3, cond.name


def test_a_garment_with_the_backgrounds_grey_is_found_by_its_colour():
    """A pink rectangle on a beige table of the same grey: invisible in grey, plain in colour."""
    beige, red = np.array([214, 196, 160]), np.array([255, 175, 170])
    grey = lambda c: float(c @ [0.299, 0.587, 0.114])  # noqa: E731
    assert abs(grey(beige) - grey(red)) < 3
    rgb = np.broadcast_to(beige, (120, 160, 3)).astype(float).copy()
    rgb[20:100, 60:100] = red
    rgb += np.random.default_rng(0).normal(0, 2, rgb.shape)
    img = torch.from_numpy(rgb.round().clip(0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()
    with pytest.raises(NothingFound):  # what cnnlab saw until issue 29: the photo decoded grey
        prepare(torch.from_numpy(np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).convert("L")).copy())[None])
    x, notes = prepare(img)
    w, h = map(int, re.match(r"cropped to the garment \((\d+)x(\d+) of 160x120\)", notes[0]).groups())
    assert abs(w - 40) <= 3 and abs(h - 80) <= 3
    assert notes[1] == "found by its colour and grey against the background (#d6c4a0)"
    top, bottom, left, right = _box(x[0].numpy() > 128)
    assert top <= 1 and bottom >= 26 and abs((right - left + 1) - 14) <= 1  # 40x80 -> 14x28, lit


def test_the_shipped_model_reads_grey_background_photos(bench, test_split):
    """Users saw 18% on a light-grey background; the issue asks 85% or more."""
    cond = _condition(bench, "light-grey background")
    model, cfg = load_model(resolve_model(None, "fashion"))
    task = get_task(cfg)
    x, y = test_split.x[:200], test_split.y[:200]
    photos = [bench.render(g, cond, np.random.default_rng([1, i])).pixels for i, g in enumerate(x[:, 0].numpy())]
    now = torch.stack([task.photo_input(_photo(p))[0] for p in photos])
    before = torch.stack([bench.before_pixels(_photo(p)) for p in photos])
    with torch.no_grad():
        acc_now = (model(task.eval_inputs(now)).argmax(1) == y).float().mean().item()
        acc_before = (model(task.eval_inputs(before)).argmax(1) == y).float().mean().item()
    assert acc_now >= 0.85 and acc_before < 0.3, (acc_now, acc_before)


def test_the_shipped_model_reads_colour_garments_with_the_backgrounds_grey(bench, test_split):
    """Issue 29: garments told from the background by their colour alone. Decoded grey (cnnlab until then)
    5 in 6 were 'no garment found'; found by colour, the issue asks 85% or more."""
    cond = _condition(bench, "colour garment, the background's grey")
    model, cfg = load_model(resolve_model(None, "fashion"))
    task = get_task(cfg)
    x, y = test_split.x[:200], test_split.y[:200]
    photos = [bench.render(g, cond, np.random.default_rng([1, i])) for i, g in enumerate(x[:, 0].numpy())]
    accuracy = {}
    for name, decoded in (("colour", [p.tensor() for p in photos]), ("grey", [p.grey() for p in photos])):
        right = 0
        for img, label in zip(decoded, y.tolist(), strict=True):
            try:
                with torch.no_grad():
                    right += int(model(task.eval_inputs(task.photo_input(img)[0][None])).argmax(1)) == label
            except NothingFound:
                pass
        accuracy[name] = right / len(y)
    assert accuracy["colour"] >= 0.85 and accuracy["grey"] < 0.3, accuracy
