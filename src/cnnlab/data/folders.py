"""The user's own data as folders, read strictly (one line naming the file for anything wrong).

Classification: DIR/train/<class>/*.png|jpg|... and optionally DIR/val/, DIR/test/ in the same layout, or
DIR/<class>/* alone (Keras' image_dataset_from_directory, torchvision's ImageFolder).
Segmentation: DIR/images/NAME.jpg + DIR/masks/NAME.png and DIR/classes.yaml, optionally DIR/val/ and
DIR/test/ holding images/ and masks/ too. Pixels are decoded once into the memory-mapped cache.
"""

from __future__ import annotations

import os
import re
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..yaml_input import excerpt, load_yaml, yaml_problem
from . import Rows, Split
from .cache import cache_key, decoded
from .images import MAX_PIXELS, SUFFIXES, load_photo

SKIP_HINT = "; or set data.skip_bad: true to skip such files and list them in the run"
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F")
MAX_DEFAULT_SIZE = {"classify": 128, "segment": 512}  # px: the default size's cap, for CPU-sized training
_HEX = re.compile(r"#[0-9a-fA-F]{6}")


@dataclass
class Scan:
    """Files of one split, with their labels (classification) or masks (segmentation)."""

    files: list[Path]
    labels: list[int] = field(default_factory=list)
    masks: list[Path] = field(default_factory=list)


@dataclass
class DatasetFile:
    """DIR/classes.yaml of a segmentation folder."""

    classes: list[str]
    colors: list[str | None]
    ignore: int | None = None
    group_key: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


def _images_in(folder: Path) -> list[Path]:
    """The folder's image files by suffix, links that lead nowhere (dangling, or in a loop) included: those
    are named as bad files later, never dropped without a word."""
    try:
        return sorted(p for p in folder.iterdir() if (p.is_file() or p.is_symlink()) and p.suffix.lower() in SUFFIXES)
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder ({e.strerror}); check its permissions") from None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


CLASS_LAYOUT = "DIR/<class>/*.png or DIR/train/<class>/*.png"
MASK_LAYOUT = "DIR/images/, DIR/masks/ and DIR/classes.yaml"


def existing(path: str | Path | None, layout: str) -> Path:
    """The data folder, which must exist; `layout` (CLASS_LAYOUT or MASK_LAYOUT) says what it should hold."""
    if path is None:
        raise DataError(f"no data folder given; pass --data DIR laid out as {layout}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found; pass --data DIR laid out as {layout}")
    return folder


def train_folder(root: Path) -> Path:
    """Where a classification set's training classes are: ROOT/train/<class>/, or ROOT/<class>/ itself."""
    if (root / "train").is_dir():
        return root / "train"
    if split := [name for name in ("val", "test") if (root / name).is_dir()]:
        raise DataError(f"{root}: has {split[0]}/ but no train/; put the training classes in {root}/train/<class>/")
    return root


def scan_classes(folder: Path, classes: list[str] | None = None) -> Scan:
    """The images of one classification split: a subfolder per class. `classes` (the training split's)
    fixes the class numbers; a subfolder outside them is an error."""
    found = _subdirs(folder)
    names = [p.name for p in found]
    if classes is None:
        if len(names) < 2:
            raise DataError(
                f"{folder}: {len(names)} class folder{'s' if len(names) != 1 else ''} ({', '.join(names) or 'none'}); "
                "classification needs a subfolder per class, at least two"
            )
        classes = names
    elif extra := [n for n in names if n not in classes]:
        raise DataError(
            f"{folder / extra[0]}: class {extra[0]!r} is not among the training classes; add it to train/ or remove it"
        )
    scan = Scan([])
    for sub in found:
        files = _images_in(sub)
        if not files:
            raise DataError(f"{sub}: class folder holds no images ({', '.join(SUFFIXES)}); add some or remove it")
        scan.files += files
        scan.labels += [classes.index(sub.name)] * len(files)
    return scan


