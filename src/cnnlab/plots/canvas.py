"""Making and saving figures without pyplot: a `Figure` built directly renders through its own canvas,
so matplotlib's backend and rc settings stay as the user (a notebook) set them.

Each `plot_*` function saves NAME.png and the numbers behind it as NAME.json; inside `pdf_copies()` (the
run report's figures) also NAME.pdf, to download from the report.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from ..outputs import atomic_write, write_json

DPI = 150  # sharp in print and on high-density screens; the page shows figures at their 110-dpi size
# Downloads are PDF, not SVG: measured on a fashion and a facade run (figures at 150 dpi, 2 cores), SVG
# took as long as PDF but was 2.5x (fashion, 1.8 MB) and 1.7x (facade, 4.3 MB) the size, since its
# pictures (examples, feature maps, cases, thumbnails) are base64 PNGs while PDF compresses them; and a
# PDF goes straight into LaTeX. Text and lines stay vectors, pictures are embedded at their own pixels.
_PDF_COPIES = contextvars.ContextVar("pdf_copies", default=False)
# No creation date: the same figure gives the same bytes.
_PDF_METADATA = {"CreationDate": None}
_FIGURE_OPTIONS = ("figsize", "layout", "dpi")


@contextlib.contextmanager
def pdf_copies(enabled: bool = True) -> Iterator[None]:
    """Figures saved inside this block also get a PDF copy (NAME.pdf) if `enabled`: the report links them
    for download. Other figures (`cnnlab explain`'s, a summary report's) stay PNG and JSON."""
    token = _PDF_COPIES.set(enabled)
    try:
        yield
    finally:
        _PDF_COPIES.reset(token)


def subplots(*args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    """A new `Figure` and its axes, as `pyplot.subplots` takes them, without pyplot's figure manager."""
    fig = Figure(**{k: kwargs.pop(k) for k in _FIGURE_OPTIONS if k in kwargs})
    return fig, fig.subplots(*args, **kwargs)


def save(fig: Figure, path: Path, data: Any, layout: bool = True) -> Path:
    """Write `fig` as PATH.png (and PATH.pdf inside `pdf_copies`) and `data` as PATH.json; returns the PNG."""
    # Suffixes appended, not swapped: a photo named `my.street` keeps its whole name.
    png, numbers = path.with_name(path.name + ".png"), path.with_name(path.name + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    if _PDF_COPIES.get():
        pdf = path.with_name(path.name + ".pdf")
        atomic_write(pdf, lambda tmp: fig.savefig(tmp, dpi=DPI, format="pdf", metadata=_PDF_METADATA))
    write_json(numbers, data)
    return png


class NotebookFigure(Figure):
    """A `Figure` that a notebook shows inline by itself, without pyplot (or `%matplotlib inline`)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png")
        return buf.getvalue()


def picture(png: Path) -> NotebookFigure:
    """A saved figure (PNG) as a `Figure` of the same pixels, at the PNG's own size and dpi."""
    with Image.open(png) as im:
        dpi = round(im.info.get("dpi", (DPI, DPI))[0])
        pixels = np.asarray(im.convert("RGBA"))
    fig = NotebookFigure(figsize=(pixels.shape[1] / dpi, pixels.shape[0] / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(pixels, interpolation="nearest")
    ax.set_axis_off()
    return fig
