"""A corpus of broken and hostile inputs, generated here. Each one, through the real CLI: exit code 2, one
line naming the input and the problem, and no output left behind. Inputs cnnlab can use (CMYK, 16-bit,
RGBA, 1-bit, grey photos) are converted, with a note saying so."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import idx_bytes, make_facade_dir, make_fashion_dir, run_cli, synthetic_fashion
from PIL import Image

from cnnlab import api
from cnnlab.config import load_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("corpus-runs")
    fashion = make_fashion_dir(base / "fashion-data", 200, 50)
    facade = make_facade_dir(base / "facade-data", n=8, size=64)
    out = {}
    for task, recipe, extra in (
        ("fashion", "seed-a", [f"data.dir={fashion}"]),
        (
            "facade",
            "unet",
            [
                f"data.dir={facade}",
                "data.group_key=file",
                "data.val_fraction=0.25",
                "data.test_fraction=0.25",
                "augment.crop_size=32",
            ],
        ),
    ):
        cfg = load_config(task, recipe, [*extra, "train.epochs=1", "train.batch_size=8", "train.threads=1"])
        out[task] = api.train_config(cfg, base / task, progress=False, finish=False).run_dir
    return out


# ---- Fashion-MNIST files: (name, how to break train-images or train-labels, expected text)
X, Y = synthetic_fashion(40, 0)
IDX_CASES = {
    "truncated-gz": ("images", gzip.compress(idx_bytes(X))[:300], "corrupt or truncated gzip"),
    "wrong-magic": ("images", gzip.compress(b"\x00\x00\x09\x03" + idx_bytes(X)[4:]), "wrong IDX magic"),
    "wrong-dims": ("images", gzip.compress(idx_bytes(np.zeros((40, 28, 27), np.uint8))), "28x27"),
    "wrong-count": ("labels", gzip.compress(idx_bytes(Y[:39])), "39 labels for 40 images"),
    "label-out-of-range": ("labels", gzip.compress(idx_bytes(np.full(40, 200, np.uint8))), "outside 0..9"),
    "zero-byte-idx": ("images", b"", "too short for an IDX header"),
    "truncated-payload": ("images", gzip.compress(idx_bytes(X)[:-1]), "truncated or padded"),
    "missing-file": ("labels", None, "file not found"),
}


@pytest.mark.parametrize("case", IDX_CASES)
def test_fashion_files(case, tmp_path, monkeypatch, capsys):
    which, content, expected = IDX_CASES[case]
    data = make_fashion_dir(tmp_path / "d", 40, 10)
    target = data / f"train-{which}-idx{3 if which == 'images' else 1}-ubyte.gz"
    if content is None:
        target.unlink()
    else:
        target.write_bytes(content)
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--data-dir", data, "--out", tmp_path / "run")
    _assert_refused(code, err, expected, target.name)
    assert not (tmp_path / "run").exists()


# ---- Facade folders
def _break_folder(folder: Path, case: str) -> str:
    """Damage one pair of a generated folder; returns the file name the message must name."""
    jpg, png = folder / "eecs442_0003.jpg", folder / "eecs442_0003.png"
    if case == "non-image-jpg":
        jpg.write_text("this is not a JPEG")
    elif case == "truncated-jpeg":
        jpg.write_bytes(jpg.read_bytes()[:200])
    elif case == "size-mismatch":
        Image.open(jpg).resize((48, 64)).save(jpg)
    elif case == "label-values-above-4":
        im = Image.fromarray(np.full((64, 64), 9, np.uint8), "P")
        im.putpalette(list(range(256)) * 3)
        im.save(png)
    elif case == "rgb-label":
        Image.new("RGB", (64, 64), (0, 128, 255)).save(png)
    elif case == "16-bit-label":
        Image.fromarray(np.ones((64, 64), np.uint16)).save(png)
    elif case == "missing-label":
        png.unlink()
        return png.name
    elif case == "zero-byte-label":
        png.write_bytes(b"")
        return png.name
    return jpg.name if case in ("non-image-jpg", "truncated-jpeg") else png.name


FOLDER_CASES = {
    "non-image-jpg": "not a readable image",
    "truncated-jpeg": "not a readable image",
    "size-mismatch": "but its image is",
    "label-values-above-4": "9",
    "rgb-label": "RGB",
    "16-bit-label": "16",
    "missing-label": "",
    "zero-byte-label": "",
}


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_facade_folders(case, tmp_path, monkeypatch, capsys):
    folder = make_facade_dir(tmp_path / "d", n=6, size=64)
    name = _break_folder(folder, case)
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "facade",
        "train",
        "--data-dir",
        folder,
        "--set",
        "data.group_key=file",
        "--out",
        tmp_path / "run",
    )
    _assert_refused(code, err, FOLDER_CASES[case], name)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["empty-folder", "folder-is-a-file", "no-such-folder"])
def test_facade_folder_itself(case, tmp_path, monkeypatch, capsys):
    target = tmp_path / "d"
    if case == "empty-folder":
        target.mkdir()
    elif case == "folder-is-a-file":
        target.write_text("x")
    code, _, err = run_cli(monkeypatch, capsys, "facade", "train", "--data-dir", target, "--out", tmp_path / "run")
    _assert_refused(code, err, "", str(target))
    assert not (tmp_path / "run").exists()


# ---- Photos given to predict
def _photo(path: Path, case: str) -> Path:
    rgb = np.random.default_rng(0).integers(0, 255, (80, 60, 3), dtype=np.uint8)
    if case == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path.with_suffix(".jpg"))
        return path.with_suffix(".jpg")
    if case == "16-bit-grey":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path.with_suffix(".png"))
    elif case == "rgba":
        Image.fromarray(np.dstack([rgb, np.full((80, 60), 128, np.uint8)])).save(path.with_suffix(".png"))
    elif case == "1-bit":
        Image.fromarray(rgb[..., 0] > 128).save(path.with_suffix(".png"))
    elif case == "grey":
        Image.fromarray(rgb[..., 0]).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


@pytest.mark.parametrize(
    ("case", "note"),
    [("cmyk", "CMYK"), ("16-bit-grey", "16-bit"), ("rgba", "alpha"), ("1-bit", "1-bit"), ("grey", "grey")],
)
@pytest.mark.parametrize("task", ["fashion", "facade"])
def test_convertible_photos_are_used_with_a_note(runs, task, case, note, tmp_path, monkeypatch, capsys):
    photo = _photo(tmp_path / "p", case)
    code, out, err = run_cli(
        monkeypatch, capsys, task, "predict", runs[task], photo, *(["-o", tmp_path / "o"] if task == "facade" else [])
    )
    assert code == 0, err
    if (task, case) == ("fashion", "grey"):
        note = "no garment found"  # grey needs no converting, and in random pixels no garment stands out
    assert note.lower() in out.lower(), out


BAD_PHOTOS = {
    "zero-byte": (lambda p: p.write_bytes(b""), "empty"),
    "text-named-jpg": (lambda p: p.write_text("hello"), "not a readable image"),
    "truncated-jpeg": (lambda p: p.write_bytes(_jpeg_bytes()[:300]), "not a readable image"),
    "one-pixel": (lambda p: Image.new("RGB", (1, 1)).save(p, format="JPEG"), "too small"),
    "bomb": (lambda p: _bomb(p), "pixels"),
    "directory": (lambda p: p.mkdir(), "folder"),
    "missing": (lambda p: None, "not found"),
}


def _jpeg_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _bomb(path: Path) -> None:
    """A 1-bit PNG declaring 60000x60000 pixels: 3.6 billion pixels, a few hundred kB on disk."""
    Image.new("1", (60000, 60000)).save(path, format="PNG")


@pytest.mark.parametrize("case", BAD_PHOTOS)
@pytest.mark.parametrize("task", ["fashion", "facade"])
def test_bad_photos(runs, task, case, tmp_path, monkeypatch, capsys):
    make, expected = BAD_PHOTOS[case]
    photo = tmp_path / "photo.jpg"
    make(photo)
    code, _, err = run_cli(
        monkeypatch, capsys, task, "predict", runs[task], photo, *(["-o", tmp_path / "o"] if task == "facade" else [])
    )
    _assert_refused(code, err, expected, "photo.jpg")
    assert not (tmp_path / "o").exists()


# ---- Recipes and overrides
RECIPES = {
    "unknown-key": ("train: {epochs: 2, lr: 0.1}", "train.lr: unknown key; did you mean optim.lr?"),
    "unknown-section": ("optimizer: {lr: 0.1}", "optimizer: unknown key; did you mean optim?"),
    "wrong-type": ("train: {batch_size: big}", "valid integer"),
    "negative-batch": ("train: {batch_size: -64}", "greater than 0"),
    "zero-epochs": ("train: {epochs: 0}", "greater than 0"),
    "bad-yaml": ("train: [1, 2", "cannot read recipe"),
    "not-a-mapping": ("42", "must be a mapping"),
}


@pytest.mark.parametrize("case", RECIPES)
def test_bad_recipes(case, tmp_path, monkeypatch, capsys):
    text, expected = RECIPES[case]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--recipe", recipe, "--out", tmp_path / "run")
    _assert_refused(code, err, expected, "bad.yaml")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=-1", "greater than 0"),
        ("train.batch_size=0", "greater than 0"),
        ("epochs", "expected section.key=value"),
    ],
)
def test_bad_overrides(override, expected, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--set", override, "--out", tmp_path / "run")
    _assert_refused(code, err, expected, "")


# ---- Checkpoints
def test_corrupt_checkpoint(runs, tmp_path, monkeypatch, capsys):
    import shutil

    run = shutil.copytree(runs["fashion"], tmp_path / "run")
    best = run / "checkpoints" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:-100])
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "evaluate", run)
    _assert_refused(code, err, "unreadable or truncated", "best.safetensors")


def test_malicious_pickle_checkpoint_never_runs(runs, tmp_path, monkeypatch, capsys):
    import shutil

    run = shutil.copytree(runs["fashion"], tmp_path / "run")
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "pwned"))

    torch.save({"model": Payload()}, run / "checkpoints" / "best.safetensors")
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "evaluate", run)
    _assert_refused(code, err, "", "best.safetensors")
    assert not marker.exists()


def _assert_refused(code: int, err: str, expected: str, names: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error:"), err
    assert expected in lines[0] and names in lines[0], lines[0]