def read_dataset_file(folder: Path) -> DatasetFile:
    """DIR/classes.yaml: `classes` (names in mask-value order, each optionally `name: "#RRGGBB"`), and
    optionally `ignore` (a mask value left out), `group_key`, `mean` and `std`."""
    path = folder / "classes.yaml"
    example = 'write e.g. classes: [background, {road: "#FF0000"}]'
    if not path.is_file():
        raise DataError(f"{path}: missing; {example}")
    try:
        data = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read ({yaml_problem(e)}); {example}") from None
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise DataError(f"{path}: needs a list under 'classes'; {example}")
    if unknown := sorted(set(data) - {"classes", "ignore", "group_key", "mean", "std"}):
        raise DataError(f"{path}: unknown key {excerpt(unknown[0])}; keys are classes, ignore, group_key, mean, std")
    names, colors = [], []
    for item in data["classes"]:
        if isinstance(item, dict) and len(item) == 1:
            ((name, color),) = item.items()
        else:
            name, color = item, None
        if not isinstance(name, str | int) or (color is not None and not _HEX.fullmatch(str(color))):
            raise DataError(f"{path}: class entry {excerpt(item)} is not a name or name: '#RRGGBB'; {example}")
        names.append(str(name))
        colors.append(color and str(color).upper())
    if len(names) < 2 or len(set(names)) < len(names):
        raise DataError(f"{path}: needs at least two distinct class names, got {excerpt(names)}")
    ignore = data.get("ignore")
    if ignore is not None and (not isinstance(ignore, int) or not len(names) <= ignore <= 255):
        raise DataError(f"{path}: ignore {excerpt(ignore)} must be a mask value from {len(names)} to 255")
    stats = {k: data.get(k) for k in ("mean", "std")}
    for key, value in stats.items():
        if value is not None and not (isinstance(value, list) and all(isinstance(v, int | float) for v in value)):
            raise DataError(f"{path}: {key} must be a list of numbers, one per channel")
    return DatasetFile(names, colors, ignore, data.get("group_key"), stats["mean"], stats["std"])


def scan_masks(folder: Path) -> Scan:
    """NAME.* in folder/images with NAME.png in folder/masks, paired by name."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found; a segmentation set holds images/ and masks/ side by side")
    images, masks = _by_stem(images_dir), _by_stem(masks_dir)
    if not images:
        raise DataError(f"{images_dir}: no images; add NAME.jpg files (and NAME.png masks beside them in masks/)")
    if orphan := sorted(masks.keys() - images.keys()):
        raise DataError(
            f"{masks[orphan[0]]}: mask has no image {orphan[0]}.* in {images_dir}; add it or remove the mask"
        )
    if missing := sorted(images.keys() - masks.keys()):
        raise DataError(
            f"{images[missing[0]]}: no mask {missing[0]}.png in {masks_dir}; add it or remove the image "
            f"({len(missing)} of {len(images)} lack one)"
        )
    names = sorted(images)
    return Scan([images[n] for n in names], masks=[masks[n] for n in names])


def _by_stem(folder: Path) -> dict[str, Path]:
    """The folder's image files by name without suffix; two files of one name (a.jpg, a.png) are an error."""
    found: dict[str, Path] = {}
    for path in _images_in(folder):
        if path.stem in found:
            raise DataError(f"{path}: same name as {found[path.stem].name}; images and masks pair by name, keep one")
        found[path.stem] = path
    return found


