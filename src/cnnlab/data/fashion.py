"""Fashion-MNIST: find or download the official IDX files, read them strictly, split them."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import Split
from .splits import stratified_split

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the *decompressed* IDX bytes: Debian re-compresses the upstream .gz files, so hashing the
# payload verifies the same data whichever copy (Debian, download, raw) we read.
FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_IDX_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip ({e}); delete it and fetch the file again") from None


def parse_idx(raw: bytes, source: str, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX payload of `ndim` dimensions, checking every header field."""
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{source}: too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataError(
            f"{source}: wrong IDX magic {raw[:4].hex()} (expected 000008{ndim:02x}); not a Fashion-MNIST file"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if any(d == 0 for d in dims):
        raise DataError(f"{source}: IDX header declares an empty dimension {dims}")
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{source}: truncated or padded: {len(raw)} bytes, header {dims} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_file(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder / (stem + '.gz')}: file not found; the folder must hold the four Fashion-MNIST files")


def read_split(folder: Path, prefix: str) -> Split:
    """Read and validate one image/label file pair (`prefix` is 'train' or 't10k')."""
    ipath, lpath = _find_file(folder, f"{prefix}-images-idx3-ubyte"), _find_file(folder, f"{prefix}-labels-idx1-ubyte")
    images = parse_idx(_read_bytes(ipath), str(ipath), 3)
    labels = parse_idx(_read_bytes(lpath), str(lpath), 1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{ipath}: images are {images.shape[1]}x{images.shape[2]}, Fashion-MNIST is 28x28")
    if len(images) != len(labels):
        raise DataError(f"{lpath}: {len(labels)} labels for {len(images)} images in {ipath.name}")
    if labels.max() >= len(CLASSES):
        bad = int(np.argmax(labels >= len(CLASSES)))
        raise DataError(f"{lpath}: label {labels[bad]} at index {bad} is outside 0..9")
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def _has_all(folder: Path) -> bool:
    return all(any((folder / n).is_file() for n in (s + ".gz", s)) for s in FILES)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cnnlab" / "fashion-mnist"


def download(dest: Path, url: str = URL, timeout: float = 30.0) -> None:
    """Fetch the four official files into `dest`, verifying each before it is kept."""
    dest.mkdir(parents=True, exist_ok=True)
    for stem, sha in FILES.items():
        if (dest / f"{stem}.gz").is_file():
            continue
        try:
            with urllib.request.urlopen(url + stem + ".gz", timeout=timeout) as r:
                raw = r.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DataError(
                f"Fashion-MNIST not found locally and download from {url} failed ({reason}); "
                f"install Debian's dataset-fashion-mnist, or put the four .gz files in a folder and pass "
                f"--data-dir (or set CNNLAB_DATA_DIR)"
            ) from None
        try:
            payload = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error):
            raise DataError(f"{url}{stem}.gz: download is not a valid gzip file; try again later") from None
        if hashlib.sha256(payload).hexdigest() != sha:
            raise DataError(f"{url}{stem}.gz: SHA-256 mismatch; the download is corrupt or not the official file")
        # Write-then-rename so an interrupted download never leaves a file that looks complete.
        with tempfile.NamedTemporaryFile(dir=dest, delete=False) as tmp:
            tmp.write(raw)
        shutil.move(tmp.name, dest / f"{stem}.gz")


def locate(data_dir: str | Path | None = None, *, allow_download: bool = True) -> Path:
    """Explicit dir, then CNNLAB_DATA_DIR, Debian's package folder, the user cache; else download."""
    explicit = data_dir or os.environ.get("CNNLAB_DATA_DIR")
    if explicit:
        folder = Path(explicit)
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder does not exist; check --data-dir / CNNLAB_DATA_DIR")
        return folder
    for folder in (DEBIAN_DIR, cache_dir()):
        if _has_all(folder):
            return folder
    if not allow_download:
        raise DataError("Fashion-MNIST not found; install dataset-fashion-mnist or pass --data-dir")
    download(cache_dir())
    return cache_dir()


def load(
    data_dir: str | Path | None = None, *, val_fraction: float = 0.1, seed: int = 0, limit: int | None = None
) -> dict[str, Split]:
    """Train/val (carved from the 60k, stratified) and the 10k test split."""
    folder = locate(data_dir)
    full, test = read_split(folder, "train"), read_split(folder, "t10k")
    tr, va = stratified_split(full.y, val_fraction, seed)
    if limit is not None:
        tr = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(seed))[:limit]].sort().values
    return {"train": full.subset(tr), "val": full.subset(va), "test": test}
