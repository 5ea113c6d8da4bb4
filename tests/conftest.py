"""Shared fixtures: tiny generated Fashion-MNIST-format data, and the real data sets when present."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

FASHION_REAL = Path("/usr/share/datasets/fashion-mnist")
IN_CI = os.environ.get("CI", "").lower() == "true"


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def synthetic_fashion(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 images: each class is a bright bar at its own position, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c : 5 + 2 * c, 4:24] += 180
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


def make_fashion_dir(folder: Path, n_train: int = 600, n_test: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = synthetic_fashion(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return folder


@pytest.fixture(scope="session")
def tiny_fashion(tmp_path_factory) -> Path:
    return make_fashion_dir(tmp_path_factory.mktemp("fashion"))


def require_data(path: Path, what: str) -> Path:
    """Real data or a skip with the reason; under CI=true a missing data set is a failure."""
    if path.exists():
        return path
    message = f"{what} not found at {path}"
    if IN_CI:
        pytest.fail(message + " (CI=true: real-data tests must run; `make install` installs it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_fashion() -> Path:
    return require_data(FASHION_REAL, "Fashion-MNIST (Debian package dataset-fashion-mnist)")