def header(path: Path) -> tuple[int, int, str] | None:
    """(width, height, mode) from the file's header, without decoding; None if it is not a readable image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.width, im.height, im.mode
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError):
        return None


def problem(path: Path) -> str:
    """What is wrong with a file that does not read as an image, in a few words."""
    if path.is_symlink() and not path.exists():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"a link to {target}, which leads nowhere (missing, or a loop of links)"
    return "not a readable image"


def survey(files: list[Path], skip_bad: bool) -> tuple[list[tuple[int, int, str] | None], list[Path]]:
    """Headers of every file; unreadable ones are an error, or skipped (listed) with `skip_bad`."""
    heads = [header(p) for p in files]
    bad = [p for p, h in zip(files, heads, strict=True) if h is None]
    if files and len(bad) == len(files):
        raise DataError(f"{bad[0]}: {problem(bad[0])}, nor is any of the {len(files)} files; give JPEG or PNG")
    if bad and not skip_bad:
        raise DataError(
            f"{bad[0]}: {problem(bad[0])} ({len(bad)} such file{'s' if len(bad) > 1 else ''}); replace or remove "
            "it, or set data.skip_bad: true to skip and list them in the run"
        )
    return heads, bad


def bad_files_of_pair(image: Path, mask: Path) -> list[Path]:
    """Which of an image and its mask fails to read (the one a skipped pair is listed under)."""
    bad = []
    for path, read in ((image, load_photo), (mask, mask_pixels)):
        try:
            read(path)
        except DataError:
            bad.append(path)
    return bad or [image]


def default_size(heads: list[tuple[int, int, str] | None], kind: str) -> int:
    """The median of the images' longer sides, capped so training stays CPU-sized."""
    sides = [max(h[0], h[1]) for h in heads if h is not None]
    return min(int(statistics.median(sides)), MAX_DEFAULT_SIZE[kind])


def detect_channels(heads: list[tuple[int, int, str] | None]) -> int:
    return 1 if all(h[2] in GREY_MODES for h in heads if h is not None) else 3


