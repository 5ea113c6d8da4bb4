"""What the server answers with: the JSON bodies of its endpoints and errors, as pydantic models, which
FastAPI validates answers against and publishes in /openapi.json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .segment import MAX_SIDE as SEGMENT_MAX_SIDE

OVERLAY_MAX_PX = 1024  # the page shows no more; the label map keeps the decoded photo's size
TOP = 3  # classes a classification answers with (fewer if the model has fewer)


class Guess(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    probability: float


class ClassifyResult(BaseModel):
    top: list[Guess] = Field(description=f"The {TOP} most likely classes (all, if fewer), most likely first.")
    notes: list[str] = Field(description="What was done to the image to make it like the model's training images.")
    cam_png: str = Field(
        description="data: URI, the image as the model saw it with the Grad-CAM of the top class over it (red: the "
        "parts that speak most for that class), at least 224 px"
    )


class SegmentResult(BaseModel):
    width: int = Field(description=f"Of the photo as segmented: its own size, or at most {SEGMENT_MAX_SIDE} px.")
    height: int
    areas: dict[str, float] = Field(description="Share of the photo's pixels per class, in class order.")
    colors: dict[str, str] = Field(description="The colour of each class in the overlay and label map.")
    overlay_png: str = Field(description=f"data: URI, the photo half covered by class colours, <= {OVERLAY_MAX_PX} px")
    confidence_png: str = Field(
        description="data: URI, the model's confidence per pixel (its top class's probability: yellow sure, dark "
        f"blue unsure) over the photo, as overlay_png, <= {OVERLAY_MAX_PX} px"
    )
    labels_png: str = Field(
        description=f"data: URI, palette PNG at the photo's size (<= {SEGMENT_MAX_SIDE} px); pixel value = class index"
    )
    notes: list[str]


class ModelStatus(BaseModel):
    ready: bool
    name: str | None = Field(description="The model's folder name when ready.")
    error: str | None = Field(description="Why there is no model.")
    task: str | None = Field(description="What it was trained for: fashion, facade, or classify/segment (a folder).")
    description: str | None = Field(description="Its training data, in one line.")
    classes: list[str] = Field(description="Its classes, in the order of its outputs; empty without a model.")
    colors: list[str] = Field(description="The #RRGGBB colour of each class, in the same order.")


class Health(BaseModel):
    status: str = Field(description="ok when both slots have a model, else degraded")
    models: dict[str, ModelStatus] = Field(description="The classify and the segment slot.")
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
