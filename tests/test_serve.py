"""`cnnlab serve`: the JSON API on real images, its refusals and limits, a folder run in a slot, the model cards
and samples, a load test. The page itself, in Chromium: tests/test_web_page.py."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import one_error_line, run_cli
from PIL import Image, ImageOps

from cnnlab import api
from cnnlab import zoo as pretrained
from cnnlab.attribution import grad_cam
from cnnlab.config import load_config
from cnnlab.data import fashion
from cnnlab.data.images import load_photo
from cnnlab.engine.checkpoint import load_model
from cnnlab.infer.classify import classify
from cnnlab.infer.segment import segment_photo
from cnnlab.plots.overlays import heat_overlay
from cnnlab.runs import load_run_config
from cnnlab.serve.app import Limits, create_app
from cnnlab.serve.samples import FACADE_ABSENT, SAMPLE_MAX_BYTES
from cnnlab.tasks import get_task

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2, which needs Python 3.11; httpx still works, and cnnlab supports 3.10.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def runs(tiny_fashion, tiny_facade, tmp_path_factory) -> dict[str, Path]:
    """A tiny run of each task: real checkpoints, so no test needs the shipped models."""
    root = tmp_path_factory.mktemp("serve")
    fashion_cfg = load_config("fashion", "seed-a", [f"data.dir={tiny_fashion}", "train.epochs=1", "train.threads=1"])
    facade_cfg = load_config(
        "facade",
        "unet",
        [f"data.dir={tiny_facade}", "data.group_key=file", "data.val_fraction=0.25", "data.test_fraction=0.25",
         "train.epochs=1", "train.batch_size=4", "augment.crop_size=32", "train.threads=1"],
    )  # fmt: skip
    return {
        "fashion": api.train_config(fashion_cfg, root / "fashion", progress=False, finish=False).run_dir,
        "facade": api.train_config(facade_cfg, root / "facade", progress=False, finish=False).run_dir,
    }


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs["fashion"], runs["facade"])) as c:
        yield c


@pytest.fixture(scope="module")
def facade_photo(real_facade) -> Path:
    return sorted(real_facade.glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def garment(real_fashion) -> tuple[bytes, torch.Tensor]:
    """The first Fashion-MNIST test image, as a PNG file's bytes and as the data set's tensor."""
    x = fashion.read_split(real_fashion, "t10k").x[0]
    return _encoded("PNG", x[0].numpy()), x


def _encoded(fmt: str, pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def _post(client, endpoint: str, data: bytes, name: str = "upload.jpg"):
    return client.post(f"/api/{endpoint}", files={"file": (name, data)})


def _from_data_uri(uri: str, fmt: str = "png") -> Image.Image:
    assert uri.startswith(f"data:image/{fmt};base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.format == fmt.upper()
    return image


def _until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


# ---------------------------------------------------------------- the API


def test_health_page_and_openapi(client, runs):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and all(m["ready"] for m in health["models"].values())
    assert health["limits"] == {"max_upload_bytes": 20 * 2**20, "max_pixels": 40_000_000, "workers": 2, "queue": 16}
    for kind, run in (("classify", "fashion"), ("segment", "facade")):  # each slot says what the page shows
        task, cfg = get_task(run), load_run_config(runs[run])
        card = {"shipped": False, "recipe": cfg.recipe, "split": task.split_description(cfg), "metrics": []}
        assert health["models"][kind] == {
            "ready": True, "name": run, "error": None, "task": run, "description": task.data_description,
            "classes": list(task.classes), "colors": list(task.colors), "card": card,
        }  # fmt: skip
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="segment-file"' in page.text and 'id="classify-file"' in page.text
    parts = {name: client.get(f"/static/{name}") for name in ("serve.js", "serve.css")}
    assert parts["serve.js"].headers["content-type"].startswith("text/javascript")
    assert parts["serve.css"].headers["content-type"].startswith("text/css")
    assert client.get("/static/other.js").status_code == 404
    for text in (page.text, *(r.text for r in parts.values())):
        assert "http://" not in text and "https://" not in text  # no CDN: the machine may be offline
        assert not re.search("fashion|facade|garment|clothing", text, re.IGNORECASE)  # it labels itself from health
    paths = client.get("/openapi.json").json()["paths"]
    # the old names are aliases, not in it
    assert set(paths) == {"/api/classify", "/api/segment", "/api/health", "/api/samples", "/api/samples/{name}"}
    assert "multipart/form-data" in paths["/api/segment"]["post"]["requestBody"]["content"]
    assert "Served: fashion, trained on Fashion-MNIST" in paths["/api/classify"]["post"]["description"]


def test_facade_segments_a_real_photo_as_the_cli_does(client, runs, facade_photo):
    r = _post(client, "segment", facade_photo.read_bytes(), facade_photo.name)
    assert r.status_code == 200, r.text
    d = r.json()
    img, _ = load_photo(facade_photo)
    assert (d["width"], d["height"]) == (img.shape[2], img.shape[1])
    classes = list(get_task("facade").classes)
    assert list(d["areas"]) == classes and sum(d["areas"].values()) == pytest.approx(1)
    assert d["colors"] == {"others": "#000000", "facade": "#0080FF", "pillar": "#80FF80", "window": "#FF8000",
                           "balcony": "#FF0000"}  # fmt: skip
    labels = _from_data_uri(d["labels_png"])
    assert labels.mode == "P" and labels.size == (d["width"], d["height"])
    counted = np.bincount(np.asarray(labels).ravel(), minlength=len(classes)) / labels.width / labels.height
    assert counted.tolist() == pytest.approx(list(d["areas"].values()))
    overlay = _from_data_uri(d["overlay_png"])
    assert overlay.mode == "RGB" and overlay.size == labels.size
    model, _ = load_model(runs["facade"])
    with torch.inference_mode():
        expected = segment_photo(model, get_task("facade"), img, [])
    assert (np.asarray(labels) == expected.labels.numpy()).mean() > 0.999
    # The page's toggle: the photo under its confidence map, the same size as the overlay.
    confidence = _from_data_uri(d["confidence_png"])
    assert confidence.mode == "RGB" and confidence.size == overlay.size
    assert np.abs(np.asarray(confidence, float) - np.asarray(overlay, float)).mean() > 5  # another picture
    # What the page blends at any opacity: the photo (JPEG), and the confidence alone at the working size
    # (a 256 px photo is worked on as it is), which confidence_png is half of.
    photo = np.asarray(_from_data_uri(d["photo_jpeg"], "jpeg"), float)
    pixels = img.permute(1, 2, 0).numpy().astype(float)
    assert photo.shape == pixels.shape and np.abs(photo - pixels).mean() < 3
    heat = _from_data_uri(d["confidence_map_png"])
    assert heat.mode == "RGB" and heat.size == (256, 256)
    assert np.abs(0.5 * pixels + 0.5 * np.asarray(heat, float) - np.asarray(confidence, float)).max() <= 1


def test_fashion_classifies_a_real_test_image_as_the_cli_does(client, runs, garment):
    data, x = garment
    r = _post(client, "classify", data, "garment.png")
    assert r.status_code == 200, r.text
    d = r.json()
    task = get_task("fashion")
    prepared, notes = task.photo_input(x)  # as any user's image is prepared
    assert d["notes"] == notes
    probabilities = [g["probability"] for g in d["top"]]
    assert len(d["top"]) == 3 and probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1
    model, _ = load_model(runs["fashion"])
    expected = classify(model, task, prepared)
    assert [g["class"] for g in d["top"]] == [c for c, _ in expected]
    assert probabilities == pytest.approx([p for _, p in expected], abs=1e-5)
    # The page's toggle: the 28 px input under the Grad-CAM of the top class, shown 8x (224 px), the CAM
    # being the one `cnnlab explain` computes for that class.
    cam_png = np.asarray(_from_data_uri(d["cam_png"]))
    assert cam_png.shape == (224, 224, 3)
    cam = grad_cam(model, task.eval_inputs(prepared[None]), task.classes.index(expected[0][0]))[0]
    assert np.array_equal(cam_png[::8, ::8], heat_overlay(prepared, cam))
    # The page shows the model's input itself, 28x28 grey.
    seen = _from_data_uri(d["input_png"])
    assert seen.mode == "L" and seen.size == (28, 28)
    assert np.array_equal(np.asarray(seen), prepared[0].numpy())


REFUSED = {
    "text named .jpg": ("segment", b"just some text", 415, "not a readable image"),
    "image format not served": ("classify", _encoded("PCX", np.zeros((64, 64, 3), np.uint8)), 415, "not a readable"),
    "truncated jpeg": ("segment", _encoded("JPEG", np.full((300, 300, 3), 90, np.uint8))[:300], 400, "not a readable"),
    "over the pixel cap": ("segment", _declared_png(8000, 6000), 400, "over the limit of 40,000,000"),
    "decompression bomb": ("classify", _declared_png(30000, 30000), 400, "decompression bomb"),
    "too small": ("segment", _encoded("PNG", np.zeros((16, 16, 3), np.uint8)), 400, "too small"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_uploads_are_refused_with_one_line(client, case):
    endpoint, data, status, message = REFUSED[case]
    r = _post(client, endpoint, data, "photo.jpg")
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert message in detail and detail.startswith("photo.jpg: ") and "\n" not in detail


def _multipart(part_headers: str, body: bytes = b"x") -> dict:
    """httpx.Client.post arguments for a hand-made multipart body, so a test controls every byte of it."""
    content = b"--b\r\n" + part_headers.encode("latin-1") + b"\r\n\r\n" + body + b"\r\n--b--\r\n"
    return {"content": content, "headers": {"content-type": "multipart/form-data; boundary=b"}}


HOW_TO_SEND = "send the image as the multipart/form-data field 'file', as curl -F file=@photo.jpg does"
MALFORMED = {  # request: (method, path, httpx arguments, status, the detail or its start)
    "no file field": ("post", "/api/segment", {"files": {"image": ("a.jpg", b"x")}}, 422,
                      f"missing the multipart field 'file'; {HOW_TO_SEND}"),
    "a JSON body": ("post", "/api/classify", {"json": {"file": "x"}}, 422,
                    f"expected a multipart/form-data body, got application/json; {HOW_TO_SEND}"),
    "the raw image": ("post", "/api/segment", {"content": b"\xff\xd8\xff", "headers": {"content-type": "image/jpeg"}},
                      422, f"expected a multipart/form-data body, got image/jpeg; {HOW_TO_SEND}"),
    "no content type": ("post", "/api/segment", {"content": b"x"}, 422,
                        f"expected a multipart/form-data body, got one with no Content-Type; {HOW_TO_SEND}"),
    "a form field": ("post", "/api/classify", {"data": {"file": "photo.jpg"}}, 422,
                     f"expected a multipart/form-data body, got application/x-www-form-urlencoded; {HOW_TO_SEND}"),
    "a part with no filename": ("post", "/api/segment", _multipart('Content-Disposition: form-data; name="file"'), 422,
                                f"the multipart field 'file' is not a file (its part has no filename); {HOW_TO_SEND}"),
    "no boundary": ("post", "/api/segment", {"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400,
                    "Missing boundary in multipart."),
    "garbled multipart": ("post", "/api/classify", {"content": b"garbage", "headers": {
                          "content-type": "multipart/form-data; boundary=b"}}, 400, "Invalid multipart data."),
    "a filename over lines": ("post", "/api/segment", _multipart(
                              'Content-Disposition: form-data; name="file"; filename="a\tb\x0bc.jpg"', b"text"), 415,
                              "a b c.jpg: not a readable image"),
    "no such path": ("get", "/api/detect", {}, 404, "Not Found"),
    "a wrong method": ("get", "/api/segment", {}, 405, "Method Not Allowed"),
}  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_requests_get_one_line_of_json(client, case):
    method, path, arguments, status, detail = MALFORMED[case]
    r = client.request(method.upper(), path, **arguments)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["detail"] and r.json()["detail"].startswith(detail), r.text
    assert len(r.json()["detail"].splitlines()) == 1
    if status == 405:
        assert r.headers["allow"] == "POST"  # as RFC 9110 asks


def test_a_bug_answers_500_with_one_line_of_json(runs, garment):
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("weights\nlost")

    app = create_app(runs["fashion"], runs["facade"])
    app.state.served["classify"].model = Broken()
    # raise_server_exceptions=False: answer as the real server does (uvicorn logs the exception, raised again)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = _post(c, "classify", garment[0])
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error: RuntimeError: weights lost; the server log has the traceback"}


def test_the_schema_says_errors_are_one_line_of_json(client):
    """What test_serve_schema.py holds the server to: every error status of an upload is an ErrorDetail."""
    openapi = client.get("/openapi.json").json()
    assert openapi["components"]["schemas"]["ErrorDetail"]["required"] == ["detail"]
    assert "HTTPValidationError" not in openapi["components"]["schemas"]  # FastAPI's list of errors
    for endpoint in ("segment", "classify"):
        responses = openapi["paths"][f"/api/{endpoint}"]["post"]["responses"]
        assert set(responses) == {"200", "400", "413", "415", "422", "500", "503"}
        for status in set(responses) - {"200"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorDetail"}, status
        assert "Retry-After" in responses["503"]["headers"]


def test_uploads_over_the_size_limit_are_413(runs):
    with TestClient(create_app(runs["fashion"], runs["facade"], Limits(max_upload_bytes=2**20))) as c:
        answers = {
            "just over": _post(c, "segment", b"\0" * (2**20 + 1)),  # the file itself, read by the endpoint
            "declared": _post(c, "segment", b"\0" * 3 * 2**20),  # refused from Content-Length, unread
            "chunked": c.post(  # no Content-Length: counted as it arrives
                "/api/segment",
                content=iter([b"\0" * 2**16] * 48),
                headers={"content-type": "multipart/form-data; boundary=x"},
            ),
        }
    for how, r in answers.items():
        assert r.status_code == 413, (how, r.text)
        assert r.json()["detail"] == "upload over the limit of 1 MB; send a smaller image"


def test_a_missing_model_answers_503_and_the_other_task_works(runs, garment, facade_photo, tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path))  # no shipped models there
    with TestClient(create_app(runs["fashion"], None)) as c:
        r = _post(c, "segment", facade_photo.read_bytes())
        assert r.status_code == 503
        assert r.json()["detail"].startswith("no segment model loaded: no shipped facade model")
        assert c.get("/api/health").json()["status"] == "degraded"
        assert _post(c, "classify", garment[0]).status_code == 200


def test_the_old_endpoint_names_answer_as_the_new_ones(client, garment, facade_photo):
    """/api/fashion and /api/facade, from before folder tasks, are the classify and segment slots."""
    for old, new, data in (("fashion", "classify", garment[0]), ("facade", "segment", facade_photo.read_bytes())):
        answers = [_post(client, endpoint, data) for endpoint in (old, new)]
        assert [a.status_code for a in answers] == [200, 200]
        assert answers[0].json() == answers[1].json()


def test_a_model_of_the_other_kind_is_refused_for_its_slot(runs):
    with TestClient(create_app(runs["facade"], runs["fashion"])) as c:
        health = c.get("/api/health").json()
        assert health["status"] == "degraded"
        refused = health["models"]["classify"]["error"]
        assert refused.endswith("a facade model, not a classify one; serve it with --segment")
        assert health["models"]["segment"]["classes"] == [] and health["models"]["segment"]["task"] is None
        r = _post(c, "segment", b"x")
    assert r.status_code == 503
    assert r.json()["detail"].endswith("a fashion model, not a segment one; serve it with --classify")


FOLDER_CLASSES = ("circle", "cross", "square")  # not Fashion-MNIST's, so an answer in them is the folder run's


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    """A `cnnlab classify` run on a generated folder of 12x12 RGB images, each class a colour of its own."""
    root = tmp_path_factory.mktemp("folder-classify")
    rng = np.random.default_rng(0)
    for c, name in enumerate(FOLDER_CLASSES):
        (root / "data" / "train" / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 60, (12, 12, 3))
            pixels[..., c] += 190
            Image.fromarray(pixels.astype(np.uint8)).save(root / "data" / "train" / name / f"{i}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE_DIR", str(root / "cache"))  # decoded arrays go here, not to ~/.cache
        overrides = [f"data.dir={root / 'data'}", "train.epochs=1", "train.threads=1"]
        cfg = load_config("classify", "small", overrides)
        return api.train_config(cfg, root / "pets", progress=False, finish=False).run_dir


def test_a_folder_classify_run_serves_its_own_classes(folder_run, runs):
    with TestClient(create_app(folder_run, runs["facade"])) as c:
        slot = c.get("/api/health").json()["models"]["classify"]
        photo = np.zeros((48, 40, 3), np.uint8)
        photo[..., 2] = 230  # blue: "square"'s colour
        r = _post(c, "classify", _encoded("PNG", photo), "blue.png")
        described = c.get("/openapi.json").json()["paths"]["/api/classify"]["post"]["description"]
    assert slot["ready"] and slot["name"] == "pets" and slot["task"] == "classify"
    assert slot["classes"] == list(FOLDER_CLASSES) and slot["colors"] == ["#1F77B4", "#FF7F0E", "#2CA02C"]
    assert slot["description"] == "the image folder data"  # its name, not the server's path
    assert "classes: circle, cross, square." in described and "Fashion" not in described
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["notes"] == ["resized 40x48 to 12x12"]  # the run's training size, not Fashion-MNIST's 28x28 grey
    assert sorted(g["class"] for g in d["top"]) == list(FOLDER_CLASSES)  # 3 classes: the top 3 are all of them
    assert sum(g["probability"] for g in d["top"]) == pytest.approx(1, abs=1e-5)
    model, cfg = load_model(folder_run)
    task = get_task(cfg)
    x, _ = task.photo_input(torch.from_numpy(photo).permute(2, 0, 1).contiguous())
    expected = classify(model, task, x)
    assert [(g["class"], g["probability"]) for g in d["top"]] == [(c, pytest.approx(p, abs=1e-5)) for c, p in expected]


def test_the_old_options_fill_the_slots(folder_run, runs, monkeypatch, capsys):
    """`cnnlab serve --fashion RUN --facade RUN`, from before folder tasks, still works; with the new name too, not."""
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **_: started.update(app=app))  # built, but not listening
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--fashion", folder_run, "--facade", runs["facade"])
    assert code == 0 and err == ""
    served = started["app"].state.served
    assert (served["classify"].name, served["classify"].task.classes) == ("pets", FOLDER_CLASSES)
    assert served["segment"].model is not None and served["segment"].task.name == "facade"
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--classify", "fashion", "--fashion", "fashion")
    one_error_line(code, err, "--fashion and --facade are the old names of --classify and --segment")


def test_a_named_model_that_cannot_serve_its_slot_stops_the_command(runs, monkeypatch, capsys):
    """`serve --classify A_FACADE_RUN` refuses with exit 2 instead of starting a slot that answers 503; a
    slot left to its default still starts with a note."""
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **_: started.update(app=app))
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--classify", runs["facade"])
    one_error_line(code, err, "a facade model, not a classify one; serve it with --segment")
    assert started == {}
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--segment", runs["facade"] / "nowhere")
    one_error_line(code, err, "nowhere")
    assert started == {}


class _Held(torch.nn.Module):
    """A model whose every forward pass waits until the test lets it go."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.entered, self.go = model, threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.go.wait(30)
        return self.model(x)


