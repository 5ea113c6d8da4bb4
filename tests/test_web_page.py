"""`cnnlab serve`'s page in headless Chromium, against `cnnlab serve` with its shipped models: uploads (file
chooser, drop, paste, samples), what the answers show, the overlay's slider and toggles, the downloads, the
error sentences, the keyboard and an axe-core accessibility check. One server and one page for the module."""

from __future__ import annotations

import base64
import io
import json
import re
import warnings

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from test_serve import _declared_png, _encoded, serving

from cnnlab import zoo as pretrained
from cnnlab.data import fashion
from cnnlab.plots.overlays import hex_to_rgb
from cnnlab.serve.app import Limits, create_app
from cnnlab.tasks import get_task

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2, which needs Python 3.11; httpx still works, and cnnlab supports 3.10.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> str:
    """`cnnlab serve --port 0`, as a user starts it: the shipped fashion and facade models."""
    with serving([], tmp_path_factory.mktemp("web-cwd")) as url:
        yield url


@pytest.fixture(scope="module")
def page(browser, site, real_facade):
    """The page, loaded and labelled from /api/health and /api/samples. The facade samples, which most tests
    use, are offered only where the facade data set is (CI has it)."""
    browser.get(site + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#classify-sample-buttons button"))
    return browser


def _wait(page, script: str, timeout: float = 30):
    """Until the JavaScript expression `script` is truthy; its value."""
    return WebDriverWait(page, timeout).until(lambda d: d.execute_script(f"return {script}"))


def _decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _blob_text(page, link_id: str) -> str:
    """The text a download link's blob: URL holds, as the browser would save it."""
    return page.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch(document.getElementById('{link_id}').href).then((r) => r.text()).then(done);"
    )


def _status(page, kind: str) -> str:
    return page.find_element(By.ID, f"{kind}-status").text


def _new_answer(page, kind: str, act) -> None:
    """Do `act`, then wait for the card's answer (its result shown, its status naming no work under way)."""
    page.execute_script(f"document.getElementById('{kind}-result').hidden = true")
    act()
    _wait(page, f"!document.getElementById('{kind}-result').hidden")


def _sample(page, kind: str, title: str) -> None:
    button = page.find_element(By.CSS_SELECTOR, f"#{kind}-sample-buttons button[aria-label='Try the sample {title}']")
    _new_answer(page, kind, button.click)


def _both_answered(page) -> None:
    """Each card showing an answer, with all its controls (earlier tests leave them so; -k may not)."""
    for kind, title in (("classify", "Coat"), ("segment", "test photo 3")):
        if page.find_element(By.ID, f"{kind}-result").get_attribute("hidden"):
            _sample(page, kind, title)


# ---------------------------------------------------------------- what the page shows


def test_the_page_labels_itself_and_shows_the_model_cards(page):
    for kind, title, name in (("classify", "Classification", "fashion"), ("segment", "Segmentation", "facade")):
        task = get_task(name)
        assert page.find_element(By.ID, f"{kind}-title").text == f"{title}: {name}"
        assert [li.text for li in page.find_elements(By.CSS_SELECTOR, f"#{kind}-legend li")] == list(task.classes)
    card = json.loads((pretrained.models_dir() / "fashion" / "card.json").read_text())
    assert page.find_element(By.ID, "classify-score").text == (
        f"Test accuracy {card['test']['acc']:.2%} ({card['test']['n']:,} images); "
        f"validation accuracy {card['val']['acc']:.2%} ({card['val']['n']:,} images)."
    )
    assert page.find_element(By.ID, "segment-score").text.startswith("Test mAP 0.")
    about = page.find_element(By.ID, "classify-about-text").get_attribute("textContent")
    assert about == f"Recipe {card['recipe']} (shipped with cnnlab). Data split: {card['split']}."
    assert len(page.find_elements(By.CSS_SELECTOR, "#classify-sample-buttons button")) == 10


