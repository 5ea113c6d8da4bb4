"""Issue 29 (1): a photo in which no garment stands out gets that sentence, never a ranking of guesses,
on every surface (CLI text and JSON, explain, the Python API, the server's JSON); a garment that differs
from its background only in colour is found and classified."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from cnnlab import api
from cnnlab.data.fashion import read_split

NOTHING = "no garment found: nothing stands out from the background (#d7c5a1)"
BEIGE = np.array([214, 196, 160])


def _beige(shape=(300, 400)) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0, 2, (*shape, 1))
    return np.broadcast_to(BEIGE, (*shape, 3)) + noise


@pytest.fixture(scope="module")
def photos(real_fashion, tmp_path_factory):
    """blank.png: a beige table; boot.png: a real test ankle boot in pink, of the table's own grey."""
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(_beige().round().astype(np.uint8)).save(folder / "blank.png")
    x = read_split(real_fashion, "t10k").x[0, 0].numpy()  # class 9, ankle boot
    alpha = np.asarray(Image.fromarray(x).resize((240, 240), Image.Resampling.BILINEAR), float)[..., None] / 255
    photo = _beige()
    pink = np.array([255, 175, 170])  # grey 198, the table's 197
    photo[30:270, 80:320] = alpha * pink + (1 - alpha) * photo[30:270, 80:320]
    Image.fromarray(photo.round().clip(0, 255).astype(np.uint8)).save(folder / "boot.png")
    return folder


def test_the_cli_says_no_garment_instead_of_a_ranking(photos, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "fashion", "predict", photos, "--no-progress")
    assert code == 0, err
    lines = out.splitlines()
    assert f"{photos / 'blank.png'}: {NOTHING}" in lines
    boot = next(line for line in lines if line.startswith(f"{photos / 'boot.png'}: "))
    assert boot.split(": ", 1)[1].startswith("Ankle boot ")
    assert "%" not in "".join(line for line in lines if "blank.png" in line)  # no probabilities for it
    code, out, err = run_cli(monkeypatch, capsys, "fashion", "predict", photos, "--json", "--no-progress")
    blank, boot = json.loads(out)
    assert (blank["top"], blank["nothing_found"]) == ([], NOTHING)
    assert boot["nothing_found"] is None and boot["top"][0]["class"] == "Ankle boot"
    assert "found by its colour and grey against the background (#d7c5a1)" in boot["notes"]


def test_explain_writes_nothing_for_a_photo_without_a_garment(photos, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "why"
    code, out, err = run_cli(monkeypatch, capsys, "explain", "fashion", photos / "blank.png", "-o", out_dir)
    assert code == 0, err
    assert out.splitlines()[0] == f"{photos / 'blank.png'}: {NOTHING}; nothing to explain"
    assert not out_dir.exists()


def test_the_api_returns_no_guesses_and_why(photos):
    (blank,) = api.predict("fashion", [photos / "blank.png"])
    assert blank["top"] == [] and blank["nothing_found"] == NOTHING


def test_the_server_answers_no_guesses_and_why(photos):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    with TestClient(create_app("fashion", None)) as client:
        r = client.post("/api/classify", files={"file": ("blank.png", (photos / "blank.png").read_bytes())})
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["top"] == [] and d["nothing_found"] == NOTHING
        assert d["cam_png"] is None and d["input_png"] is None
        buf = io.BytesIO((photos / "boot.png").read_bytes())
        d = client.post("/api/classify", files={"file": ("boot.png", buf)}).json()
        assert d["nothing_found"] is None and d["top"][0]["class"] == "Ankle boot"
