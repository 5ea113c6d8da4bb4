"""`cnnlab serve` against its own OpenAPI schema: schemathesis sends valid and invalid requests in process, over
ASGI (no network), and every answer must be documented, conform to the schema, and be no 500; every error
must be JSON {"detail": "one line"}."""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import pytest
import schemathesis
from PIL import Image
from schemathesis.config import SchemathesisConfig

from cnnlab.data.images import FORMATS
from cnnlab.serve.app import create_app

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2, which needs Python 3.11; httpx still works, and cnnlab supports 3.10.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 1,  # the same requests on every run: `make test` must not fail by chance
        "generation": {"mode": "all", "max-examples": 25, "database": "none"},
        # stateful needs links between operations, which this API has none of
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                   "stateful": {"enabled": False}},
        "checks": {
            # A file that fits the schema is any bytes, and random bytes are no image: 400 or 415, never 422.
            "positive_data_acceptance": {"expected-statuses": ["200", "400", "415"]},
        },
    }
)  # fmt: skip


def one_line_detail(ctx, response, case) -> None:
    """Every error answer is JSON {"detail": str} on one line, as the README promises."""
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and list(body) == ["detail"], body
    assert isinstance(body["detail"], str) and body["detail"] and "\n" not in body["detail"], body


# The app with the shipped models, as `cnnlab serve` with no options runs it. It is built at import, as
# schemathesis.pytest.from_fixture fails on pytest 9 (it reads the removed `Function._nodeid`).
APP = create_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


@schema.parametrize()
def test_answers_conform_to_the_schema(case):
    case.call_and_validate(additional_checks=[one_line_detail])


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/", 200), ("GET", "/openapi.json", 200), ("POST", "/", 405), ("POST", "/openapi.json", 405),
     ("GET", "/api", 404), ("GET", "/static/serve.js", 200), ("GET", "/static/serve.py", 404),
     ("POST", "/static/serve.css", 405)],
)  # fmt: skip
def test_paths_outside_the_schema(method, path, status):
    """The page, its script and style and the schema itself are not in the schema: their answers, and errors near
    them, by hand."""
    with TestClient(APP) as c:
        r = c.request(method, path)
    assert r.status_code == status, r.text
    if status >= 400:
        one_line_detail(None, r, None)


def _odd_images() -> dict[str, bytes]:
    """A small photo in each mode PIL writes in each format the server reads: the decoders' odd corners."""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 96, 3), np.uint8))
    found = {}
    for fmt, mode in itertools.product(FORMATS, ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV",
                                                 "I", "I;16", "F")):  # fmt: skip
        buf = io.BytesIO()
        try:
            photo.convert(mode).save(buf, format=fmt)
        except (OSError, ValueError, KeyError):
            continue  # PIL does not write this mode in this format
        found.setdefault(f"{Image.open(buf).mode} {fmt}", buf.getvalue())  # as read back: some formats convert
    return found


ODD = _odd_images()


@pytest.mark.parametrize("endpoint", ["/api/classify", "/api/segment"])
@pytest.mark.parametrize("kind", ODD)
def test_real_images_of_every_mode_get_a_documented_answer(endpoint, kind):
    """Random bytes above never decode; these do, so the 200 answers meet the schema too. None may be a 500."""
    case = schema[endpoint]["POST"].Case(body={"file": ODD[kind]}, media_type="multipart/form-data")
    response = case.call_and_validate(additional_checks=[one_line_detail])
    assert response.status_code in (200, 400), response.text
