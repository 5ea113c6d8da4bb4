"""`cnnlab serve`: a web page and a JSON API over a classifier and a segmenter, on this machine's CPU.

The server has two slots: /api/classify takes any classify-kind model (the shipped `fashion`, or a run on
the user's own folder) and /api/segment any segment-kind one (`facade` or a folder run). Nothing here knows
a dataset: classes, colours and how a photo becomes the model's input come from each model's `Task`, and
/api/health hands them to the page, which labels itself from them.

The server takes files from whoever can reach it, so it binds to 127.0.0.1 unless told otherwise, refuses a
body over the upload limit while it arrives (413), decodes only common image formats (415 for anything else)
under load_photo's pixel cap (400), and runs inference in at most `workers` threads with at most `queue`
requests waiting: past that it answers 503 with Retry-After rather than pile up work it cannot finish.
Uploads stay in memory (multipart parts over 1 MB spool to the system temp folder while parsed).
Every error answer, whatever raised it, is JSON {"detail": "one line"}, as the OpenAPI schema says.

Beside this module: models.py (the slots' models and their cards), results.py (what an answer holds),
samples.py (images to try the page with), schema.py (the answers' shapes), and the page itself, page.html
with static/serve.js and static/serve.css, which loads nothing from outside.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import torch
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..data.images import MAX_PIXELS, read_photo
from ..errors import DataError, NotAnImageError
from .models import Served, load_served, model_status
from .results import Decode, classified, segmented
from .samples import SampleFile, find_samples
from .schema import BUG, ERRORS, NO_SAMPLE, TOP, ClassifyResult, Health, Samples, SegmentResult

MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a multipart body
RETRY_AFTER_S = 2  # a facade photo takes ~0.1 s of CPU: a full queue has moved on by then
ALIASES = {"fashion": "classify", "facade": "segment"}  # the endpoints' names from before folder tasks, kept
CLASSIFY_DOC = f"The {TOP} most likely classes of an image, made like the model's training images first (size, colour)."
SEGMENT_DOC = "The class of every pixel of a photo, an overlay in the class colours and the area of each class."
STATIC = {"serve.js": "text/javascript", "serve.css": "text/css"}  # the page's parts, in static/ beside this module
HOW_TO_SEND = "send the image as the multipart/form-data field 'file', as curl -F file=@photo.jpg does"
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = MAX_PIXELS
    workers: int = 2  # inferences at once: one per core of the 2-core CPU
    queue: int = 16  # requests waiting for a worker before new ones get 503


class Gate:
    """At most `workers` inferences run at once, each in a thread, and at most `queue` more wait for one."""

    def __init__(self, workers: int, queue: int):
        self.slots = threading.Semaphore(workers)
        self.capacity = workers + queue
        self.admitted = 0  # running or waiting; only the event loop's thread changes it, so it needs no lock

    async def run(self, fn: Callable[[], T]) -> T:
        if self.admitted >= self.capacity:
            raise HTTPException(
                503,
                f"busy: {self.admitted} requests are running or waiting; try again in {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.admitted += 1
        try:
            return await run_in_threadpool(self._locked, fn)
        finally:
            self.admitted -= 1

    def _locked(self, fn: Callable[[], T]) -> T:
        with self.slots, torch.inference_mode():
            return fn()


class BodyLimit:
    """413 as soon as a request body passes `limit` bytes, by its Content-Length or counted as it arrives,
    so an oversized upload is neither read whole nor spooled to disk."""

    def __init__(self, app: ASGIApp, limit: int, message: str):
        self.app, self.limit, self.message = app, limit, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse({"detail": self.message}, 413)(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self.message)  # FastAPI hands this on from its body parsing as it is
            return message

        await self.app(scope, counted, send)


def _shown(filename: str | None) -> str:
    """An upload's name as messages show it: one short line, since the client chose it."""
    return " ".join((filename or "").split())[:100] or "upload"


def _invalid_upload(errors: Sequence[Any], content_type: str) -> str:
    """One line for FastAPI's list of validation errors; all endpoints take one multipart field, `file`."""
    kind = content_type.split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        return f"expected a multipart/form-data body, got {kind or 'one with no Content-Type'}; {HOW_TO_SEND}"
    if any(e["loc"] != ("body", "file") for e in errors):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors) + f"; {HOW_TO_SEND}"
    if any(e["type"] == "missing" for e in errors):
        return f"missing the multipart field 'file'; {HOW_TO_SEND}"
    return f"the multipart field 'file' is not a file (its part has no filename); {HOW_TO_SEND}"


def _answer_errors_in_one_line(app: FastAPI) -> None:
    """Give FastAPI's own errors (a list of validation errors, a bare 500 text) the shape of the rest."""

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _invalid_upload(exc.errors(), request.headers.get("content-type", ""))}, 422)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(exc.detail).split())}, exc.status_code, headers=exc.headers)

    async def crash(request: Request, exc: Exception) -> JSONResponse:
        # Starlette raises the exception again after this answer is sent, so uvicorn logs its traceback.
        what = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        return JSONResponse({"detail": f"internal error: {what}; the server log has the traceback"}, 500)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crash)


