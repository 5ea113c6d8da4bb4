"""Output names are checked before any work: whatever the input files are called, every name a command
writes fits the file system with its suffix and atomic_write's temporary name, holds no control
character, and no two inputs share one."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.outputs import MAX_STEM_BYTES, NAME_MAX, OutputError, check_dir, check_file, suffix_slug, unique_stems

# The longest suffixes cnnlab writes after a stem: segmentation's side-by-side, explain with a class.
SUFFIXES = ["_side_by_side.jpg", "_areas.json", "_input.png", f"_{'c' * 40}_explain.json", f"_{'c' * 40}_cams.png"]
# Names a file system takes: up to 255 bytes, no '/' and no NUL.
_NAMES = st.text(st.characters(exclude_characters="/\x00", codec="utf-8"), min_size=1, max_size=120).filter(
    lambda s: s not in (".", "..") and len(s.encode()) <= NAME_MAX
)


@settings(max_examples=300, deadline=None)
@given(names=st.lists(_NAMES, min_size=1, max_size=6), classes=st.lists(st.text(max_size=80), max_size=3))
def test_every_output_name_fits_and_is_unique(names, classes):
    stems = unique_stems([Path("in") / n for n in names])
    assert len(stems) == len(names)
    assert len({s.lower() for s in stems}) == len(stems)
    for stem in stems:
        assert len(stem.encode()) <= MAX_STEM_BYTES + 4  # "-NN" for a repeat
        assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in stem)
        for suffix in [*SUFFIXES, *(f"_{suffix_slug(c)}_explain.json" for c in classes)]:
            assert len((stem + suffix).encode()) + 14 <= NAME_MAX, (stem, suffix)


def test_a_name_with_a_newline_keeps_messages_one_line():
    assert unique_stems([Path("a\nb.png"), Path("a\rb.png")]) == ["a_b", "a_b-2"]


@pytest.mark.parametrize("check", [check_dir, check_file])
def test_an_output_path_too_long_to_write_is_one_line_before_the_work(tmp_path, check):
    with pytest.raises(OutputError, match=r"the name is 242 bytes, over the 241") as e:
        check(tmp_path / ("n" * 242), "--out")
    assert "\n" not in str(e.value) and len(str(e.value)) < 300
    assert check(tmp_path / ("n" * 241), "--out") == tmp_path / ("n" * 241)
