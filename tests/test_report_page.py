"""The run report as a student hands it in: numbered and captioned figures with downloads, every series of
the curves in their JSON, the learning rate, one y-axis per plot, success and failure cases from different
buildings, and a print layout whose PDF holds every figure once."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import make_facade_dir
from PIL import Image

from cnnlab import api, runs
from cnnlab.config import load_config
from cnnlab.plots import figures
from cnnlab.tasks.segment import SegmentTask, case_groups

FIGURE = re.compile(r'<figure id="fig-([\w-]+)"[^>]*>.*?<figcaption><b>(Figure \d+)</b>: (.*?) <span class="dl">', re.S)


@pytest.fixture(scope="module")
def fashion_run(tiny_fashion, tmp_path_factory) -> Path:
    over = [f"data.dir={tiny_fashion}", "train.epochs=2", "train.batch_size=16", "train.threads=1",
            "optim.schedule=onecycle", "optim.warmup_fraction=0.3", "explain.figures=false"]  # fmt: skip
    cfg = load_config("fashion", "seed-a", over)
    return api.train_config(cfg, tmp_path_factory.mktemp("fashion") / "run", progress=False).run_dir


@pytest.fixture(scope="module")
def facade_run(tmp_path_factory) -> Path:
    """24 synthetic facades in 12 groups of two (index-mod:12): the test split holds 6 groups, 12 images."""
    data = make_facade_dir(tmp_path_factory.mktemp("facade-data"), n=24, size=48)
    over = [f"data.dir={data}", "data.group_key=index-mod:12", "data.val_fraction=0.25", "data.test_fraction=0.5",
            "train.epochs=1", "train.batch_size=6", "augment.crop_size=32", "train.threads=1"]  # fmt: skip
    cfg = load_config("facade", "unet", over)
    return api.train_config(cfg, tmp_path_factory.mktemp("facade") / "run", progress=False).run_dir


def _figures(page: str) -> list[tuple[str, str, str]]:
    """(figure name, "Figure N", caption) in page order."""
    return FIGURE.findall(page)


@pytest.mark.parametrize("which", ["fashion_run", "facade_run"])
def test_figures_are_numbered_in_page_order_captioned_and_downloadable(which, request):
    run = request.getfixturevalue(which)
    page = (run / "report.html").read_text()
    shown = _figures(page)
    pngs = {p.stem for p in (run / "figures").glob("*.png")}
    assert {name for name, _, _ in shown} == pngs and len(shown) == len(pngs) == page.count("<figure id=")
    assert [number for _, number, _ in shown] == [f"Figure {i}" for i in range(1, len(shown) + 1)]
    numbers = {name: number for name, number, _ in shown}
    for name, _, caption in shown:
        assert len(caption) > 40 and "[" not in caption and "not in this report" not in caption, (name, caption)
        for ext in ("pdf", "png", "json"):
            assert f'<a href="figures/{name}.{ext}" download>' in page, (name, ext)
        assert (run / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF-")
        assert json.loads((run / "figures" / f"{name}.json").read_text())
    # References name the right figures and tables.
    captions = {name: caption for name, _, caption in shown}
    assert "(the numbers of Table 1)" in captions.get("per_class_accuracy", captions.get("ap_iou_test"))
    if which == "fashion_run":
        assert "<b>Table 1</b>: Accuracy of each class on the validation and test sets" in page
    else:
        assert f"failure cases of {numbers['worst_test']}:" in captions["confidence_worst_test"]
        assert "<b>Table 1</b>: AP and IoU of each class on the validation and test sets" in page
    assert re.search(r"<b>Table 2</b>: Training and validation metrics after each epoch", page)
    assert re.search(r'<table id="architecture-table" class="arch"><caption><b>Table 3</b>', page)
    assert "download links (PDF, PNG, numbers) point into figures/" in page


def test_curves_json_holds_every_series_drawn_and_the_learning_rate(fashion_run):
    history = runs.read_history(fashion_run)
    batches = [r for r in history if r["kind"] == "batch"]
    epochs = [r for r in history if r["kind"] == "epoch"]
    curves = json.loads((fashion_run / "figures" / "curves.json").read_text())
    per_epoch, n = epochs[0]["step"], len(batches)
    assert per_epoch == 34 and n == 68  # 540 training images (600 less 10% validation) in batches of 16
    window = curves["smoothing_window"]
    assert window == 3  # a tenth of an epoch
    loss, acc = [r["loss"] for r in batches], [r["acc"] for r in batches]
    assert curves["batch_step"] == list(range(1, n + 1)) and curves["batch_loss"] == loss and curves["batch_acc"] == acc
    # Moving means over 3 batches, drawn at the last batch of each window.
    assert curves["smoothed_loss"] == pytest.approx([sum(loss[i : i + 3]) / 3 for i in range(n - 2)])
    assert curves["smoothed_acc"] == pytest.approx([sum(acc[i : i + 3]) / 3 for i in range(n - 2)])
    assert curves["smoothed_epoch"] == pytest.approx([s / per_epoch for s in range(3, n + 1)])
    assert curves["epoch"] == [1, 2] and curves["train_loss"] == [r["train_loss"] for r in epochs]
    assert curves["val_acc"] == [r["val_acc"] for r in epochs]
    plotted = {key for plot in curves["plots"] for key in plot["series"]}
    assert plotted == {"smoothed_loss", "train_loss", "val_loss", "smoothed_acc", "train_acc", "val_acc"}
    assert all(len(curves[k]) == (n - 2 if k.startswith("smoothed") else 2) for k in plotted)
    lr = json.loads((fashion_run / "figures" / "learning_rate.json").read_text())
    logged = [r["lr"] for r in batches]
    assert curves["batch_lr"] == lr["lr"] == logged and lr["step"] == curves["batch_step"]
    # One cycle: up to the peak over the first 30% of the steps, then down.
    peak = max(range(n), key=logged.__getitem__)
    assert lr["schedule"] == "onecycle" and logged[peak] == pytest.approx(1e-3, rel=0.05) and 15 <= peak <= 25
    assert logged[0] < logged[peak] / 5 and logged[-1] < logged[peak] / 5


def test_facade_curves_have_one_axis_per_plot(facade_run, monkeypatch, tmp_path):
    curves = json.loads((facade_run / "figures" / "curves.json").read_text())
    assert [(p["title"], p["ylabel"]) for p in curves["plots"]] == [
        ("Loss", "loss"), ("Pixel accuracy", "pixel accuracy"), ("Validation mean AP", "mean AP")
    ]  # fmt: skip
    assert curves["plots"][2]["series"] == ["val_map"] and len(curves["val_map"]) == 1
    closed = []
    monkeypatch.setattr(figures, "save", lambda fig, *args, **kwargs: closed.append(fig))
    figures.plot_curves(runs.read_history(facade_run), tmp_path / "curves", metric="map", metric_label="mean AP")
    axes = closed[0].axes
    assert len(axes) == 3  # a twin axis would be a fourth
    assert all(ax.get_shared_x_axes().get_siblings(ax) == [ax] for ax in axes)
    assert [ax.get_ylabel() for ax in axes] == ["loss", "pixel accuracy", "mean AP"]


def test_cases_come_from_distinct_groups():
    scores = torch.tensor([0.9, 0.85, 0.8, 0.1, 0.15, 0.5, 0.6, 0.2])
    groups = [0, 0, 0, 1, 1, 2, 3, 4]  # three views of building 0, two of building 1
    # Five groups: two cases each; without groups they were images 0 and 1 (one building), 3 and 4.
    assert SegmentTask.cases(scores, groups) == {"best": [0, 6], "worst": [3, 7]}
    assert SegmentTask.cases(scores, range(8)) == {"best": [0, 1, 2], "worst": [3, 4, 7]}
    assert SegmentTask.cases(torch.tensor([0.4]), [0]) == {"best": [0], "worst": [0]}
    names = ["eecs442_0001", "eecs442_0303", "eecs442_0605", "eecs442_0002"]
    assert case_groups("index-mod:302", names) == [1, 1, 1, 2]
    assert case_groups("index-mod:302", ["photo", "street"]) == [0, 1]  # names without the key: one each
    assert case_groups(None, names) == [0, 1, 2, 3]


def test_facade_run_cases_show_different_buildings(facade_run):
    for split, n in (("test", 3), ("val", 1)):
        for kind in ("best", "worst"):
            names = json.loads((facade_run / "figures" / f"{kind}_{split}.json").read_text())["names"]
            assert len(names) == n and len({int(name[-4:]) % 12 for name in names}) == n, (split, kind, names)
        assert json.loads((facade_run / "figures" / f"best_{split}.json").read_text())["image_size"] == [48, 48]
    arch = json.loads((facade_run / "figures" / "architecture.json").read_text())
    assert arch["input"] == [3, 48, 48] and arch["size_source"] == "the size of the test images"


def test_figures_are_150_dpi_and_shown_at_their_110_dpi_size(fashion_run):
    png = fashion_run / "figures" / "curves.png"
    with Image.open(png) as im:
        assert im.info["dpi"][0] == pytest.approx(150, abs=0.05)  # pixels per metre, rounded
        assert im.size == (round(9.2 * 150), round(3.8 * 150))  # two plots of 4.6 x 3.8 inches
    page = (fashion_run / "report.html").read_text()
    tag = re.search(r'<figure id="fig-curves"[^>]*><img src="[^"]+" alt="curves" width="(\d+)" height="(\d+)"', page)
    assert (int(tag[1]), int(tag[2])) == (round(9.2 * 110), round(3.8 * 110))


# ---------------------------------------------------------------- printed (fixture `browser`: conftest.py)


def _pdf_images(pdf: bytes) -> tuple[int, list[int]]:
    """(pages, images drawn on each page), looking into form XObjects too."""
    from pypdf import PdfReader

    def count(obj) -> int:
        xobjects = obj["/Resources"].get("/XObject", {}) if "/Resources" in obj else {}
        inner = [x.get_object() for x in xobjects.values()]
        return sum(1 if x["/Subtype"] == "/Image" else count(x) for x in inner if x["/Subtype"] in ("/Image", "/Form"))

    reader = PdfReader(io.BytesIO(pdf))
    return len(reader.pages), [count(p) for p in reader.pages]


@pytest.mark.parametrize("which", ["fashion_run", "facade_run"])
def test_printed_report_holds_every_figure_once(which, request, browser, tmp_path):
    from pypdf import PdfReader
    from selenium.webdriver.common.print_page_options import PrintOptions

    run = request.getfixturevalue(which)
    page = run / "report.html"
    browser.get(page.resolve().as_uri())
    options = PrintOptions()
    options.page_width, options.page_height = 21.0, 29.7  # A4, in cm
    pdf = base64.b64decode(browser.print_page(options))
    (tmp_path / f"{which}.pdf").write_bytes(pdf)
    text = page.read_text()
    images = text.count("<img ")
    pages, per_page = _pdf_images(pdf)
    # Each image on exactly one page: none left out, none cut in two (it would be drawn on both pages).
    assert sum(per_page) == images == len(_figures(text)), per_page
    assert images / 3 < pages <= images + 6, (pages, per_page)
    printed = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    assert "numbers (JSON)" in text and "numbers (JSON)" not in printed  # download links are for the screen
    assert "Table 2: Training and validation metrics after each epoch" in printed  # the folded table unfolded
    assert f"Figure {images}:" in printed
