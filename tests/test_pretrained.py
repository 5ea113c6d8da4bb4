"""Shipped models: ship a finished run, find it by name or as a task's default, list it, predict with it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_classify_folder
from PIL import Image
from typer.testing import CliRunner

from cnnlab import api
from cnnlab import zoo as pretrained
from cnnlab.cli.app import app
from cnnlab.config import load_config
from cnnlab.engine import checkpoint
from cnnlab.engine.checkpoint import load_model
from cnnlab.errors import CheckpointError
from cnnlab.infer.predict import predict_files
from cnnlab.runs import load_run_config, read_history
from cnnlab.tasks.fashion import FashionTask

FACADE_TINY = ["data.group_key=file", "data.val_fraction=0.25", "data.test_fraction=0.25", "augment.crop_size=32"]


@pytest.fixture(scope="module")
def runs(tiny_fashion, tiny_facade, tmp_path_factory):
    """One finished tiny run per task (evaluated, as shipping needs)."""
    base = tmp_path_factory.mktemp("runs")
    small = ["train.epochs=1", "train.threads=1", "train.batch_size=64"]
    fashion = load_config("fashion", "seed-a", [f"data.dir={tiny_fashion}", "data.limit=200", *small])
    facade = load_config("facade", "unet", [f"data.dir={tiny_facade}", *FACADE_TINY, *small])
    return {
        "fashion": api.train_config(fashion, base / "fashion-run", progress=False).run_dir,
        "facade": api.train_config(facade, base / "facade-run", progress=False).run_dir,
    }


@pytest.fixture(scope="module")
def shipped(runs, tmp_path_factory):
    """A models folder holding `fashion` and `facade` (the defaults) and `alt`, another facade model."""
    folder = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(pretrained.ENV_VAR, str(folder))
        for name, task in (("fashion", "fashion"), ("facade", "facade"), ("alt", "facade")):
            assert pretrained.ship(runs[task], name) == folder / name
    return folder


@pytest.fixture
def models_env(shipped, monkeypatch):
    monkeypatch.setenv(pretrained.ENV_VAR, str(shipped))
    return shipped


def cnnlab(*args, models: os.PathLike, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, pretrained.ENV_VAR: str(models), "CNNLAB_DATA_DIR": ""}
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_ship_writes_weights_config_environment_and_card(runs, models_env):
    run, model = runs["fashion"], models_env / "fashion"
    assert sorted(p.name for p in model.iterdir()) == ["card.json", "checkpoints", "config.yaml", "environment.json"]
    saved = checkpoint.load(model / "checkpoints" / "best.safetensors")
    assert set(saved) == {"model", "state"}  # no optimizer moments
    size = (model / "checkpoints" / "best.safetensors").stat().st_size
    assert size < 0.6 * (run / "checkpoints" / "last.safetensors").stat().st_size
    best = checkpoint.load(run / "checkpoints" / "best.safetensors")["model"]
    net, cfg = load_model(model)
    assert cfg == load_run_config(run)
    assert all(torch.equal(v, best[k]) for k, v in net.state_dict().items())
    card = json.loads((model / "card.json").read_text())
    assert card["val"] == json.loads((run / "eval_val.json").read_text())
    assert card["test"] == json.loads((run / "eval_test.json").read_text())
    assert (card["name"], card["task"], card["recipe"], card["model"]) == ("fashion", "fashion", "seed-a", "seed-a")
    assert card["source_run"] == "fashion-run" and card["cnnlab"] == "0.1.0" and card["epochs"] == 1
    assert card["parameters"] == sum(p.numel() for p in net.parameters())
    last_epoch = [r for r in read_history(run) if r["kind"] == "epoch"][-1]
    assert card["train_time_s"] == round(last_epoch["time_s"], 1)  # a tiny run can train in under 0.05 s
    assert "official 10,000 test images" in card["split"]
    assert (model / "environment.json").read_text() == (run / "environment.json").read_text()
    assert not [p for p in models_env.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_ship_replaces_and_refuses_bad_input(runs, tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path / "models"))
    pretrained.ship(runs["fashion"], "m")
    pretrained.ship(runs["facade"], "m", chosen="best of 3 seeds on pooled val + test")  # replaces it whole
    assert load_run_config(tmp_path / "models" / "m").task == "facade"
    card = json.loads((tmp_path / "models" / "m" / "card.json").read_text())
    assert card["chosen"] == "best of 3 seeds on pooled val + test"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["m"]
    with pytest.raises(CheckpointError, match="lower-case"):
        pretrained.ship(runs["fashion"], "../escape")
    with pytest.raises(CheckpointError, match="not a cnnlab run folder"):
        pretrained.ship(tmp_path, "x")
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "environment.json", "checkpoints/best.safetensors"):
        (unfinished / name).write_bytes((runs["fashion"] / name).read_bytes())
    with pytest.raises(CheckpointError, match="not a finished run"):
        pretrained.ship(unfinished, "m")
    assert load_run_config(tmp_path / "models" / "m").task == "facade"  # the old model is untouched


def test_resolve_and_list(runs, models_env, tmp_path, monkeypatch):
    assert pretrained.resolve_model(None, "fashion") == models_env / "fashion"
    assert pretrained.resolve_model(None, "facade") == models_env / "facade"
    assert pretrained.resolve_model("alt", "facade") == models_env / "alt"
    assert pretrained.resolve_model(runs["facade"], "facade") == runs["facade"]
    assert pretrained.resolve_model(str(runs["facade"]), "facade") == runs["facade"]
    assert pretrained.resolve_any("alt") == models_env / "alt"
    assert pretrained.resolve_any(runs["fashion"]) == runs["fashion"]
    assert pretrained.is_shipped(models_env / "alt") and not pretrained.is_shipped(runs["facade"])
    for ref, task, message in [
        ("alt", "fashion", "a shipped facade model, not a fashion one; see `cnnlab models`"),
        (runs["facade"], "fashion", "a facade run, not a fashion one"),
        ("nope", "fashion", "nope: neither a run folder nor a shipped model; see `cnnlab models`"),
        ("../fashion", "fashion", "neither a run folder nor a shipped model"),
        (tmp_path, "fashion", "neither a run folder nor a shipped model"),
    ]:
        with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
            pretrained.resolve_model(ref, task)
    cards = pretrained.list_models()
    assert [(c["task"], c["name"]) for c in cards] == [("facade", "alt"), ("facade", "facade"), ("fashion", "fashion")]
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path / "empty"))
    assert pretrained.list_models() == []
    with pytest.raises(CheckpointError, match=r"no shipped fashion model is installed.*cnnlab fashion train"):
        pretrained.resolve_model(None, "fashion")


def test_models_command(shipped, tmp_path, monkeypatch):
    r = cnnlab("models", models=shipped)
    assert r.returncode == 0, r.stderr
    card = json.loads((shipped / "fashion" / "card.json").read_text())
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
    val, test = f"{card['val']['acc']:.2%}", f"{card['test']['acc']:.2%}"
    assert rows["fashion"][1:6] == ["seed-a", "seed-a", "no", val, test]  # no ImageNet encoder
    assert rows["fashion"][6] == card["trained"] and "…" not in r.stdout  # piped: the table whole, not 80 columns
    assert card["imagenet_encoder"] is False and card["training"].startswith("from scratch; ")
    facade = json.loads((shipped / "alt" / "card.json").read_text())
    assert rows["alt"][4:6] == [f"{facade['val']['map']:.3f}", f"{facade['val']['miou']:.3f}"]
    assert "facade" in rows
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path))
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0 and "no shipped models installed" in r.stdout


def test_ship_and_list_a_folder_run(cache_dir, tmp_path, monkeypatch):
    data = make_classify_folder(tmp_path / "data")
    cfg = load_config("classify", "small", [f"data.dir={data}", "train.epochs=1", "train.threads=1"])
    run = api.train_config(cfg, tmp_path / "run", progress=False).run_dir
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path / "models"))
    card = json.loads((pretrained.ship(run, "mine") / "card.json").read_text())
    # The card's data and split come from the folder task, not from a built-in set's wording.
    # Names, not paths: a shipped card travels to other machines.
    assert (card["task"], card["data"]) == ("classify", "the image folder data")
    assert card["split"] == "data: validation 10% of train (stratified), seed 0"
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
    assert "classify" in rows  # the table's title: "classify models"
    assert rows["mine"] == ["mine", "small", "resnet", "no", f"{card['val']['acc']:.2%}", "-", card["trained"]]


def test_predict_without_a_run(runs, shipped, tmp_path):
    img = np.zeros((28, 28), np.uint8)
    img[8:11, 4:24] = 230  # the synthetic class 3 bar
    Image.fromarray(img).save(tmp_path / "bar.png")
    r = cnnlab("fashion", "predict", tmp_path / "bar.png", "--top", 2, models=shipped)
    assert r.returncode == 0, r.stderr
    expected = predict_files(runs["fashion"], [tmp_path / "bar.png"], top=2)[0]["top"]
    guesses = r.stdout.splitlines()[0].removeprefix(f"{tmp_path / 'bar.png'}: ")
    assert guesses == ", ".join(f"{c} {p:.1%}" for c, p in expected)
    assert guesses.split(" ")[0] in FashionTask.classes


def test_segment_without_a_run(runs, shipped, tiny_facade, tmp_path):
    photo = tmp_path / "front.jpg"
    photo.write_bytes((tiny_facade / "eecs442_0000.jpg").read_bytes())
    r = cnnlab("facade", "predict", photo, models=shipped, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "-> predictions/front_overlay.png" in r.stdout  # the working folder, not the installed package
    assert not list(shipped.rglob("predictions"))
    predict_files(runs["facade"], [photo], out=tmp_path / "ref")
    for name in ("front_labels.png", "front_overlay.png", "front_side_by_side.jpg", "front_areas.json"):
        assert (tmp_path / "predictions" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    r = cnnlab("fashion", "predict", "--model", "alt", photo, models=shipped)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "alt: a shipped facade model, not a fashion one; see `cnnlab models`" in r.stderr


def test_the_shipped_weights_are_good_models(real_fashion, real_facade, tmp_path, monkeypatch):
    """The models that come with the package, offline and with no run: their cards' numbers hold up."""
    monkeypatch.delenv(pretrained.ENV_VAR, raising=False)
    cards = {c["name"]: c for c in pretrained.list_models()}
    assert cards["fashion"]["test"]["acc"] >= 0.93 and cards["facade"]["val"]["map"] >= 0.70
    for name in ("fashion", "facade"):
        weights = pretrained.models_dir() / name / "checkpoints" / "best.safetensors"
        # The facade model's ImageNet encoder (3.6M parameters, 14.6 MB) earned its size: +0.038 pooled mAP.
        assert weights.stat().st_size < 16 * 2**20

    from cnnlab.data import fashion as fdata

    test = fdata.read_split(real_fashion, "t10k")
    model, _ = load_model(pretrained.resolve_model(None, "fashion"))
    task = FashionTask()
    with torch.inference_mode():
        pred = model(task.eval_inputs(test.x[:500])).argmax(1)
    assert (pred == test.y[:500]).float().mean() >= 0.9

    monkeypatch.chdir(tmp_path)
    photo = real_facade / "eecs442_0007.jpg"
    result = CliRunner().invoke(app, ["facade", "predict", str(photo)])
    assert result.exit_code == 0, result.output
    areas = json.loads((tmp_path / "predictions" / "eecs442_0007_areas.json").read_text())["area"]
    assert sum(areas.values()) == pytest.approx(1.0) and areas["facade"] > 0.3 and areas["window"] > 0.05
