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
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
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
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, runs
from .config import KINDS
from .data.images import MAX_PIXELS, read_photo, shrink
from .errors import CheckpointError, CnnlabError, DataError, NotAnImageError
from .interpret import grad_cam
from .predictions import classify
from .pretrained import resolve_any, resolve_model
from .report.overlays import heat_overlay
from .runtime import Runtime, inference_runtime
from .segment import MAX_SIDE as SEGMENT_MAX_SIDE
from .segment import MAX_WORK_SIDE, label_png, segment_photo
from .segment import MIN_SIDE as SEGMENT_MIN_SIDE
from .serve_schema import (
    BUG,
    ERRORS,
    OVERLAY_MAX_PX,
    TOP,
    ClassifyResult,
    Guess,
    Health,
    ModelStatus,
    SegmentResult,
)
from .tasks import Task, get_task

CAM_MIN_PX = 224  # px: the class activation map sent back is at least this large
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a multipart body
RETRY_AFTER_S = 2  # a facade photo takes ~0.1 s of CPU: a full queue has moved on by then
DEFAULT_MODELS = {"classify": "fashion", "segment": "facade"}  # each slot's shipped model when none is given
ALIASES = {"fashion": "classify", "facade": "segment"}  # the endpoints' names from before folder tasks, kept
CLASSIFY_DOC = f"The {TOP} most likely classes of an image, made like the model's training images first (size, colour)."
SEGMENT_DOC = "The class of every pixel of a photo, an overlay in the class colours and the area of each class."
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
    """One slot's model as the server holds it, or why it holds none."""

    kind: str  # the slot: "classify" or "segment"
    task: Task | None = None
    model: torch.nn.Module | None = None
    name: str | None = None
    error: str | None = None
    runtime: Runtime = field(default_factory=inference_runtime)
    # Grad-CAM hooks a layer of the shared model while it runs: no other request may use that model then.
    lock: threading.Lock = field(default_factory=threading.Lock)


def resolve_slot(ref: str | Path | None, kind: str) -> Path:
    """The folder of a run or shipped model of `kind` (any dataset), or of the slot's default shipped model."""
    if ref is None:
        return resolve_model(None, DEFAULT_MODELS[kind])
    folder = resolve_any(ref)
    found = runs.load_run_config(folder).task
    if KINDS[found] != kind:
        raise CheckpointError(f"{ref}: a {found} model, not a {kind} one; serve it with --{KINDS[found]}")
    return folder


def load_served(ref: str | Path | None, kind: str) -> Served:
    """A slot's model from a shipped name, a run folder or None (the default); a missing one is an error, not a
    crash, so the other slot still serves."""
    try:
        folder = resolve_slot(ref, kind)
        model, cfg = runs.load_model(folder)
        task = get_task(cfg)
    except CnnlabError as e:
        return Served(kind, error=str(e))
    return Served(kind, task, model, Path(folder).name)


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


def model_status(held: Served) -> ModelStatus:
    """A slot as /api/health shows it: the page takes its headings, legend and upload labels from this."""
    t = held.task
    return ModelStatus(
        ready=held.model is not None,
        name=held.name,
        error=held.error,
        task=t.name if t else None,
        description=t.data_description if t else None,
        classes=list(t.classes) if t else [],
        colors=list(t.colors) if t else [],
    )


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


Decode = Callable[[str, int, int], tuple[torch.Tensor, list[str]]]  # (mode, min side, max side) -> image, notes


def _confidence_overlay(img: torch.Tensor, confidence: torch.Tensor) -> np.ndarray:
    """The photo, at most OVERLAY_MAX_PX (the page shows no more), half under its confidence map."""
    small = shrink(img, OVERLAY_MAX_PX)
    conf = torch.nn.functional.interpolate(confidence[None, None], size=small.shape[-2:], mode="bilinear")[0, 0]
    return heat_overlay(small, conf, alpha=0.5, cmap="viridis", weighted=False)


def classified(held: Served, decode: Decode) -> ClassifyResult:
    """The top classes of an upload, decoded and prepared as the slot's task prepares any user's photo."""
    task = held.task
    img, notes = decode(task.photo_mode, *task.photo_sides)
    x, more = task.photo_input(img)
    with held.lock:
        top = classify(held.model, task, x, top=TOP)
        # Gradients need a tensor made outside inference mode (the gate runs requests inside it).
        with torch.inference_mode(False):
            inputs = task.eval_inputs(x[None].clone())
            cam = grad_cam(held.model, inputs, task.classes.index(top[0][0]))[0]
    seen = Image.fromarray(heat_overlay(x, cam))
    if max(seen.size) < CAM_MIN_PX:  # a 28 px input shown with its pixels as squares, not a blur
        factor = -(-CAM_MIN_PX // max(seen.size))
        seen = seen.resize((seen.width * factor, seen.height * factor), Image.Resampling.NEAREST)
    return ClassifyResult(
        top=[Guess(class_=c, probability=p) for c, p in top], notes=notes + more, cam_png=_data_uri(seen)
    )


def segmented(held: Served, decode: Decode) -> SegmentResult:
    """The label map, overlay and class areas of an upload."""
    task = held.task
    # Segment tasks have no photo_mode: a grey folder run was trained on grey images, every other one on RGB.
    img, notes = decode("L" if task.channels == 1 else "RGB", SEGMENT_MIN_SIDE, SEGMENT_MAX_SIDE)
    seg = segment_photo(held.model, task, img, notes, MAX_WORK_SIDE, rt=held.runtime)
    return SegmentResult(
        width=img.shape[2],
        height=img.shape[1],
        areas=seg.area,
        colors=dict(zip(task.classes, task.colors, strict=True)),
        overlay_png=_data_uri(_shrunk(seg.overlay, notes)),
        confidence_png=_data_uri(Image.fromarray(_confidence_overlay(img, seg.confidence))),
        labels_png=_data_uri(label_png(seg.labels, task)),
        notes=notes,
    )


def _now_served(held: Served) -> str:
    """The slot's model, for its endpoint's description in /docs (the schema says what this server runs)."""
    if held.task is None:
        return f" No model is loaded: {held.error}"
    return f" Served: {held.name}, trained on {held.task.data_description}; classes: {', '.join(held.task.classes)}."


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

    page = files(__package__).joinpath("serve.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

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
        endpoint = classify_image if kind == "classify" else segment_image
        app.post(f"/api/{old}", responses=ERRORS, include_in_schema=False)(endpoint)
    return app
