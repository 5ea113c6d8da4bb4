import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import facade
from cnnlab.data.facade import (
    CLASSES,
    COLORS,
    find_facade_dir,
    load_folder,
)
from cnnlab.data.splits import group_keys, group_split
from cnnlab.errors import ConfigError, DataError
from cnnlab.tasks.segment import class_frequencies

PALETTE = [v for rgb in COLORS for v in rgb] + [0] * (3 * (256 - len(COLORS)))


def _label(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5, (h, w), dtype=np.uint8)


def _write_pair(folder, name, label: np.ndarray, *, colour=(0, 0, 0), image_size=None, label_im=None):
    """A one-colour JPEG and a 4-bit palette PNG label like the real ones (or `label_im` as given)."""
    Image.new("RGB", (label.shape[1], label.shape[0]) if image_size is None else image_size[::-1], colour).save(
        folder / f"{name}.jpg", quality=95
    )
    if label_im is None:
        label_im = Image.fromarray(label, "P")
        label_im.putpalette(PALETTE)
        label_im.save(folder / f"{name}.png", bits=4)
    else:
        label_im.save(folder / f"{name}.png")


def _folder(tmp_path, n=3, h=6, w=8):
    for i in range(n):
        _write_pair(tmp_path, f"img_{i:04d}", _label(h, w, i), colour=COLORS[i])
    return tmp_path


def test_classes_and_colours():
    assert CLASSES == ("others", "facade", "pillar", "window", "balcony")
    assert COLORS[1] == (0, 128, 255) and COLORS[4] == (255, 0, 0)


def test_load_folder_roundtrip(tmp_path):
    _folder(tmp_path, n=3)
    data = load_folder(tmp_path, progress=False)
    assert data.names == ["img_0000", "img_0001", "img_0002"]
    assert data.images.dtype == torch.uint8 and data.images.shape == (3, 3, 6, 8)
    assert data.labels.dtype == torch.uint8 and data.labels.shape == (3, 6, 8)
    for i in range(3):
        assert torch.equal(data.labels[i], torch.from_numpy(_label(6, 8, i)))
        # JPEG keeps a flat colour to within a few levels.
        assert (data.images[i].int() - torch.tensor(COLORS[i]).view(3, 1, 1)).abs().max() <= 4


def test_grey_image_and_l_mode_label_are_accepted(tmp_path):
    Image.fromarray(np.full((4, 4), 90, np.uint8), "L").save(tmp_path / "a.jpg")
    Image.fromarray(np.full((4, 4), 3, np.uint8), "L").save(tmp_path / "a.png")
    data = load_folder(tmp_path, progress=False)
    assert data.images.shape == (1, 3, 4, 4) and data.labels.unique().tolist() == [3]


def test_unlabelled_folder_without_require_labels(tmp_path):
    Image.new("RGB", (5, 4)).save(tmp_path / "a.jpeg")
    Image.new("RGB", (5, 4)).save(tmp_path / "b.jpg")
    data = load_folder(tmp_path, require_labels=False, progress=False)
    assert data.labels is None and data.names == ["a", "b"] and data.images.shape == (2, 3, 4, 5)
    with pytest.raises(DataError, match=r"no label a\.png"):
        load_folder(tmp_path, progress=False)
    _write_pair(tmp_path, "c", _label(4, 5, 0))
    with pytest.raises(DataError, match="2 of 3 lack one"):
        load_folder(tmp_path, require_labels=False, progress=False)


def _fails(folder, match: str) -> str:
    with pytest.raises(DataError, match=match) as info:
        load_folder(folder, progress=False)
    assert "\n" not in str(info.value) and ";" in str(info.value)
    return str(info.value)


def test_missing_empty_and_imageless_folders(tmp_path):
    _fails(tmp_path / "nope", "folder not found")
    _fails(tmp_path, "no .jpg images")
    (tmp_path / "readme.txt").write_text("hi")
    _fails(tmp_path, "no .jpg images")
    _fails(tmp_path / "readme.txt", "folder not found")


def test_missing_partner_files(tmp_path):
    _folder(tmp_path, n=2)
    (tmp_path / "img_0001.jpg").unlink()
    _fails(tmp_path, r"img_0001\.png: label has no image")
    _write_pair(tmp_path, "img_0001", _label(6, 8, 1))
    (tmp_path / "img_0000.png").unlink()
    _fails(tmp_path, r"img_0000\.jpg: no label")


def test_duplicate_image_names(tmp_path):
    _folder(tmp_path, n=1)
    Image.new("RGB", (8, 6)).save(tmp_path / "img_0000.jpeg")
    _fails(tmp_path, "share a name")


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_truncated_files(tmp_path, suffix):
    _folder(tmp_path, n=2, h=64, w=64)
    rng = np.random.default_rng(0)
    if suffix == "jpg":  # noise, so the cut lands in the pixel data
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "img_0001.jpg")
    path = tmp_path / f"img_0001.{suffix}"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _fails(tmp_path, rf"img_0001\.{suffix}: not a readable")


def test_text_file_named_jpg(tmp_path):
    _folder(tmp_path, n=1)
    (tmp_path / "img_0000.jpg").write_text("hello")
    _fails(tmp_path, "not a readable image")


def test_image_and_label_size_mismatch(tmp_path):
    _write_pair(tmp_path, "a", _label(6, 8, 0), image_size=(6, 9))
    _fails(tmp_path, r"a\.png: label is 8x6 but its image is 9x6")


def test_images_of_different_sizes(tmp_path):
    _write_pair(tmp_path, "a", _label(6, 8, 0))
    _write_pair(tmp_path, "b", _label(7, 8, 0))
    _fails(tmp_path, "differ in size")


