"""Issue 31 (part): `cnnlab check` finds duplicates, leaks between splits, the rule that prevents them, and
odd files, before the first epoch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_classify_folder, make_segment_folder, one_error_line, run_cli
from PIL import Image

from cnnlab.checks.duplicates import connected, near_pairs, pixel_rows
from cnnlab.checks.labels import calibrate, rank_issues
from cnnlab.checks.rules import random_split_leak, suggest_rule


def _noise(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3)).astype(np.uint8)


def _planted(folder: Path) -> Path:
    """A classification folder (40 images a class, each class bright in its own channel) with three images
    moved into a wrong class, a copy of a training image in test/, a truncated JPEG, a CMYK JPEG, a 16-bit
    PNG and an all-black image."""
    make_classify_folder(folder, per_class=40, size=24)
    for src, dest in (("a/a1", "b/wrong_a1"), ("b/b2", "c/wrong_b2"), ("c/c3", "a/wrong_c3")):
        (folder / "train" / f"{src}.png").rename(folder / "train" / f"{dest}.png")
    for c, name in enumerate(("a", "b", "c")):
        (folder / "test" / name).mkdir(parents=True)
        for i in range(3):
            image = _noise(100 + 10 * c + i) // 5
            image[:, :, c] += 180
            Image.fromarray(image).save(folder / "test" / name / f"t{name}{i}.png")
    shutil.copy(folder / "train" / "a" / "a0.png", folder / "test" / "a" / "copy_of_a0.png")
    Image.fromarray(_noise(1)).save(folder / "train" / "b" / "cut.jpg", quality=95)
    data = (folder / "train" / "b" / "cut.jpg").read_bytes()
    (folder / "train" / "b" / "cut.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(_noise(2)).convert("CMYK").save(folder / "train" / "c" / "cmyk.jpg")
    deep = np.random.default_rng(3).integers(0, 65535, (24, 24)).astype(np.uint16)
    Image.fromarray(deep).save(folder / "train" / "a" / "deep.png")
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(folder / "train" / "c" / "black.png")
    return folder


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_planted_problems_are_each_found_and_strict_fails_on_the_leak(tmp_path, cache_dir, monkeypatch, capsys):
    folder = _planted(tmp_path / "photos")
    before = _tree(tmp_path)
    out = tmp_path / "checked"
    monkeypatch.chdir(tmp_path)  # the folder named relative to here, as people type it
    code, stdout, _ = run_cli(monkeypatch, capsys, "check", "photos", "--out", out, "--no-progress", "--strict")
    assert code == 1, stdout  # a training image copied into test: the splits leak
    assert _tree(tmp_path) - before == {out, out / "check.json", out / "check.html", out / "groups.csv"}
    rows = dict(line.split(",") for line in (out / "groups.csv").read_text().splitlines()[1:])
    assert rows["train/a/a0.png"] == rows["test/a/copy_of_a0.png"]  # no name rule: the found groups to use
    assert len(set(rows.values())) == len(rows) - 1
    report = json.loads((out / "check.json").read_text())
    d = report["duplicates"]
    assert d["embedding"] == "pixels" and d["across_splits"]["test in train"] == 1
    [group] = [g for g in d["exact_groups"] if len({m["split"] for m in g}) > 1]
    assert sorted(Path(m["name"]).name for m in group) == ["a0.png", "copy_of_a0.png"]
    problems = {Path(i["file"]).name: i["problem"] for i in report["files"]["issues"]}
    assert problems["cut.jpg"].startswith("truncated or corrupt")
    assert problems["cmyk.jpg"].startswith("CMYK colours")
    assert problems["deep.png"].startswith("16-bit pixels")
    assert problems["black.png"].startswith("near-blank")
    assert set(problems) == {"cut.jpg", "cmyk.jpg", "deep.png", "black.png"}  # the noise images are fine
    assert [Path(f).name for f in report["skipped_files"]] == ["cut.jpg"]  # training would skip it
    counts = report["balance"]["amounts"]  # the truncated file left out, a tenth of each class carved for val
    assert [t + v for t, v in zip(counts["train"], counts["val"], strict=True)] == [41, 40, 42]
    assert counts["val"] == [4, 4, 4] and counts["test"] == [4, 3, 3]
    assert "test in train 1" in stdout and "problems: " in stdout and "truncated 1" in stdout
    assert {i["kind"] for i in report["files"]["issues"]} == {"truncated", "CMYK", "16-bit", "near-blank"}
    labels = report["labels"]
    flagged = {Path(r["name"]).name: (r["given"], r["suggested"]) for r in labels["issues"] if r["flagged"]}
    wrong = {"wrong_a1.png": ("b", "a"), "wrong_b2.png": ("c", "b"), "wrong_c3.png": ("a", "c")}
    assert flagged.items() >= wrong.items(), flagged  # each found, with the class it came from
    assert set(flagged) - set(wrong) <= {"deep.png", "cmyk.jpg", "black.png"}  # no clean image, only odd files
    assert labels["flagged"] == len(flagged) and f"label issues: {len(flagged)} images flagged" in stdout
    page = (out / "check.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 2 and "across splits" in page and "copy_of_a0.png" in page
    assert "Label issues" in page and all(name in page for name in wrong)

    code, _, _ = run_cli(monkeypatch, capsys, "check", folder, "--out", out, "--no-progress")
    assert code == 0  # findings alone do not fail


def test_a_segmentation_folder_gets_no_groups_csv_it_could_not_use(tmp_path, cache_dir, monkeypatch, capsys):
    folder = make_segment_folder(tmp_path / "seg", n=8)
    for sub in ("images", "masks"):
        shutil.copy(folder / sub / "s0.png", folder / sub / "s8.png")
    out = tmp_path / "out"
    (out).mkdir()
    (out / "groups.csv").write_text("file,group\n")  # an earlier check's, now stale
    code, stdout, _ = run_cli(monkeypatch, capsys, "check", folder, "--out", out, "--no-progress")
    assert code == 0
    report = json.loads((out / "check.json").read_text())
    [group] = report["duplicates"]["exact_groups"]
    assert sorted(m["name"] for m in group) == ["s0", "s8"]
    assert report["balance"]["unit"] == "share of pixels" and "groups_csv" not in report["duplicates"]
    assert not (out / "groups.csv").exists() and "groups.csv" not in stdout


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, cache_dir, monkeypatch, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "check", tmp_path / "nowhere", "--out", out)
    one_error_line(code, err, "nowhere: no such folder", "fashion, facade")
    folder = make_classify_folder(tmp_path / "data", size=10)
    (folder / "train" / "empty").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "check", folder, "--out", out)
    one_error_line(code, err, "empty: class folder holds no images")
    (folder / "train" / "empty").rmdir()
    run = tmp_path / "run"
    args = ["classify", "train", "--data", folder, "--recipe", "small", "--epochs", "1", "--report", "none"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", run, "--no-progress")
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, "check", run, "--out", out, "--set", "data.val_fraction=0.3")
    one_error_line(code, err, "a run folder is checked as it was split")
    for bad in ("nan", "0.2", "1.5"):
        code, _, err = run_cli(monkeypatch, capsys, "check", folder, "--out", out, "--threshold", bad)
        one_error_line(code, err, f"threshold {float(bad)}: give a cosine similarity from 0.5 to 1")
    folder.rename(tmp_path / "moved")
    code, _, err = run_cli(monkeypatch, capsys, "check", run, "--out", out)
    one_error_line(code, err, "its data folder", "is gone (moved?)")
    assert not out.exists()


def test_the_rule_is_the_finest_that_keeps_the_pairs_together():
    names = [f"img_{i:04d}.jpg" for i in range(60)]
    pairs = [(i, i + 20) for i in range(20)] + [(i, i + 40) for i in range(20)]
    assert suggest_rule(names, pairs) == {"rule": "index-mod:20", "keeps": 1.0, "groups": 20}
    shots = [f"{obj}_{k}.png" for obj in [f"mug{j}" for j in range(12)] for k in range(3)]
    pairs = [(3 * j, 3 * j + k) for j in range(12) for k in (1, 2)]
    assert suggest_rule(shots, pairs) == {"rule": r"regex:^(.+?)[_\- ]?\d+$", "keeps": 1.0, "groups": 12}
    scattered = [(i, (i * 7 + 3) % 36) for i in range(36) if i != (i * 7 + 3) % 36]
    assert suggest_rule(shots, scattered) is None  # no name pattern keeps these together
    assert suggest_rule(shots, []) is None


def test_a_random_split_leaks_the_validation_images_with_a_partner_in_training():
    pairs = [(0, 1), (2, 3), (4, 5)]
    leak = random_split_leak(10, pairs, None, 0.5, seed=0)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    val = set(order[:5].tolist())
    expected = sum((a in val) != (b in val) for a, b in pairs)  # one side of each cut pair is in val
    assert leak["leaked"] == expected and leak["val_images"] == 5


def test_near_duplicates_are_found_by_correlation_and_grouped():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (40, 1, 20, 20)).astype(np.uint8))
    x[7] = (x[3].float() * 0.8 + 20).round().to(torch.uint8)  # a darker re-save of image 3
    x[9] = x[3]
    emb = pixel_rows(x, 32)
    found = near_pairs(emb, 0.995, coarse=pixel_rows(x, 16))
    assert {(i, j) for i, j, _ in found} == {(3, 7), (3, 9), (7, 9)}
    assert all(s > 0.999 for *_, s in found)  # a linear change of brightness keeps the correlation
    assert connected(40, [(i, j) for i, j, _ in found]) == [[3, 7, 9]]


@pytest.mark.slow
def test_facade_views_are_grouped_and_the_building_rule_found(real_facade, cache_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "facade"
    code, stdout, _ = run_cli(monkeypatch, capsys, "check", "facade", "--out", out, "--no-progress")
    assert code == 0
    d = json.loads((out / "check.json").read_text())["duplicates"]
    assert d["embedding"] == "backbone" and d["rule"]["rule"] == "index-mod:302" and d["rule"]["keeps"] > 0.95
    assert sum(len(g) == 3 for g in d["groups"]) > 150  # of 302 buildings, found without being told
    assert d["random_split"]["leaked"] > 0.6 * d["random_split"]["val_images"]
    assert sum(d["across_splits"].values()) == 0  # the built-in split is by building
    assert "a random split would leak" in stdout


@pytest.mark.slow
def test_fashion_near_copies_between_train_and_test(real_fashion, cache_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "fashion"
    code, _, _ = run_cli(monkeypatch, capsys, "check", "fashion", "--out", out, "--no-progress")
    assert code == 0
    report = json.loads((out / "check.json").read_text())
    d = report["duplicates"]
    assert d["embedding"] == "pixels" and not d["exact_groups"]
    assert 15 <= d["across_splits"]["test in train"] <= 25  # 20 measured: one product photo in both
    assert 80 <= d["across_splits_loose"]["test in train"] <= 100  # 89 at 0.99
    assert report["images"] == {"train": 54000, "val": 6000, "test": 10000}
    labels = report["labels"]  # the official labels, unflipped: 931 flagged (1.3%), 89.4% out of fold, measured
    assert labels["out_of_fold_accuracy"] > 0.87 and 500 <= labels["flagged"] <= 1500
    worst = labels["issues"][:20]
    assert all(r["flagged"] and r["quality"] < 0.01 and r["given"] != r["suggested"] for r in worst)
    section = (out / "check.html").read_text().split('id="labels"')[1].split("</section>")[0]
    assert section.count('src="data:image/png;base64,') >= 20  # what the 20 most suspicious look like
    assert all(f"<td>{r['given']}</td><td>{r['suggested']}</td>" in section for r in worst)


def test_a_notebook_shows_the_summary(tmp_path, cache_dir):
    from cnnlab import api

    folder = make_classify_folder(tmp_path / "data", size=10)
    found = api.check(folder, tmp_path / "out", progress=False)
    html = found._repr_html_()
    assert html.startswith("<pre>") and "a random split would leak 0 of 3 validation images" in html
    assert f"{tmp_path / 'out' / 'check.html'}" in html and found.leaks == 0


def test_one_temperature_is_fitted_to_the_given_labels():
    probs = np.array([[0.9, 0.1]] * 4)
    calibrated, t = calibrate(probs, np.array([0, 0, 0, 1]))
    # The NLL is least where sigmoid(log 9 / t) = 3/4, the share of labels the model agrees with: t = log 9 / log 3.
    assert t == pytest.approx(2.0, abs=1e-4)
    np.testing.assert_allclose(calibrated, [[0.75, 0.25]] * 4, atol=1e-4)


def test_flagged_are_the_proposals_whose_given_label_stays_unlikely():
    labels = np.repeat([0, 1, 2], 40)
    probs = np.full((120, 3), 0.05)
    probs[np.arange(120), labels] = 0.9
    probs[[5, 50, 90]] = [[0.01, 0.98, 0.01], [0.01, 0.01, 0.98], [0.98, 0.01, 0.01]]  # sure of another class
    probs[[10, 60]] = [[0.35, 0.6, 0.05], [0.05, 0.45, 0.5]]  # in doubt
    found = rank_issues(probs, labels)
    logp = np.log(probs)
    grid = np.exp(np.linspace(-3, 3, 60001))  # the temperature by brute force on the NLL
    nll = [-(logp / t - np.log(np.exp(logp / t).sum(1, keepdims=True)))[np.arange(120), labels].mean() for t in grid]
    t = grid[int(np.argmin(nll))]
    assert found["temperature"] == pytest.approx(t, rel=1e-3)
    q = np.exp(logp / t)[np.arange(120), labels] / np.exp(logp / t).sum(1)
    np.testing.assert_allclose(found["quality"], q, rtol=1e-3)
    assert q[[5, 50, 90]].max() < 0.05 < q[[10, 60]].min()
    assert np.flatnonzero(found["flagged_mask"]).tolist() == [5, 50, 90]
    assert found["suggested"][[5, 50, 90]].tolist() == [1, 2, 0]
    order = found["order"].tolist()
    assert set(order[:3]) == {5, 50, 90} and order[3:5] == sorted([10, 60], key=lambda i: q[i])  # least likely first
