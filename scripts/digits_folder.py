"""Write scikit-learn's bundled digits (1,797 real 8x8 scans of handwritten digits) as an image folder:

    python scripts/digits_folder.py DIR          # then: cnnlab classify train --data DIR

DIR/train/<digit>/NNNN.png and DIR/test/<digit>/NNNN.png, grey PNGs of 8x8 px (the scans' 0..16 levels
scaled to 0..255). The test split is 20% of each digit, chosen by a fixed seed; validation is left to
cnnlab (carved from train). An existing DIR is refused rather than mixed with.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TEST_FRACTION, SEED = 0.2, 0


def write_digits(dest: Path) -> dict[str, int]:
    """Write the folder (atomically: built beside `dest`, then renamed); returns the images per split."""
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists; remove it or choose another folder")
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(SEED)
    split = np.full(len(images), "train", dtype=object)
    for d in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == d))
        split[members[: round(len(members) * TEST_FRACTION)]] = "test"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        for i, (img, label, part) in enumerate(zip(images, digits.target, split, strict=True)):
            folder = tmp / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(folder / f"{i:04d}.png")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {part: int((split == part).sum()) for part in ("train", "test")}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIR")
    try:
        counts = write_digits(Path(sys.argv[1]))
    except OSError as e:
        print(f"digits_folder: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{sys.argv[1]}: {counts['train']} train and {counts['test']} test images of 10 digits")


if __name__ == "__main__":
    main()
