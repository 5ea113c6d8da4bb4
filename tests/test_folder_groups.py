"""Issue 30 (part): validation that does not leak, for classification folders too. Photos of one scene
(several shots of an object, overlapping patches of a building) stay on one side of the split with
`data.group_key`; without it, validation images with an exact copy in training get one warning line."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab import api
from cnnlab.config import load_config
from cnnlab.data.splits import exact_copies, stratified_group_split
from cnnlab.engine.evaluation import warn_of_copies
from cnnlab.errors import CnnlabWarning, ConfigError, DataError
from cnnlab.runs import read_eval
from cnnlab.tasks import get_task

SCENE = re.compile(r"^(.+)_\d+$")


def _scenes(folder: Path, per_scene: int = 4, scenes: int = 6, copies: bool = True) -> Path:
    """train/<class>/<class>s<k>_<j>.png: `scenes` scenes a class, `per_scene` shots each, the shots of a
    scene exact copies of each other (`copies`) or each its own noise."""
    rng = np.random.default_rng(1)
    for c, name in enumerate(("red", "green", "blue")):
        (folder / "train" / name).mkdir(parents=True)
        for k in range(scenes):
            scene = rng.integers(0, 60, (12, 12, 3))
            scene[..., c] += 150
            for j in range(per_scene):
                shot = scene if copies else np.clip(scene + rng.integers(-5, 6, scene.shape), 0, 255)
                Image.fromarray(shot.astype(np.uint8)).save(folder / "train" / name / f"{name}s{k}_{j}.png")
    return folder


def _load(folder: Path, *overrides: str):
    cfg = load_config("classify", "small", [f"data.dir={folder}", "data.val_fraction=0.34", *overrides])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = get_task(cfg).load_data(cfg, progress=False)
        warn_of_copies(data, cfg)
    said = [str(w.message) for w in caught if issubclass(w.category, CnnlabWarning)]
    return cfg, data, said


def _scene_of(name: str) -> str:
    return SCENE.match(Path(name).stem)[1]


def test_a_group_key_keeps_each_scene_on_one_side_and_the_split_stratified(tmp_path):
    folder = _scenes(tmp_path / "data")
    cfg, data, said = _load(folder, r"data.group_key=regex:^(.+)_\d+$")
    train, val = ({_scene_of(n) for n in data[s].names} for s in ("train", "val"))
    assert not train & val and len(train | val) == 18
    assert sorted(data["val"].targets.bincount().tolist()) == [8, 8, 8]  # 2 of each class's 6 scenes, whole
    assert said == []  # no copies across the split
    assert "whole groups by regex:^(.+)_\\d+$" in get_task(cfg).split_description(cfg)


def test_without_a_group_key_copies_across_the_split_are_one_warning(tmp_path):
    folder = _scenes(tmp_path / "data")
    _, data, said = _load(folder)
    copies = exact_copies(data["train"].x, data["val"].x)
    assert copies > 0 and len(said) == 1
    assert re.fullmatch(
        rf"{re.escape(str(folder))}: {copies} of {len(data['val'])} validation images have an exact copy in "
        r"train, so those splits overstate accuracy; remove the copies, or keep each scene on one side with "
        r"data.group_key \(`cnnlab check` lists them and finds the rule\)",
        said[0],
    ), said[0]
    _, _, said = _load(_scenes(tmp_path / "distinct", copies=False))  # shots that differ: no warning
    assert said == []
    _, _, said = _load(folder, "data.check=false")  # asked not to look
    assert said == []


def test_a_group_key_is_refused_for_fashion_mnist_and_checked_against_every_name(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.group_key is for folders and facades"):
        load_config("fashion", "seed-a", ["data.group_key=file"])
    folder = _scenes(tmp_path / "data")
    with pytest.raises(Exception, match=r"blues0_0: file name does not match group spec"):
        _load(folder, r"data.group_key=regex:^(\d+)$")


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 12)), min_size=8, max_size=80),
    st.sampled_from([0.1, 0.2, 0.34, 0.5]),
    st.integers(0, 5),
)
def test_stratified_group_split_never_cuts_a_group(items, fraction, seed):
    labels = torch.tensor([c for c, _ in items])
    groups = [g for _, g in items]
    try:
        train, val = stratified_group_split(labels, groups, fraction, seed)
    except Exception as e:
        assert "too few to hold out" in str(e)
        return
    assert sorted(train.tolist() + val.tolist()) == list(range(len(items)))
    assert not {groups[i] for i in train.tolist()} & {groups[i] for i in val.tolist()}
    again = stratified_group_split(labels, groups, fraction, seed)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)


def test_a_folder_of_class_folders_is_a_training_set_too(tmp_path):
    """DIR/<class>/* as Keras' image_dataset_from_directory and torchvision's ImageFolder take it."""
    flat = _scenes(tmp_path / "data") / "train"
    cfg, data, _ = _load(flat, r"data.group_key=regex:^(.+)_\d+$")
    assert cfg.data.classes == ["blue", "green", "red"] and len(data["train"]) + len(data["val"]) == 72
    (flat / "val").mkdir()
    with pytest.raises(Exception, match=rf"{re.escape(str(flat))}: has val/ but no train/; put the training classes"):
        _load(flat)


def _leaky(folder: Path, scenes: int, seed: int) -> Path:
    """DIR/<class>/s<k>_<j>.png: scenes of pure noise, each with 4 shots a few levels apart, and a class drawn
    at random per scene: nothing carries over to new scenes, so the honest accuracy is chance (1/3)."""
    rng = np.random.default_rng(seed)
    for k in range(scenes):
        name = ("red", "green", "blue")[k % 3]
        (folder / name).mkdir(parents=True, exist_ok=True)
        scene = rng.integers(20, 236, (8, 8, 3))
        for j in range(4):
            shot = np.clip(scene + rng.integers(-6, 7, scene.shape), 0, 255).astype(np.uint8)
            Image.fromarray(shot).save(folder / name / f"s{seed}x{k}_{j}.png")
    return folder


def test_on_a_leaky_folder_the_group_key_closes_the_gap_between_validation_and_test(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    _leaky(data / "train", 60, seed=0)
    _leaky(data / "test", 30, seed=1)  # other scenes: what the model will meet
    gaps = {}
    for name, key in (("random", []), ("grouped", [r"data.group_key=regex:^(.+)_\d+$"])):
        over = [f"data.dir={data}", "data.val_fraction=0.3", "train.epochs=40", "train.threads=1", *key]
        over.append("augment.pad_crop=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CnnlabWarning)
            cfg = load_config("classify", "small", [*over, "explain.report=none"])
            run = api.train_config(cfg, tmp_path / name, progress=False).run_dir
        val, test = (read_eval(run, s)["acc"] for s in ("val", "test"))
        gaps[name] = (val, test)
    (val, test), (gval, gtest) = gaps["random"], gaps["grouped"]
    assert test < 0.6 and gtest < 0.6  # new scenes: near chance, whatever the split
    assert val > 0.9 and val - test > 0.4, gaps  # a random split validates on shots of training scenes: memorised
    # whole scenes held out: validation, too, says chance (18 scenes: within about two standard errors)
    assert gval < 0.6 and abs(gval - gtest) < val - test - 0.25, gaps


def test_a_groups_csv_names_each_files_scene(tmp_path):
    folder = _scenes(tmp_path / "data", copies=True)
    rows = ["file,group"]
    for path in sorted((folder / "train").rglob("*.png")):
        scene = _scene_of(path.name)
        # paths under train/, relative to it, or bare names: each way people write them
        ways = (f"train/{path.parent.name}/{path.name}", f"{path.parent.name}/{path.name}", path.name)
        name = ways[len(rows) % 3]
        rows.append(f"{name},building {scene}")
    (folder / "groups.csv").write_text("\n".join(rows) + "\n")
    _, data, said = _load(folder, "data.group_key=csv")
    train, val = ({_scene_of(n) for n in data[s].names} for s in ("train", "val"))
    assert not train & val and len(train | val) == 18 and said == []
    (folder / "groups.csv").write_text("\n".join(rows[:-1]) + "\n")  # the last image has no row
    with pytest.raises(DataError, match=r"groups\.csv: no row for red/reds5_3\.png; give every training image a"):
        _load(folder, "data.group_key=csv")
    (folder / "groups.csv").write_text("file,group\nred/reds0_0.png\n")
    with pytest.raises(DataError, match=r"groups\.csv: row 1 has 1 fields; write file,group per line"):
        _load(folder, "data.group_key=csv")
