"""The user's own folders (`cnnlab classify|segment`): strict checks, decoding facts, the decode cache, and
new data sets that need only a folder. All data is generated: tiny images, a few steps of training."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import one_error_line, run_cli
from PIL import Image

from cnnlab import api
from cnnlab.data import folders as fd
from cnnlab.tasks import get_task, palette

# One thread: on a small shared CPU two threads of tiny convolutions mostly wait on each other.
FAST = ("--no-progress", "--set", "train.threads=1", "--set", "train.precision=fp32")
# A small U-Net on whole images: learns the squares below in a few epochs.
SEG_FAST = (*FAST, "--set", "model.name=unet", "--set", "model.width=0.25", "--set", "augment.crop_size=null")
CHANNEL = {"red": 0, "green": 1, "blue": 2}


@pytest.fixture(autouse=True)
def cache_dir(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------- generated folders


def save(path: Path, array, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)
    return path


def tinted(rng: np.random.Generator, colour: str, size: int = 16) -> np.ndarray:
    """RGB noise with one channel raised: red, green or blue."""
    a = rng.integers(0, 80, (size, size, 3))
    a[..., CHANNEL[colour]] += 150
    return a


def make_classify(root: Path, n: int = 4, split: str = "train", seed: int = 0, size: int = 16) -> Path:
    """root/split/<red|green|blue>/*.png: n tinted-noise RGB images per class."""
    rng = np.random.default_rng(seed)
    for colour in CHANNEL:
        for i in range(n):
            save(root / split / colour / f"{colour}{i}.png", tinted(rng, colour, size))
    return root


def square(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright square on a dark noisy background; its mask: 0 background, 1 square, 255 a 1-px border ring."""
    img = rng.integers(0, 40, (size, size))
    mask = np.zeros((size, size), np.uint8)
    s = int(rng.integers(size // 4, size // 2))
    r, c = rng.integers(2, size - s - 2, 2)
    img[r : r + s, c : c + s] += 180
    mask[r : r + s, c : c + s] = 1
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 255
    return img.astype(np.uint8), mask


def make_squares(root: Path, n: int = 6, size: int | list[int] = 16, rgb: bool = False, seed: int = 0) -> Path:
    """root/images/sqNN.png (grey, or RGB with rgb), root/masks/sqNN.png (grey index PNGs), root/classes.yaml."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, mask = square(rng, size[i % len(size)] if isinstance(size, list) else size)
        save(root / "images" / f"sq{i:02d}.png", np.stack([img] * 3, -1) if rgb else img)
        save(root / "masks" / f"sq{i:02d}.png", mask, "L")
    (root / "classes.yaml").write_text('classes: [background, {square: "#FF0000"}]\nignore: 255\n')
    return root


def garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image, whatever its name says\n" * 4)
    return path


def truncated(path: Path) -> Path:
    """A PNG cut short: its header reads, its pixels do not."""
    save(path, np.random.default_rng(1).integers(0, 255, (16, 16, 3)))
    path.write_bytes(path.read_bytes()[:120])
    return path


def train_cli(monkeypatch, capsys, kind: str, data: Path, out: Path, *args) -> tuple[int, str, str]:
    # Classification trains `small` here: these tests are about folders, and the default recipe's ImageNet
    # backbone (tests/test_transfer.py) would only make them slower.
    recipe = ("--recipe", "small") if kind == "classify" and "--recipe" not in args else ()
    return run_cli(monkeypatch, capsys, kind, "train", "--data", data, "--out", out, *FAST, *recipe, *args)


def load(kind: str, root: Path, *overrides: str):
    """A new run's config (facts filled in), task and splits, as `train` would load them."""
    cfg = api.resolve_config(kind, {"classify": "small", "segment": "unet"}[kind], list(overrides), data_dir=str(root))
    task = get_task(cfg)
    return cfg, task, task.load_data(cfg, progress=False)


def entries(cache: Path) -> list[Path]:
    """Cache entries that look done."""
    return sorted(p.parent for p in cache.glob("*/done.json"))


