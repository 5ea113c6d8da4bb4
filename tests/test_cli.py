import gzip
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import make_fashion_dir
from PIL import Image

from cnnlab import api
from cnnlab.config import load_config
from cnnlab.engine import checkpoint

ENV = {**os.environ, "CNNLAB_DATA_DIR": "", "PYTHONUNBUFFERED": "1"}


def cnnlab(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300, **kw
    )


def test_help_lists_the_commands():
    out = cnnlab("fashion", "--help").stdout
    for word in ("train", "evaluate", "predict", "sweep-activations"):
        assert word in out
    assert "--recipe" in cnnlab("fashion", "train", "--help").stdout
    top = cnnlab("--help").stdout
    for word in ("fashion", "facade", "report", "models", "export", "serve"):
        assert word in top


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("magic", "wrong IDX magic"),
        ("truncated", "corrupt or truncated gzip"),
        ("missing", "t10k-images-idx3-ubyte.gz: file not found"),
        ("nodir", "data folder does not exist"),
    ],
)
def test_bad_data_is_one_line_and_exit_2(tmp_path, setup, expected):
    data = make_fashion_dir(tmp_path / "d", 50, 10)
    images = data / "train-images-idx3-ubyte.gz"
    if setup == "magic":
        images.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(images.read_bytes())[4:]))
    elif setup == "truncated":
        images.write_bytes(images.read_bytes()[:1000])
    elif setup == "missing":
        (data / "t10k-images-idx3-ubyte.gz").unlink()
    elif setup == "nodir":
        data = tmp_path / "absent"
    r = cnnlab("fashion", "train", "--data-dir", data, "--out", tmp_path / "run", "--epochs", 1)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error:") and expected in lines[0], r.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_bad_override_and_run_folder_exit_2(tmp_path):
    r = cnnlab("fashion", "train", "--set", "train.batch_size=-4")
    assert r.returncode == 2 and "greater than 0" in r.stderr and "Traceback" not in r.stderr
    r = cnnlab("fashion", "evaluate", tmp_path)
    assert r.returncode == 2 and "not a cnnlab run folder" in r.stderr


def test_ctrl_c_saves_and_resume_matches_uninterrupted(tmp_path):
    data = make_fashion_dir(tmp_path / "d", 1200, 50)
    args = ["--data-dir", data, "--epochs", 12, "--batch-size", 16, "--set", "train.threads=1", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "fashion", "train", *map(str, args), "--out", tmp_path / "cut"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 20000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err
    stopped_at = checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.safetensors")["state"]["step"]
    assert 0 < stopped_at < 12 * 68
    assert cnnlab("fashion", "train", "--resume", tmp_path / "cut", "--no-progress").returncode == 0
    assert cnnlab("fashion", "train", *args, "--out", tmp_path / "full").returncode == 0
    for which in ("last", "best"):
        a = checkpoint.load(tmp_path / "cut" / "checkpoints" / f"{which}.safetensors")["model"]
        b = checkpoint.load(tmp_path / "full" / "checkpoints" / f"{which}.safetensors")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cut" / "eval_test.json").read_text() == (tmp_path / "full" / "eval_test.json").read_text()


def test_predict_any_image(tmp_path, tiny_fashion):
    run = api.train_config(
        load_config("fashion", "seed-a", [f"data.dir={tiny_fashion}", "train.epochs=3", "train.threads=1"]),
        tmp_path / "run",
        progress=False,
        finish=False,
    ).run_dir
    # A colour photo of a "class 3" image (a bar at rows 8..10 of its noisy square), dark on a light
    # background with a margin, big and not square: it is found, cropped and inverted back.
    rng = np.random.default_rng(0)
    square = rng.integers(0, 60, (28, 28))
    square[8:11, 4:24] += 180
    img = np.full((120, 90, 3), 240, np.uint8)
    img[18:102, 3:87] = (255 - square).repeat(3, 0).repeat(3, 1)[..., None] * np.array([1.0, 0.95, 0.9])
    Image.fromarray(img).save(tmp_path / "photo.jpg")
    r = cnnlab("fashion", "predict", run, tmp_path / "photo.jpg", "--top", 2)
    assert r.returncode == 0, r.stderr
    assert "cropped to the garment (8" in r.stdout and "of 90x120)" in r.stdout and "inverted" in r.stdout
    assert r.stdout.splitlines()[0].split(": ")[1].startswith(("Dress", "Pullover", "Coat"))  # classes 2-4
    (tmp_path / "bad.png").write_text("not an image")
    r = cnnlab("fashion", "predict", run, tmp_path / "bad.png")
    assert r.returncode == 2 and "bad.png" in r.stderr


def test_report_and_compare_commands(tiny_fashion, tmp_path):
    for seed in (0, 1):
        cfg = load_config(
            "fashion", "seed-a", [f"data.dir={tiny_fashion}", "train.epochs=1", "train.threads=1", f"train.seed={seed}"]
        )
        api.train_config(cfg, tmp_path / "runs" / f"s{seed}", progress=False)
        assert (tmp_path / "runs" / f"s{seed}" / "report.html").stat().st_size > 50_000  # written by training
    (tmp_path / "runs" / "s0" / "report.html").unlink()
    r = cnnlab("report", tmp_path / "runs" / "s0")
    assert r.returncode == 0 and (tmp_path / "runs" / "s0" / "report.html").is_file()
    r = cnnlab("report", "--compare", tmp_path / "runs", "-o", tmp_path / "cmp.html")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "cmp.html").read_text()
    assert "s0" in page and "s1" in page
    r = cnnlab("report", tmp_path / "runs" / "s0", tmp_path / "runs" / "s1")
    assert r.returncode == 2 and "--compare" in r.stderr