def test_a_full_queue_answers_503_with_retry_after(runs, garment):
    app = create_app(runs["fashion"], runs["facade"], Limits(workers=1, queue=1))
    held = app.state.served["classify"].model = _Held(app.state.served["classify"].model)
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        running = pool.submit(_post, c, "classify", garment[0])
        assert held.entered.wait(30)
        waiting = pool.submit(_post, c, "classify", garment[0])
        _until(lambda: app.state.gate.admitted == 2)
        refused = _post(c, "classify", garment[0])
        held.go.set()
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert refused.json()["detail"].startswith("busy: 2 requests are running or waiting")
        assert running.result().status_code == 200 and waiting.result().status_code == 200
    assert app.state.gate.admitted == 0


# ---------------------------------------------------------------- model cards and samples


def test_a_shipped_model_shows_its_card():
    """Shipped models (an app as `cnnlab serve` with no options runs it): the card's metrics, as `cnnlab models`."""
    with TestClient(create_app()) as c:
        models = c.get("/api/health").json()["models"]
    for kind, name in (("classify", "fashion"), ("segment", "facade")):
        written = json.loads((pretrained.models_dir() / name / "card.json").read_text())
        card = models[kind]["card"]
        assert (card["shipped"], card["recipe"], card["split"]) == (True, written["recipe"], written["split"])
        headline = get_task(name).headline
        assert [(m["split"], m["key"]) for m in card["metrics"]] == [(s, k) for s in ("val", "test") for k in headline]
        for m in card["metrics"]:
            label, fmt = headline[m["key"]]
            assert m["value"] == written[m["split"]][m["key"]] and m["shown"] == fmt.format(m["value"])
            assert (m["label"], m["images"]) == (label, written[m["split"]]["n"])
    assert models["classify"]["card"]["metrics"][0]["label"] == "accuracy"
    assert re.fullmatch(r"\d+\.\d\d%", models["classify"]["card"]["metrics"][0]["shown"])  # 94.60%


