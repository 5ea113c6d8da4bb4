"""Cut the facade photos into labelled 32x32 patches: a small set of real RGB photos, the size of a
person's own folder, whose test images show buildings the training never saw.

    python scripts/facade_patches.py ../shared/data/cs194-26_mini_facade/train DIR
    cnnlab classify train --data DIR --set data.group_key=index-mod:302

Each photo is cut on a 32 px grid; a patch is labelled with the class covering at least 60% of it
(others are dropped), and each photo gives at most one patch per class, drawn with a fixed seed, so
the rare classes (pillar, balcony) are not swamped by facade. A patch is named rRcC-NNNN.png after its
photo eecs442_NNNN: files NNNN, NNNN+302 and NNNN+604 show one building, so `index-mod:302` keeps a
building on one side of a split. DIR/test/ holds every patch of one building in five (NNNN mod 302
divisible by 5: 61 buildings), DIR/train/ the rest. An existing DIR is refused rather than mixed with.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("others", "facade", "pillar", "window", "balcony")
SIDE, SHARE, SEED, BUILDINGS = 32, 0.6, 0, 302


def write_patches(source: Path, dest: Path) -> dict[str, int]:
    """Write the folder (built beside `dest`, then renamed); returns the patches per split."""
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists; remove it or choose another folder")
    photos = sorted(source.glob("eecs442_*.jpg"))
    if not photos:
        raise FileNotFoundError(f"{source}: no eecs442_NNNN.jpg photos; give the facade set's train/ folder")
    rng = np.random.default_rng(SEED)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    counts = {"train": 0, "test": 0}
    try:
        for photo in photos:
            index = int(photo.stem.split("_")[1])
            split = "test" if (index % BUILDINGS) % 5 == 0 else "train"
            rgb = np.asarray(Image.open(photo).convert("RGB"))
            labels = np.asarray(Image.open(photo.with_suffix(".png")))
            found: dict[int, list[tuple[int, int]]] = {}
            for r in range(0, labels.shape[0] - SIDE + 1, SIDE):
                for c in range(0, labels.shape[1] - SIDE + 1, SIDE):
                    share = np.bincount(labels[r : r + SIDE, c : c + SIDE].ravel(), minlength=len(CLASSES))
                    if share.max() >= SHARE * SIDE * SIDE:
                        found.setdefault(int(share.argmax()), []).append((r, c))
            for cls, places in sorted(found.items()):
                r, c = places[rng.integers(len(places))]
                folder = tmp / split / CLASSES[cls]
                folder.mkdir(parents=True, exist_ok=True)
                name = f"r{r // SIDE}c{c // SIDE}-{index:04d}.png"
                Image.fromarray(rgb[r : r + SIDE, c : c + SIDE]).save(folder / name)
                counts[split] += 1
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        print(write_patches(Path(sys.argv[1]), Path(sys.argv[2])))
    except (FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
