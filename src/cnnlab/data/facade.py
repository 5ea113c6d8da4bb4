"""The mini facade set: NAME.jpg photos with NAME.png label maps of 5 classes, and grouped splits.

Labels are index PNGs: the pixel values are the class numbers 0..4 (the palette only colours them).
The set holds each building three times (files i, i+302 and i+604), so validation and test splits
are made of whole groups, never of single files.
"""

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from rich.progress import track
from torch import Tensor

from ..errors import ConfigError, DataError
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


def group_keys(names: list[str], spec: str) -> list[int]:
    """Group number of each file stem, so that views of one building can be kept together.

    spec: "index-mod:N" (trailing number of the name, mod N), "file" (every file its own group) or
    "regex:PATTERN" (the first capture group of PATTERN searched in the name).
    """
    if spec == "file":
        return list(range(len(names)))
    if spec.startswith("index-mod:"):
        modulus = spec.removeprefix("index-mod:")
        if not modulus.isdigit() or int(modulus) == 0:
            raise ConfigError(f"group spec {spec!r}: N must be a positive integer; write e.g. index-mod:302")
        pattern, modulus = re.compile(r"(\d+)$"), int(modulus)
    elif spec.startswith("regex:"):
        try:
            pattern = re.compile(spec.removeprefix("regex:"))
        except re.error as e:
            raise ConfigError(f"group spec {spec!r}: bad regular expression ({e}); fix the pattern") from e
        if pattern.groups < 1:
            raise ConfigError(f"group spec {spec!r}: pattern has no capture group; put the key in (...)")
        modulus = None
    else:
        raise ConfigError(f"group spec {spec!r}: unknown; use index-mod:N, file or regex:PATTERN")
    keys = []
    for name in names:
        match = pattern.search(name)
        if match is None or match.group(1) is None:
            raise DataError(
                f"{name}: file name does not match group spec {spec!r}; use a spec that fits every name, or 'file'"
            )
        keys.append(match.group(1))
    if modulus is not None:
        return [int(key) % modulus for key in keys]
    ids: dict[str, int] = {}
    return [ids.setdefault(key, len(ids)) for key in keys]


def group_split(groups: list[int], *, val_fraction: float, test_fraction: float, seed: int) -> dict[str, Tensor]:
    """Indices (int64) of "train", "val" and "test" files; every group falls in exactly one split.

    The distinct groups are shuffled with `seed`; val and test get round(fraction * groups) groups each.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val fraction {val_fraction} + test fraction {test_fraction}: each must be >= 0 "
            "and together < 1; lower them"
        )
    distinct = sorted(set(groups))
    n_val, n_test = (math.floor(f * len(distinct) + 0.5) for f in (val_fraction, test_fraction))
    too_few = (val_fraction > 0 and n_val == 0) or (test_fraction > 0 and n_test == 0)
    if too_few or n_val + n_test >= len(distinct):
        raise DataError(
            f"split of {len(distinct)} groups: too few for val {val_fraction} and test {test_fraction} "
            "with a non-empty train split; use more data, other fractions or a finer group spec"
        )
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    split_of_group = {distinct[i]: "test" for i in order[:n_test]}
    split_of_group |= {distinct[i]: "val" for i in order[n_test : n_test + n_val]}
    file_split = [split_of_group.get(g, "train") for g in groups]
    return {
        split: torch.tensor([i for i, s in enumerate(file_split) if s == split], dtype=torch.int64)
        for split in ("train", "val", "test")
    }