def test_an_upload_shows_the_28x28_input_the_model_saw(page, real_fashion, tmp_path):
    x = fashion.read_split(real_fashion, "t10k").x[0]  # an ankle boot, as the data set has it
    (tmp_path / "boot.png").write_bytes(_encoded("PNG", x[0].numpy()))
    chooser = page.find_element(By.ID, "classify-file")
    _new_answer(page, "classify", lambda: chooser.send_keys(str(tmp_path / "boot.png")))
    seen = page.find_element(By.ID, "classify-input")
    _wait(page, "document.getElementById('classify-input').naturalWidth > 0")
    assert page.execute_script("const i = arguments[0]; return [i.naturalWidth, i.naturalHeight]", seen) == [28, 28]
    assert seen.value_of_css_property("image-rendering") == "pixelated"
    assert page.execute_script("return arguments[0].clientWidth", seen) == 168  # each input pixel 6x6 on screen
    prepared, notes = get_task("fashion").photo_input(x)
    assert np.array_equal(np.asarray(_decoded(seen.get_attribute("src"))), prepared[0].numpy())
    assert [li.text for li in page.find_elements(By.CSS_SELECTOR, "#classify-notes li")] == notes
    assert page.find_element(By.ID, "classify-input-caption").text == "What the model saw: 28×28 px"
    rows = [r.text.split("\n")[0] for r in page.find_elements(By.CSS_SELECTOR, "#top tbody tr")]
    assert len(rows) == 3 and _status(page, "classify").startswith(f"boot.png: {rows[0].rsplit(' ', 2)[0]}")
    assert page.find_element(By.ID, "classify-truth").get_attribute("hidden")  # not a sample: no label to compare
    link = page.find_element(By.ID, "classify-download-json")
    assert link.get_attribute("download") == "boot_classify.json"
    saved = json.loads(_blob_text(page, "classify-download-json"))
    assert (saved["file"], saved["model"], saved["notes"]) == ("boot.png", "fashion", notes)
    shown = [f"{g['class']} {100 * g['probability']:.1f} %" for g in saved["top"]]
    assert rows == shown


def test_an_upload_without_a_garment_says_so_instead_of_a_ranking(page, tmp_path):
    beige = np.broadcast_to(np.array([214, 196, 160], np.uint8), (120, 160, 3))
    Image.fromarray(np.ascontiguousarray(beige)).save(tmp_path / "table.png")
    chooser = page.find_element(By.ID, "classify-file")
    _new_answer(page, "classify", lambda: chooser.send_keys(str(tmp_path / "table.png")))
    said = "no garment found: nothing stands out from the background (#d6c4a0)"
    assert _status(page, "classify") == f"table.png: {said}"
    for hidden in ("classify-input-figure", "classify-explain", "top"):
        assert not page.find_element(By.ID, hidden).is_displayed(), hidden
    assert page.find_element(By.ID, "classify-preview").is_displayed()
    saved = json.loads(_blob_text(page, "classify-download-json"))
    assert saved["nothing_found"] == said and "top" not in saved
    # The next garment brings the ranking back.
    _sample(page, "classify", "Coat")
    assert (
        page.find_element(By.ID, "top").is_displayed()
        and len(page.find_elements(By.CSS_SELECTOR, "#top tbody tr")) == 3
    )


def test_a_fashion_sample_is_classified_and_compared_with_its_label(page):
    _sample(page, "classify", "Sneaker")
    truth = page.find_element(By.ID, "classify-truth").text
    best = page.find_element(By.CSS_SELECTOR, "#top tbody tr td").text
    expected = "The model agrees." if best == "Sneaker" else f"The model says {best} instead."
    assert truth == f"Its label in the data set: Sneaker. {expected}"
    assert _status(page, "classify").startswith("fashion-mnist-test-0009.png: ")


def _layer(page) -> dict:
    return page.execute_script(
        "const o = document.getElementById('overlay');"
        "return {opacity: getComputedStyle(o).opacity, src: o.src, w: o.naturalWidth, h: o.naturalHeight};"
    )