def test_a_run_folder_shows_its_evaluations(runs, tmp_path):
    run = shutil.copytree(runs["fashion"], tmp_path / "mine")
    (run / "eval_val.json").write_text(json.dumps({"split": "val", "n": 16, "loss": 0.5, "acc": 0.8125}))
    (run / "eval_test.json").write_text(json.dumps({"split": "test", "n": 20, "loss": 0.6, "acc": 0.75}))
    with TestClient(create_app(run, runs["facade"])) as c:
        card = c.get("/api/health").json()["models"]["classify"]["card"]
    assert card["metrics"] == [
        {"split": "val", "key": "acc", "label": "accuracy", "value": 0.8125, "shown": "81.25%", "images": 16},
        {"split": "test", "key": "acc", "label": "accuracy", "value": 0.75, "shown": "75.00%", "images": 20},
    ]
    assert (card["shipped"], card["recipe"]) == (False, "seed-a")
    (run / "eval_test.json").write_text("{ cut sh")  # a damaged card costs the card, not the model
    with TestClient(create_app(run, runs["facade"])) as c:
        slot = c.get("/api/health").json()["models"]["classify"]
        assert slot["ready"] and slot["card"] is None
        assert _post(c, "classify", _encoded("PNG", np.zeros((28, 28), np.uint8))).status_code == 200


