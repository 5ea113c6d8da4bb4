"""`cnnlab serve`: a web page and a JSON API over both tasks' models, on this machine's CPU.

The server takes files from whoever can reach it, so it binds to 127.0.0.1 unless told otherwise, refuses a
body over the upload limit while it arrives (413), decodes only common image formats (415 for anything else)
under load_photo's pixel cap (400), and runs inference in at most `workers` threads with at most `queue`
requests waiting: past that it answers 503 with Retry-After rather than pile up work it cannot finish.
Uploads stay in memory (multipart parts over 1 MB spool to the system temp folder while parsed).
Every error answer, whatever raised it, is JSON {"detail": "one line"}, as the OpenAPI schema says.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, runs
from .data.images import MAX_PIXELS, read_photo
from .errors import CnnlabError, DataError, NotAnImageError
from .predictions import MAX_SIDE as FASHION_MAX_SIDE
from .predictions import MIN_SIDE as FASHION_MIN_SIDE
from .predictions import classify, fashion_pixels
from .pretrained import resolve_model
from .segment import MAX_SIDE as FACADE_MAX_SIDE
from .segment import MIN_SIDE as FACADE_MIN_SIDE
from .segment import label_png, segment_photo
from .tasks import Task, get_task
from .tasks.facade import HEX

OVERLAY_MAX_PX = 1024  # the page shows no more; the label map keeps the decoded photo's size
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a multipart body
RETRY_AFTER_S = 2  # a facade photo takes ~0.1 s of CPU: a full queue has moved on by then
HOW_TO_SEND = "send the image as the multipart/form-data field 'file', as curl -F file=@photo.jpg does"
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = MAX_PIXELS
    workers: int = 2  # inferences at once: one per core of the 2-core CPU
    queue: int = 16  # requests waiting for a worker before new ones get 503


@dataclass
class Served:
    """One task's model as the server holds it, or why it holds none."""

    task: Task
    model: torch.nn.Module | None = None
    name: str | None = None
    error: str | None = None


def load_served(ref: str | Path | None, task: str) -> Served:
    """A shipped model name, a run folder or None (the task's default); a missing model is an error, not a crash."""
    try:
        folder = resolve_model(ref, task)
        model, _ = runs.load_model(folder)
    except CnnlabError as e:
        return Served(get_task(task), error=str(e))
    return Served(get_task(task), model, Path(folder).name)


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


class Guess(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    probability: float


class FashionResult(BaseModel):
    top: list[Guess] = Field(description="The three most likely classes, most likely first.")
    notes: list[str] = Field(description="What was done to the image to make it look like Fashion-MNIST.")


class FacadeResult(BaseModel):
    width: int = Field(description=f"Of the photo as segmented: its own size, or at most {FACADE_MAX_SIDE} px.")
    height: int
    areas: dict[str, float] = Field(description="Share of the photo's pixels per class, in class order.")
    colors: dict[str, str] = Field(description="The colour of each class in the overlay and label map.")
    overlay_png: str = Field(description=f"data: URI, the photo half covered by class colours, <= {OVERLAY_MAX_PX} px")
    labels_png: str = Field(
        description=f"data: URI, palette PNG at the photo's size (<= {FACADE_MAX_SIDE} px); pixel value = class index"
    )
    notes: list[str]


class ModelStatus(BaseModel):
    ready: bool
    name: str | None = Field(description="The model's folder name when ready.")
    error: str | None = Field(description="Why there is no model.")


class Health(BaseModel):
    status: str = Field(description="ok when both models are loaded, else degraded")
    models: dict[str, ModelStatus]
    limits: dict[str, int]
    busy: int = Field(description="Requests running or waiting for a worker now.")


class ErrorDetail(BaseModel):
    """The body of every error answer."""

    detail: str = Field(description="What went wrong and what to do about it, in one line.")


def _error(description: str, **more: Any) -> dict[str, Any]:
    return {"model": ErrorDetail, "description": description, **more}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Not a usable image (truncated, too small, over the pixel limit), or a malformed multipart body."),
    413: _error("Upload over the size limit."),
    415: _error("Not an image, or not a format the server reads."),
    422: _error("Not a multipart/form-data body with a file in the field 'file'."),
    503: _error(
        "No model for this task, or the queue is full (then with Retry-After).",
        headers={
            "Retry-After": {"description": "Seconds to wait, when the queue is full.", "schema": {"type": "integer"}}
        },
    ),
}
BUG = {500: _error("A bug in the server; its log has the traceback.")}


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