def _resized(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(img.shape[1:]) == size:
        return img
    x = F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def load_classes(scan: Scan, size: int, channels: int, *, skip_bad: bool, cache: bool, progress: bool) -> Split:
    """Decode a classification split (cached) to uint8 (N, channels, size, size) squares."""
    mode = "L" if channels == 1 else "RGB"

    def fill(i: int) -> dict[str, np.ndarray] | None:
        try:
            img, _ = load_photo(scan.files[i], mode=mode, max_side=max(size, 1) * 2)
        except DataError as e:
            if skip_bad:
                return None
            raise DataError(f"{e}{SKIP_HINT}") from None
        return {"x": _resized(img, (size, size)).numpy()}

    key = cache_key(scan.files, kind="classify", size=size, channels=channels)
    arrays, skipped = decoded(
        key, len(scan.files), {"x": ((channels, size, size), np.uint8)}, fill,
        description=f"decoding {len(scan.files)} images", progress=progress, cache=cache,
    )  # fmt: skip
    keep = [i for i in range(len(scan.files)) if i not in set(skipped)]
    labels = torch.tensor([scan.labels[i] for i in keep], dtype=torch.int64)
    return Split(arrays["x"], labels, [str(scan.files[i]) for i in keep])


def mask_pixels(path: Path) -> np.ndarray:
    """A mask file's pixels as they are stored: uint8 (H, W) indices, or (H, W, 3) RGB; DataError if unreadable."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise DataError(f"{path}: mask of {im.width}x{im.height} px is over the pixel limit; shrink it")
            if im.mode in ("P", "L", "1"):
                return np.array(im, dtype=np.uint8)
            if im.mode in ("RGB", "RGBA"):
                return np.array(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable mask ({' '.join(str(e).split())}); replace it") from None
    raise DataError(f"{path}: mask of mode {im.mode}; give 8-bit index PNGs or RGB masks in class colours")


def read_mask(path: Path, colors: list[str | None], ignore: int | None) -> np.ndarray:
    """A mask as uint8 class indices: an index PNG as it is, an RGB mask mapped by the class colours."""
    return mask_labels(path, mask_pixels(path), colors, ignore)


def mask_labels(path: Path, pixels: np.ndarray, colors: list[str | None], ignore: int | None) -> np.ndarray:
    """Stored mask pixels as uint8 class indices, checked against the classes (DataError naming a stray value)."""
    mask = _by_colour(path, pixels, colors) if pixels.ndim == 3 else pixels
    bad = (mask >= len(colors)) & (mask != (ignore if ignore is not None else -1))
    if bad.any():
        values = np.unique(mask[bad]).tolist()[:10]
        raise DataError(
            f"{path}: mask values {values} are not classes 0..{len(colors) - 1} of classes.yaml"
            + (f" nor its ignore value {ignore}" if ignore is not None else "")
            + "; fix the mask or add the classes (or an `ignore:` value)"
        )
    return mask


def _by_colour(path: Path, rgb: np.ndarray, colors: list[str | None]) -> np.ndarray:
    if None in colors:
        raise DataError(f"{path}: an RGB mask needs a colour for every class in classes.yaml (name: '#RRGGBB')")
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    table = {int(c[1:], 16): i for i, c in enumerate(colors)}
    mask = np.full(code.shape, 255, dtype=np.uint8)
    for value, index in table.items():
        mask[code == value] = index
    if (unknown := ~np.isin(code, list(table))).any():
        r, g, b = rgb[unknown][0]
        raise DataError(f"{path}: colour #{r:02X}{g:02X}{b:02X} is not a class colour of classes.yaml; fix the mask")
    return mask


def segment_shape(
    heads: list[tuple[int, int, str] | None], image_size: int | None
) -> tuple[tuple[int, int], int | None]:
    """The (H, W) segmentation images are decoded at, and the `data.image_size` that records it: the
    images' one common size (None), else `image_size` squares, by default the median side's."""
    sizes = {(h[1], h[0]) for h in heads if h is not None}
    if image_size is None and len(sizes) > 1:
        image_size = default_size(heads, "segment")
    return ((image_size, image_size) if image_size else next(iter(sizes), (1, 1))), image_size


def load_masks(
    scan: Scan,
    size: tuple[int, int],
    channels: int,
    info: DatasetFile,
    *,
    skip_bad: bool,
    cache: bool,
    progress: bool,
) -> Split:
    """Decode a segmentation split (cached) at `size` (H, W; see `segment_shape`): images uint8
    (N, channels, H, W), masks uint8 (N, H, W), resized by nearest neighbour where they differ."""
    mode = "L" if channels == 1 else "RGB"

    def fill(i: int) -> dict[str, np.ndarray] | None:
        try:
            img, _ = load_photo(scan.files[i], mode=mode)
            pixels = mask_pixels(scan.masks[i])
        except DataError as e:
            if skip_bad:
                return None
            raise DataError(f"{e}{SKIP_HINT}") from None
        mask = mask_labels(scan.masks[i], pixels, info.colors, info.ignore)  # wrong values are never skipped
        if mask.shape != tuple(img.shape[1:]):
            raise DataError(
                f"{scan.masks[i]}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {img.shape[2]}x"
                f"{img.shape[1]}; masks must match their image pixel for pixel"
            )
        m = torch.from_numpy(mask)
        if tuple(m.shape) != size:
            m = F.interpolate(m[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(torch.uint8)
        return {"x": _resized(img, size).numpy(), "y": m.numpy()}

    key = cache_key(
        [*scan.files, *scan.masks], kind="segment", size=list(size), channels=channels, colors=info.colors,
        classes=len(info.classes), ignore=info.ignore,
    )  # fmt: skip
    arrays, skipped = decoded(
        key, len(scan.files), {"x": ((channels, *size), np.uint8), "y": (size, np.uint8)}, fill,
        description=f"decoding {len(scan.files)} images and masks", progress=progress, cache=cache,
    )  # fmt: skip
    keep = [i for i in range(len(scan.files)) if i not in set(skipped)]
    return Split(arrays["x"], arrays["y"], [scan.files[i].stem for i in keep])


def channel_stats(x: torch.Tensor | Rows) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of pixel/255 over the images (chunked: no float copy of the set)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    square = torch.zeros_like(total)
    rows = max(1, 2**21 // (x.shape[1] * x.shape[2] * x.shape[3]))  # ~8 MB of float32 at a time
    for i in range(0, len(x), rows):
        chunk = x[i : i + rows].float() / 255
        total += chunk.sum((0, 2, 3), dtype=torch.float64)
        square += (chunk**2).sum((0, 2, 3), dtype=torch.float64)
    n = len(x) * x.shape[2] * x.shape[3]
    mean = total / n
    std = (square / n - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(v), 4) for v in mean], [max(round(float(v), 4), 1e-3) for v in std]