def _samples(c) -> dict[str, list[dict]]:
    listed = c.get("/api/samples").json()
    by_slot = {kind: [s for s in listed["samples"] if s["slot"] == kind] for kind in ("classify", "segment")}
    return {**by_slot, "absent": listed["absent"]}


def test_samples_fit_each_slots_model(client, runs, tiny_facade):
    """Fashion-MNIST samples (shipped) for a fashion model; for a facade run, photos of its own test split."""
    found = _samples(client)
    assert found["absent"] == {}
    assert [s["label"] for s in found["classify"]] == list(get_task("fashion").classes)  # one of each, in order
    assert all(s["title"] == s["label"] and "MIT" in s["source"] for s in found["classify"])
    cfg = load_run_config(runs["facade"])  # the tiny run's data: 12 files, a quarter of them its test split
    test_names = get_task(cfg).load_data(cfg, progress=False)["test"].names
    assert [s["name"] for s in found["segment"]] == [f"{name}.jpg" for name in test_names[:3]]
    assert [s["title"] for s in found["segment"]] == ["test photo 1", "test photo 2", "test photo 3"]
    for sample in found["classify"] + found["segment"]:
        r = client.get(f"/api/samples/{sample['name']}")
        assert r.status_code == 200 and len(r.content) < SAMPLE_MAX_BYTES
        image = Image.open(io.BytesIO(r.content))
        assert r.headers["content-type"] == f"image/{image.format.lower()}"
        assert image.size == ((128, 128) if sample["slot"] == "classify" else (64, 64))
    first = np.asarray(Image.open(io.BytesIO(client.get(f"/api/samples/{found['segment'][0]['name']}").content)))
    photos = [np.asarray(Image.open(tiny_facade / s["name"]), float) for s in found["segment"][:2]]
    # the photo itself, re-encoded (JPEG blurs the generated noise a little), not another one
    assert np.abs(first - photos[0]).mean() < 8 < np.abs(first - photos[1]).mean()
    for name in ("nothing.png", "eecs442_0000.png", "..%2F..%2Fpyproject.toml", "..%2Fsamples.json"):
        r = client.get(f"/api/samples/{name}")
        assert r.status_code == 404, r.text
        if "%2F" not in name:  # a path of more parts is no sample's path at all: "Not Found"
            assert r.json()["detail"] == f"no sample named '{name}'; GET /api/samples lists them"
    with TestClient(create_app(runs["facade"], runs["fashion"])) as c:  # no model: no samples, and no reason
        assert _samples(c) == {"classify": [], "segment": [], "absent": {}}