def test_a_facade_sample_with_the_slider_the_toggles_and_the_downloads(page):
    _sample(page, "segment", "test photo 1")
    _wait(page, "document.getElementById('overlay').naturalWidth > 0")
    assert _layer(page)["opacity"] == "0.5" and (_layer(page)["w"], _layer(page)["h"]) == (256, 256)
    slider = page.find_element(By.ID, "segment-opacity")
    slider.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)  # 10 % a step
    assert _layer(page)["opacity"] == "0.3" and page.find_element(By.ID, "segment-opacity-value").text == "30 %"
    assert slider.get_attribute("aria-valuetext") == "30 %"

    # The downloads: the label map as the API sent it, the overlay as the card shows it, the numbers.
    labels = _decoded(page.find_element(By.ID, "segment-download-labels").get_attribute("href"))
    assert labels.mode == "P" and labels.size == (256, 256)
    values = np.asarray(labels)
    assert set(np.unique(values)) <= set(range(5))
    shares = [float(td.text.rstrip(" %")) for td in page.find_elements(By.CSS_SELECTOR, "#areas td.num")]
    assert np.bincount(values.ravel(), minlength=5) / values.size * 100 == pytest.approx(shares, abs=0.051)
    _wait(page, "document.getElementById('segment-download-overlay').href.startsWith('data:image/png')")
    overlay = np.asarray(_decoded(page.find_element(By.ID, "segment-download-overlay").get_attribute("href")), float)
    photo = np.asarray(_decoded(page.find_element(By.ID, "segment-photo").get_attribute("src")).convert("RGB"), float)
    colours = np.array([hex_to_rgb(c) for c in get_task("facade").colors], float)[values]
    assert overlay.shape == (256, 256, 4) and (overlay[..., 3] == 255).all()  # a canvas's PNG: RGBA, opaque
    assert np.abs(overlay[..., :3] - (0.7 * photo + 0.3 * colours)).mean() < 1.5
    assert page.find_element(By.ID, "segment-download-overlay").get_attribute("download") == "eecs442_0002_overlay.png"
    saved = json.loads(_blob_text(page, "segment-download-json"))
    assert (saved["width"], saved["height"], saved["model"]) == (256, 256, "facade")
    assert [100 * a for a in saved["areas"].values()] == pytest.approx(shares, abs=0.051)
    assert "labels_png" not in saved and "photo_jpeg" not in saved

    # Original / overlay, and confidence instead of classes; the slider shows the overlay again.
    labels_src = _layer(page)["src"]
    original = page.find_element(By.ID, "segment-original")
    original.click()
    assert original.get_attribute("aria-pressed") == "true" and _layer(page)["opacity"] == "0"
    original.click()
    assert original.get_attribute("aria-pressed") == "false" and _layer(page)["opacity"] == "0.3"
    page.find_element(By.ID, "segment-explain").click()
    _wait(page, "document.getElementById('overlay').src.startsWith('data:image/png')")
    assert _layer(page)["src"] != labels_src and _layer(page)["opacity"] == "0.3"
    page.find_element(By.ID, "segment-explain").click()
    assert _layer(page)["src"] == labels_src
    original.click()
    slider.send_keys(Keys.ARROW_RIGHT)
    assert original.get_attribute("aria-pressed") == "false" and _layer(page)["opacity"] == "0.4"


# ---------------------------------------------------------------- drop and paste

DROP = """
const [target, url, name, how] = arguments;
const done = arguments[arguments.length - 1];
fetch(url).then((r) => r.blob()).then((blob) => {
  const data = new DataTransfer();
  if (name) data.items.add(new File([blob], name, {type: blob.type}));
  else data.setData("text/plain", "just text");
  const event = how === "drop" ? new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true})
                               : new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true});
  (how === "drop" ? document.getElementById(target) : document).dispatchEvent(event);
  done();
});
"""


def test_drop_and_paste(page):
    _both_answered(page)  # the paste below goes to the segment card's photo, shown once it has answered
    sample = "api/samples/fashion-mnist-test-0018.png"  # a bag
    _new_answer(page, "classify", lambda: page.execute_async_script(DROP, "classify", sample, "dropped.png", "drop"))
    assert _status(page, "classify").startswith("dropped.png: ")
    page.execute_async_script(DROP, "classify", sample, "", "drop")
    assert _status(page, "classify") == "Drop an image file from your computer here; links and text cannot be read."
    # A paste goes to the card that has the focus.
    page.execute_script("document.getElementById('segment-original').focus()")
    photo = page.execute_script("return document.querySelector('#segment-sample-buttons img').src")
    _new_answer(page, "segment", lambda: page.execute_async_script(DROP, "", photo, "pasted.jpg", "paste"))
    assert _status(page, "segment") == "pasted.jpg: 256×256 px"
    page.execute_async_script(DROP, "", photo, "", "paste")
    assert _status(page, "segment") == "The clipboard holds no image. Copy an image first, then paste it here."


