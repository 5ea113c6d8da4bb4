"""The mini facade set: NAME.jpg photos with NAME.png label maps of 5 classes, and grouped splits.

Labels are index PNGs: the pixel values are the class numbers 0..4 (the palette only colours them).
The set holds each building three times (files i, i+302 and i+604), so validation and test splits
are made of whole groups, never of single files.
"""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from rich.progress import track
from torch import Tensor

from ..errors import DataError
from .images import MAX_PIXELS, load_photo

CLASSES = ("others", "facade", "pillar", "window", "balcony")
COLORS = [(0, 0, 0), (0, 128, 255), (128, 255, 128), (255, 128, 0), (255, 0, 0)]
ENV_VAR = "CNNLAB_FACADE_DIR"
_IMAGE_SUFFIXES = (".jpg", ".jpeg")
_LABEL_MODES = ("P", "L", "1")  # single channel, at most 8 bits: the values are the class indices
_DEFAULT_SUBDIR = Path("shared/data/cs194-26_mini_facade/train")


@dataclass
class FacadeSet:
    images: Tensor  # uint8 (N, 3, H, W)
    labels: Tensor | None  # uint8 (N, H, W) class indices; None for a folder without labels
    names: list[str]  # file stems, sorted


def find_facade_dir(explicit: str | Path | None = None) -> Path:
    """The facade training folder: the explicit path, else $CNNLAB_FACADE_DIR, else the shared copy."""
    if explicit is not None:
        return _existing_dir(Path(explicit), "check --data-dir")
    if os.environ.get(ENV_VAR):
        return _existing_dir(Path(os.environ[ENV_VAR]), f"check the {ENV_VAR} environment variable")
    repo_root = Path(__file__).resolve().parents[3]
    candidates = [repo_root.parent / _DEFAULT_SUBDIR, Path.cwd().parent / _DEFAULT_SUBDIR]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise DataError(f"facade data not found (tried {tried}); pass --data-dir or set {ENV_VAR}")


def _existing_dir(path: Path, advice: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: facade data folder not found; {advice}")
    return path.resolve()


def load_folder(path: str | Path, *, require_labels: bool = True, progress: bool = True) -> FacadeSet:
    """Load every NAME.jpg (or .jpeg) with its NAME.png label from one folder, strictly checked."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; pass the folder holding NAME.jpg + NAME.png pairs")
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder ({e.strerror}); check its permissions") from e
    images = {p.stem: p for p in files if p.suffix.lower() in _IMAGE_SUFFIXES}
    labels = {p.stem: p for p in files if p.suffix.lower() == ".png"}
    if not images:
        raise DataError(f"{folder}: no .jpg images found; point at a folder of NAME.jpg + NAME.png pairs")
    if len(images) < sum(p.suffix.lower() in _IMAGE_SUFFIXES for p in files):
        raise DataError(f"{folder}: two images share a name (NAME.jpg and NAME.jpeg); keep one of them")
    if orphan := sorted(labels.keys() - images.keys()):
        raise DataError(f"{labels[orphan[0]]}: label has no image {orphan[0]}.jpg; add it or remove the label")
    unlabelled = sorted(images.keys() - labels.keys())
    if unlabelled and (require_labels or len(unlabelled) < len(images)):
        raise DataError(
            f"{images[unlabelled[0]]}: no label {unlabelled[0]}.png beside it; "
            f"add the label or remove the image ({len(unlabelled)} of {len(images)} lack one)"
        )
    names = sorted(images)

    def load_pair(name: str) -> tuple[Tensor, np.ndarray | None]:
        image, _ = load_photo(images[name])
        if name not in labels:
            return image, None
        label = _read_label(labels[name])
        if label.shape != image.shape[1:]:
            raise DataError(
                f"{labels[name]}: label is {label.shape[1]}x{label.shape[0]} but its image is "
                f"{image.shape[2]}x{image.shape[1]}; labels must match their image pixel for pixel"
            )
        return image, label

    # A plain loop: decoding a 256x256 JPEG takes 0.5 ms, and threads gained nothing measurable.
    steps = track(names, description="loading facades", disable=not progress, transient=True)
    pairs = [load_pair(name) for name in steps]
    sizes = {tuple(image.shape[1:]): name for (image, _), name in zip(pairs, names, strict=True)}
    if len(sizes) > 1:
        examples = ", ".join(f"{w}x{h} ({name})" for (h, w), name in list(sizes.items())[:3])
        raise DataError(f"{folder}: images differ in size ({examples}); resize them all to one size first")
    # np.stack, not torch.stack: torch's threaded copy crawls (7 s against 0.3 s here) whenever another
    # process keeps the cores busy, as a training run next to this one does.
    images_ = torch.from_numpy(np.stack([image.numpy() for image, _ in pairs]))
    labels_ = torch.from_numpy(np.stack([label for _, label in pairs])) if not unlabelled else None
    return FacadeSet(images_, labels_, names)


def _read_label(path: Path) -> np.ndarray:
    try:
        # PIL only warns below 179 MP, and our own cap must come before the decode it protects.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=("PNG",))
        with im:
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise DataError(
                    f"{path}: label declares {width}x{height} = {width * height:,} pixels, over the limit of "
                    f"{MAX_PIXELS:,}; give each label the size of its image"
                )
            if im.mode not in _LABEL_MODES:
                kind = "16-bit" if im.mode.startswith("I") else f"mode {im.mode}"
                raise DataError(
                    f"{path}: label is a {kind} image; labels must be 8-bit index PNGs "
                    f"(palette or grey) whose pixel values are the class numbers 0..4"
                )
            label = np.array(im, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{path}: not a readable label PNG ({' '.join(str(e).split())}); replace it with a complete file"
        ) from e
    if label.max(initial=0) >= len(CLASSES):
        bad = np.unique(label[label >= len(CLASSES)]).tolist()
        raise DataError(
            f"{path}: label holds values {bad[:10]} outside the classes 0..{len(CLASSES) - 1}; "
            "labels must be class indices, not colours"
        )
    return label