def test_the_shipped_samples_are_fashion_mnist_test_images(client, real_fashion):
    """What samples/README.md says of them: the first test image of each class, dark on white, 4x, framed."""
    test = fashion.read_split(real_fashion, "t10k")
    for sample in _samples(client)["classify"]:
        index = int(re.fullmatch(r"fashion-mnist-test-(\d{4})\.png", sample["name"])[1])
        label = int(test.y[index])
        assert fashion.CLASSES[label] == sample["label"] and int((test.y[:index] == label).sum()) == 0
        image = np.asarray(Image.open(io.BytesIO(client.get(f"/api/samples/{sample['name']}").content)), int)
        made = Image.fromarray(255 - test.x[index][0].numpy()).resize((112, 112), Image.Resampling.LANCZOS)
        made = np.asarray(ImageOps.expand(made, 8, fill=255), int)
        assert image.shape == (128, 128) and np.abs(image - made).max() <= 1  # 1: another Pillow may round so


def test_facade_samples_come_from_the_data_found_here(runs, real_facade, tmp_path, monkeypatch):
    """The shipped facade model: three buildings of its test split, read from the data set, or a reason."""
    with TestClient(create_app(runs["fashion"], "facade")) as c:
        found = _samples(c)
        photos = {s["name"]: c.get(f"/api/samples/{s['name']}").content for s in found["segment"]}
    cfg = load_run_config(pretrained.models_dir() / "facade")
    cfg.data.dir = str(real_facade)
    test_names = set(get_task(cfg).load_data(cfg, progress=False)["test"].names)
    assert len(photos) == 3 and {name.removesuffix(".jpg") for name in photos} <= test_names
    assert len({int(name[-8:-4]) % 302 for name in photos}) == 3  # three buildings, not views of one
    for name, data in photos.items():
        assert len(data) < SAMPLE_MAX_BYTES
        original = np.asarray(Image.open(real_facade / name), float)
        assert np.abs(np.asarray(Image.open(io.BytesIO(data)), float) - original).mean() < 4
    monkeypatch.setenv("CNNLAB_FACADE_DIR", str(tmp_path / "nowhere"))
    with TestClient(create_app(runs["fashion"], "facade")) as c:
        assert _samples(c)["segment"] == [] and _samples(c)["absent"] == {"segment": FACADE_ABSENT}


