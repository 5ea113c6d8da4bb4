"""The files of a person's folder, one at a time: what cnnlab would refuse, silently change, or learn
nothing from. Unreadable or truncated files, CMYK and 16-bit images, EXIF rotation, near-blank frames,
and sizes or aspect ratios far from the rest."""

from __future__ import annotations

import os
import statistics
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.images import EXIF_ORIENTATION, SIXTEEN_BIT_GREY, SUFFIXES
from ..outputs import progress_over

BLANK_STD = 2.0  # grey levels: a frame whose pixels all lie this close to their mean shows nothing
SIZE_FACTOR = 16  # an image with 16x fewer or more pixels than the median one is an outlier
ASPECT_FACTOR = 2  # ... or one twice as elongated (either way) as the median aspect ratio


def image_files(root: Path) -> list[Path]:
    """Every image file under `root` by suffix, label maps (in masks/ folders) and hidden folders left out."""
    found = []
    for folder, subs, names in os.walk(root):
        subs[:] = sorted(d for d in subs if not d.startswith(".") and d != "masks")
        found += [Path(folder) / n for n in names if Path(n).suffix.lower() in SUFFIXES and not n.startswith(".")]
    return sorted(found)


def _inspect(path: Path) -> tuple[dict | None, list[tuple[str, str]]]:
    """(facts, [(kind, problem)]) of one file; facts None when it does not open as an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                facts = {"width": im.width, "height": im.height, "mode": im.mode, "format": im.format}
                problems = []
                if im.mode == "CMYK":
                    problems.append(
                        ("CMYK", "CMYK colours: converted to RGB when read, colours may shift; save as RGB")
                    )
                if im.mode in SIXTEEN_BIT_GREY:
                    problems.append(("16-bit", "16-bit pixels: scaled to 8 bits when read; save as 8-bit"))
                if (o := im.getexif().get(EXIF_ORIENTATION, 1)) not in (1, None):
                    problems.append(
                        (
                            "EXIF-rotated",
                            f"EXIF-rotated (orientation {o}): cnnlab turns it upright, other tools may not",
                        )
                    )
                try:
                    im.load()
                except (OSError, SyntaxError, ValueError) as e:
                    return facts, [
                        *problems,
                        ("truncated", f"truncated or corrupt ({' '.join(str(e).split())}); replace it"),
                    ]
                if im.mode in SIXTEEN_BIT_GREY:
                    grey = np.asarray(im, dtype=np.float32) / 256
                else:
                    small = im.convert("L")
                    small.thumbnail((64, 64))
                    grey = np.asarray(small, dtype=np.float32)
                if float(grey.std()) < BLANK_STD:
                    problems.append(("near-blank", "near-blank: one colour throughout; remove it"))
                return facts, problems
    except Exception:  # whatever a malformed file makes PIL raise, it is a finding here, not the end
        return None, [("unreadable", "not a readable image; replace or remove it")]


def check_files(root: Path, progress: bool) -> dict:
    """Counts of modes and formats, the median size, and every file with a problem."""
    files = image_files(root)
    issues, sizes = [], {}
    modes: Counter[str] = Counter()
    for path in progress_over(files, "check: files", progress):
        facts, problems = _inspect(path)
        if facts is not None:
            modes[f"{facts['format']} {facts['mode']}"] += 1
            sizes[path] = (facts["width"], facts["height"])
        issues += [{"file": str(path), "kind": k, "problem": p} for k, p in problems]
    if sizes:
        area = statistics.median(w * h for w, h in sizes.values())
        aspect = statistics.median(w / h for w, h in sizes.values())
        for path, (w, h) in sizes.items():
            if not area / SIZE_FACTOR <= w * h <= area * SIZE_FACTOR:
                problem = f"{w}x{h}: size far from most images' ({area:.0f} px)"
                issues.append({"file": str(path), "kind": "odd size", "problem": problem})
            elif not aspect / ASPECT_FACTOR <= w / h <= aspect * ASPECT_FACTOR:
                issues.append(
                    {"file": str(path), "problem": f"{w}x{h}: aspect ratio far from most images' ({aspect:.2f})"}
                )
    median = (
        [statistics.median(s[0] for s in sizes.values()), statistics.median(s[1] for s in sizes.values())]
        if sizes
        else None
    )
    return {"files": len(files), "modes": dict(modes.most_common()), "median_size": median, "issues": issues}