# ---------------------------------------------------------------- errors


def _answers() -> dict[str, tuple[int, str, str | None]]:
    """Every error the API gives an upload from the page, as the API words it: (status, detail, Retry-After)."""
    answers = {}

    def keep(case: str, r) -> None:
        answers[case] = (r.status_code, r.json()["detail"], r.headers.get("retry-after"))

    app = create_app("fashion", "facade", Limits(max_upload_bytes=2**20))
    with TestClient(app) as c:
        post = lambda kind, data, name: c.post(f"/api/{kind}", files={"file": (name, data)})  # noqa: E731
        keep("pdf", post("classify", b"%PDF-1.4 a document", "report.pdf"))
        keep("no extension", post("classify", b"text", "notes"))
        keep("too large", post("segment", b"\0" * (2**20 + 1), "huge.jpg"))
        keep("too small", post("segment", _encoded("PNG", np.zeros((16, 16, 3), np.uint8)), "tiny.png"))
        keep("too many pixels", post("segment", _declared_png(8000, 6000), "big.png"))
        keep("a bomb", post("classify", _declared_png(30000, 30000), "bomb.png"))
        keep("a strip", post("segment", _encoded("PNG", np.zeros((40, 4000, 3), np.uint8)), "strip.png"))
        keep("truncated", post("segment", _encoded("JPEG", np.full((300, 300, 3), 90, np.uint8))[:300], "cut.jpg"))
        app.state.gate.admitted = app.state.gate.capacity  # every worker and queue place taken
        keep("busy", post("classify", b"x", "a.png"))
    with TestClient(create_app("fashion", "no-such-model")) as c:
        keep("no model", c.post("/api/segment", files={"file": ("a.jpg", b"x")}))
    return answers


SENTENCES = {
    "pdf": "That file is not an image we can read (PDF). Try a JPEG or PNG.",
    "no extension": "That file is not an image we can read. Try a JPEG or PNG.",
    "too large": "That file is too large: the limit is 20 MB. Try a smaller image.",  # the page's server's limit
    "too small": "That image is too small (16×16 px). Use one at least 32 px on each side.",
    "too many pixels": "That image has too many pixels: the limit is 40 megapixels. Shrink it, then try again.",
    "a bomb": "That image has too many pixels: the limit is 40 megapixels. Shrink it, then try again.",
    "a strip": "That image is too long and thin. Crop it to the part you want, then try again.",
    "truncated": "That image seems damaged or cut short. Save it again, or try another one.",
    "busy": "The server is busy with other images. Try again in 2 seconds.",
    "no model": "There is no model for this on the server, so it cannot run. Restart the server with one.",
}


def test_every_api_error_reads_as_a_sentence(page):
    answers = _answers()
    assert set(answers) == set(SENTENCES)
    for case, (status, detail, retry_after) in answers.items():
        name = {"pdf": "report.pdf", "no extension": "notes"}.get(case, "photo.png")
        said = page.execute_script("return errorSentence(...arguments)", status, detail, name, retry_after)
        assert said == SENTENCES[case], (case, status, detail)


