"""`cnnlab serve`: a web page and a JSON API over both tasks' models, on this machine's CPU.

The server takes files from whoever can reach it, so it binds to 127.0.0.1 unless told otherwise, refuses a
body over the upload limit while it arrives (413), decodes only common image formats (415 for anything else)
under load_photo's pixel cap (400), and runs inference in at most `workers` threads with at most `queue`
requests waiting: past that it answers 503 with Retry-After rather than pile up work it cannot finish.
Uploads stay in memory (multipart parts over 1 MB spool to the system temp folder while parsed).
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, engine
from .data.images import MAX_PIXELS, read_photo
from .errors import CnnlabError, DataError, NotAnImageError
from .predict import MIN_SIDE as FASHION_MIN_SIDE
from .predict import classify, fashion_pixels
from .pretrained import resolve_model
from .segment import MIN_SIDE as FACADE_MIN_SIDE
from .segment import label_png, segment_photo
from .tasks import Task, get_task
from .tasks.facade import HEX

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # what cameras and browsers send; PIL reads riskier ones
OVERLAY_MAX_PX = 1024  # the page shows no more; the label map keeps the photo's full size
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a multipart body
RETRY_AFTER_S = 2  # a facade photo takes ~0.1 s of CPU: a full queue has moved on by then
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
        model, _ = engine.load_model(folder)
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
    width: int
    height: int
    areas: dict[str, float] = Field(description="Share of the photo's pixels per class, in class order.")
    colors: dict[str, str] = Field(description="The colour of each class in the overlay and label map.")
    overlay_png: str = Field(description=f"data: URI, the photo half covered by class colours, <= {OVERLAY_MAX_PX} px")
    labels_png: str = Field(description="data: URI, palette PNG at the photo's size; pixel value = class index")
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


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Not a usable image: truncated, too small, or over the pixel limit."},
    413: {"description": "Upload over the size limit."},
    415: {"description": "Not an image, or not a format the server reads."},
    503: {"description": "No model for this task, or the queue is full (then with Retry-After)."},
}


def _data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # loopback or LAN: speed matters more than bytes
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _shrunk(overlay: np.ndarray, notes: list[str]) -> Image.Image:
    image = Image.fromarray(overlay)
    if max(image.size) > OVERLAY_MAX_PX:
        image.thumbnail((OVERLAY_MAX_PX, OVERLAY_MAX_PX), Image.Resampling.LANCZOS)
        notes.append(f"overlay sent at {image.width}x{image.height}; labels_png has the full size")
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
    )
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
        return data, file.filename or "upload"

    def decode(data: bytes, name: str, mode: str, min_side: int) -> tuple[torch.Tensor, list[str]]:
        try:
            return read_photo(
                io.BytesIO(data), name, mode=mode, max_pixels=limits.max_pixels, min_side=min_side, formats=FORMATS
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
            x, notes = fashion_pixels(*decode(data, name, "L", FASHION_MIN_SIDE))
            top = classify(held.model, held.task, x, top=3)
            return FashionResult(top=[Guess(class_=c, probability=p) for c, p in top], notes=notes)

        return await gate.run(work)

    @app.post("/api/facade", responses=ERRORS)
    async def facade(file: UploadFile = File(description="A photo of a building's facade.")) -> FacadeResult:
        """Class of every pixel (others, facade, pillar, window, balcony), an overlay and the area of each class."""
        held = ready("facade")
        data, name = await read_upload(file)

        def work() -> FacadeResult:
            img, notes = decode(data, name, "RGB", FACADE_MIN_SIDE)
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