def _now_served(held: Served) -> str:
    """The slot's model, for its endpoint's description in /docs (the schema says what this server runs)."""
    if held.task is None:
        return f" No model is loaded: {held.error}"
    return f" Served: {held.name}, trained on {held.task.data_description}; classes: {', '.join(held.task.classes)}."


def _add_page(app: FastAPI) -> None:
    """The page and its script and style sheet: files of the package, read once, nothing from outside."""
    folder = files(__package__)
    page = folder.joinpath("page.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    static = {name: (folder.joinpath("static", name).read_bytes(), media) for name, media in STATIC.items()}

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, "Not Found")
        return Response(static[name][0], media_type=static[name][1])


def _add_samples(app: FastAPI, served: dict[str, Served]) -> None:
    """GET /api/samples lists the images each slot's model can be tried on; /api/samples/{name} answers one."""
    found: dict[str, SampleFile] = {}
    absent = {}
    for kind, held in served.items():
        samples, why = find_samples(held.task, held.config)
        found |= {s.info.name: s for s in samples}
        if why:
            absent[kind] = why
    listed = Samples(samples=[s.info for s in found.values()], absent=absent)

    @app.get("/api/samples")
    def samples() -> Samples:
        """Sample images for the served models, for a first try without an image of one's own."""
        return listed

    # The names are listed in the schema, so a client (and schemathesis) knows which exist.
    name_schema = {"enum": sorted(found)} if found else None

    @app.get(
        "/api/samples/{name}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "The image."}, **NO_SAMPLE},
    )
    def sample(
        name: str = PathParam(description="A name GET /api/samples lists.", json_schema_extra=name_schema),
    ) -> Response:
        """One sample image, as a file."""
        if name not in found:
            raise HTTPException(404, f"no sample named {_shown(name)!r}; GET /api/samples lists them")
        return Response(found[name].data, media_type=found[name].media_type)


def create_app(
    classify_model: str | Path | None = None, segment_model: str | Path | None = None, limits: Limits = Limits()
) -> FastAPI:
    """The app with both slots' models loaded once, here: a run folder or shipped model name of the slot's kind,
    None for the shipped `fashion` and `facade`. A slot without a model answers 503 until restarted."""
    served = {"classify": load_served(classify_model, "classify"), "segment": load_served(segment_model, "segment")}
    gate = Gate(limits.workers, limits.queue)
    too_large = f"upload over the limit of {limits.max_upload_bytes / 2**20:g} MB; send a smaller image"
    app = FastAPI(
        title="cnnlab",
        version=__version__,
        description="Classification and segmentation of uploaded images by the models this server was started "
        "with; /api/health names them, with their classes.",
        responses=BUG,
    )
    _answer_errors_in_one_line(app)
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes + MULTIPART_SLACK, message=too_large)
    app.state.served, app.state.gate = served, gate

    def ready(kind: str) -> Served:
        if served[kind].model is None:
            raise HTTPException(503, f"no {kind} model loaded: {served[kind].error}")
        return served[kind]

    async def read_upload(file: UploadFile) -> tuple[bytes, str]:
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, too_large)
        return data, _shown(file.filename)

    def decode(data: bytes, name: str, mode: str, min_side: int, max_side: int) -> tuple[torch.Tensor, list[str]]:
        try:
            return read_photo(
                io.BytesIO(data), name, mode=mode, max_pixels=limits.max_pixels, min_side=min_side, max_side=max_side
            )
        except NotAnImageError as e:
            raise HTTPException(415, str(e)) from None
        except DataError as e:
            raise HTTPException(400, str(e)) from None

    async def answer(kind: str, file: UploadFile, work: Callable[[Served, Decode], T]) -> T:
        """Check the slot, read the upload, then decode and infer in a worker thread (`work` decodes by the task)."""
        held = ready(kind)
        data, name = await read_upload(file)
        return await gate.run(lambda: work(held, partial(decode, data, name)))

    _add_page(app)
    _add_samples(app, served)

    @app.get("/api/health")
    def health() -> Health:
        return Health(
            status="ok" if all(s.model is not None for s in served.values()) else "degraded",
            models={kind: model_status(s) for kind, s in served.items()},
            limits=asdict(limits),
            busy=gate.admitted,
        )

    @app.post("/api/classify", responses=ERRORS, description=CLASSIFY_DOC + _now_served(served["classify"]))
    async def classify_image(file: UploadFile = File(description="An image to classify.")) -> ClassifyResult:
        """The classify slot (its schema description is CLASSIFY_DOC and the model served)."""
        return await answer("classify", file, classified)

    @app.post("/api/segment", responses=ERRORS, description=SEGMENT_DOC + _now_served(served["segment"]))
    async def segment_image(file: UploadFile = File(description="A photo to segment.")) -> SegmentResult:
        """The segment slot (its schema description is SEGMENT_DOC and the model served)."""
        return await answer("segment", file, segmented)

    for old, kind in ALIASES.items():  # same answers; left out of the schema so it names each operation once
        endpoint = {"classify": classify_image, "segment": segment_image}[kind]
        app.post(f"/api/{old}", responses=ERRORS, include_in_schema=False)(endpoint)
    return app