def test_a_refused_upload_shows_its_sentence(page, tmp_path):
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4 not an image")
    page.find_element(By.ID, "classify-file").send_keys(str(tmp_path / "report.pdf"))
    _wait(page, "document.getElementById('classify-status').classList.contains('error')")
    assert _status(page, "classify") == SENTENCES["pdf"]
    assert page.find_element(By.ID, "classify-result").get_attribute("hidden")
    (tmp_path / "tiny.png").write_bytes(_encoded("PNG", np.zeros((16, 16, 3), np.uint8)))
    page.find_element(By.ID, "segment-file").send_keys(str(tmp_path / "tiny.png"))
    _wait(page, "document.getElementById('segment-status').classList.contains('error')")
    assert _status(page, "segment") == SENTENCES["too small"]
    # Over the size limit: said before anything is sent.
    page.execute_script("send('classify', new File([new Uint8Array(21 * 2 ** 20)], 'big.png'))")
    assert _status(page, "classify") == SENTENCES["too large"]
    _sample(page, "classify", "Bag")  # the card works again
    _sample(page, "segment", "test photo 2")


# ---------------------------------------------------------------- keyboard and accessibility


def _focused(page) -> str:
    return page.execute_script(
        "const e = document.activeElement;"
        "return e.id || e.getAttribute('aria-label') || (e.tagName === 'SUMMARY' ? e.parentNode.id : e.tagName);"
    )


def test_tab_reaches_every_control_in_order_with_a_visible_focus(page):
    """With both cards showing an answer, Tab goes down the page through each card's controls."""
    _both_answered(page)
    page.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    page.find_element(By.TAG_NAME, "body").click()
    seen, outlines = [], []
    for _ in range(60):
        ActionChains(page).send_keys(Keys.TAB).perform()
        here = _focused(page)
        if seen and here == seen[0]:
            break
        seen.append(here)
        outlines.append(page.execute_script("return getComputedStyle(document.activeElement).outlineStyle"))
    samples = [f"Try the sample {c}" for c in get_task("fashion").classes]
    expected = ["classify-about", "classify-file", *samples, "classify-explain", "classify-download-json",
                "segment-about", "segment-file", "Try the sample test photo 1", "Try the sample test photo 2",
                "Try the sample test photo 3", "segment-opacity", "segment-original", "segment-explain",
                "segment-download-overlay", "segment-download-labels", "segment-download-json"]  # fmt: skip
    assert seen[: len(expected)] == expected
    assert all(style == "solid" for style in outlines[: len(expected)]), outlines


def test_enter_and_space_operate_the_file_chooser_and_the_toggles(page):
    _both_answered(page)
    page.execute_script(
        "window.chooser = 0; document.getElementById('classify-file').addEventListener('click',"
        " (e) => { window.chooser++; e.preventDefault(); });"  # counted, and no dialog opens
    )
    page.execute_script("document.getElementById('classify-file').focus()")
    ActionChains(page).send_keys(Keys.ENTER).send_keys(Keys.SPACE).perform()
    assert page.execute_script("return window.chooser") == 2
    for key in (Keys.SPACE, Keys.ENTER):
        page.execute_script("document.getElementById('classify-explain').focus()")
        ActionChains(page).send_keys(key).perform()
        assert page.find_element(By.ID, "classify-explain").get_attribute("aria-pressed") == "true"
        _wait(page, "document.getElementById('classify-input').naturalWidth === 224")  # Grad-CAM, 8x
        ActionChains(page).send_keys(key).perform()
        _wait(page, "document.getElementById('classify-input').naturalWidth === 28")
        page.execute_script("document.getElementById('segment-original').focus()")
        ActionChains(page).send_keys(key).perform()
        assert _layer(page)["opacity"] == "0"
        ActionChains(page).send_keys(key).perform()
        assert _layer(page)["opacity"] != "0"


def test_no_serious_accessibility_violations(page):
    """axe-core (as selenium-axe-python bundles it) on the page with both answers shown."""
    from selenium_axe_python import Axe

    _both_answered(page)
    axe = Axe(page)
    axe.inject()
    found = axe.run()
    bad = [v for v in found["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, axe.report(bad)
    assert len(found["passes"]) > 20  # it looked: colour contrast, labels, alt text, ARIA and more


def test_no_console_errors_but_the_refused_uploads(page):
    errors = [e["message"] for e in page.get_log("browser") if e["level"] == "SEVERE"]
    refused = re.compile(r"api/(classify|segment) - Failed to load resource: the server responded with a status of 4")
    assert [e for e in errors if not refused.search(e)] == []
    assert not page.execute_script("return document.documentElement.scrollWidth > window.innerWidth")
