"""HTML reports: the real numbers in their tables, every figure embedded, comparisons, a headless-browser check."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import HtmlPage, make_classify_folder, make_segment_folder, synthetic_facade
from PIL import Image

from cnnlab import api, runs
from cnnlab.config import dump_config, load_config
from cnnlab.engine import checkpoint
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.infer.segment import segment_files
from cnnlab.report.compare import find_runs, write_compare
from cnnlab.report.run_page import write_report
from cnnlab.tasks import get_task

FACADE_HEX = ["#000000", "#0080FF", "#80FF80", "#FF8000", "#FF0000"]


def _fashion_cfg(data_dir, *extra):
    return load_config(
        "fashion",
        "seed-a",
        [f"data.dir={data_dir}", "train.epochs=2", "train.batch_size=32", "train.eval_batch_size=64",
         "train.threads=1", *extra],
    )  # fmt: skip


def _facade_cfg(data_dir, *extra):
    return load_config(
        "facade",
        "unet",
        [f"data.dir={data_dir}", "data.group_key=file", "data.val_fraction=0.25", "data.test_fraction=0.25",
         "train.epochs=2", "train.batch_size=4", "augment.crop_size=32", "train.threads=1", *extra],
    )  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tiny_fashion, tmp_path_factory) -> Path:
    """A folder of three fashion runs, like `sweep-activations` writes; the third never evaluated on test."""
    root = tmp_path_factory.mktemp("sweep")
    api.train_config(_fashion_cfg(tiny_fashion), root / "relu", progress=False)
    api.train_config(_fashion_cfg(tiny_fashion, "model.activation=leaky_relu"), root / "leaky_relu", progress=False)
    api.train_config(_fashion_cfg(tiny_fashion, "train.seed=1"), root / "seed1", progress=False, finish=False)
    return root


@pytest.fixture(scope="module")
def fashion_run(sweep) -> Path:
    write_report(sweep / "relu")
    return sweep / "relu"


@pytest.fixture(scope="module")
def facade_run(tiny_facade, tmp_path_factory) -> Path:
    """A facade run with `predict` outputs in RUN/predictions, and its report."""
    run = api.train_config(_facade_cfg(tiny_facade), tmp_path_factory.mktemp("facade") / "run", progress=False).run_dir
    photo = run.parent / "street.jpg"
    Image.fromarray(synthetic_facade(80, 7)[0]).save(photo)
    model, _ = checkpoint.load_model(run)
    segment_files(model, get_task("facade"), [photo], run / "predictions")
    write_report(run)
    return run


@pytest.fixture(scope="module")
def classify_run(cache_dir, tmp_path_factory) -> Path:
    """A finished `cnnlab classify` run (report written) on a folder of 10x10 RGB images."""
    base = tmp_path_factory.mktemp("folder")
    data = make_classify_folder(base / "data", classes=("cat", "dog", "owl"))
    cfg = load_config("classify", "small", [f"data.dir={data}", "train.epochs=1", "train.threads=1"])
    return api.train_config(cfg, base / "run", progress=False).run_dir


@pytest.fixture(scope="module")
def segment_run(cache_dir, tmp_path_factory) -> Path:
    """A finished `cnnlab segment` run (report written) on a folder of 24x24 grey images."""
    base = tmp_path_factory.mktemp("folder")
    data = make_segment_folder(base / "data")
    tiny = ["data.val_fraction=0.25", "data.test_fraction=0.25", "train.batch_size=4"]
    cfg = load_config("segment", "unet", [f"data.dir={data}", *tiny, "train.epochs=1", "train.threads=1"])
    return api.train_config(cfg, base / "run", progress=False).run_dir


def _column(rows: list[list[str]], header: str) -> list[str]:
    j = rows[0].index(header)
    return [r[j] for r in rows[1:]]


def test_fashion_report_holds_the_test_numbers_and_every_figure(fashion_run):
    page_text = (fashion_run / "report.html").read_text()
    page = HtmlPage(page_text)
    test = json.loads((fashion_run / "eval_test.json").read_text())
    val = json.loads((fashion_run / "eval_val.json").read_text())
    rows = page.tables["per-class-table"]
    assert [r[0] for r in rows[1:-1]] == list(get_task("fashion").classes)
    assert _column(rows, "test accuracy") == [f"{v:.2%}" for v in test["per_class_acc"]] + [f"{test['acc']:.2%}"]
    assert _column(rows, "validation accuracy") == [f"{v:.2%}" for v in val["per_class_acc"]] + [f"{val['acc']:.2%}"]
    pngs = sorted((fashion_run / "figures").glob("*.png"))
    assert {p.stem for p in pngs} >= {"curves", "confusion_test", "examples_test", "filters_conv1"}
    # Explanations, once per run (on the test split): seed-a has two convolutions.
    explained = {
        "cams_test",
        "embedding_test",
        "calibration_test",
        "feature_maps_conv1_test",
        "feature_maps_conv2_test",
    }
    assert {p.stem for p in pngs} >= {*explained, "filters_conv2"}
    assert not {p.stem for p in pngs} & {"cams_val", "embedding_val", "calibration_val"}
    assert 'id="explain"' in page_text and 'id="confidence"' in page_text
    cal = json.loads((fashion_run / "figures" / "calibration_test.json").read_text())
    assert sum(cal["count"]) == test["n"]  # every test image in one bin
    picks = json.loads((fashion_run / "figures" / "cams_test.json").read_text())["picks"]
    assert picks == json.loads((fashion_run / "figures" / "examples_test.json").read_text())["indices"]
    for png in pngs:
        assert f'id="fig-{png.stem}"' in page_text, png.name
        assert base64.b64encode(png.read_bytes()).decode() in page_text, f"{png.name} not embedded as is"
    last = runs.read_history(fashion_run)[-1]
    env = dict(page.tables["environment-table"])
    assert env["wall time"] == f"{last['time_s']:.1f} s"  # a tiny run takes a few seconds
    assert 'id="partial-banner"' not in page_text
    assert [a for _, a, _ in page.attrs].count("href") > 5 and "nav" in page.tags  # the table of contents


def test_facade_report_tables_colours_and_predictions(facade_run):
    page_text = (facade_run / "report.html").read_text()
    page = HtmlPage(page_text)
    test = json.loads((facade_run / "eval_test.json").read_text())
    rows = page.tables["per-class-table"]
    assert _column(rows, "test AP") == [f"{v:.4f}" for v in test["ap"]] + [f"{test['map']:.4f}"]
    assert _column(rows, "test IoU") == [f"{v:.4f}" for v in test["iou"]] + [f"{test['miou']:.4f}"]
    swatches = [v for tag, k, v in page.attrs if tag == "span" and k == "style"]
    assert swatches[:5] == [f"background:{c}" for c in FACADE_HEX]  # table rows in class order and colours
    for png in (facade_run / "figures").glob("*.png"):
        assert f'id="fig-{png.stem}"' in page_text, png.name
    stems = {p.stem for p in (facade_run / "figures").glob("*.png")}
    assert stems >= {"calibration_test", "confidence_best_test", "confidence_worst_test", "class_cams_test"}
    best = json.loads((facade_run / "figures" / "best_test.json").read_text())["names"]
    assert json.loads((facade_run / "figures" / "confidence_best_test.json").read_text())["names"] == best
    cams = json.loads((facade_run / "figures" / "class_cams_test.json").read_text())
    assert cams["classes"] == list(get_task("facade").classes)
    areas = json.loads((facade_run / "predictions" / "street_areas.json").read_text())["area"]
    assert 'id="predictions"' in page_text and "data:image/jpeg;base64," in page_text
    for share in areas.values():
        assert f"{share:.2%}" in page_text
    assert "model unet, 2 epochs" in page_text  # the facade nets take no activation: none shown


@pytest.mark.parametrize("which", ["fashion_run", "facade_run"])
def test_report_is_one_self_contained_file(which, request):
    run = request.getfixturevalue(which)
    page = HtmlPage((run / "report.html").read_text())
    for tag, attr, value in page.attrs:
        if attr == "src":
            assert value.startswith("data:image/"), (tag, value[:80])
        if attr == "href" and not value.startswith(("#", "data:")):
            # Only the figures' downloads point outside the page: into figures/ beside it.
            assert value.startswith("figures/") and (run / value).is_file(), (tag, value[:80])
    assert not page.tags & {"script", "iframe", "object", "embed"}
    assert not list(run.glob(".report.html.*")), "temporary file left behind"


def test_partial_banner_and_a_run_without_evaluation(tiny_fashion, tmp_path):
    res = api.train_config(_fashion_cfg(tiny_fashion), tmp_path / "run", progress=False, max_steps=20)  # 17 per epoch
    assert not res.completed
    page = write_report(res.run_dir, partial=True).read_text()
    assert 'id="partial-banner"' in page and "interrupted at epoch 2 step 20" in page
    assert "Not evaluated yet" in page and "1 / 2" in page  # epochs done / planned


def test_broken_figure_is_one_line_error_and_keeps_the_old_report(fashion_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(fashion_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    before = (run / "report.html").read_bytes()
    (run / "figures" / "curves.png").write_bytes(b"\x89PNG torn")
    with pytest.raises(CheckpointError, match=r"curves\.png: not a readable image") as e:
        write_report(run)
    assert "\n" not in str(e.value)
    assert (run / "report.html").read_bytes() == before and not list(run.glob(".report.html.*"))


def test_compare_lists_each_run_and_the_settings_that_differ(sweep, tmp_path):
    found = find_runs([sweep])
    assert [r.name for r in found] == ["leaky_relu", "relu", "seed1"]
    assert find_runs([sweep / "relu", sweep]) == [sweep / "relu", sweep / "leaky_relu", sweep / "seed1"]
    out = write_compare([sweep], tmp_path / "compare.html")
    page_text = out.read_text()
    rows = HtmlPage(page_text).tables["compare-table"]
    assert [r[0].removesuffix("best") for r in rows[1:]] == ["leaky_relu", "relu", "seed1"]
    assert "activation" in rows[0] and "train.seed" in rows[0] and "lr" not in rows[0]  # only what differs
    for row, run in zip(rows[1:], found, strict=True):
        epochs = [r for r in runs.read_history(run) if r["kind"] == "epoch"]
        best = max(epochs, key=lambda r: r["val_acc"])
        assert row[rows[0].index("best val accuracy")] == f"{best['val_acc']:.2%}"
        test = runs.read_eval(run, "test")
        assert row[rows[0].index("test accuracy")] == (f"{test['acc']:.2%}" if test else "n/a")
    assert page_text.count("data:image/png;base64,") == 2  # the overlaid curves and the per-class differences
    assert not list(tmp_path.glob(".compare.html.*"))


def test_compare_refuses_mixed_tasks_and_non_runs(sweep, facade_run, tmp_path):
    with pytest.raises(ConfigError, match="different kinds") as e:
        write_compare([sweep / "relu", facade_run], tmp_path / "c.html")
    assert "\n" not in str(e.value) and not (tmp_path / "c.html").exists()
    with pytest.raises(ConfigError, match="nothing to compare"):
        write_compare([], tmp_path / "c.html")
    with pytest.raises(CheckpointError, match=r"no config\.yaml"):
        find_runs([tmp_path])
    with pytest.raises(CheckpointError, match="no such folder"):
        find_runs([tmp_path / "missing"])


def test_folder_classify_report_names_the_folders_classes(classify_run):
    page_text = (classify_run / "report.html").read_text()
    page = HtmlPage(page_text)
    val = json.loads((classify_run / "eval_val.json").read_text())
    rows = page.tables["per-class-table"]
    assert [r[0] for r in rows[1:-1]] == ["cat", "dog", "owl"]
    assert _column(rows, "validation accuracy") == [f"{v:.2%}" for v in val["per_class_acc"]] + [f"{val['acc']:.2%}"]
    assert "classify run</span>" in page_text and "model resnet (relu)," in page_text  # the model's default
    for png in (classify_run / "figures").glob("*.png"):
        assert base64.b64encode(png.read_bytes()).decode() in page_text, f"{png.name} not embedded as is"
    examples = json.loads((classify_run / "figures" / "examples_val.json").read_text())["indices"]
    assert list(examples) == ["cat", "dog", "owl"]  # a row of example images per class
    # RGB inputs: the first layer's kernels are drawn like the deeper ones, and captioned so.
    assert re.search(
        r"<b>Figure \d+</b>: The learned kernels of the first convolution layer on one shared scale", page_text
    )
    assert "Fashion" not in page_text and "facade" not in page_text


def test_folder_segment_report_of_grey_images(segment_run):
    page_text = (segment_run / "report.html").read_text()
    page = HtmlPage(page_text)
    test = json.loads((segment_run / "eval_test.json").read_text())
    rows = page.tables["per-class-table"]
    assert [r[0] for r in rows[1:-1]] == ["ground", "blob"]
    assert _column(rows, "test IoU") == [f"{v:.4f}" for v in test["iou"]] + [f"{test['miou']:.4f}"]
    swatches = [v for tag, k, v in page.attrs if tag == "span" and k == "style"]
    assert swatches[:2] == ["background:#1F77B4", "background:#FF0000"]  # palette, then classes.yaml's colour
    assert {"best_val", "worst_test", "confusion_test"} <= {p.stem for p in (segment_run / "figures").glob("*.png")}
    for png in (segment_run / "figures").glob("*.png"):
        assert f'id="fig-{png.stem}"' in page_text, png.name
    assert "model unet, 1 epoch" in page_text  # no activation setting: none shown


def test_compare_folder_runs_on_other_classes_leaves_out_per_class(classify_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(classify_run, other, ignore=shutil.ignore_patterns("checkpoints"))
    page_text = write_compare([classify_run, other], tmp_path / "c.html").read_text()
    assert "Test accuracy per class" in page_text  # same classes: a column per run
    cfg = runs.load_run_config(other)
    cfg.data.classes = ["x", "y", "z"]
    dump_config(cfg, other / "config.yaml")
    page_text = write_compare([classify_run, other], tmp_path / "c.html").read_text()
    assert "trained on different classes" in page_text and "Test accuracy per class" not in page_text
    row = [r for r in HtmlPage(page_text).tables["settings-table"] if r[0] == "data.classes"]
    assert row == [["data.classes", "['cat', 'dog', 'owl']", "['x', 'y', 'z']"]]


# ---------------------------------------------------------------- in a real browser (fixture `browser`: conftest.py)


def _check_in_browser(driver, page: Path, shot: Path) -> None:
    """Every image decoded, no console error, nothing wider than the window; a full-page screenshot."""
    driver.get(page.resolve().as_uri())
    images = driver.execute_script("return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
    assert images and page.read_text().count("<img ") == len(images), f"{page}: images missing from the DOM"
    broken = [alt for alt, complete, width in images if not (complete and width > 0)]
    assert not broken, f"{page}: images that did not load: {broken}"
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"{page}: console errors: {errors}"
    wide = driver.execute_script("return document.documentElement.scrollWidth > window.innerWidth")
    assert not wide, f"{page}: wider than a 1280 px window"
    png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    shot.write_bytes(base64.b64decode(png["data"]))
    print(f"screenshot: {shot}")


def test_pages_render_in_headless_chromium(browser, fashion_run, facade_run, classify_run, sweep, tmp_path):
    # Each page is opened from a folder of its own: it must not need anything next to it.
    pages = {
        "fashion": fashion_run / "report.html",
        "facade": facade_run / "report.html",
        "folder": classify_run / "report.html",  # RGB example images
        "compare": write_compare([sweep], sweep / "compare.html"),
    }
    for name, page in pages.items():
        alone = tmp_path / name / "page.html"
        alone.parent.mkdir()
        shutil.copy(page, alone)
        _check_in_browser(browser, alone, tmp_path / f"{name}.png")
