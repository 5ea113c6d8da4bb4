"""The decoded-image cache is a convenience: damage on disk (cut short or changed at any byte, its index torn)
and a cache folder that cannot be written are one warning line each, and the pixels are decoded again.
Never a traceback, never a dataset broken for good, never training on damaged pixels."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.data.cache import decoded
from cnnlab.errors import CnnlabWarning

ARRAYS = {"x": ((3, 4, 4), np.uint8), "y": ((4, 4), np.uint8)}
COUNT = 6


def _fill(i: int) -> dict[str, np.ndarray] | None:
    if i == 4:
        return None  # a skipped item: the entry keeps the list
    return {"x": np.full((3, 4, 4), 10 + i, np.uint8), "y": np.full((4, 4), i, np.uint8)}


def _load(calls: list[int] | None = None):
    def fill(i):
        if calls is not None:
            calls.append(i)
        return _fill(i)

    return decoded("k", COUNT, ARRAYS, fill, description="test", progress=False)


def _expected():
    rows = [i for i in range(COUNT) if i != 4]
    return np.stack([np.full((3, 4, 4), 10 + i, np.uint8) for i in rows]), [4]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    target=st.sampled_from(["x.npy", "y.npy", "done.json"]),
    how=st.sampled_from(["cut", "flip", "garbage"]),
    where=st.floats(0, 1, exclude_max=True),
)
def test_damage_at_any_byte_is_one_warning_and_a_fresh_decode(monkeypatch, target, how, where):
    root = Path(tempfile.mkdtemp())
    try:
        monkeypatch.setenv("CNNLAB_CACHE_DIR", str(root))
        _load()
        path = root / "k" / target
        data = bytearray(path.read_bytes())
        at = int(where * len(data))
        if how == "cut":
            data = data[:at]
        elif how == "flip":
            data[at] ^= 0x5A
        else:
            data[at:] = b"\x00garbage"
        path.write_bytes(bytes(data))
        calls: list[int] = []
        with pytest.warns(CnnlabWarning, match=r"decoded-image cache .*k: .*; decoding again") as seen:
            (arrays, skipped) = _load(calls)
        assert len(seen) == 1 and calls == list(range(COUNT))  # decoded again, every item
        x, want_skipped = _expected()
        assert np.array_equal(arrays["x"].numpy(), x) and skipped == want_skipped
        calls.clear()
        arrays, _ = _load(calls)  # mended for good: the next run maps it
        assert calls == [] and np.array_equal(arrays["x"].numpy(), x)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_sound_entry_is_read_without_decoding_or_warning(monkeypatch, tmp_path, recwarn):
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path))
    _load()
    calls: list[int] = []
    _, skipped = _load(calls)
    assert calls == [] and skipped == [4] and not [w for w in recwarn if w.category is CnnlabWarning]
    done = json.loads((tmp_path / "k" / "done.json").read_text())
    assert set(done["digests"]) == {"x", "y"} and done["count"] == 5


@pytest.mark.parametrize("case", ["a file", "read-only"])
def test_a_cache_folder_that_cannot_be_written_decodes_into_memory(monkeypatch, tmp_path, case):
    if case == "a file":
        root = tmp_path / "cache"
        root.write_text("not a folder")
    else:
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o500)
        if os.geteuid() == 0:  # root writes into read-only folders: the refusal a user would meet, made by hand
            real_mkdir = Path.mkdir

            def refused(self, *args, **kwargs):
                if self.is_relative_to(root):
                    raise PermissionError(13, "Permission denied", str(self))
                return real_mkdir(self, *args, **kwargs)

            monkeypatch.setattr(Path, "mkdir", refused)
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(root))
    expected = "a file, not a folder" if case == "a file" else "Permission denied"
    with pytest.warns(CnnlabWarning, match=rf"cannot write \({expected}\); decoding into memory") as seen:
        arrays, skipped = _load()
    assert len(seen) == 1
    assert np.array_equal(arrays["x"].numpy(), _expected()[0]) and skipped == [4]


def test_the_cli_says_it_in_one_line(monkeypatch, capsys, tmp_path):
    """A folder run whose CNNLAB_CACHE_DIR names a file trains, with one warning line, no traceback."""
    from conftest import make_classify_folder, run_cli

    data = make_classify_folder(tmp_path / "data", per_class=6, size=8)
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "file"))
    args = ("--epochs", "1", "--set", "train.threads=1", "--set", "data.val_fraction=0.34", "--no-progress")
    args += ("--recipe", "small")
    code, _, err = run_cli(monkeypatch, capsys, "classify", "train", "--data", data, "--out", tmp_path / "run", *args)
    assert code == 0, err
    assert [line for line in err.splitlines() if "cache" in line] == [
        f"cnnlab: warning: decoded-image cache {tmp_path / 'file'}: cannot write (a file, not a folder); decoding into "
        "memory (set CNNLAB_CACHE_DIR to a folder you may write)"
    ]
    assert "Traceback" not in err
