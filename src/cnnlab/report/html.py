"""Building blocks of the self-contained HTML pages: styles, formatting, tables, embedded images.
The pages are one run's report (`run_page.write_report`) and several runs side by side
(`compare.write_compare`).

Everything a page shows is inside the one file (images as base64 data URIs, inline CSS, no scripts, no
fonts), so report.html can be copied, mailed or opened offline and still shows every figure. Every page
also prints to a clean PDF (print.css).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from datetime import datetime
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any

from PIL import Image

from .. import __version__
from ..errors import CheckpointError
from ..outputs import atomic_write
from ..tasks import Task

SPLITS = {"val": "validation", "test": "test", "external": "external data"}
PHOTO_MAX_PX = 1000  # prediction overlays can be camera-sized; the page needs no more than this


@dataclass(frozen=True)
class _View:
    """What a task's pages show: its headline metric and its per-class metrics."""

    metric: str  # key in eval_*.json and (with val_) in metrics.jsonl
    label: str
    per_class: tuple[tuple[str, str, str], ...]  # (per-class key, column label, key of its mean)
    percent: bool  # accuracies read better as percentages, AP and IoU as fractions
    total_row: str  # the per-class tables' last row
    colors: tuple[str, ...] | None = None


def view_of(task: Task) -> _View:
    """What the pages show of a task; the colours only for segmentation, whose classes have them."""
    colors = tuple(task.colors) if task.colour_legend else None
    return _View(task.primary, task.primary_label, task.per_class, task.percent, task.total_row, colors)


# One stylesheet for every page and its print layout; the run report adds the styles of its own parts.
CSS = files(__package__).joinpath("report.css").read_text() + files(__package__).joinpath("print.css").read_text()
RUN_CSS = files(__package__).joinpath("run_page.css").read_text()
# Figures are drawn at plots.canvas.DPI (150) but shown at the size they had at 110 dpi, where their 7-8 pt
# labels read well; the extra pixels make them sharp in print and on high-density screens.
SHOWN_DPI = 110
FOOTER = "Self-contained: every image is embedded in this file."


# ---------------------------------------------------------------- small helpers


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _fmt(v: Any, percent: bool) -> str:
    v = _number(v)
    if v is None:
        return "n/a"
    return f"{v:.2%}" if percent else f"{v:.4f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _setting(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _flat(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': 1e-3}, in the config's own order."""
    out = {}
    for k, v in cfg_dict.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(uri: str, alt: str, size: tuple[int, int]) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}" width="{size[0]}" height="{size[1]}">'


def _open_image(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except (OSError, SyntaxError) as e:  # PIL reports truncated or foreign files as either
        raise CheckpointError(f"{path}: not a readable image ({e}); delete it or write it again") from None
    return im


def _png_tag(path: Path) -> tuple[str, tuple[int, int]]:
    """An <img> for a figure PNG, embedded byte for byte, and its size as shown (CSS px): SHOWN_DPI
    pixels per inch of the figure, by the dpi in the PNG (a PNG without one is shown pixel for pixel)."""
    with _open_image(path) as im:
        dpi = im.info.get("dpi", (SHOWN_DPI, SHOWN_DPI))[0]
        size = tuple(round(side * SHOWN_DPI / dpi) for side in im.size)
    return _img(_data_uri(path.read_bytes(), "image/png"), path.stem, size), size


def _photo_tag(path: Path, alt: str) -> str:
    """An <img> for a prediction output, shrunk to PHOTO_MAX_PX: label maps stay sharp PNGs, photos JPEGs."""
    with _open_image(path) as im:
        im = im.convert("RGB")
        im.thumbnail((PHOTO_MAX_PX, PHOTO_MAX_PX), Image.NEAREST if path.suffix == ".png" else Image.LANCZOS)
        buf = io.BytesIO()
        if path.suffix == ".png":
            im.save(buf, format="PNG", optimize=True)
        else:
            im.save(buf, format="JPEG", quality=85)
        size = im.size
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return _img(_data_uri(buf.getvalue(), mime), alt, size)


def _swatch(color: str) -> str:
    return f'<span class="sw" style="background:{color}"></span>'


def _num_td(v: Any, percent: bool, bar: bool = False) -> str:
    x = _number(v)
    if bar and x is not None:
        return f'<td class="num bar" style="--v:{100 * max(0.0, min(1.0, x)):.1f}%">{_fmt(v, percent)}</td>'
    return f'<td class="num">{_fmt(v, percent)}</td>'


def _kv_table(rows: dict[str, str], table_id: str = "") -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows.items())
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><tbody>{body}</tbody></table>"


# Tables whose header cells sort the rows when clicked (the pages' one script; without it they read as they are).
SORT_JS = """<script>
for (const th of document.querySelectorAll("th.sort")) th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
  const up = th.dataset.up !== "1"; th.dataset.up = up ? "1" : "0";
  const key = r => {
    const t = r.cells[col].textContent.trim(), n = parseFloat(t.replace(/,/g, ""));
    return isNaN(n) ? t : n;
  };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (up ? 1 : -1); })
    .forEach(r => body.appendChild(r));
});
</script>"""


def _table(head: list[str], rows: list[list[str]]) -> str:
    """A sortable table; cells are HTML already escaped."""
    th = "".join(f'<th class="sort">{escape(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _card(key: str, value: str, sub: str = "") -> str:
    sub_html = f'<div class="s">{escape(sub)}</div>' if sub else ""
    return f'<div class="card"><div class="k">{escape(key)}</div><div class="v">{escape(value)}</div>{sub_html}</div>'


def _page(title: str, header: str, sections: list[tuple[str, str, str]], *, css: str = "", footer: str = FOOTER) -> str:
    """sections: (anchor, title, html) in order; the table of contents links them. `css`: styles added to
    the common ones; `footer`: the line after the date."""
    toc = "".join(f'<li><a href="#{a}">{escape(t)}</a></li>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{escape(t)}</h2>{h}</section>' for a, t, h in sections)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # An empty icon: otherwise the browser asks for /favicon.ico, an error when opened as a file.
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}{css}</style></head>'
        f'<body><main>{header}<nav class="toc" aria-label="contents"><ol>{toc}</ol></nav>{body}'
        f"<footer>Written by cnnlab {__version__} on {stamp}. {escape(footer)}</footer></main></body></html>\n"
    )


def _write(path: Path, text: str) -> Path:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


# ---------------------------------------------------------------- one run


def _epochs(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in history if r.get("kind") == "epoch"]


def _best_epoch(epochs: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The first epoch with the highest validation metric: the one whose weights best.safetensors holds."""
    scored = [r for r in epochs if _number(r.get(f"val_{metric}")) is not None]
    return max(scored, key=lambda r: r[f"val_{metric}"]) if scored else None


def _wall_time(epochs: list[dict[str, Any]]) -> float | None:
    return _number(epochs[-1].get("time_s")) if epochs else None


def _class_label(name: str, view: _View, c: int) -> str:
    return (_swatch(view.colors[c]) if view.colors else "") + escape(name)
