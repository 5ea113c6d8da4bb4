"""ONNX export: the file runs in onnxruntime and gives PyTorch's logits on real images, at several batch
sizes and (segmentation) image sizes, and its metadata alone is enough to prepare the input; for the
built-in sets and for runs on the user's own folders."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import make_classify_folder, make_segment_folder
from PIL import Image

from cnnlab import api, export, runs
from cnnlab.config import dump_config, load_config
from cnnlab.data import fashion
from cnnlab.engine import checkpoint
from cnnlab.errors import CheckpointError
from cnnlab.models import model_table
from cnnlab.tasks import get_task

TOLERANCE = 1e-4
SMALL = ["train.epochs=1", "train.threads=1"]


@pytest.fixture(scope="module")
def fashion_run(tiny_fashion, tmp_path_factory):
    cfg = load_config("fashion", "seed-a", [f"data.dir={tiny_fashion}", "data.limit=200", *SMALL])
    return api.train_config(cfg, tmp_path_factory.mktemp("export") / "run", progress=False, finish=False).run_dir


@pytest.fixture(scope="module")
def facade_run(tiny_facade, tmp_path_factory):
    tiny = ["data.group_key=file", "data.val_fraction=0.25", "augment.crop_size=32", "train.batch_size=4"]
    cfg = load_config("facade", "unet", [f"data.dir={tiny_facade}", *tiny, *SMALL])
    return api.train_config(cfg, tmp_path_factory.mktemp("export") / "run", progress=False, finish=False).run_dir


@pytest.fixture(scope="module")
def classify_run(cache_dir, tmp_path_factory):
    """A run of `cnnlab classify` on a folder of 10x10 RGB images in three classes."""
    base = tmp_path_factory.mktemp("folder")
    data = make_classify_folder(base / "data")
    cfg = load_config("classify", "small", [f"data.dir={data}", *SMALL])
    return api.train_config(cfg, base / "run", progress=False, finish=False).run_dir


@pytest.fixture(scope="module")
def segment_run(cache_dir, tmp_path_factory):
    """A run of `cnnlab segment` (seed-a: sizes multiple of 4) on a folder of 24x24 grey images."""
    base = tmp_path_factory.mktemp("folder")
    data = make_segment_folder(base / "data")
    tiny = ["data.val_fraction=0.25", "data.test_fraction=0.25", "train.batch_size=4"]
    cfg = load_config("segment", "seed-a", [f"data.dir={data}", *tiny, *SMALL])
    return api.train_config(cfg, base / "run", progress=False, finish=False).run_dir


def read_images(files) -> torch.Tensor:
    """PNG files -> uint8 (N,C,H,W), grey ones with one channel."""
    arrays = [np.array(Image.open(f)) for f in files]
    return torch.from_numpy(np.stack([a if a.ndim == 3 else a[..., None] for a in arrays])).permute(0, 3, 1, 2)


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def onnx_logits(path, x: torch.Tensor) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]


def normalise(x_u8: torch.Tensor, path) -> torch.Tensor:
    """The input prepared from the file's metadata alone, as someone without cnnlab would."""
    meta = metadata(path)
    mean, std = (torch.tensor(json.loads(meta[k])).view(1, -1, 1, 1) for k in ("mean", "std"))
    return (x_u8.float() / 255 - mean) / std


def assert_parity(model: torch.nn.Module, path, x: torch.Tensor) -> np.ndarray:
    got = onnx_logits(path, x)
    with torch.inference_mode():
        want = model(x).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE
    return got


def test_fashion_export_from_the_command_line_matches_pytorch(fashion_run, real_fashion, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "cnnlab", "export", fashion_run], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    path = tmp_path / "run.onnx"  # default: the model folder's name, in the working folder
    assert r.stdout.splitlines()[0] == "run.onnx" and "batch x 1 x 28 x 28" in r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["run.onnx"]  # one self-contained file, no .data sidecar
    meta = metadata(path)
    task = get_task("fashion")
    assert (meta["task"], json.loads(meta["classes"])) == ("fashion", list(task.classes))
    model, _ = checkpoint.load_model(fashion_run)
    test = fashion.read_split(real_fashion, "t10k")
    for start, n in ((0, 1), (100, 37)):
        x_u8 = test.x[start : start + n]
        x = normalise(x_u8, path)
        assert torch.allclose(x, task.eval_inputs(x_u8), atol=1e-6)
        logits = assert_parity(model, path, x)
        assert logits.shape == (n, 10)


