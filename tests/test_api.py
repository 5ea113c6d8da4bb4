"""The Python API is a stable, documented surface: no name is both a module and a function, every public
function has a docstring and type hints, shipped model names work as the CLI's do, and nothing prints."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli, synthetic_fashion
from PIL import Image

import cnnlab
from cnnlab.catalog import TASKS


def test_no_public_name_is_shadowed_by_a_submodule():
    # Importing a submodule binds it as an attribute of the package: a submodule named like an API
    # function replaces that function (`cnnlab.predict` was the predictions module after an import).
    submodules = {m.name for m in pkgutil.iter_modules(cnnlab.__path__)} - {"__main__"}
    assert not submodules & set(cnnlab.__all__), submodules & set(cnnlab.__all__)
    for module in submodules:
        importlib.import_module(f"cnnlab.{module}")
    for name in cnnlab.__all__:
        if name != "__version__":
            assert inspect.isfunction(getattr(cnnlab, name)), name


def test_predict_is_the_function_whatever_was_imported_first():
    first = "import cnnlab.serve.app, cnnlab.cli.app, cnnlab.infer.predict, cnnlab"
    code = f"{first}; print(callable(cnnlab.predict), cnnlab.predict.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "cnnlab.api"]


@pytest.mark.parametrize("name", [n for n in cnnlab.__all__ if n != "__version__"])
def test_public_functions_have_docstrings_and_type_hints(name):
    fn = getattr(cnnlab, name)
    assert fn.__doc__ and len(fn.__doc__.split()) >= 8, name
    sig = inspect.signature(fn)
    assert sig.return_annotation is not inspect.Signature.empty, name
    for p in sig.parameters.values():
        assert p.annotation is not inspect.Parameter.empty, f"{name}({p.name})"


@pytest.fixture(scope="module")
def garment(tmp_path_factory):
    x, _ = synthetic_fashion(1, 3)
    path = tmp_path_factory.mktemp("img") / "garment.png"
    Image.fromarray(np.kron(x[0], np.ones((4, 4), np.uint8))).save(path)  # 112x112
    return path


def test_shipped_names_work_in_the_api_as_in_the_cli(garment, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    [result] = cnnlab.predict("fashion", [garment], top=2)
    assert result["file"] == str(garment) and len(result["top"]) == 2
    assert abs(sum(p for _, p in result["top"])) <= 1 + 1e-6
    with pytest.raises(cnnlab.errors.ConfigError, match="fashion predictions write no files"):
        cnnlab.predict("fashion", [garment], out=tmp_path)
    model, cfg = cnnlab.load_model("fashion")
    assert cfg.task == "fashion" and not model.training
    photo = tmp_path / "street.jpg"
    Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(photo)
    [seg] = cnnlab.predict("facade", [photo], out=tmp_path / "out")
    assert (tmp_path / "out" / "street_labels.png").is_file() and abs(sum(seg["area"].values()) - 1) < 1e-6
    assert capfd.readouterr().out == ""


def test_evaluate_prints_nothing_and_refuses_a_shipped_name(tiny_fashion, tmp_path, capfd):
    run = cnnlab.train(
        "fashion", "seed-a", out=tmp_path / "r", progress=False, epochs=1, data_dir=tiny_fashion, limit=100
    )
    capfd.readouterr()
    metrics = cnnlab.evaluate(run.run_dir)
    assert metrics["split"] == "test" and metrics["n"] == 200 and 0 <= metrics["acc"] <= 1
    assert capfd.readouterr() == ("", "")
    with pytest.raises(cnnlab.errors.ConfigError, match="fashion is a shipped model"):
        cnnlab.evaluate("fashion")


def test_api_shortcuts_are_typed_values(tiny_fashion, tmp_path, monkeypatch):
    from cnnlab.api import resolve_config
    from cnnlab.errors import ConfigError

    for text in ("data/fm #2", "2024", "on", "yes", "null", "[1, 2]"):
        assert resolve_config("fashion", "seed-a", data_dir=text).data.dir == text
    with pytest.raises(ConfigError, match=r"^--epochs 0: "):
        resolve_config("fashion", "seed-a", epochs=0)
    with pytest.raises(ConfigError, match=r"unknown option 'epoch'"):
        resolve_config("fashion", "seed-a", epoch=3)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_api_and_the_cli_resolve_one_config_when_no_recipe_is_given(task, tmp_path, monkeypatch, capsys):
    """Issue 30: `cnnlab.train(task, data_dir=...)` trained seed-a with Adam for every task, whatever the CLI's
    default; both now resolve the task's default recipe, to the same config."""
    import cnnlab
    from cnnlab import api

    seen = []

    def capture(cfg, run_dir=None, **options):
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(api, "train_config", capture)
    data = [] if TASKS[task].builtin else ["--data", str(tmp_path)]
    code, _, err = run_cli(monkeypatch, capsys, task, "train", *data, "--epochs", "2")
    assert code == 0, err
    with pytest.raises(SystemExit):
        cnnlab.train(task, epochs=2, data_dir=None if TASKS[task].builtin else str(tmp_path))
    cli, python = seen
    assert cli == python and cli.recipe == TASKS[task].default_recipe
