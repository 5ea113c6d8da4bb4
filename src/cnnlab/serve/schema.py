"""What the server answers with: the JSON bodies of its endpoints and errors, as pydantic models, which
FastAPI validates answers against and publishes in /openapi.json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..sizes import MAX_SIDE as SEGMENT_MAX_SIDE

OVERLAY_MAX_PX = 1024  # the page shows no more; the label map keeps the decoded photo's size
TOP = 3  # classes a classification answers with (fewer if the model has fewer)


class Guess(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    probability: float


class ClassifyResult(BaseModel):
    top: list[Guess] = Field(
        description=f"The {TOP} most likely classes (all, if fewer), most likely first; empty when nothing_found."
    )
    notes: list[str] = Field(description="What was done to the image to make it like the model's training images.")
    nothing_found: str | None = Field(
        None,
        description="Why there is no guess, when the image holds nothing the model was trained to see (a photo "
        "in which no garment stands out from the background); null otherwise.",
    )
    cam_png: str | None = Field(
        description="data: URI, the image as the model saw it with the Grad-CAM of the top class over it (red: the "
        "parts that speak most for that class), at least 224 px; null when nothing_found"
    )
    input_png: str | None = Field(
        description="data: URI, the model's input itself at its own size (28x28 grey for Fashion-MNIST): the "
        "upload after the preparation `notes` lists; null when nothing_found"
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
    photo_jpeg: str = Field(
        description=f"data: URI, the photo itself at overlay_png's size (<= {OVERLAY_MAX_PX} px), for blending "
        "labels_png or confidence_map_png over it at any opacity"
    )
    confidence_map_png: str = Field(
        description="data: URI, the confidence alone in the colours of confidence_png, at the size the model "
        "worked at (stretch it over photo_jpeg)"
    )
    notes: list[str]


class Metric(BaseModel):
    split: str = Field(description="val or test: the model's held-out images its card reports on.")
    key: str = Field(description="The metric's key in eval_SPLIT.json: acc, map, miou.")
    label: str = Field(description="Its name for people: accuracy, mAP, mIoU.")
    value: float
    shown: str = Field(description="The value as the model card and `cnnlab models` write it.")
    images: int | None = Field(description="How many images it was measured on.")


class ModelCard(BaseModel):
    shipped: bool = Field(description="A model shipped with cnnlab (its card.json), or a run folder (its eval files).")
    recipe: str
    split: str = Field(description="How its data was split into training, validation and test images.")
    metrics: list[Metric] = Field(description="The task's headline metrics on validation, then test; empty if none.")


class ModelStatus(BaseModel):
    ready: bool
    name: str | None = Field(description="The model's folder name when ready.")
    error: str | None = Field(description="Why there is no model.")
    task: str | None = Field(description="What it was trained for: fashion, facade, or classify/segment (a folder).")
    description: str | None = Field(description="Its training data, in one line.")
    classes: list[str] = Field(description="Its classes, in the order of its outputs; empty without a model.")
    colors: list[str] = Field(description="The #RRGGBB colour of each class, in the same order.")
    card: ModelCard | None = Field(description="What the model scored and how it was trained; None without one.")


class Health(BaseModel):
    status: str = Field(description="ok when both slots have a model, else degraded")
    models: dict[str, ModelStatus] = Field(description="The classify and the segment slot.")
    limits: dict[str, int]
    busy: int = Field(description="Requests running or waiting for a worker now.")


class Sample(BaseModel):
    name: str = Field(description="Its file name: GET /api/samples/{name} answers the image.")
    slot: str = Field(description="The endpoint whose model it suits: classify or segment.")
    title: str = Field(description="What the page labels its button with.")
    label: str | None = Field(description="Its class in its data set (classification), to compare the answer with.")
    source: str = Field(description="Where it comes from and under which licence.")


class Samples(BaseModel):
    samples: list[Sample] = Field(description="Images to try each slot's model on, if it has any.")
    absent: dict[str, str] = Field(
        description="Per slot whose model could have samples but has none here: why, and where they would come from."
    )


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
# "4XX" also keeps FastAPI from documenting its own 422 list, which a path of any string never gets.
NO_SAMPLE = {
    404: _error("No sample of that name here; GET /api/samples lists them."),
    "4XX": _error("Any other refusal, such as a method other than GET (405)."),
}