# ---------------------------------------------------------------- the real server


@contextmanager
def serving(args: Sequence[str | Path], cwd: Path) -> Iterator[str]:
    """`cnnlab serve --port 0 ARGS` in a process of its own, as a user starts it, in `cwd`; yields its URL."""
    log = cwd.parent / f"{cwd.name}-stderr.txt"
    with open(log, "w") as err:
        cmd = [sys.executable, "-m", "cnnlab", "serve", "--port", "0", *map(str, args)]
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=err, stderr=err)
    try:
        _until(lambda: proc.poll() is not None or "Uvicorn running on" in log.read_text(), timeout=60)
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())
        assert found, log.read_text()
        yield found.group(1)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    """The tiny runs served; yields the URL and the folder it runs in."""
    cwd = tmp_path_factory.mktemp("server-cwd")
    with serving(["--classify", runs["fashion"], "--segment", runs["facade"]], cwd) as url:
        yield url, cwd


def test_load_on_loopback(server, facade_photo, garment):
    """200 uploads, 8 at a time, one in four a facade photo: every one answered, none refused."""
    url, cwd = server
    work = [("segment", facade_photo.read_bytes()) if i % 4 == 0 else ("classify", garment[0]) for i in range(200)]
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(8)]

    def one(i: int) -> tuple[int, float]:
        start = time.perf_counter()
        r = _post(clients[i % 8], work[i][0], work[i][1])
        return r.status_code, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(len(work))))
    wall = time.perf_counter() - start
    for c in clients:
        c.close()
    assert [status for status, _ in results] == [200] * len(work)
    q = statistics.quantiles([s for _, s in results], n=100, method="inclusive")
    print(f"load: {len(work)} requests, 8 at a time: p50 {q[49] * 1e3:.0f} ms, p95 {q[94] * 1e3:.0f} ms, "
          f"{len(work) / wall:.1f} requests/s")  # fmt: skip
    assert q[94] < 10  # seconds; generous, as the machine is shared
    assert not any(cwd.iterdir())  # the server wrote no file where it ran