# ---------------------------------------------------------------- 1. bad data: one line naming it


def _empty_class(d):
    make_classify(d)
    (d / "train" / "yellow").mkdir()
    return "classify", [str(d / "train" / "yellow"), "class folder holds no images"]


def _class_only_in_val(d):
    make_classify(d)
    make_classify(d, n=1, split="val")
    save(d / "val" / "purple" / "p0.png", np.zeros((16, 16, 3)))
    return "classify", [str(d / "val" / "purple"), "class 'purple' is not among the training classes"]


def _one_class(d):
    save(d / "train" / "cats" / "c0.png", np.zeros((16, 16, 3)))
    save(d / "train" / "cats" / "c1.png", np.zeros((16, 16, 3)))
    return "classify", [str(d / "train"), "1 class folder (cats)", "at least two"]


def _unreadable_image(d):
    make_classify(d)
    bad = garbage(d / "train" / "red" / "x.png")
    return "classify", [str(bad), "not a readable image (1 such file)", "data.skip_bad"]


def _truncated_image(d):
    make_classify(d)
    bad = truncated(d / "train" / "green" / "t.png")
    return "classify", [str(bad), "data.skip_bad"]


def _mask_without_image(d):
    make_squares(d)
    save(d / "masks" / "extra.png", np.zeros((16, 16)), "L")
    return "segment", [str(d / "masks" / "extra.png"), "mask has no image extra.*"]


def _image_without_mask(d):
    make_squares(d)
    save(d / "images" / "lonely.png", np.zeros((16, 16)))
    return "segment", [str(d / "images" / "lonely.png"), "no mask lonely.png", "(1 of 7 lack one)"]


def _mask_value_not_a_class(d):
    make_squares(d)
    mask = np.array(Image.open(d / "masks" / "sq02.png"))
    mask[5, 5] = 7
    save(d / "masks" / "sq02.png", mask, "L")
    return "segment", [str(d / "masks" / "sq02.png"), "mask values [7]", "classes 0..1", "ignore value 255"]


def _mask_size_differs(d):
    make_squares(d)
    save(d / "masks" / "sq01.png", np.zeros((14, 12)), "L")
    return "segment", [str(d / "masks" / "sq01.png"), "mask is 12x14 but its image is 16x16"]


def _missing_classes_yaml(d):
    make_squares(d)
    (d / "classes.yaml").unlink()
    return "segment", [str(d / "classes.yaml"), "missing"]


def _rgb_mask_unknown_colour(d):
    make_squares(d)
    (d / "classes.yaml").write_text('classes: [{background: "#000000"}, {square: "#FF0000"}]\nignore: 255\n')
    rgb = np.zeros((16, 16, 3))
    rgb[4:8, 4:8] = (255, 0, 0)
    rgb[9, 9] = (0, 255, 0)
    save(d / "masks" / "sq03.png", rgb)
    return "segment", [str(d / "masks" / "sq03.png"), "colour #00FF00 is not a class colour of classes.yaml"]


def _two_images_one_name(d):
    make_squares(d)
    save(d / "images" / "sq00.jpg", np.zeros((16, 16, 3)))
    return "segment", [str(d / "images" / "sq00.png"), "same name as sq00.jpg"]