def _data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # loopback or LAN: speed matters more than bytes
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _shrunk(overlay: np.ndarray, notes: list[str]) -> Image.Image:
    image = Image.fromarray(overlay)
    if max(image.size) > OVERLAY_MAX_PX:
        image.thumbnail((OVERLAY_MAX_PX, OVERLAY_MAX_PX), Image.Resampling.LANCZOS)
        notes.append(f"overlay sent at {image.width}x{image.height}; labels_png has the size segmented")
    return image


def create_app(
    fashion_model: str | Path | None = None, facade_model: str | Path | None = None, limits: Limits = Limits()
) -> FastAPI:
    """The app with both models loaded once, here; a task without a model answers 503 until restarted."""
    served = {"fashion": load_served(fashion_model, "fashion"), "facade": load_served(facade_model, "facade")}
    gate = Gate(limits.workers, limits.queue)
    too_large = f"upload over the limit of {limits.max_upload_bytes / 2**20:g} MB; send a smaller image"
    app = FastAPI(
        title="cnnlab",
        version=__version__,
        description="Fashion-MNIST classification and facade segmentation of uploaded images.",
        responses=BUG,
    )
    _answer_errors_in_one_line(app)
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes + MULTIPART_SLACK, message=too_large)
    app.state.served, app.state.gate = served, gate

    def ready(task: str) -> Served:
        if served[task].model is None:
            raise HTTPException(503, f"no {task} model loaded: {served[task].error}")
        return served[task]

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

    page = files(__package__).joinpath("serve.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/api/health")
    def health() -> Health:
        return Health(
            status="ok" if all(s.model is not None for s in served.values()) else "degraded",
            models={t: ModelStatus(ready=s.model is not None, name=s.name, error=s.error) for t, s in served.items()},
            limits=asdict(limits),
            busy=gate.admitted,
        )

    @app.post("/api/fashion", responses=ERRORS)
    async def fashion(file: UploadFile = File(description="Any photo of one garment, shoe or bag.")) -> FashionResult:
        """The 3 most likely Fashion-MNIST classes of an image, made 28x28 grey first."""
        held = ready("fashion")
        data, name = await read_upload(file)

        def work() -> FashionResult:
            x, notes = fashion_pixels(*decode(data, name, "L", FASHION_MIN_SIDE, FASHION_MAX_SIDE))
            top = classify(held.model, held.task, x, top=3)
            return FashionResult(top=[Guess(class_=c, probability=p) for c, p in top], notes=notes)

        return await gate.run(work)

    @app.post("/api/facade", responses=ERRORS)
    async def facade(file: UploadFile = File(description="A photo of a building's facade.")) -> FacadeResult:
        """Class of every pixel (others, facade, pillar, window, balcony), an overlay and the area of each class."""
        held = ready("facade")
        data, name = await read_upload(file)

        def work() -> FacadeResult:
            img, notes = decode(data, name, "RGB", FACADE_MIN_SIDE, FACADE_MAX_SIDE)
            seg = segment_photo(held.model, held.task, img, notes)
            return FacadeResult(
                width=img.shape[2],
                height=img.shape[1],
                areas=seg.area,
                colors=dict(zip(held.task.classes, HEX, strict=True)),
                overlay_png=_data_uri(_shrunk(seg.overlay, notes)),
                labels_png=_data_uri(label_png(seg.labels)),
                notes=notes,
            )

        return await gate.run(work)

    return app
