"""Write the images the README's examples name, made from real held-out data, so every example runs as written:

    python scripts/example_inputs.py [DIR]      # default: the current folder

- my_shoe.jpg (224 px, RGB) and shoe.png (112 px, grey): a Fashion-MNIST test sneaker, enlarged as a photo,
  dark on light as the product photo was (the dataset negated them); from Debian's dataset-fashion-mnist
  (or cnnlab's own copy).
- photo.jpg: a facade photo; street.jpg: three facades side by side (768x256); other_folder/: three photos
  with their label maps (NAME.jpg + NAME.png), the layout `evaluate --data` takes. All from the mini
  facade set's held-out buildings.

Files that exist are left as they are; a data set that is not found is said in one line, and the other's
files are still written.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data import fashion
from cnnlab.data.facade import find_facade_dir
from cnnlab.errors import DataError

SNEAKER = 7  # Fashion-MNIST's class index of "Sneaker"
FACADES = {"photo.jpg": [0], "street.jpg": [1, 5, 9]}  # the set's file numbers: eecs442_NNNN.jpg
LABELLED = (2, 3, 4)


def garment_photos(dest: Path) -> list[Path]:
    test = fashion.read_split(fashion.locate(allow_download=False), "t10k")
    image = 255 - test.x[int(np.flatnonzero(test.y.numpy() == SNEAKER)[0]), 0].numpy()
    sneaker = Image.fromarray(image)
    shoe, png = dest / "my_shoe.jpg", dest / "shoe.png"
    if not shoe.exists():
        sneaker.resize((224, 224), Image.Resampling.BICUBIC).convert("RGB").save(shoe, quality=92)
    if not png.exists():
        sneaker.resize((112, 112), Image.Resampling.BICUBIC).save(png)
    return [shoe, png]


def facade_photos(dest: Path) -> list[Path]:
    src = find_facade_dir(None)
    written = []
    for name, numbers in FACADES.items():
        if not (dest / name).exists():
            photos = [Image.open(src / f"eecs442_{i:04d}.jpg").convert("RGB") for i in numbers]
            row = Image.new("RGB", (sum(p.width for p in photos), max(p.height for p in photos)), "white")
            for k, p in enumerate(photos):
                row.paste(p, (sum(q.width for q in photos[:k]), 0))
            row.save(dest / name, quality=92)
        written.append(dest / name)
    folder = dest / "other_folder"
    folder.mkdir(exist_ok=True)
    for i in LABELLED:
        for ext in ("jpg", "png"):
            if not (folder / f"eecs442_{i:04d}.{ext}").exists():
                shutil.copyfile(src / f"eecs442_{i:04d}.{ext}", folder / f"eecs442_{i:04d}.{ext}")
    return [*written, folder]


def main() -> int:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for make in (garment_photos, facade_photos):
        try:
            made += make(dest)
        except DataError as e:
            print(f"example_inputs: note: {e}", file=sys.stderr)
    print(" ".join(str(p) for p in made))
    return 0 if made else 2


if __name__ == "__main__":
    sys.exit(main())