@pytest.mark.parametrize(
    "build",
    [
        _empty_class,
        _class_only_in_val,
        _one_class,
        _unreadable_image,
        _truncated_image,
        _mask_without_image,
        _image_without_mask,
        _mask_value_not_a_class,
        _mask_size_differs,
        _missing_classes_yaml,
        _rgb_mask_unknown_colour,
        _two_images_one_name,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_bad_data_is_one_line_naming_it(monkeypatch, capsys, tmp_path, cache_dir, build):
    data, out = tmp_path / "data", tmp_path / "run"
    kind, expected = build(data)
    code, _, err = train_cli(monkeypatch, capsys, kind, data, out, "--epochs", "1")
    one_error_line(code, err, *expected)
    assert not out.exists()
    assert entries(cache_dir) == [] and not list(cache_dir.glob("*.tmp-*"))  # a decode that failed left nothing


def test_skip_bad_trains_and_lists_the_files(monkeypatch, capsys, tmp_path):
    data, out = make_classify(tmp_path / "data"), tmp_path / "run"
    bad = [garbage(data / "train" / "red" / "x.png"), truncated(data / "train" / "blue" / "t.png")]
    gone, loop = data / "train" / "green" / "gone.png", data / "train" / "green" / "loop.png"
    gone.symlink_to("nowhere.png")  # links that lead nowhere are named, never dropped without a word
    loop.symlink_to("loop.png")
    code, _, err = train_cli(monkeypatch, capsys, "classify", data, tmp_path / "strict", "--epochs", "1")
    one_error_line(code, err, f"{gone}: a link to nowhere.png, which leads nowhere", "(3 such files)")
    args = ("--epochs", "1", "--set", "data.skip_bad=true", "--set", "data.val_fraction=0.25")
    code, _, err = train_cli(monkeypatch, capsys, "classify", data, out, *args)
    assert code == 0, err
    assert "skipped 4 unreadable files" in err
    # All: the ones whose header is unreadable, and the one that failed only when decoded.
    assert json.loads((out / "skipped.json").read_text()) == [str(bad[1]), str(gone), str(loop), str(bad[0])]
    assert ": 9 train, 3 val," in err, err  # the 12 good images


def test_skip_bad_segment_skips_unreadable_pairs_not_wrong_masks(monkeypatch, capsys, tmp_path):
    data, out = make_squares(tmp_path / "data", n=10), tmp_path / "run"
    bad_image = garbage(data / "images" / "sq03.png")
    garbage(data / "masks" / "sq05.png")  # an unreadable mask: its image cannot be used either
    skip = ("--set", "data.skip_bad=true", "--epochs", "1")
    code, _, err = train_cli(monkeypatch, capsys, "segment", data, out, *SEG_FAST[len(FAST) :], *skip)
    assert code == 0, err
    # Each pair under the file that is bad: sq03's image, sq05's mask.
    assert json.loads((out / "skipped.json").read_text()) == [str(bad_image), str(data / "masks" / "sq05.png")]
    # A mask with a value outside the classes is a mistake to fix, not a file to skip.
    mask = np.array(Image.open(data / "masks" / "sq07.png"))
    mask[3, 3] = 9
    save(data / "masks" / "sq07.png", mask, "L")
    code, _, err = train_cli(monkeypatch, capsys, "segment", data, tmp_path / "run2", *skip)
    one_error_line(code, err, str(data / "masks" / "sq07.png"), "mask values [9]")
    assert not (tmp_path / "run2").exists()


def test_skip_bad_with_nothing_readable_is_one_line(monkeypatch, capsys, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    first = garbage(data / "train" / "a" / "x.png")
    garbage(data / "train" / "b" / "y.png")
    code, _, err = train_cli(monkeypatch, capsys, "classify", data, out, "--epochs", "1", "--set", "data.skip_bad=true")
    one_error_line(code, err, str(first), "nor is any of the 2 files")
    assert not out.exists()


# ---------------------------------------------------------------- 2. decoding facts


def test_grey_and_rgb_are_detected(tmp_path):
    grey = tmp_path / "grey"
    for name in ("a", "b"):
        for i in range(3):
            save(grey / "train" / name / f"{i}.png", np.full((8, 8), 40 * i))
    cfg, task, data = load("classify", grey)
    assert (cfg.data.channels, task.channels, data["train"].x.shape[1]) == (1, 1, 1)

    cfg, task, data = load("classify", make_classify(tmp_path / "rgb"))
    assert (cfg.data.channels, task.channels, data["train"].x.shape[1]) == (3, 3, 3)

    cfg, _, data = load("segment", make_squares(tmp_path / "squares"))
    assert cfg.data.channels == 1 and data["train"].x.shape[1] == 1
    cfg, _, data = load("segment", make_squares(tmp_path / "squares-rgb", rgb=True))
    assert cfg.data.channels == 3 and data["train"].x.shape[1] == 3

    save(grey / "train" / "a" / "colour.png", np.zeros((8, 8, 3)))  # one RGB file among grey ones: RGB
    assert load("classify", grey)[0].data.channels == 3


def test_mixed_sizes_take_the_median(tmp_path):
    data = tmp_path / "data"
    for name in ("a", "b"):
        for side in (10, 12, 14):
            save(data / "train" / name / f"{side}.png", np.full((side, side, 3), 100))
    cfg, task, splits = load("classify", data)
    assert cfg.data.image_size == 12 and task.image_size == 12
    assert tuple(splits["train"].x.shape[1:]) == (3, 12, 12)

    cfg, _, splits = load("segment", make_squares(tmp_path / "squares", n=6, size=[16, 20, 24]))
    assert cfg.data.image_size == 20
    x, y = splits["train"].x.materialize(), splits["train"].targets
    assert tuple(x.shape[1:]) == (1, 20, 20) and tuple(y.shape[1:]) == (20, 20)
    assert set(y.unique().tolist()) == {0, 1, 255}  # masks resized by nearest neighbour: no blended values

    cfg, _, _ = load("segment", make_squares(tmp_path / "same", size=16))
    assert cfg.data.image_size is None  # one common size: kept as it is


def test_mean_and_std_are_measured_on_train(monkeypatch, capsys, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    for i in range(2):  # per channel: R always 255; G 0 or 255; B always 51 (0.2)
        save(data / "train" / "a" / f"{i}.png", np.full((8, 8, 3), (255, 0, 51)))
        save(data / "train" / "b" / f"{i}.png", np.full((8, 8, 3), (255, 255, 51)))
    save(data / "val" / "a" / "v.png", np.full((8, 8, 3), (0, 0, 0)))  # validation images do not count
    save(data / "val" / "b" / "v.png", np.full((8, 8, 3), (9, 9, 9)))
    (tmp_path / "x").mkdir()  # paths given with '..' are stored and printed normalised
    code, stdout, err = train_cli(
        monkeypatch, capsys, "classify", tmp_path / "x" / ".." / "data", tmp_path / "x" / ".." / "run",
        "--epochs", "1", "--batch-size", "2",
    )  # fmt: skip
    assert code == 0, err
    assert "x/.." not in stdout + err and f"{out}/report.html" in stdout + err
    d = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert d["mean"] == [1.0, 0.5, 0.2]
    assert d["std"] == [0.001, 0.5, 0.001]  # a constant channel: the floor, not 0
    assert (d["channels"], d["image_size"], d["classes"]) == (3, 8, ["a", "b"])
    assert d["colors"] == palette(2) and d["dir"] == str(data)
    # No test split: evaluate names the split it takes, and that one works.
    code, _, err = run_cli(monkeypatch, capsys, "classify", "evaluate", out)
    one_error_line(code, err, "has no 'test' split; evaluate --split val")
    code, _, err = run_cli(monkeypatch, capsys, "classify", "evaluate", out, "--split", "val")
    assert code == 0, err

    grey = tmp_path / "grey"
    for name, value in (("a", 51), ("b", 204)):
        for i in range(2):
            save(grey / "train" / name / f"{i}.png", np.full((6, 6), value))
    cfg, _, _ = load("classify", grey)
    assert (cfg.data.mean, cfg.data.std) == ([0.5], [0.3])


def test_validation_carve_is_stratified_and_seeded(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name, n in (("a", 8), ("b", 4)):
        for i in range(n):
            save(data / "train" / name / f"{name}{i}.png", rng.integers(0, 255, (8, 8)))
    files = {str(p) for p in (data / "train").rglob("*.png")}

    def split(seed: int) -> tuple[list[str], list[str]]:
        _, _, s = load("classify", data, "data.val_fraction=0.25", f"train.seed={seed}")
        return s["train"].names, s["val"].names

    train, val = split(7)
    assert sorted(Path(v).parent.name for v in val) == ["a", "a", "b"]  # round(8 * 0.25), round(4 * 0.25)
    assert len(train) == 9 and set(train) | set(val) == files and not set(train) & set(val)
    assert split(7) == (train, val)  # same seed, same files
    assert any(split(seed)[1] != val for seed in range(3))  # another seed, another choice

    make_classify(tmp_path / "with-val")
    make_classify(tmp_path / "with-val", n=2, split="val", seed=5)
    _, _, s = load("classify", tmp_path / "with-val")
    assert (len(s["train"]), len(s["val"])) == (12, 6)  # a val/ folder is the validation split
    assert all("/val/" in name for name in s["val"].names)


# ---------------------------------------------------------------- 3. the cache

REAL_LOAD_PHOTO = fd.load_photo


def counting(monkeypatch) -> list[Path]:
    """Record every decode of an image file."""
    calls = []

    def load_photo(path, **kwargs):
        calls.append(Path(path))
        return REAL_LOAD_PHOTO(path, **kwargs)

    monkeypatch.setattr(fd, "load_photo", load_photo)
    return calls


def refuse(path, **kwargs):
    raise AssertionError(f"decoded {path} again")


def test_second_load_decodes_nothing(monkeypatch, tmp_path, cache_dir):
    data = make_classify(tmp_path / "data")
    make_classify(data, n=1, split="test", seed=3)
    calls = counting(monkeypatch)
    _, _, first = load("classify", data)
    assert len(calls) == 15 and len(entries(cache_dir)) == 2  # train and test

    monkeypatch.setattr(fd, "load_photo", refuse)
    cfg, _, second = load("classify", data)
    assert cfg.data.image_size == 16 and len(entries(cache_dir)) == 2
    for name in ("train", "val", "test"):
        assert first[name].names == second[name].names
        assert torch.equal(first[name].x.materialize(), second[name].x.materialize())
        assert torch.equal(first[name].targets, second[name].targets)

    squares = make_squares(tmp_path / "squares", n=6)
    monkeypatch.setattr(fd, "load_photo", REAL_LOAD_PHOTO)
    _, _, first = load("segment", squares)
    monkeypatch.setattr(fd, "load_photo", refuse)
    monkeypatch.setattr(fd, "mask_pixels", refuse)
    _, _, second = load("segment", squares)
    assert len(entries(cache_dir)) == 3
    for name in ("train", "val", "test"):
        assert first[name].names == second[name].names
        assert torch.equal(first[name].x.materialize(), second[name].x.materialize())
        assert torch.equal(first[name].targets, second[name].targets)


def test_a_changed_file_makes_a_new_entry(monkeypatch, tmp_path, cache_dir):
    data = make_classify(tmp_path / "data")
    calls = counting(monkeypatch)
    load("classify", data)
    (old,) = entries(cache_dir)
    one = data / "train" / "red" / "red0.png"
    st = one.stat()
    os.utime(one, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched: same bytes, new time
    load("classify", data)
    assert len(calls) == 24  # all 12 decoded again
    assert len(entries(cache_dir)) == 2 and old in entries(cache_dir)
    load("classify", data)
    assert len(calls) == 24 and len(entries(cache_dir)) == 2


def test_cache_false_writes_nothing(monkeypatch, capsys, tmp_path, cache_dir):
    data, out = make_classify(tmp_path / "data"), tmp_path / "run"
    args = ("--epochs", "1", "--set", "data.cache=false", "--set", "data.val_fraction=0.25")
    code, _, err = train_cli(monkeypatch, capsys, "classify", data, out, *args)
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["cache"] is False
    _, _, splits = load("segment", make_squares(tmp_path / "squares"), "data.cache=false")
    assert len(splits["train"]) + len(splits["val"]) + len(splits["test"]) == 6
    assert not cache_dir.exists()


class Interrupt(BaseException):
    """Stands for Ctrl-C or a kill: not an Exception, so only `except BaseException` cleans up after it."""


def test_an_interrupted_decode_leaves_nothing_that_looks_done(monkeypatch, tmp_path, cache_dir):
    data = make_classify(tmp_path / "data")
    calls = []

    def interrupted(path, **kwargs):
        calls.append(path)
        if len(calls) == 5:
            raise Interrupt
        return REAL_LOAD_PHOTO(path, **kwargs)

    monkeypatch.setattr(fd, "load_photo", interrupted)
    try:  # not pytest.raises: pytest 9 lets a BaseException that is not an Exception through it
        load("classify", data)
    except Interrupt:
        pass
    else:
        pytest.fail("the interrupt did not come through")
    assert len(calls) == 5
    assert list(cache_dir.rglob("done.json")) == [] and list(cache_dir.iterdir()) == []

    calls = counting(monkeypatch)
    _, _, splits = load("classify", data)  # the next run decodes the whole folder again
    assert len(calls) == 12 and len(entries(cache_dir)) == 1
    done = json.loads((entries(cache_dir)[0] / "done.json").read_text())
    assert (done["count"], done["skipped"], sorted(done["digests"])) == (12, [], ["x"])
    assert len(splits["train"]) + len(splits["val"]) == 12


# ---------------------------------------------------------------- 4. a new data set needs only a folder


@pytest.fixture(scope="module")
def square_run(tmp_path_factory) -> Path:
    """24 grey 32x32 squares (not facades), trained as `cnnlab segment train --data DIR --epochs 3` would."""
    from cnnlab.cli import app as cli

    root = tmp_path_factory.mktemp("squares")
    data, out = make_squares(root / "data", n=24, size=32), root / "run"
    args = ["segment", "train", "--data", data, "--out", out, "--epochs", "3", *SEG_FAST]
    args += ["--batch-size", "2", "--lr", "0.01", "--set", "optim.schedule=constant", "--set", "train.tta_flip=false"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE_DIR", str(root / "cache"))
        mp.setattr(sys, "argv", ["cnnlab", *map(str, args)])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
    assert exit_.value.code in (0, None)
    return out


def test_a_third_segmentation_set_learns(monkeypatch, capsys, square_run):
    cfg = yaml.safe_load((square_run / "config.yaml").read_text())
    d = cfg["data"]
    assert (d["classes"], d["ignore_index"], d["channels"]) == (["background", "square"], 255, 1)
    assert d["colors"] == [palette(2)[0], "#FF0000"] and d["group_key"] == "file"
    code, out, err = run_cli(monkeypatch, capsys, "segment", "evaluate", square_run)
    assert code == 0, err
    assert out.strip().startswith("test (best checkpoint, 2 images): ")
    m = json.loads((square_run / "eval_test.json").read_text())
    assert m["n"] == 2 and len(m["iou"]) == 2 and len(m["ap"]) == 2  # 255 is no class
    assert m["miou"] > 0.8  # chance (all one class) is under 0.5
    assert f"mIoU {m['miou']:.4f}" in out

    # The metrics leave the ignore ring out: recount them from the best model's own predictions.
    model, run_cfg = api.load_model(square_run)
    task = get_task(run_cfg)
    names = list(json.loads((square_run / "figures" / "per_image_iou_test.json").read_text()))
    data = Path(d["dir"])
    x = torch.stack([torch.from_numpy(np.array(Image.open(data / "images" / f"{n}.png")))[None] for n in names])
    y = torch.stack([torch.from_numpy(np.array(Image.open(data / "masks" / f"{n}.png"))) for n in names])
    with torch.inference_mode():
        pred = model(task.eval_inputs(x)).argmax(1)
    keep = y != 255
    assert m["acc"] == pytest.approx(float((pred[keep] == y[keep]).double().mean()), abs=1e-9)
    inter = [((pred == c) & (y == c) & keep).sum() for c in (0, 1)]
    union = [(((pred == c) | (y == c)) & keep).sum() for c in (0, 1)]
    assert m["iou"] == pytest.approx([float(i / u) for i, u in zip(inter, union, strict=True)], rel=1e-6)


def test_a_third_segmentation_set_predicts(monkeypatch, capsys, tmp_path, square_run):
    img, mask = square(np.random.default_rng(99), 48)  # a new image, of another size than the training ones
    image = save(tmp_path / "new.png", img)
    code, stdout, err = run_cli(monkeypatch, capsys, "segment", "predict", square_run, image, "--out", tmp_path / "p")
    assert code == 0, err
    assert stdout.startswith(f"{image}: background ") and f"-> {tmp_path / 'p' / 'new_overlay.png'}" in stdout
    labels = check_labels_png(tmp_path / "p" / "new_labels.png", square_run, image)
    inside = mask != 255
    assert (labels[inside] == mask[inside]).mean() > 0.9  # and it found the square


def check_labels_png(path: Path, run: Path, image: Path) -> np.ndarray:
    """A palette PNG of class indices 0..1 in the run's class colours, as large as the photo."""
    colors = yaml.safe_load((run / "config.yaml").read_text())["data"]["colors"]
    labels = Image.open(path)
    assert labels.mode == "P" and labels.size == Image.open(image).size
    rgb = [int(c[i : i + 2], 16) for c in colors for i in (1, 3, 5)]
    assert labels.getpalette()[:6] == rgb
    assert set(np.unique(np.array(labels)).tolist()) <= {0, 1}
    return np.array(labels)


def test_segment_predict_writes_labels_in_the_run_palette(monkeypatch, capsys, tmp_path):
    data, out = make_squares(tmp_path / "data", size=32, rgb=True), tmp_path / "run"
    (data / "classes.yaml").write_text('classes: [{sky: "#0000FF"}, {square: "#FF0000"}]\nignore: 255\n')
    code, _, err = train_cli(monkeypatch, capsys, "segment", data, out, *SEG_FAST[len(FAST) :], "--epochs", "1")
    assert code == 0, err
    code, stdout, err = run_cli(monkeypatch, capsys, "segment", "predict", out, data / "images" / "sq00.png")
    assert code == 0, err
    assert stdout.startswith(f"{data / 'images' / 'sq00.png'}: sky ") and "square " in stdout
    check_labels_png(out / "predictions" / "sq00_labels.png", out, data / "images" / "sq00.png")
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["colors"] == ["#0000FF", "#FF0000"]


def test_a_third_classification_set_learns(monkeypatch, capsys, tmp_path):
    data, out = make_classify(tmp_path / "data", n=20), tmp_path / "run"
    make_classify(data, n=3, split="test", seed=1)
    settings = ("--batch-size", "8", "--set", "optim.name=adam", "--lr", "0.003", "--set", "optim.schedule=constant")
    args = ("--epochs", "2", "--set", "data.val_fraction=0.25", *settings)
    code, _, err = train_cli(monkeypatch, capsys, "classify", data, out, *args)
    assert code == 0, err
    d = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert (d["classes"], d["channels"], d["image_size"]) == (["blue", "green", "red"], 3, 16)

    code, stdout, err = run_cli(monkeypatch, capsys, "classify", "evaluate", out, "--split", "val")
    assert code == 0, err
    m = json.loads((out / "eval_val.json").read_text())
    assert m["n"] == 15 and len(m["per_class_acc"]) == 3 and m["acc"] >= 0.9
    assert stdout.strip().startswith("val (best checkpoint, 15 images): ")
    code, stdout, err = run_cli(monkeypatch, capsys, "classify", "evaluate", out)  # DIR/test/
    assert code == 0, err
    assert stdout.strip().startswith("test (best checkpoint, 9 images): ")

    rng = np.random.default_rng(123)
    photos = {c: save(tmp_path / f"new-{c}.png", tinted(rng, c, 24)) for c in CHANNEL}  # another size too
    code, stdout, err = run_cli(monkeypatch, capsys, "classify", "predict", out, *photos.values())
    assert code == 0, err
    firsts = dict(re.findall(r"^(\S+): (\w+) \d", stdout, re.M))
    assert firsts == {str(p): c for c, p in photos.items()}
