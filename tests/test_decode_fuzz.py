"""Fuzzing the decoding of users' images under the documented memory bound.

Every input, valid or hostile, must either decode to a tensor within the size the caller asked for or
raise DataError (NotAnImageError included): never MemoryError, never another exception, never a
crash. The decoding runs in a worker process whose address space is capped at its idle size plus
DECODE_BOUND, so an input that needs more fails the test instead of slowing the machine.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.data.images import FORMATS
from cnnlab.sizes import MAX_SIDE as FACADE_MAX_SIDE

# The README's per-request bound on decoding one image (fashion and facade paths alike). The worst
# case, a 40-megapixel WebP that libwebp and PIL hold three times over, needs 600 to 620 MB here;
# every other format decodes within 560 MB.
DECODE_BOUND = 700 * 2**20

WORKER = r"""
import base64, io, json, resource, sys, traceback
import torch
torch.set_num_threads(1)  # one thread: no per-thread malloc arenas in the address space
from PIL import Image
from cnnlab.data.images import FORMATS, read_photo
from cnnlab.errors import DataError, NothingFound
from cnnlab.tasks.fashion import MAX_SIDE, MIN_SIDE, FashionTask, fashion_pixels
from cnnlab.sizes import MIN_SIDE as FACADE_MIN_SIDE

bound, facade_max_side = int(sys.argv[1]), int(sys.argv[2])
PATHS = {
    "fashion": lambda data, name: fashion_pixels(
        *read_photo(io.BytesIO(data), name, mode=FashionTask.photo_mode, min_side=MIN_SIDE, max_side=MAX_SIDE)
    )[0],
    "facade": lambda data, name: read_photo(
        io.BytesIO(data), name, mode="RGB", min_side=FACADE_MIN_SIDE, max_side=facade_max_side
    )[0],
}


def outcome(path, data, name):
    try:
        return {"ok": list(PATHS[path](data, name).shape)}
    except NothingFound as e:  # decoded, and nothing in it to classify: an answer, not a failure
        return {"nothing": str(e)}
    except DataError as e:
        return {"refused": type(e).__name__, "message": str(e)}
    except BaseException:
        return {"crash": traceback.format_exc(limit=-4)}


def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize"):
            return int(line.split()[1]) * 1024


# Decode one small image of each format first: plugins, codecs and thread pools load lazily.
for fmt in FORMATS:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format=fmt)
    for path in PATHS:
        outcome(path, buf.getvalue(), "warm-up")
