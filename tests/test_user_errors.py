"""Mistakes a user can make, by class, through the real CLI: each is one `cnnlab: error:` line and exit code
2 (or does what the user meant), and leaves nothing half-written. Property tests cover option values and
output paths."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from conftest import make_facade_dir, make_fashion_dir, one_error_line, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab import api, outputs, runs
from cnnlab.config import config_keys, load_config
from cnnlab.engine import trainer as engine
from cnnlab.engine.state import TrainResult

FAST = ["--set", "train.threads=1", "--batch-size", "32", "--no-progress"]
# engine.train's result, when the test stops short of training
DONE = TrainResult(run_dir=Path("r"), completed=False, step=0, best=None, history=[])


@pytest.fixture(scope="module")
def fm(tmp_path_factory) -> Path:
    return make_fashion_dir(tmp_path_factory.mktemp("fm") / "data", 300, 60)


@pytest.fixture(scope="module")
def run(fm, tmp_path_factory) -> Path:
    """A finished 1-epoch fashion run."""
    cfg = load_config("fashion", "seed-a", [f"data.dir={fm}", "train.epochs=1", "train.threads=1"])
    return api.train_config(cfg, tmp_path_factory.mktemp("runs") / "r", progress=False).run_dir


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


# ---------------------------------------------------------------- 2: values are typed, not YAML


@pytest.mark.parametrize("name", ["fm #2", "2024", "on", "yes"])
def test_data_dir_is_the_folder_as_written(fm, tmp_path, monkeypatch, capsys, name):
    shutil.copytree(fm, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--data-dir", name, "--epochs", 1, "--out", "r")
    assert code == 0, err
    assert load_config("fashion", "seed-a", []).data.dir is None
    assert runs.load_run_config(tmp_path / "r").data.dir == str(tmp_path / name)  # stored absolute


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "optim.lrr=3"], "--set optim.lrr=3: unknown key optim.lrr; did you mean optim.lr?"),
        (["--set", "lr=3"], "--set lr=3: unknown key lr; did you mean optim.lr?"),
        (["--set", "train.batch_size=-4"], "--set train.batch_size=-4: Input should be greater than 0"),
        (["--set", "train.epochs=3 # comment"], "'#' is not part of a train.epochs value"),
        (["--set", "optim=3"], "--set optim=3: optim is a section"),
        (["--epochs", "0"], "--epochs 0: Input should be greater than 0"),
        (["--seed", str(2 * 10**22)], f"--seed {2 * 10**22}: Input should be less than or equal to 4294967295"),
        (["--seed", "-1"], "--seed -1: Input should be greater than or equal to 0"),
        (["--set", "data.val_fraction=0"], "--set data.val_fraction=0: Input should be greater than 0"),
    ],
)
def test_a_bad_value_names_the_option_not_the_recipe(tmp_path, monkeypatch, capsys, args, expected):
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", *args, "--out", tmp_path / "r")
    line = one_error_line(code, err, expected)
    assert "seed-a.yaml" not in line
    assert not (tmp_path / "r").exists()


_VALUE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n\r"), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(config_keys()), value=_VALUE)
def test_any_set_value_is_a_config_or_one_line_naming_set(monkeypatch, capsys, key, value):
    with mock.patch.object(engine, "train", return_value=DONE) as train:
        code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--set", f"{key}={value}")
    if code == 0:
        cfg = train.call_args.args[0]
        if key in ("data.dir", "recipe", "data.group_key", "model.name") and value:
            section, _, leaf = key.rpartition(".")
            assert getattr(getattr(cfg, section) if section else cfg, leaf) == value  # verbatim
    else:
        one_error_line(code, err, f"--set {key}=")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    option=st.sampled_from(["--epochs", "--batch-size", "--seed", "--limit", "--lr", "--data-dir"]),
    value=_VALUE.filter(lambda v: not v.startswith("-")),
)
def test_any_shortcut_value_is_taken_as_typed_or_refused_in_one_line(monkeypatch, capsys, option, value):
    with mock.patch.object(engine, "train", return_value=DONE) as train:
        code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", option, value)
    if code == 0:
        cfg = train.call_args.args[0]
        if option == "--data-dir":
            assert cfg.data.dir == value
        if option == "--epochs":
            assert cfg.train.epochs == int(value) > 0
    else:
        assert code == 2 and "Traceback" not in err and option in err, err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["models", "--bogus"], "No such option: --bogus; see `cnnlab models --help`"),
        (["fashion", "train", "--epochs", "x"], "Invalid value for '--epochs'"),
        (["fashion", "predict"], "Missing argument '[RUN] IMAGE...'; see `cnnlab fashion predict --help`"),
        (["serve", "--port", "99999"], "Invalid value for '--port'"),
        (["fashion", "evaluate"], "Missing argument 'RUN'"),
        (["fashion", "evaluate", "x", "--split", "train"], "Invalid value for '--split'"),
        (["fashion", "evaluate", "x", "--checkpoint", "first"], "Invalid value for '--checkpoint'"),
    ],
)
def test_usage_errors_are_one_line_too(monkeypatch, capsys, args, expected):
    code, _, err = run_cli(monkeypatch, capsys, *args)
    one_error_line(code, err, expected)


def test_help_still_exits_0(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "fashion", "train", "--help")
    assert code == 0 and "--resume" in out


# ---------------------------------------------------------------- 3 and 10: refused before the run folder exists


def test_tiny_data_is_refused_before_the_run_folder(tmp_path, monkeypatch, capsys):
    data = make_fashion_dir(tmp_path / "five", 5, 5)
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--data-dir", data, "--out", tmp_path / "r", *FAST)
    one_error_line(code, err, "the val split is empty")
    assert not (tmp_path / "r").exists()


def test_images_smaller_than_the_model_are_refused(tmp_path, monkeypatch, capsys):
    data = make_facade_dir(tmp_path / "tiny", n=10, size=8)
    args = ["facade", "train", "--recipe", "seed-a", "--data-dir", data, "--set", "data.group_key=file"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "r", *FAST)
    one_error_line(code, err, str(data), "8x8 px are too small for SeedA, which needs at least 16 px")
    assert not (tmp_path / "r").exists()


def test_a_test_time_scale_that_makes_images_too_small_is_named(tmp_path, monkeypatch, capsys):
    data = make_facade_dir(tmp_path / "d", n=12, size=16)
    args = ["facade", "train", "--recipe", "seed-a", "--data-dir", data, "--set", "data.group_key=file"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--set", "train.tta_scales=[0.75,1]", "--out", tmp_path / "r")
    one_error_line(code, err, "at test-time scale 0.75 (12 px)", "drop that factor from train.tta_scales")


def test_evaluating_on_images_too_small_for_the_model_is_one_line(tmp_path, monkeypatch, capsys):
    data = make_facade_dir(tmp_path / "d", n=12, size=32)
    args = ["facade", "train", "--recipe", "seed-a", "--data-dir", data, "--set", "data.group_key=file", "--epochs", 1]
    assert run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "r", *FAST)[0] == 0
    small = make_facade_dir(tmp_path / "small", n=2, size=8)
    code, _, err = run_cli(monkeypatch, capsys, "facade", "evaluate", tmp_path / "r", "--data", small)
    one_error_line(code, err, str(small), "8x8 px are too small")
    assert not (tmp_path / "r" / "eval_external.json").exists()


# ---------------------------------------------------------------- 4: output paths


@pytest.mark.parametrize("where", ["file", "under-file"])
@pytest.mark.parametrize(
    "command",
    [
        ["fashion", "train", "--out"],
        ["facade", "predict", "{photo}", "-o"],
        ["export", "fashion", "-o"],
        ["report", "--compare", "{run}", "{run}", "-o"],
        ["fashion", "sweep-activations", "--out"],
    ],
    ids=["train", "predict", "export", "compare", "sweep"],
)
def test_output_paths_are_checked_first(run, tmp_path, monkeypatch, capsys, where, command):
    photo = tmp_path / "p.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(photo)
    blocker = tmp_path / "taken"
    blocker.write_text("mine")
    target = blocker if where == "file" else blocker / "x"
    is_file_output = command[0] in ("export", "report")
    if where == "file" and is_file_output:
        target = tmp_path  # a folder where a file is needed
    args = [a.format(photo=photo, run=run) for a in command]
    code, _, err = run_cli(monkeypatch, capsys, *args, target)
    expected = "is a folder; give a file name" if is_file_output and where == "file" else "not a folder"
    if where == "under-file":
        expected = "taken is a file, not a folder"
    one_error_line(code, err, expected)
    assert blocker.read_text() == "mine"


def test_photos_with_one_name_get_distinct_outputs(tmp_path, monkeypatch, capsys):
    for folder, value in (("a", 40), ("b", 200)):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(tmp_path / folder / "IMG_1.jpg")
    out = tmp_path / "out"
    code, _, err = run_cli(
        monkeypatch, capsys, "facade", "predict", tmp_path / "a/IMG_1.jpg", tmp_path / "b/IMG_1.jpg", "-o", out
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "IMG_1-2_areas.json", "IMG_1-2_labels.png", "IMG_1-2_overlay.png", "IMG_1-2_side_by_side.jpg",
        "IMG_1_areas.json", "IMG_1_labels.png", "IMG_1_overlay.png", "IMG_1_side_by_side.jpg",
    ]  # fmt: skip
    assert str(tmp_path / "b/IMG_1.jpg") in (out / "IMG_1-2_areas.json").read_text()


_NAME = st.sampled_from(["a", "b", "A", "x.jpg", "x", "IMG_1", "IMG_1-2"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "d1/", "d2/"]), _NAME), max_size=12))
def test_unique_stems_never_collide(parts):
    paths = [Path(d + n) for d, n in parts]
    stems = outputs.unique_stems(paths)
    assert len(stems) == len(paths) and len({s.lower() for s in stems}) == len(stems)
    taken: set[str] = set()
    for p, s in zip(paths, stems, strict=True):
        if p.stem.lower() not in taken:
            assert s == p.stem  # a name no earlier output took is kept as it is
        taken.add(s.lower())


_TREE = st.dictionaries(
    st.sampled_from(["a", "a/b", "a/b/c", "f", "f2", "a/f"]), st.sampled_from(["dir", "file"]), max_size=5
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_TREE, target=st.sampled_from(["a", "a/b", "a/b/c/d", "f", "f/x", "a/f/y", "new/deep/er", "f2"]))
def test_a_checked_output_path_can_be_written(tmp_path_factory, tree, target):
    root = tmp_path_factory.mktemp("tree")
    for rel, kind in sorted(tree.items()):
        path = root / rel
        if any(p.is_file() for p in [path, *path.parents] if p != root and root in p.parents):
            continue
        path.mkdir(parents=True, exist_ok=True) if kind == "dir" else (path.parent.mkdir(parents=True, exist_ok=True))
        if kind == "file" and not path.exists():
            path.write_text("x")
    path = root / target
    makers = {
        outputs.check_dir: lambda: path.mkdir(parents=True, exist_ok=True),
        outputs.check_file: lambda: outputs.atomic_write(path, lambda t: t.write_text("y")),
    }
    for check, make in makers.items():
        try:
            check(path, "--out")
        except outputs.OutputError as e:
            assert "\n" not in str(e) and str(e).startswith(f"--out {path}: ")
            continue
        make()  # what the check allowed must work


# ---------------------------------------------------------------- 7: run folders edited or damaged


def test_a_config_that_no_longer_fits_the_weights_is_one_line(run, tmp_path, monkeypatch, capsys):
    copy = _copy(run, tmp_path)
    cfg = copy / "config.yaml"
    cfg.write_text(cfg.read_text().replace("name: seed-a", "name: seed-b"))
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "evaluate", copy)
    one_error_line(code, err, "best.safetensors: the weights do not fit the run's config.yaml", "restore it")


def test_broken_yaml_in_a_run_config_is_one_line(run, tmp_path, monkeypatch, capsys):
    copy = _copy(run, tmp_path)
    (copy / "config.yaml").write_text("train: [unclosed\n")
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "evaluate", copy)
    one_error_line(code, err, "config.yaml: the run's configuration is damaged (line 2, column 1")


def test_a_checkpoint_fallback_is_one_warning_line(run, tmp_path, monkeypatch, capsys):
    copy = _copy(run, tmp_path)
    last = copy / "checkpoints" / "last.safetensors"
    shutil.copy(last, last.with_suffix(".prev"))
    last.write_bytes(last.read_bytes()[:100])
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "evaluate", copy, "--checkpoint", "last")
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: warning: ") and "last.prev" in lines[0], err
    last.with_suffix(".prev").write_bytes(b"junk")
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "evaluate", copy, "--checkpoint", "last")
    one_error_line(code, err, "last.safetensors", "last.prev", "both checkpoints are damaged: restart the run")


def test_resume_removes_temp_files_of_a_killed_run(fm, tmp_path, monkeypatch, capsys):
    args = ["fashion", "train", "--data-dir", fm, "--epochs", 2, "--out", tmp_path / "r", "--max-steps", 3, *FAST]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    stale = tmp_path / "r" / "figures" / ".curves.png.abcd1234.tmp"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half a png")
    assert run_cli(monkeypatch, capsys, "fashion", "train", "--resume", tmp_path / "r", "--no-progress")[0] == 0
    assert not stale.exists()


# ---------------------------------------------------------------- 8: resume does what the user says


def test_resume_trains_to_more_epochs(fm, tmp_path, monkeypatch, capsys):
    args = ["fashion", "train", "--data-dir", fm, "--epochs", 1, "--out", tmp_path / "r", *FAST]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--resume", tmp_path / "r", "--epochs", 3)
    assert code == 0, err
    epochs = [r["epoch"] for r in runs.read_history(tmp_path / "r") if r["kind"] == "epoch"]
    assert epochs == [1, 2, 3]
    assert runs.load_run_config(tmp_path / "r").train.epochs == 3
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--resume", tmp_path / "r", "--epochs", 2)
    one_error_line(code, err, "--epochs 2:", "has already trained 3 epochs; give 3 or more")
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--resume", tmp_path / "r", "--no-progress")
    assert code == 0 and "has finished its 3 epochs" in err


def test_resume_follows_the_data_to_its_new_folder(fm, tmp_path, monkeypatch, capsys):
    data = Path(shutil.copytree(fm, tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    args = ["fashion", "train", "--data-dir", "data", "--epochs", 2, "--out", "r", "--max-steps", 3, *FAST]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    moved = data.rename(tmp_path / "moved")
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--resume", "r", "--no-progress")
    one_error_line(code, err, "data folder does not exist")
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--resume", "r", "--data-dir", "moved")
    assert code == 0, err
    assert runs.load_run_config(tmp_path / "r").data.dir == str(moved)


@pytest.mark.parametrize("option", [["--lr", "0.1"], ["--set", "train.epochs=3"], ["--recipe", "fast"], ["--out", "x"]])
def test_resume_refuses_options_it_would_ignore(tmp_path, monkeypatch, capsys, option):
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--resume", tmp_path, *option)
    one_error_line(code, err, f"{option[0]} with --resume: a resumed run keeps its settings")