def test_rgb_label_is_refused(tmp_path):
    label = _label(6, 8, 0)
    rgb = Image.fromarray(np.array(COLORS, dtype=np.uint8)[label])
    _write_pair(tmp_path, "a", label, label_im=rgb)
    message = _fails(tmp_path, "mode RGB")
    assert "index PNG" in message


def test_16_bit_label_is_refused(tmp_path):
    wide = Image.fromarray(_label(6, 8, 0).astype(np.uint16))
    _write_pair(tmp_path, "a", _label(6, 8, 0), label_im=wide)
    _fails(tmp_path, "16-bit")


def test_label_values_above_4_are_refused(tmp_path):
    label = _label(6, 8, 0)
    label[0, 0], label[1, 1], label[2, 2] = 9, 7, 9
    im = Image.fromarray(label, "L")
    _write_pair(tmp_path, "a", label.clip(0, 4), label_im=im)
    _fails(tmp_path, r"a\.png: label holds values \[7, 9\]")


def test_find_facade_dir_order(tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "explicit", tmp_path / "env"
    explicit.mkdir()
    from_env.mkdir()
    monkeypatch.setenv("CNNLAB_FACADE_DIR", str(from_env))
    assert find_facade_dir(explicit) == explicit.resolve()
    assert find_facade_dir(None) == from_env.resolve()
    with pytest.raises(DataError, match="--data-dir"):
        find_facade_dir(tmp_path / "missing")
    monkeypatch.setenv("CNNLAB_FACADE_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="CNNLAB_FACADE_DIR"):
        find_facade_dir(None)
    monkeypatch.delenv("CNNLAB_FACADE_DIR")
    monkeypatch.setattr(facade, "_DEFAULT_SUBDIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"tried .*nowhere.*--data-dir or set CNNLAB_FACADE_DIR"):
        find_facade_dir(None)


NAMES = [f"eecs442_{i:04d}" for i in range(906)]


def test_group_keys_specs():
    assert group_keys(NAMES, "index-mod:302") == [i % 302 for i in range(906)]
    assert group_keys(["a", "b"], "file") == [0, 1]
    assert group_keys(["x_1_a", "y_2_b", "z_1_c"], r"regex:_(\d+)_") == [0, 1, 0]
    for bad in ["index-mod:0", "index-mod:x", "by-building", "regex:no_group", "regex:(unclosed"]:
        with pytest.raises(ConfigError, match="group spec"):
            group_keys(NAMES, bad)
    with pytest.raises(DataError, match="nodigits: file name does not match"):
        group_keys(["a1", "nodigits"], "index-mod:3")


def test_group_split_keeps_buildings_together():
    groups = group_keys(NAMES, "index-mod:302")
    split = group_split(groups, val_fraction=0.15, test_fraction=0.1, seed=0)
    assert all(split[s].dtype == torch.int64 for s in split)
    everything = torch.cat([split["train"], split["val"], split["test"]])
    assert sorted(everything.tolist()) == list(range(906))
    buildings = {s: {groups[i] for i in split[s].tolist()} for s in split}
    assert len(buildings["val"]) == 45 and len(buildings["test"]) == 30 and len(buildings["train"]) == 227
    assert not (buildings["train"] & buildings["val"] or buildings["train"] & buildings["test"])
    assert not buildings["val"] & buildings["test"]
    assert len(split["val"]) == 3 * 45


def test_group_split_is_deterministic_by_seed():
    groups = group_keys(NAMES, "index-mod:302")
    first = group_split(groups, val_fraction=0.1, test_fraction=0.0, seed=3)
    again = group_split(groups, val_fraction=0.1, test_fraction=0.0, seed=3)
    other = group_split(groups, val_fraction=0.1, test_fraction=0.0, seed=4)
    assert all(torch.equal(first[s], again[s]) for s in first)
    assert not torch.equal(first["val"], other["val"])
    assert first["test"].numel() == 0


def test_group_split_refuses_impossible_fractions():
    with pytest.raises(ConfigError):
        group_split([0, 1, 2], val_fraction=0.6, test_fraction=0.5, seed=0)
    with pytest.raises(DataError, match="too few"):
        group_split([0, 1, 2], val_fraction=0.1, test_fraction=0.0, seed=0)


def test_class_frequencies():
    labels = torch.tensor([[0, 0, 1, 3], [3, 3, 3, 4]], dtype=torch.uint8)
    assert class_frequencies(labels, 5).tolist() == [2 / 8, 1 / 8, 0.0, 4 / 8, 1 / 8]
    # An ignore value (255) counts for no class: the shares are of the labelled pixels.
    labels[0, 0] = 255
    assert class_frequencies(labels, 5).tolist() == [1 / 7, 1 / 7, 0.0, 4 / 7, 1 / 7]


def _real_folder():
    try:
        return find_facade_dir(None)
    except DataError as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"real facade data is required on CI: {e}")
        pytest.skip(f"real facade data not available: {e}")


def test_real_facade_folder():
    folder = _real_folder()
    start = time.perf_counter()
    data = load_folder(folder, progress=False)
    print(f"loaded {len(data.names)} facade pairs in {time.perf_counter() - start:.1f} s")
    assert data.images.shape == (906, 3, 256, 256) and data.labels.shape == (906, 256, 256)
    assert data.names[0] == "eecs442_0000" and data.names[-1] == "eecs442_0905"
    assert data.labels.max() <= 4
    shares = class_frequencies(data.labels, 5) * 100
    assert torch.allclose(shares, torch.tensor([35.5, 40.6, 2.4, 16.5, 5.1], dtype=torch.float64), atol=0.5)
