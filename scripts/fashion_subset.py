"""Write a few labelled Fashion-MNIST images per class as an image folder, tested on the whole official
test set: the size of labelled set a person has, on data whose answer is known.

    python scripts/fashion_subset.py DIR [PER_CLASS]     # then: cnnlab classify train --data DIR

DIR/train/<class>/NNNNN.png holds PER_CLASS (default 100) images of each class from the official
training set, drawn with a fixed seed; DIR/test/<class>/NNNNN.png the 10,000 official test images.
Grey 28x28 PNGs. An existing DIR is refused rather than mixed with.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data import fashion
from cnnlab.data.fashion import CLASSES

SEED = 0


def write_subset(dest: Path, per_class: int = 100) -> dict[str, int]:
    """Write the folder (built beside `dest`, then renamed); returns the images per split."""
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists; remove it or choose another folder")
    folder = fashion.locate()
    train, test = fashion.read_split(folder, "train"), fashion.read_split(folder, "t10k")
    rng = np.random.default_rng(SEED)
    y = train.y.numpy()
    picked = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(len(CLASSES))])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        for split, data, rows in (("train", train, np.sort(picked)), ("test", test, np.arange(len(test.y)))):
            for c in CLASSES:
                (tmp / split / c.replace("/", "-")).mkdir(parents=True)
            for i in rows:
                label = CLASSES[int(data.y[i])].replace("/", "-")
                Image.fromarray(data.x[i, 0].numpy()).save(tmp / split / label / f"{i:05d}.png")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"train": len(picked), "test": len(test.y)}


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    try:
        print(write_subset(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 100))
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
