"""The compare page (`cnnlab report --compare`): best run, per-class differences, curves and their JSON,
the sweep table, one-line refusals, and a real browser. Most runs are written by hand (config.yaml,
metrics.jsonl, eval_test.json), so every number the page shows is known in advance; one real tiny run
checks that the hand-made files look like training's."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from conftest import HtmlPage, one_error_line, run_cli

from cnnlab import api, runs
from cnnlab.config import dump_config, load_config
from cnnlab.errors import ConfigError
from cnnlab.outputs import OutputError
from cnnlab.report.compare import write_compare


def _epoch_row(epoch: int, train_loss: float, train_m: float | None, val_loss: float, val: dict, time_s: float):
    row = {"kind": "epoch", "epoch": epoch, "step": 10 * epoch, "train_loss": train_loss, "val_loss": val_loss}
    row |= {"train_acc": train_m} if train_m is not None else {}
    return row | {f"val_{k}": v for k, v in val.items()} | {"lr": 1e-3, "time_s": time_s}


def _make_run(folder: Path, task: str, recipe: str, rows: list[dict], test: dict | None, *overrides: str) -> Path:
    """A finished run as training leaves it, minus checkpoints and figures (the compare page reads neither)."""
    folder.mkdir(parents=True)
    dump_config(load_config(task, recipe, [f"train.epochs={len(rows)}", *overrides]), folder / "config.yaml")
    batch = {"kind": "batch", "epoch": 1, "step": 1, "loss": 2.0, "acc": 0.1, "lr": 1e-3}
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [batch, *rows]))
    if test is not None:
        (folder / "eval_test.json").write_text(json.dumps({"split": "test", "checkpoint": "best", "n": 100, **test}))
    return folder


def _fashion(folder: Path, val_acc: list[float], per_class: list[float] | None, *overrides, time_s=5.0) -> Path:
    rows = [
        _epoch_row(e, 1.0 / e, 0.5 + 0.1 * e, 0.9 / e, {"acc": v}, time_s * e / len(val_acc))
        for e, v in enumerate(val_acc, 1)
    ]
    test = {"acc": sum(per_class) / len(per_class), "per_class_acc": per_class} if per_class else None
    return _make_run(folder, "fashion", "seed-a", rows, test, *overrides)


def _facade(folder: Path, val_map: list[float], ap: list[float], iou: list[float]) -> Path:
    rows = [
        _epoch_row(e, 1.6 - 0.1 * e, 0.3, 1.5 - 0.1 * e, {"acc": 0.4, "map": m, "miou": m / 2}, 7.0 * e)
        for e, m in enumerate(val_map, 1)
    ]
    test = {"acc": 0.4, "ap": ap, "map": sum(ap) / 5, "iou": iou, "miou": sum(iou) / 5}
    return _make_run(folder, "facade", "seed-a", rows, test)


B_TEST = [0.9, 0.8, 0.7, 0.6, 0.5, 0.9, 0.8, 0.7, 0.6, 0.5]
A_TEST = [0.8, 0.85, 0.7, 0.5, 0.55, 0.9, 0.6, 0.75, 0.6, 0.4]
A_MINUS_B = [-0.1, 0.05, 0.0, -0.1, 0.05, 0.0, -0.2, 0.05, 0.0, -0.1]  # by hand


@pytest.fixture(scope="module")
def fashion_runs(tmp_path_factory) -> dict[str, Path]:
    """a: best val 82% in its last epoch; b: 86% in its first, then 79% (below a's last: best by its best
    epoch, not its last); c: 60%, never evaluated on test."""
    root = tmp_path_factory.mktemp("fashion-runs")
    return {
        "a": _fashion(root / "a", [0.80, 0.82], A_TEST),
        "b": _fashion(root / "b", [0.86, 0.79], B_TEST, "optim.lr=3e-3"),
        "c": _fashion(root / "c", [0.50, 0.60], None, "model.activation=sigmoid"),
    }


@pytest.fixture(scope="module")
def fashion_page(fashion_runs, tmp_path_factory) -> tuple[str, dict]:
    out = write_compare(list(fashion_runs.values()), tmp_path_factory.mktemp("page") / "compare.html")
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def _table(page: str, ident: str) -> list[tuple[str, list[str]]]:
    """(row class, cells) of each row of table `ident`."""
    html = HtmlPage(page)
    return list(zip(html.row_classes[ident], html.tables[ident], strict=True))


def test_best_run_is_the_highest_validation_metric(fashion_page):
    page, numbers = fashion_page
    rows = _table(page, "compare-table")
    head = rows[0][1]
    body = {cells[0]: (cls, cells) for cls, cells in rows[1:]}
    assert list(body) == ["a", "bbest", "c"]  # the badge reads "best" right after b's name
    assert [cls for cls, _ in body.values()] == ["", "best", ""]
    best_row = body["bbest"][1]
    assert best_row[head.index("best val accuracy")] == "86.00%" and best_row[head.index("best epoch")] == "1"
    assert body["a"][1][head.index("best val accuracy")] == "82.00%"
    assert numbers["best_run"] == "b" and numbers["best_by"] == "best validation accuracy"
    assert [r["best"] for r in numbers["runs"]] == [False, True, False]
    assert "The best run, <b>b</b>, has the highest best validation accuracy" in page
    # The settings that differ get columns; the activation seed-a uses by default is named, not "none".
    assert head[-2:] == ["activation", "lr"]
    assert [body[k][1][-2] for k in ("a", "bbest", "c")] == ["relu", "relu", "sigmoid"]


def test_difference_chart_numbers_are_each_run_minus_the_best(fashion_page):
    page, numbers = fashion_page
    per_class = numbers["per_class"]
    assert per_class["reference"] == "b" and per_class["split"] == "test"
    assert per_class["classes"][:2] == ["T-shirt/top", "Trouser"] and len(per_class["classes"]) == 10
    assert list(per_class["difference"]) == ["per_class_acc"]
    assert list(per_class["difference"]["per_class_acc"]) == ["a"]  # not b itself, not c (no test results)
    assert per_class["difference"]["per_class_acc"]["a"] == pytest.approx(A_MINUS_B, abs=1e-12)
    assert per_class["left_out"] == ["c"] and "Not evaluated on test, so left out: c." in page
    assert page.count("data:image/png;base64,") == 2  # curves and the difference chart
    assert "run, <b>b</b> (in percentage points)" in page
    table = _table(page, "per-class-per_class_acc")  # the per-class table stays, one column per run
    assert table[0][1] == ["class", "a", "bbest", "c"]
    assert table[7][1] == ["Shirt", "60.00%", "80.00%", "n/a"]
    assert table[-1][1] == ["overall accuracy", "66.50%", "70.00%", "n/a"]


def test_curve_json_holds_each_runs_training_and_validation_series(fashion_page, fashion_runs):
    _, numbers = fashion_page
    assert list(numbers["curves"]) == ["a", "b", "c"]
    for label, run in fashion_runs.items():
        epochs = [r for r in runs.read_history(run) if r["kind"] == "epoch"]
        series = numbers["curves"][label]
        assert series["epoch"] == [1, 2]
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            assert series[key] == [r[key] for r in epochs], (label, key)
    assert numbers["curves"]["b"]["val_acc"] == [0.86, 0.79]
    assert numbers["curves"]["a"]["train_loss"] == [1.0, 0.5]


def test_facade_runs_compare_ap_and_iou_against_the_best(tmp_path):
    f1 = _facade(tmp_path / "f1", [0.20, 0.25], [0.5, 0.4, 0.1, 0.3, 0.2], [0.3, 0.2, 0.05, 0.1, 0.1])
    f2 = _facade(tmp_path / "f2", [0.22, 0.30], [0.4, 0.5, 0.1, 0.25, 0.2], [0.2, 0.3, 0.05, 0.2, 0.0])
    out = write_compare([f1, f2], tmp_path / "cmp.html")
    numbers = json.loads((tmp_path / "cmp.json").read_text())
    assert numbers["best_run"] == "f2" and numbers["kind"] == "segment"
    diff = numbers["per_class"]["difference"]
    assert diff["ap"]["f1"] == pytest.approx([0.1, -0.1, 0.0, 0.05, 0.0], abs=1e-12)
    assert diff["iou"]["f1"] == pytest.approx([0.1, -0.1, 0.0, -0.1, 0.1], abs=1e-12)
    assert numbers["curves"]["f1"]["train_map"] == [None, None]  # not measured in training
    assert numbers["curves"]["f2"]["val_map"] == [0.22, 0.30]
    page = out.read_text()
    assert "Training mean AP is not measured" in page
    rows = _table(page, "compare-table")
    assert rows[0][1][1:4] == ["best val mean AP", "best epoch", "final val loss"]
    assert [(cls, cells[:2]) for cls, cells in rows[1:]] == [("", ["f1", "0.2500"]), ("best", ["f2best", "0.3000"])]
    assert "activation" not in page.split('id="compare-table"')[0]  # the facade nets take none


def test_sweep_table_shows_percent_and_training_time(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    _fashion(sweep / "relu", [0.91234], B_TEST, "model.activation=relu", time_s=65.4)
    _fashion(sweep / "leaky_relu", [0.9087], A_TEST, "model.activation=leaky_relu", time_s=4.56)
    _fashion(sweep / "sigmoid", [0.1], B_TEST, "model.activation=sigmoid", time_s=3725)
    code, _, err = run_cli(monkeypatch, capsys, "report", "--compare", sweep, "-o", tmp_path / "sweep.html")
    assert code == 0, err
    rows = _table((tmp_path / "sweep.html").read_text(), "compare-table")
    head = rows[0][1]
    table = {cells[0]: cells for _, cells in rows[1:]}
    assert {k: (v[head.index("best val accuracy")], v[head.index("wall time")]) for k, v in table.items()} == {
        "leaky_relu": ("90.87%", "4.6 s"),
        "relubest": ("91.23%", "1 min 05 s"),
        "sigmoid": ("10.00%", "1 h 02 min"),
    }
    assert table["relubest"][head.index("test accuracy")] == "70.00%"
    assert [r["wall_time_s"] for r in json.loads((tmp_path / "sweep.json").read_text())["runs"]] == [4.56, 65.4, 3725]


def test_one_run_is_one_error_line(fashion_runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "c.html"
    for given in ([fashion_runs["a"]], [fashion_runs["a"], fashion_runs["a"]]):  # the same run twice is one run
        code, _, err = run_cli(monkeypatch, capsys, "report", "--compare", *given, "-o", out)
        one_error_line(code, err, "compare needs two or more runs (found 1 in", "pass more run folders")
    assert not out.exists() and not out.with_suffix(".json").exists()
    with pytest.raises(ConfigError, match="nothing to compare"):
        write_compare([], out)
    with pytest.raises(OutputError, match=r"needs an \.html name"):
        write_compare(list(fashion_runs.values()), tmp_path / "c.json")


def test_mixed_kinds_are_one_error_line(fashion_runs, tmp_path, monkeypatch, capsys):
    f = _facade(tmp_path / "f", [0.2], [0.5, 0.4, 0.1, 0.3, 0.2], [0.3, 0.2, 0.05, 0.1, 0.1])
    out = tmp_path / "c.html"
    given = [fashion_runs["a"], fashion_runs["b"], f]
    code, _, err = run_cli(monkeypatch, capsys, "report", "--compare", *given, "-o", out)
    one_error_line(code, err, "runs of different kinds (classify: a, b; segment: f) can't share a page",
                   "compare each kind separately")  # fmt: skip
    assert not out.exists()


def test_classifiers_of_other_classes_share_a_page_without_per_class(fashion_runs, tmp_path):
    rows = [_epoch_row(1, 0.9, 0.6, 0.8, {"acc": 0.7}, 3.0)]
    pets = ["data.dir=pets", "data.classes=[cat, dog]", "data.channels=3", "data.image_size=32"]
    folder = _make_run(tmp_path / "pets", "classify", "small", rows, {"acc": 0.7, "per_class_acc": [0.6, 0.8]}, *pets)
    out = write_compare([fashion_runs["a"], folder], tmp_path / "c.html")
    page = out.read_text()
    assert "cnnlab comparison: 2 classify (classify, fashion) runs" in page
    assert "trained on different classes" in page and 'id="per-class-per_class_acc"' not in page
    assert page.count("data:image/png;base64,") == 1  # the curves only
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["per_class"] is None and numbers["best_run"] == "a"  # 82% over 70%


@pytest.fixture(scope="module")
def real_run(tiny_fashion, tmp_path_factory) -> Path:
    """One real (tiny) training run: the files it leaves are what the hand-made runs imitate."""
    cfg = load_config(
        "fashion",
        "seed-a",
        [f"data.dir={tiny_fashion}", "train.epochs=2", "train.batch_size=64", "train.threads=1",
         "explain.figures=false"],
    )  # fmt: skip
    return api.train_config(cfg, tmp_path_factory.mktemp("real") / "tiny", progress=False).run_dir


def test_a_real_run_beside_a_hand_made_one_in_a_browser(real_run, fashion_runs, browser, tmp_path):
    folder = tmp_path / "page"
    out = write_compare([real_run, fashion_runs["a"]], folder / "compare.html")
    numbers = json.loads((folder / "compare.json").read_text())
    epochs = [r for r in runs.read_history(real_run) if r["kind"] == "epoch"]
    test = runs.read_eval(real_run, "test")
    assert numbers["curves"]["tiny"]["val_acc"] == [r["val_acc"] for r in epochs]
    assert numbers["curves"]["tiny"]["train_loss"] == [r["train_loss"] for r in epochs]
    best = "tiny" if max(r["val_acc"] for r in epochs) > 0.82 else "a"
    assert numbers["best_run"] == best
    other = "a" if best == "tiny" else "tiny"
    a_test = json.loads((fashion_runs["a"] / "eval_test.json").read_text())["per_class_acc"]
    tiny_minus_a = [t - a for t, a in zip(test["per_class_acc"], a_test, strict=True)]
    expected = tiny_minus_a if best == "a" else [-d for d in tiny_minus_a]
    assert numbers["per_class"]["difference"]["per_class_acc"][other] == pytest.approx(expected, abs=1e-12)

    alone = tmp_path / "alone" / "page.html"  # the page needs nothing beside it
    alone.parent.mkdir()
    shutil.copy(out, alone)
    browser.get(alone.as_uri())
    images = browser.execute_script("return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
    assert len(images) == 2 and all(done and width > 0 for _, done, width in images), images
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not browser.execute_script("return document.documentElement.scrollWidth > window.innerWidth")
    badge = browser.execute_script("return getComputedStyle(document.querySelector('tr.best .badge')).backgroundColor")
    assert badge == "rgb(46, 125, 50)"  # the best run's badge is drawn, not just written
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    (tmp_path / "compare.png").write_bytes(base64.b64decode(shot["data"]))
