"""Sample images for a first try of `cnnlab serve`'s page, each offered for the slot whose model it suits.

Fashion-MNIST test images ship with cnnlab (MIT licence: samples/README.md) and are offered when the classify
slot serves a Fashion-MNIST model. The facade photos state no licence, so none ships: when the segment slot
serves a facade model and that data set is on this machine (found as training finds it), a few photos of
the model's own test split are offered, read from there, which the model never trained on.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from PIL import Image

from ..config import RunConfig
from ..data import facade as fdata
from ..data.splits import group_keys, group_split
from ..errors import CnnlabError
from ..tasks import Task
from ..tasks.facade import GROUP_KEY
from .schema import Sample

FACADE_SAMPLES = 3  # photos of distinct buildings
SAMPLE_MAX_PX = 512  # a facade folder of large photos still gives small samples
SAMPLE_MAX_BYTES = 30_000
FACADE_SOURCE = (
    "the test split of the CS194-26 mini facade set found on this machine (from the CMP Facade Database, "
    "Tylecek and Sara 2013; it states no licence, so cnnlab ships none)"
)
FACADE_ABSENT = (
    "Sample photos come from the CS194-26 mini facade set, which cnnlab does not ship (it states no licence), "
    "and it is not on this machine: set CNNLAB_FACADE_DIR to its train folder and restart the server."
)


@dataclass(frozen=True)
class SampleFile:
    """A sample as the server answers it: what /api/samples lists, and the image's bytes."""

    info: Sample
    data: bytes
    media_type: str


def _shipped(task: Task) -> list[SampleFile]:
    """The shipped samples of the task's data set (only Fashion-MNIST has any)."""
    folder = files("cnnlab").joinpath("samples")
    manifest = json.loads(folder.joinpath("samples.json").read_text()).get(task.name)
    if manifest is None:
        return []
    return [
        SampleFile(
            Sample(name=e["file"], slot=task.kind, title=e["label"], label=e["label"], source=manifest["source"]),
            folder.joinpath(e["file"]).read_bytes(),
            "image/png",
        )
        for e in manifest["images"]
    ]


def _small_jpeg(image: Image.Image) -> bytes:
    """A photo re-encoded to stay under SAMPLE_MAX_BYTES (the set's own files reach 41 KB)."""
    image = image.convert("RGB")
    image.thumbnail((SAMPLE_MAX_PX, SAMPLE_MAX_PX), Image.Resampling.LANCZOS)
    for quality in (85, 70, 50):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= SAMPLE_MAX_BYTES:
            break
    return buf.getvalue()


def facade_test_photos(cfg: RunConfig) -> list[Path]:
    """FACADE_SAMPLES photos of distinct buildings in the run's test split, as its training split the data folder
    it finds; DataError (a CnnlabError) if there is none, OSError if it cannot be read."""
    d = cfg.data
    folder = fdata.find_facade_dir(d.dir)
    photos = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")}
    names = sorted(photos)
    groups = group_keys(names, d.group_key or GROUP_KEY)
    split = group_split(groups, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=cfg.train.seed)
    first_of_group: dict[int, str] = {}
    for i in split["test"].tolist():
        first_of_group.setdefault(groups[i], names[i])
    return [photos[name] for name in list(first_of_group.values())[:FACADE_SAMPLES]]


def _facade(cfg: RunConfig) -> list[SampleFile]:
    out = []
    for number, path in enumerate(facade_test_photos(cfg), 1):
        with Image.open(path) as im:
            data = _small_jpeg(im)
        info = Sample(name=f"{path.stem}.jpg", slot="segment", title=f"test photo {number}", label=None,
                      source=FACADE_SOURCE)  # fmt: skip
        out.append(SampleFile(info, data, "image/jpeg"))
    return out


def find_samples(task: Task | None, cfg: RunConfig | None) -> tuple[list[SampleFile], str | None]:
    """The samples for a slot's model, and why it has none where it could have some (None otherwise)."""
    if task is None or cfg is None:
        return [], None
    if not task.samples_in_data:
        return _shipped(task), None
    try:
        return _facade(cfg), None
    except (CnnlabError, OSError):  # no folder, or one unreadable: the page works without samples
        return [], FACADE_ABSENT