baseline = vm_size()
resource.setrlimit(resource.RLIMIT_AS, (baseline + bound, baseline + bound))
print(json.dumps({"baseline": baseline}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if "allocate" in request:
        try:
            bytearray(request["allocate"])
            reply = {"allocated": True}
        except MemoryError:
            reply = {"allocated": False}
    else:
        data = base64.b64decode(request["data"])
        reply = {path: outcome(path, data, request["name"]) for path in PATHS}
    print(json.dumps(reply), flush=True)
"""


class Worker:
    """The capped decoding process, restarted when an input has killed it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.baseline = 0

    def ask(self, request: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            raise AssertionError(f"worker died (exit {self.proc.returncode}): {self.stderr.read()[-2000:]}")
        return json.loads(line)

    def decode(self, data: bytes, name: str = "upload.jpg") -> dict:
        return self.ask({"data": base64.b64encode(data).decode(), "name": name})

    def _start(self) -> None:
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- open as long as the worker runs
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(DECODE_BOUND), str(FACADE_MAX_SIDE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            raise AssertionError(f"worker did not start: {self.stderr.read()[-2000:]}")
        self.baseline = json.loads(line)["baseline"]

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def check(reply: dict, name: str, *, image: bool | None = None) -> None:
    """Each path decoded within its bound (the fashion path may find no garment in it: one line) or refused
    with a one-line DataError; `image=False` requires refusal."""
    for path, result in reply.items():
        assert "crash" not in result, f"{path}: {result['crash']}"
        if "nothing" in result:
            assert image is not False, f"{path}: accepted a file in a format outside {FORMATS}"
            assert result["nothing"].startswith("no garment found: ") and "\n" not in result["nothing"], result
            continue
        problem = "ok" if "ok" in result else re.sub(r"\d[\d,x= ]*", "N ", result["message"].split(": ", 1)[1])[:40]
        if currently_in_test_context():
            event(f"{path}: {problem}")  # shown by --hypothesis-show-statistics
        if "ok" in result:
            assert image is not False, f"{path}: accepted a file in a format outside {FORMATS}"
            channels, height, width = result["ok"]
            if path == "fashion":
                assert (channels, height, width) == (1, 28, 28)
            else:
                assert channels == 3 and min(height, width) >= 1 and max(height, width) <= FACADE_MAX_SIDE
        else:
            assert result["refused"] in ("DataError", "NotAnImageError"), result
            assert result["message"].startswith(f"{name}: ") and "\n" not in result["message"], result
            if image is not None:  # a valid file is an image exactly when its format is allowed
                assert (result["refused"] == "NotAnImageError") is not image, result


# ---- The cap itself, and the worst cases that set DECODE_BOUND


def test_the_worker_cannot_allocate_past_the_bound(worker):
    assert worker.ask({"allocate": 32 * 2**20}) == {"allocated": True}
    assert worker.ask({"allocate": DECODE_BOUND + 32 * 2**20}) == {"allocated": False}


def _encoded(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def _flat(mode: str, size: tuple[int, int]) -> Image.Image:
    im = Image.new("RGB", size, (230, 228, 220))
    im.paste((40, 50, 90), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    return im.convert(mode)


def _grey16(size: tuple[int, int]) -> Image.Image:
    """A 16-bit grey image with a dark rectangle on it (a garment to find, as in `_flat`)."""
    im = Image.new("I;16", size, 40000)
    im.paste(8000, (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    return im


# Each about 40 megapixels (the cap) in the decoded modes that take most memory.
WORST = {
    "webp": lambda: _encoded(_flat("RGBA", (16383, 2441)), "WEBP", lossless=True),
    "rgba-png": lambda: _encoded(_flat("RGBA", (7300, 5470)), "PNG", compress_level=1),
    "transparent-palette-png": lambda: _encoded(_flat("P", (7300, 5470)), "PNG", transparency=0, compress_level=1),
    "16-bit-png": lambda: _encoded(_grey16((7300, 5470)), "PNG", compress_level=1),
    "cmyk-progressive-jpeg": lambda: _encoded(_flat("CMYK", (7300, 5470)), "JPEG", progressive=True, quality=95),
    "50:1-rgba-png": lambda: _encoded(_flat("RGBA", (44700, 894)), "PNG", compress_level=1),
}


@pytest.mark.parametrize("case", WORST)
def test_worst_cases_decode_within_the_bound(worker, case):
    reply = worker.decode(WORST[case](), f"{case}.img")
    check(reply, f"{case}.img")
    assert all("ok" in result for result in reply.values()), reply


# ---- Generated inputs

ALLOWED_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P", "RGB"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "F", "YCbCr"],
    "WEBP": ["RGB", "RGBA"],
}
OTHER_FORMATS = ["EPS", "PDF", "ICO", "PCX", "TGA", "PPM", "SGI"]  # PIL writes these; cnnlab must refuse them

sizes = st.one_of(
    st.tuples(st.integers(32, 400), st.integers(32, 400)),  # accepted by both paths
    st.tuples(st.integers(1, 40), st.integers(1, 40)),  # around both minimum sides
    st.tuples(st.integers(1, 6), st.integers(100, 3000)),  # strips on both sides of the 50:1 limit
    st.tuples(st.integers(100, 3000), st.integers(1, 6)),
)


@st.composite
def pictures(draw, formats: list[str]) -> tuple[bytes, str]:
    """A valid file: random format, mode, size and content (noise or flat), with a format-specific option."""
    fmt = draw(st.sampled_from(formats))
    mode = draw(st.sampled_from(ALLOWED_MODES.get(fmt, ["RGB", "L"])))
    width, height = draw(sizes)
    seed = draw(st.integers(0, 2**16))
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    im = Image.fromarray(noise if draw(st.booleans()) else noise[:1, :1].repeat(height, 0).repeat(width, 1))
    im = Image.new("I;16", im.size, seed) if mode == "I;16" else im.convert(mode)
    options = {
        "PNG": {"transparency": 0} if mode == "P" and draw(st.booleans()) else {},
        "JPEG": {"progressive": draw(st.booleans()), "quality": draw(st.integers(5, 95))},
        "TIFF": {"compression": draw(st.sampled_from([None, "tiff_deflate", "tiff_lzw", "packbits"]))},
        "WEBP": {"lossless": draw(st.booleans())},
        "ICO": {"sizes": [(min(width, 256), min(height, 256))]},
    }.get(fmt, {})
    if fmt == "TIFF" and mode in ("1", "P", "LA", "I;16", "F", "YCbCr"):
        options = {}  # libtiff's compressors refuse some of these modes
    return _encoded(im, fmt, **options), fmt


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


huge = st.integers(1, 2**31 - 1)
tiny_data = st.binary(max_size=64)


@st.composite
def declared(draw) -> bytes:
    """A header declaring a random (often huge) size, followed by almost no pixel data: a bomb's shape."""
    kind = draw(st.sampled_from(["PNG", "GIF", "BMP", "TIFF", "JPEG", "WEBP"]))
    width, height = draw(st.one_of(st.tuples(huge, huge), st.tuples(st.integers(1, 70000), st.integers(1, 70000))))
    if kind == "PNG":
        depth, colour = draw(st.sampled_from([(1, 0), (8, 0), (16, 0), (8, 2), (16, 2), (8, 3), (8, 4), (8, 6)]))
        ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, draw(st.integers(0, 1)))
        idat = zlib.compress(draw(st.binary(max_size=4096)) or b"\0" * draw(st.integers(0, 100000)))
        return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    if kind == "GIF":
        w, h = width % 65536, height % 65536
        screen = struct.pack("<HHBBB", w, h, 0, 0, 0)
        lzw = draw(tiny_data)
        descriptor = b"," + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x08" + bytes([len(lzw)]) + lzw
        return b"GIF89a" + screen + descriptor + b"\x00;"
    if kind == "BMP":
        bpp = draw(st.sampled_from([1, 4, 8, 16, 24, 32]))
        compression = draw(st.sampled_from([0, 1, 2, 3]))
        signed_height = height % 2**31 * draw(st.sampled_from([1, -1]))
        info = struct.pack("<IiiHHIIiiII", 40, width % 2**31, signed_height, 1, bpp, compression, 0, 0, 0, 0, 0)
        palette = b"\0\0\0\0" * (2**bpp if bpp <= 8 else 0)
        body = info + palette + draw(tiny_data)
        return b"BM" + struct.pack("<IHHI", 14 + len(body), 0, 0, 14 + len(info) + len(palette)) + body
    if kind == "TIFF":
        photometric, samples, bits = draw(st.sampled_from([(1, 1, 8), (1, 1, 16), (2, 3, 8), (0, 1, 1), (5, 4, 8)]))
        rows = draw(st.one_of(st.just(height), st.integers(1, 2**31 - 1)))
        tags = [
            (256, 4, width),
            (257, 4, height),
            (258, 3, bits),
            (259, 3, draw(st.sampled_from([1, 5, 8, 32773]))),
            (262, 3, photometric),
            (273, 4, 8 + 2 + 12 * 10 + 4),
            (277, 3, samples),
            (278, 4, rows),
            (279, 4, draw(st.integers(0, 2**31 - 1))),
            (284, 3, 1),
        ]
        ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
        return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + draw(tiny_data)
    if kind == "JPEG":
        small = _encoded(Image.new("RGB", (16, 16), (1, 2, 3)), "JPEG")
        at = small.index(b"\xff\xc0") + 5  # SOF0: precision, then height and width
        return small[:at] + struct.pack(">HH", height % 65536, width % 65536) + small[at + 4 :]
    vp8x = struct.pack("<I", 0) + (width % 2**24).to_bytes(3, "little") + (height % 2**24).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + vp8x + draw(tiny_data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@st.composite
def mutated(draw) -> bytes:
    """A valid file with bytes flipped, a piece cut out or repeated, or its end cut off."""
    data = bytearray(draw(pictures(list(ALLOWED_MODES)))[0])
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "byte", "cut", "repeat", "truncate"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "byte":
            data[at] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF]))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif action == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 16))
        else:
            del data[at:]
    return bytes(data)


MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\0", b"MM\0*", b"RIFF", b"%!PS", b"%PDF"]
hostile = st.one_of(
    declared(),
    mutated(),
    st.binary(max_size=2048),
    st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGICS), st.binary(max_size=2048)),
)