def test_facade_export_matches_pytorch_on_real_photos(facade_run, real_facade, tmp_path):
    path = tmp_path / "facade.onnx"
    info = export.export_onnx(facade_run, path)
    assert info["input_shape"] == ["batch", "3", "height", "width"] and info["size_multiple"] == "1"
    photos = torch.stack(
        [torch.from_numpy(np.array(Image.open(real_facade / f"eecs442_{i:04d}.jpg"))) for i in (0, 7, 300)]
    ).permute(0, 3, 1, 2)
    model, _ = checkpoint.load_model(facade_run)
    task = get_task("facade")
    for n in (1, 3):
        for top, left, height, width in ((0, 0, 256, 256), (30, 11, 100, 172)):  # 100 is no multiple of 8
            x_u8 = photos[:n, :, top : top + height, left : left + width]
            x = normalise(x_u8, path)
            assert torch.allclose(x, task.eval_inputs(x_u8), atol=1e-6)
            assert assert_parity(model, path, x).shape == (n, 5, height, width)


def test_seed_a_export_needs_sizes_multiple_of_4(tmp_path):
    # A run folder by hand, with the initial weights: the size rule does not depend on training.
    cfg = load_config("facade", "seed-a")
    dump_config(cfg, tmp_path / "run" / "config.yaml")
    torch.manual_seed(0)
    model = get_task("facade").build_model(cfg).eval()
    checkpoint.save(tmp_path / "run" / "checkpoints" / "best.safetensors", {"model": model.state_dict(), "state": {}})
    path = tmp_path / "seed-a.onnx"
    info = export.export_onnx(tmp_path / "run", path)
    assert info["size_multiple"] == "4" and "multiples of 4" in info["input"]
    for shape in ((2, 3, 64, 96), (1, 3, 100, 60)):
        assert_parity(model, path, torch.randn(shape))
    # The reason for the rule: PyTorch resizes other sizes back, the exported graph does not.
    assert onnx_logits(path, torch.randn(1, 3, 50, 70)).shape != (1, 5, 50, 70)
    assert set(export.SIZE_MULTIPLE) == set(model_table("segment"))  # a new facade net needs its rule here


def test_failed_export_keeps_the_previous_file(fashion_run, tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_text("previous")
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # every check fails
    with pytest.raises(CheckpointError, match="differs from PyTorch"):
        export.export_onnx(fashion_run, path)
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_folder_classify_export_from_the_command_line_matches_pytorch(classify_run, tmp_path):
    path = tmp_path / "folder.onnx"
    r = subprocess.run(
        [sys.executable, "-m", "cnnlab", "export", classify_run, "-o", path], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == str(path) and "batch x 3 x 10 x 10, float32 NCHW, RGB 10x10" in r.stdout
    meta = metadata(path)
    assert (meta["task"], meta["kind"], meta["model"]) == ("classify", "classify", "resnet")
    assert json.loads(meta["classes"]) == ["a", "b", "c"]  # the folder's class subfolders, in order
    assert json.loads(meta["colors"]) == ["#1F77B4", "#FF7F0E", "#2CA02C"]
    assert json.loads(meta["input_shape"]) == ["batch", 3, 10, 10]
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 10, 10]
    # The normalisation is the training split's, as the run's config holds it: about the whole set's.
    cfg = runs.load_run_config(classify_run)
    x_u8 = read_images(sorted((Path(cfg.data.dir) / "train").glob("*/*.png")))
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    assert (mean, std) == (cfg.data.mean, cfg.data.std)
    pixels = x_u8.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(pixels.mean(1).tolist(), abs=0.01)
    assert std == pytest.approx(pixels.std(1).tolist(), abs=0.01)
    task = get_task(cfg)
    model, _ = checkpoint.load_model(classify_run)
    for n in (1, 30):
        x = normalise(x_u8[:n], path)
        assert torch.allclose(x, task.eval_inputs(x_u8[:n]), atol=1e-6)
        assert assert_parity(model, path, x).shape == (n, 3)


def test_folder_segment_export_of_grey_images_matches_pytorch(segment_run, tmp_path):
    path = tmp_path / "folder.onnx"
    info = export.export_onnx(segment_run, path)
    assert info["input_shape"] == ["batch", "1", "height", "width"] and info["size_multiple"] == "4"
    assert info["input"] == "float32 NCHW, grey, height and width multiples of 4"
    meta = metadata(path)
    assert (meta["task"], meta["kind"]) == ("segment", "segment")
    assert json.loads(meta["classes"]) == ["ground", "blob"]
    assert json.loads(meta["colors"]) == ["#1F77B4", "#FF0000"]  # classes.yaml's colour, a palette one for ground
    assert json.loads(meta["input_shape"]) == ["batch", 1, "height", "width"]
    cfg = runs.load_run_config(segment_run)
    assert len(json.loads(meta["mean"])) == 1 and json.loads(meta["mean"]) == cfg.data.mean
    x_u8 = read_images(sorted((Path(cfg.data.dir) / "images").glob("*.png")))
    model, _ = checkpoint.load_model(segment_run)
    for n, (height, width) in ((1, (24, 24)), (3, (16, 20))):
        x = normalise(x_u8[:n, :, :height, :width], path)
        assert assert_parity(model, path, x).shape == (n, 2, height, width)
