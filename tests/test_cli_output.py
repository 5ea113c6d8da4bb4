"""The command line as a newcomer meets it: fast readable help, predictions on folders and patterns for
scripts, facade overlays with a legend, and evaluate's per-class table."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from cnnlab import __version__, api
from cnnlab.config import load_config
from cnnlab.data.fashion import read_split
from cnnlab.engine.checkpoint import load_model
from cnnlab.tasks import get_task
from cnnlab.zoo import resolve_model

COMMANDS = [[], ["report"], ["models"], ["explain"], ["export"], ["serve"], ["fashion", "sweep-activations"]] + [
    [task, *sub]
    for task in ("fashion", "facade", "classify", "segment")
    for sub in ([], ["train"], ["evaluate"], ["predict"])
]


def test_help_needs_no_torch():
    # --help and --version answer without importing torch (~1.5 s): the whole CLI module tree stays light.
    code = "import sys, cnnlab.cli.app; print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_version(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert code == 0 and out == f"cnnlab {__version__}\n"


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "cnnlab")
def test_help_reads_as_words(args, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option, so a line holds each option's whole help
    code, out, err = run_cli(monkeypatch, capsys, *args, "--help")
    assert code == 0, err
    for artefact in ("<bool>", "<int", "<str>", "<float", "<path>", "<list", "{", "}"):
        assert artefact not in out, f"{artefact} in `cnnlab {' '.join(args)} --help`:\n{out}"
    if args[-1:] == ["train"]:
        assert "pip install 'cnnlab[tensorboard]'" in out  # the extra's name survives rich markup
    if args[-1:] == ["predict"]:
        assert "IMAGE..." in out or "PHOTO..." in out
    # At 200 columns no sentence of a command's own help breaks: each text line ends a sentence (or a
    # paragraph's last clause), never mid-phrase as the docstrings' source lines did.
    texts = [line.strip(" │") for line in out.splitlines() if not line.lstrip().startswith(("╭", "╰", "-", "*"))]
    lines = [s for s in texts if s and not s.startswith(("Usage:", "cnnlab", "--"))]
    broken = [s for s in lines if re.search(r"[a-z,]$", s) and len(s) < 150]
    assert broken == [], broken


def test_options_a_task_does_not_take_are_not_listed(monkeypatch, capsys):
    helps = {t: run_cli(monkeypatch, capsys, t, "evaluate", "--help")[1] for t in ("fashion", "facade")}
    assert not re.search(r"--data\s", helps["fashion"]) and re.search(r"--data\s", helps["facade"])
    classify, segment = (run_cli(monkeypatch, capsys, t, "predict", "--help")[1] for t in ("fashion", "facade"))
    assert "--top" in classify and "--save-inputs" in classify and "--alpha" not in classify
    assert "--alpha" in segment and "--max-side" in segment and "--top" not in segment
    assert "sweep-activations" not in run_cli(monkeypatch, capsys, "facade", "--help")[1]


def test_facade_train_defaults_to_the_readme_recipe(monkeypatch, capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    recommended = re.search(r"cnnlab facade train --recipe (\S+)", readme).group(1)
    out = run_cli(monkeypatch, capsys, "facade", "train", "--help")[1]
    assert f"(default: {recommended})" in " ".join(out.replace("│", " ").split())


@pytest.fixture(scope="module")
def garments(real_fashion, tmp_path_factory):
    """Five real Fashion-MNIST test images as PNG files, light on black as the dataset has them."""
    folder = tmp_path_factory.mktemp("garments")
    test = read_split(real_fashion, "t10k")
    for i in range(5):
        Image.fromarray(test.x[i, 0].numpy()).save(folder / f"g{i}.png")
    (folder / "notes.txt").write_text("not an image: a folder's other files are left out")
    return folder, test.y[:5].tolist()


def test_predict_takes_folders_patterns_and_prints_json(garments, tmp_path, monkeypatch, capsys):
    folder, labels = garments
    code, out, err = run_cli(monkeypatch, capsys, "fashion", "predict", folder, "--json", "--no-progress")
    assert code == 0, err
    results = json.loads(out)
    assert [r["file"] for r in results] == [str(folder / f"g{i}.png") for i in range(5)]
    classes = get_task(load_model(resolve_model(None, "fashion"))[1]).classes
    assert sum(r["top"][0]["class"] == classes[y] for r, y in zip(results, labels, strict=True)) >= 4
    assert all(len(r["top"]) == 3 and 0.999 >= r["top"][0]["p"] >= r["top"][1]["p"] for r in results)
    code, out, err = run_cli(monkeypatch, capsys, "fashion", "predict", f"{folder}/g[13].png", "--json")
    assert code == 0 and [r["file"] for r in json.loads(out)] == [str(folder / "g1.png"), str(folder / "g3.png")]
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "predict", f"{folder}/*.jpg")
    assert code == 2 and err.count("\n") == 1 and "no file matches this pattern" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "predict", tmp_path / "empty")
    assert code == 2 and err.count("\n") == 1 and "no image files in this folder" in err


def test_save_inputs_writes_exactly_what_the_model_saw(garments, tmp_path, monkeypatch, capsys):
    folder, _ = garments
    photo = tmp_path / "shoe.png"
    big = Image.open(folder / "g0.png").resize((140, 140), Image.Resampling.BICUBIC)
    Image.eval(big, lambda v: 255 - v).save(photo)  # dark on white, as a shop photo
    code, out, err = run_cli(monkeypatch, capsys, "fashion", "predict", photo, "--save-inputs", tmp_path / "seen")
    assert code == 0, err
    saved = tmp_path / "seen" / "shoe_input.png"
    assert f"(input: {saved})" in out
    cfg = load_model(resolve_model(None, "fashion"))[1]
    img = np.array(Image.open(photo))[None]
    expected, _ = get_task(cfg).photo_input(torch.from_numpy(img))
    seen = np.array(Image.open(saved))
    assert seen.shape == (28, 28) and np.array_equal(seen, expected[0].numpy())


def test_facade_overlay_has_alpha_legend_and_side_by_side(real_facade, tmp_path, monkeypatch, capsys):
    photo = real_facade / "eecs442_0007.jpg"
    outs = {}
    for alpha in (0.0, 1.0):
        out = tmp_path / f"a{alpha}"
        code, stdout, err = run_cli(
            monkeypatch, capsys, "facade", "predict", photo, "-o", out, "--alpha", alpha, "--json"
        )
        assert code == 0, err
        outs[alpha] = json.loads(stdout)[0]
    rgb = np.array(Image.open(photo).convert("RGB")).astype(int)
    labels = np.array(Image.open(outs[1.0]["labels"]))
    task = get_task(load_model(resolve_model(None, "facade"))[1])
    colours = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in task.colors])
    clear, solid = (np.array(Image.open(outs[a]["overlay"])).astype(int) for a in (0.0, 1.0))
    assert clear.shape[1] == 256 and clear.shape[0] > 256 + 10  # the photo, then the legend band under it
    assert np.array_equal(clear[:256], rgb) and np.array_equal(solid[:256], colours[labels])
    legend = solid[256:].reshape(-1, 3)
    for colour in colours:  # every class has its swatch in the legend
        assert (np.abs(legend - colour).sum(1) == 0).any()
    side = np.array(Image.open(outs[1.0]["side_by_side"])).astype(int)
    assert side.shape == (solid.shape[0], 512, 3)
    # JPEG: the photo and the overlay, each within a few levels but at the colours' sharp edges
    assert np.median(np.abs(side[:256, :256] - rgb)) <= 3 and np.median(np.abs(side[:256, 256:] - solid[:256])) <= 3
    assert outs[1.0]["area"] == json.loads((tmp_path / "a1.0" / "eecs442_0007_areas.json").read_text())["area"]


def test_evaluate_prints_the_per_class_table_and_refreshes_the_report(tiny_fashion, tmp_path, monkeypatch, capsys):
    cfg = load_config("fashion", "seed-a", [f"data.dir={tiny_fashion}", "train.epochs=1", "explain.figures=false"])
    run = api.train_config(cfg, tmp_path / "run", progress=False).run_dir
    capsys.readouterr()
    (run / "report.html").unlink()
    code, out, err = run_cli(monkeypatch, capsys, "fashion", "evaluate", run, "--data-dir", tiny_fashion)
    assert code == 0, err
    m = json.loads((run / "eval_test.json").read_text())
    for name, acc in zip(get_task(cfg).classes, m["per_class_acc"], strict=True):
        assert re.search(rf"^\s*{re.escape(name)}\s+{acc:.2%}\s*$", out, re.M), out
    # The last row says what it is, as the report's table does: all images' accuracy, not a mean of classes.
    assert re.search(rf"^\s*overall accuracy\s+{m['acc']:.2%}\s*$", out, re.M)
    assert "last row: the overall accuracy" in (run / "report.html").read_text()
    assert f"figures: {run / 'figures'} (confusion_test.png, examples_test.png" in out
    assert f"report: {run / 'report.html'}" in out and (run / "report.html").is_file()


def test_epoch_lines_say_which_numbers_are_validation(tiny_fashion, tmp_path, capsys):
    cfg = load_config("fashion", "seed-a", [f"data.dir={tiny_fashion}", "train.epochs=1", "explain.figures=false"])
    api.train_config(cfg, tmp_path / "run", progress=False, finish=False)
    err = capsys.readouterr().err
    assert re.search(r"epoch\s+1/1  train loss [\d.]+  \| val loss [\d.]+  acc [\d.]+%", err), err
