"""Own data on real sets: digits as a class folder, the facades as an image + mask folder, and the
built-in runs unchanged by the redesign (their metrics.jsonl rows as recorded before it).

The recorded rows came from a CPU with AVX-512. PyTorch picks its float kernels by instruction set, so
on an AVX2 machine the same run ends with weights a few ulps apart: the facade val loss differs in the
6th digit (3.6e-6 relative; `ATEN_CPU_CAPABILITY=avx2` shows it here). Floats are therefore compared to
1e-4 relative, everything else exactly; a changed seed, order, schedule or model moves them by percents."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.data.facade import find_facade_dir
from cnnlab.data.fashion import locate
from cnnlab.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).parent / "data" / "reference"


def _real(find):
    try:
        return find()
    except DataError as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"real data is required on CI: {e}")
        pytest.skip(f"real data not available: {e}")


def cnnlab(*args, cwd: Path | None = None) -> str:
    r = subprocess.run([sys.executable, "-m", "cnnlab", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def rows(path: Path) -> list[dict]:
    """metrics.jsonl rows without their wall-clock times, the one thing allowed to differ."""
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row.pop("time_s", None)
        out.append(row)
    return out


def assert_same_run(run: Path, recorded: str) -> None:
    """The run's metrics.jsonl rows are the recorded ones: same rows, keys and values, floats to 1e-4."""
    assert_close(rows(run / "metrics.jsonl"), rows(REFERENCE / recorded), "rows")


def assert_close(got, want, where: str) -> None:
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-9), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))


def test_builtin_fashion_run_is_unchanged(tmp_path):
    _real(lambda: locate(allow_download=False))
    cnnlab("fashion", "train", "--recipe", "seed-a", "--epochs", "1", "--out", tmp_path / "run", "--no-progress")
    assert_same_run(tmp_path / "run", "fashion-seed-a-epoch1.jsonl")


FACADE_ARGS = ("--recipe", "unet", "--epochs", "1", "--limit", "32", "--set", "data.val_fraction=0.05",
               "--set", "data.test_fraction=0.05", "--no-progress")  # fmt: skip


def test_builtin_facade_run_is_unchanged(tmp_path):
    facades = _real(lambda: find_facade_dir(None))
    cnnlab("facade", "train", "--data-dir", facades, *FACADE_ARGS, "--out", tmp_path / "run")
    assert_same_run(tmp_path / "run", "facade-unet-epoch1-limit32.jsonl")


def test_facades_as_a_folder_train_as_the_builtin_set(tmp_path):
    """The facade set re-laid as images/, masks/ and classes.yaml: `cnnlab segment` makes the same run."""
    facades = _real(lambda: find_facade_dir(None))
    subprocess.run([sys.executable, ROOT / "scripts" / "facade_folder.py", facades, tmp_path / "set"], check=True)
    assert len(list((tmp_path / "set" / "masks").iterdir())) == 906
    cnnlab("segment", "train", "--data", tmp_path / "set", *FACADE_ARGS, "--out", tmp_path / "run")
    assert_same_run(tmp_path / "run", "facade-unet-epoch1-limit32.jsonl")
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "group_key: index-mod:302" in cfg and "- balcony" in cfg


def test_digits_folder_end_to_end(tmp_path):
    """scikit-learn's 1,797 real 8x8 digits as a class folder: the default recipe reaches >= 97% test
    accuracy with the full report; predict, export and the report work on the run."""
    digits, run = tmp_path / "digits", tmp_path / "run"
    script = ROOT / "scripts" / "digits_folder.py"
    out = subprocess.run([sys.executable, script, digits], capture_output=True, text=True)
    assert "1438 train and 359 test images" in out.stdout, out.stderr
    cnnlab("classify", "train", "--data", digits, "--out", run, "--no-progress")
    test = json.loads((run / "eval_test.json").read_text())
    assert test["n"] == 359 and test["acc"] >= 0.97, test
    figures = {p.stem for p in (run / "figures").glob("*.png")}
    assert {"curves", "confusion_test", "examples_test", "per_class_accuracy", "filters_conv1"} <= figures
    page = (run / "report.html").read_text()
    assert "Fashion" not in page and all(f">{d}<" in page for d in "0123456789")

    seven = next((digits / "test" / "7").iterdir())
    assert cnnlab("classify", "predict", run, seven).startswith(f"{seven}: 7 ")
    cnnlab("export", run, "-o", tmp_path / "digits.onnx")
    import onnx

    meta = {p.key: p.value for p in onnx.load(tmp_path / "digits.onnx").metadata_props}
    assert json.loads(meta["classes"]) == [str(d) for d in range(10)] and meta["kind"] == "classify"
    assert json.loads(meta["input_shape"]) == ["batch", 1, 8, 8]
