"""Shared fixtures: tiny generated Fashion-MNIST-format data, and the real data sets when present."""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

# Two xdist workers share the 2 cores, so each torch process gets one OpenMP thread (tests that need
# more set it themselves), and threads sleep while they wait: libgomp's default spinning burns the core
# the other worker needs. Set before torch loads, so this process and every cnnlab process a test starts
# use them. Measured here: make test 11:34 as it was, 9:49 with sleeping waits, 8:35 with both; two
# concurrent 2-thread Fashion-MNIST epochs took 33 s sleeping against 63 s spinning.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FASHION_REAL = Path("/usr/share/datasets/fashion-mnist")
IN_CI = os.environ.get("CI", "").lower() == "true"


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The `cnnlab` command in this process: (exit code, stdout, stderr)."""
    from cnnlab.cli import app as cli

    monkeypatch.setattr(sys, "argv", ["cnnlab", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, err: str, *expected: str) -> str:
    """Assert exit code 2 and exactly one `cnnlab: error:` line holding every `expected` text."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error:"), err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


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


FACADE_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cs194-26_mini_facade" / "train"
FACADE_PALETTE = [0, 0, 0, 0, 128, 255, 128, 255, 128, 255, 128, 0, 255, 0, 0]


def synthetic_facade(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its label map: facade background, a grid of windows, a pillar, a balcony strip."""
    rng = np.random.default_rng(seed)
    label = np.ones((size, size), np.uint8)
    label[: size // 8] = 0
    step = size // 4
    for r in range(size // 4, size, step):
        for c in range(step // 3 + int(rng.integers(0, 3)), size - step // 2, step):
            label[r : r + step // 2, c : c + step // 3] = 3
    label[size // 2 : size // 2 + 3, :] = 4
    label[:, : max(2, size // 16)] = 2
    colours = np.array([[20, 20, 20], [200, 180, 150], [240, 240, 240], [40, 60, 90], [150, 30, 30]])
    image = colours[label] + rng.integers(-25, 25, (size, size, 3))
    return image.clip(0, 255).astype(np.uint8), label


def make_facade_dir(folder: Path, n: int = 12, size: int = 64) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, label = synthetic_facade(size, i)
        Image.fromarray(image).save(folder / f"eecs442_{i:04d}.jpg", quality=95)
        im = Image.fromarray(label, "P")
        im.putpalette(FACADE_PALETTE)
        im.save(folder / f"eecs442_{i:04d}.png")
    return folder


def make_classify_folder(folder: Path, classes=("a", "b", "c"), per_class: int = 10, size: int = 10) -> Path:
    """A folder task's classification set, folder/train/<class>/*.png: RGB noise, each class bright in
    its own channel (learnable, and its colours show in the figures)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (folder / "train" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 50, (size, size, 3))
            image[:, :, c % 3] += 180
            Image.fromarray(image.astype(np.uint8)).save(folder / "train" / name / f"{name}{i}.png")
    return folder


def make_segment_folder(folder: Path, n: int = 8, size: int = 24) -> Path:
    """A folder task's grey segmentation set: folder/images/NAME.png, folder/masks/NAME.png and a
    classes.yaml giving the second class a colour; a bright square (class 1) on dark noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "classes.yaml").write_text("classes: [ground, {blob: '#FF0000'}]\n")
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[4 + i : 14 + i, 3:15] = 1
        image = rng.integers(0, 60, (size, size)) + 150 * mask
        Image.fromarray(image.astype(np.uint8), "L").save(folder / "images" / f"s{i}.png")
        Image.fromarray(mask, "L").save(folder / "masks" / f"s{i}.png")
    return folder


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Folder runs decode their images into the cache: a temporary one for the module, not ~/.cache."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny_facade(tmp_path_factory) -> Path:
    return make_facade_dir(tmp_path_factory.mktemp("facade"))


@pytest.fixture(scope="session")
def real_facade() -> Path:
    return require_data(FACADE_REAL, "the mini-facade set (../shared/data/cs194-26_mini_facade)")


# ---------------------------------------------------------------- a real browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # needed as root (containers, CI)
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",  # a laptop screen
]


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(message + " (CI=true: the browser test must run)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by selenium, with its console log kept; a skip (a failure under CI) without it."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("the selenium package is not installed; pip install -e '.[dev]'")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        _missing("Chromium or chromedriver not found on PATH; run scripts/install-browser.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    with tempfile.TemporaryDirectory(prefix="cnnlab-chromium-") as profile:
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            yield driver
        finally:
            driver.quit()


# ---------------------------------------------------------------- reading HTML pages


class HtmlPage(HTMLParser):
    """The parts of a page the tests look at: tables by id (rows of cell texts) and the class of each of
    their rows, attributes of every element, and the tags used."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.row_classes: dict[str, list[str]] = {}
        self.attrs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        ident = dict(attrs).get("id")
        if tag == "table":
            self._table = ident
            self.tables.setdefault(ident, [])
            self.row_classes.setdefault(ident, [])
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
            self.row_classes[self._table].append(dict(attrs).get("class") or "")
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