def _valid_images(worker: Worker, picture: tuple[bytes, str]) -> None:
    data, fmt = picture
    check(worker.decode(data, f"upload.{fmt.lower()}"), f"upload.{fmt.lower()}", image=True)


def _other_formats(worker: Worker, picture: tuple[bytes, str]) -> None:
    check(worker.decode(picture[0], "upload.jpg"), "upload.jpg", image=False)


def _hostile(worker: Worker, data: bytes) -> None:
    check(worker.decode(data, "upload.jpg"), "upload.jpg")


QUICK = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
LONG = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@QUICK
@given(picture=pictures(list(ALLOWED_MODES)))
def test_valid_images_decode_or_are_refused_in_one_line(worker, picture):
    _valid_images(worker, picture)


@settings(QUICK, max_examples=100)
@given(picture=pictures(OTHER_FORMATS))
def test_other_formats_are_not_images(worker, picture):
    _other_formats(worker, picture)


@settings(QUICK, max_examples=1000)
@given(data=hostile)
def test_hostile_files_are_refused_in_one_line(worker, data):
    _hostile(worker, data)


@pytest.mark.slow
@LONG
@given(picture=pictures(list(ALLOWED_MODES) + OTHER_FORMATS))
def test_many_valid_images(worker, picture):
    if picture[1] in ALLOWED_MODES:
        _valid_images(worker, picture)
    else:
        _other_formats(worker, picture)


@pytest.mark.slow
@settings(LONG, max_examples=20000)
@given(data=hostile)
def test_many_hostile_files(worker, data):
    _hostile(worker, data)
