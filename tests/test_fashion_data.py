import gzip
import hashlib
import http.server
import threading
import typing

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from conftest import idx_bytes, make_fashion_dir, synthetic_fashion, write_idx
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.data import fashion
from cnnlab.data.splits import stratified_split
from cnnlab.errors import DataError


def test_read_split_roundtrip(tmp_path):
    make_fashion_dir(tmp_path, 100, 30)
    split = fashion.read_split(tmp_path, "train")
    x, y = synthetic_fashion(100, 0)
    assert split.x.shape == (100, 1, 28, 28) and split.x.dtype == torch.uint8
    assert torch.equal(split.x[:, 0], torch.from_numpy(x)) and torch.equal(split.y, torch.from_numpy(y).long())


def test_raw_uncompressed_files_are_read(tmp_path):
    x, y = synthetic_fashion(20, 0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y)
    assert len(fashion.read_split(tmp_path, "t10k")) == 20


def _corrupt(tmp_path, images: bytes | None = None, labels: bytes | None = None):
    make_fashion_dir(tmp_path, 50, 10)
    if images is not None:
        (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(images)
    if labels is not None:
        (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(labels)


X, Y = synthetic_fashion(50, 0)
GOOD_IMAGES = idx_bytes(X)
BAD_CASES = {
    "wrong magic": (gzip.compress(b"\x00\x00\x0c\x03" + GOOD_IMAGES[4:]), None, "wrong IDX magic"),
    "labels as images": (gzip.compress(idx_bytes(Y)), None, "wrong IDX magic"),
    "truncated payload": (gzip.compress(GOOD_IMAGES[:-100]), None, "truncated"),
    "truncated gzip": (gzip.compress(GOOD_IMAGES)[:-50], None, "corrupt or truncated gzip"),
    "zero bytes": (b"", None, "too short"),
    "wrong dims": (gzip.compress(idx_bytes(np.zeros((50, 32, 32), np.uint8))), None, "32x32"),
    "label out of range": (None, gzip.compress(idx_bytes(np.full(50, 10, np.uint8))), "outside 0..9"),
    "count mismatch": (None, gzip.compress(idx_bytes(Y[:40])), "40 labels for 50 images"),
    "empty dimension": (gzip.compress(idx_bytes(np.zeros((0, 28, 28), np.uint8))), None, "empty dimension"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_files_give_one_line_errors(tmp_path, case):
    images, labels, expected = BAD_CASES[case]
    _corrupt(tmp_path, images, labels)
    with pytest.raises(DataError) as e:
        fashion.read_split(tmp_path, "train")
    msg = str(e.value)
    assert expected in msg and "\n" not in msg and "train-" in msg


def test_missing_file_names_it(tmp_path):
    make_fashion_dir(tmp_path, 20, 10)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: file not found"):
        fashion.read_split(tmp_path, "t10k")


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = torch.arange(1000) % 10
    tr, va = stratified_split(labels, 0.1, seed=3)
    assert len(va) == 100 and len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 1000
    assert torch.bincount(labels[va]).tolist() == [10] * 10
    assert torch.equal(va, stratified_split(labels, 0.1, seed=3)[1])
    assert not torch.equal(va, stratified_split(labels, 0.1, seed=4)[1])


def test_locate_order(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA_DIR", raising=False)
    explicit = make_fashion_dir(tmp_path / "explicit", 20, 10)
    env = make_fashion_dir(tmp_path / "env", 20, 10)
    assert fashion.locate(explicit) == explicit
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(env))
    assert fashion.locate(None) == env
    assert fashion.locate(explicit) == explicit
    with pytest.raises(DataError, match=r"does not exist"):
        fashion.locate(tmp_path / "nope")


class _Files(http.server.BaseHTTPRequestHandler):
    files: typing.ClassVar[dict[str, bytes]] = {}

    def do_GET(self):
        body = self.files.get(self.path.lstrip("/"))
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", _Files.files
    server.shutdown()


def test_download_verifies_checksums(tmp_path, monkeypatch, file_server):
    url, files = file_server
    payloads = {stem: idx_bytes(np.arange(4 + i, dtype=np.uint8)) for i, stem in enumerate(fashion.FILES)}
    files.clear()
    files.update({f"{stem}.gz": gzip.compress(p) for stem, p in payloads.items()})
    monkeypatch.setattr(fashion, "FILES", {s: hashlib.sha256(p).hexdigest() for s, p in payloads.items()})
    fashion.download(tmp_path / "ok", url)
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == sorted(f"{s}.gz" for s in payloads)

    files["t10k-images-idx3-ubyte.gz"] = gzip.compress(b"tampered")
    with pytest.raises(DataError, match=r"SHA-256 mismatch"):
        fashion.download(tmp_path / "bad", url)
    assert not (tmp_path / "bad" / "t10k-images-idx3-ubyte.gz").exists()


def test_offline_message_says_how_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match=r"dataset-fashion-mnist.*--data-dir"):
        fashion.download(tmp_path, "http://127.0.0.1:9/", timeout=2)


def test_real_files_match_official_checksums(real_fashion):
    for stem, sha in fashion.FILES.items():
        assert hashlib.sha256(gzip.decompress((real_fashion / f"{stem}.gz").read_bytes())).hexdigest() == sha
    test = fashion.read_split(real_fashion, "t10k")
    assert test.x.shape == (10000, 1, 28, 28) and torch.bincount(test.y).tolist() == [1000] * 10


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=120), ndim=st.integers(1, 3))
def test_parse_idx_on_arbitrary_bytes_returns_valid_arrays_or_data_errors(raw, ndim):
    try:
        arr = fashion.parse_idx(raw, "fuzz", ndim)
    except DataError as e:
        assert str(e).startswith("fuzz: ") and "\n" not in str(e)
        return
    assert arr.ndim == ndim and arr.dtype == np.uint8 and arr.size == len(raw) - 4 - 4 * ndim


@settings(max_examples=100, deadline=None)
@given(
    arr=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)), cut=st.integers(1, 50)
)
def test_parse_idx_roundtrip_and_any_truncation_is_caught(arr, cut):
    raw = idx_bytes(arr)
    assert np.array_equal(fashion.parse_idx(raw, "ok", arr.ndim), arr)
    with pytest.raises(DataError):
        fashion.parse_idx(raw[: max(0, len(raw) - cut)], "cut", arr.ndim)
