"""Re-lay the mini facade set as a generic segmentation folder, the layout `cnnlab segment` reads:

    python scripts/facade_folder.py ../shared/data/cs194-26_mini_facade/train DIR
    cnnlab segment train --data DIR --recipe fast     # the same run as: cnnlab facade train --recipe fast

DIR/images/NAME.jpg and DIR/masks/NAME.png are hard links to the originals where the file system allows
(copies otherwise); DIR/classes.yaml names the five classes in their colours and records what the
built-in facade dataset assumes: the building groups (files i, i+302 and i+604 show one building) and
ImageNet normalisation. An existing DIR is refused rather than mixed with.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

CLASSES_YAML = """\
# The CS194-26 mini facade set: mask value i is class i.
classes:
  - others: "#000000"
  - facade: "#0080FF"
  - pillar: "#80FF80"
  - window: "#FF8000"
  - balcony: "#FF0000"
# Files eecs442_i, i+302 and i+604 show one building: splits keep them together.
group_key: "index-mod:302"
# The built-in facade dataset normalises with ImageNet's statistics (ordinary RGB photographs).
mean: [0.485, 0.456, 0.406]
std: [0.229, 0.224, 0.225]
"""


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_facades(source: Path, dest: Path) -> int:
    """Lay out `source` (NAME.jpg + NAME.png pairs) under `dest`; returns the number of pairs."""
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists; remove it or choose another folder")
    photos = sorted(source.glob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"{source}: no NAME.jpg photos; give the facade set's train/ folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for photo in photos:
            _link(photo, tmp / "images" / photo.name)
            _link(photo.with_suffix(".png"), tmp / "masks" / f"{photo.stem}.png")
        (tmp / "classes.yaml").write_text(CLASSES_YAML)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(photos)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} FACADE_TRAIN_DIR DIR")
    try:
        n = write_facades(Path(sys.argv[1]), Path(sys.argv[2]))
    except OSError as e:
        print(f"facade_folder: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{sys.argv[2]}: {n} facade photos with masks, classes.yaml")


if __name__ == "__main__":
    main()
