import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.facade import load_folder
from cnnlab.data.images import FORMATS, load_photo, read_photo, shrink
from cnnlab.errors import DataError, NotAnImageError, NothingFound
from cnnlab.tasks.fashion import MAX_SIDE, MIN_SIDE, fashion_pixels


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _raises_one_line(path, match: str, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        load_photo(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_plain_rgb_png_roundtrips_exactly(tmp_path):
    pixels = _noise(7, 5)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image, notes = load_photo(tmp_path / "a.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 7, 5)
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
    assert notes == []


def test_exif_orientation_is_applied(tmp_path):
    # 40 wide, 20 high: left half red, right half blue. Orientation 6 = rotate 90 degrees clockwise
    # to display, so the upright image is 20 wide, 40 high with red on top.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20, 0] = 255
    pixels[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=95)
    image, notes = load_photo(tmp_path / "r.jpg")
    assert image.shape == (3, 40, 20)
    assert notes == ["rotated per EXIF orientation 6"]
    top, bottom = image[:, 2:18].float().mean(dim=(1, 2)), image[:, 22:38].float().mean(dim=(1, 2))
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


def test_grey_png_to_rgb_and_to_l(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    image, notes = load_photo(tmp_path / "g.png")
    assert image.shape == (3, 3, 4)
    assert all(torch.equal(image[c], torch.from_numpy(grey)) for c in range(3))
    assert notes == ["converted from greyscale to RGB"]
    image, notes = load_photo(tmp_path / "g.png", mode="L")
    assert image.shape == (1, 3, 4) and torch.equal(image[0], torch.from_numpy(grey)) and notes == []


def test_mode_any_keeps_grey_files_grey_and_colour_files_colour(tmp_path):
    """The fashion model sees grey but finds a garment by its colour too: it decodes photos with mode "any"."""
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(np.stack([grey, grey // 2, 255 - grey], 2), "RGB").save(tmp_path / "c.png")
    Image.fromarray(grey, "L").convert("P").save(tmp_path / "p.png")
    for name, channels, notes in (
        ("g.png", 1, []),
        ("g16.png", 1, ["converted from 16-bit grey to L"]),
        ("c.png", 3, []),
        ("p.png", 3, ["converted from palette to RGB"]),
    ):
        image, said = load_photo(tmp_path / name, mode="any")
        assert image.shape == (channels, 3, 4) and said == notes, (name, said)
    assert torch.equal(load_photo(tmp_path / "g.png", mode="any")[0][0], torch.from_numpy(grey))


def test_rgb_to_l_uses_luma(tmp_path):
    Image.fromarray(np.full((2, 2, 3), (255, 0, 0), dtype=np.uint8)).save(tmp_path / "red.png")
    image, notes = load_photo(tmp_path / "red.png", mode="L")
    assert image.shape == (1, 2, 2) and abs(int(image[0, 0, 0]) - 76) <= 1
    assert notes == ["converted from RGB to L"]


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0] = (10, 20, 30, 255)  # opaque row keeps its colour
    rgba[1] = (10, 20, 30, 0)  # transparent row becomes white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    image, notes = load_photo(tmp_path / "t.png")
    assert image[:, 0].T.tolist() == [[10, 20, 30]] * 3
    assert image[:, 1].T.tolist() == [[255, 255, 255]] * 3
    assert notes == ["converted from RGBA to RGB (alpha composited on white)"]


def test_palette_with_transparency_is_composited(tmp_path):
    im = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    im.save(tmp_path / "p.png", transparency=0)
    image, notes = load_photo(tmp_path / "p.png")
    assert image[:, 0, 0].tolist() == [255, 255, 255] and image[:, 0, 1].tolist() == [200, 100, 50]
    assert notes == ["converted from palette to RGB (alpha composited on white)"]


def test_16_bit_grey_is_scaled(tmp_path):
    wide = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode.startswith("I")
    image, notes = load_photo(tmp_path / "w.png")
    assert image[0].tolist() == [[0, 100, 255]]
    assert notes == ["converted from 16-bit grey to RGB"]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    image, notes = load_photo(tmp_path / "c.jpg")
    assert image.shape == (3, 8, 8) and image.float().mean() > 240  # no ink = white
    assert notes == ["converted from CMYK to RGB"]


def test_one_bit_png(tmp_path):
    Image.fromarray(np.array([[True, False]])).convert("1").save(tmp_path / "b.png")
    image, notes = load_photo(tmp_path / "b.png")
    assert image[:, 0].T.tolist() == [[255, 255, 255], [0, 0, 0]]
    assert notes == ["converted from 1-bit black/white to RGB"]


def test_one_by_one_image_loads(tmp_path):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "dot.png")
    image, _ = load_photo(tmp_path / "dot.png")
    assert image.tolist() == [[[1]], [[2]], [[3]]]


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_truncated_file_is_refused(tmp_path, suffix):
    Image.fromarray(_noise(64, 64)).save(tmp_path / f"full.{suffix}")
    data = (tmp_path / f"full.{suffix}").read_bytes()
    (tmp_path / f"cut.{suffix}").write_bytes(data[: len(data) // 2])
    _raises_one_line(tmp_path / f"cut.{suffix}", "not a readable image")


def test_non_image_empty_missing_and_folder_are_refused(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    _raises_one_line(tmp_path / "notes.jpg", "not a readable image")
    (tmp_path / "empty.png").write_bytes(b"")
    _raises_one_line(tmp_path / "empty.png", "empty")
    _raises_one_line(tmp_path / "missing.jpg", "not found")
    _raises_one_line(tmp_path, "folder")


def _png_declaring(path, width: int, height: int) -> None:
    """A tiny valid PNG whose IHDR is then patched to declare width x height."""
    Image.new("1", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = ihdr[4:12]
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))


def test_declared_size_over_limit_is_refused_before_decoding(tmp_path):
    _png_declaring(tmp_path / "big.png", 8000, 8000)  # 64M pixels: over ours, under PIL's own limit
    message = _raises_one_line(tmp_path / "big.png", "over the limit")
    assert "8000x8000" in message
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    _raises_one_line(tmp_path / "small.png", "over the limit", max_pixels=5000)


def test_decompression_bomb_is_refused(tmp_path):
    _png_declaring(tmp_path / "bomb.png", 60000, 60000)  # 3.6G pixels: PIL itself refuses at open
    _raises_one_line(tmp_path / "bomb.png", "decompression bomb", max_pixels=10**10)
    _raises_one_line(tmp_path / "bomb.png", "decompression bomb|over the limit")


# ---- Bounded decoding: max_side, aspect ratio, allowed formats


def test_max_side_decodes_a_jpeg_at_reduced_scale(tmp_path):
    Image.new("RGB", (4000, 3000), (200, 30, 40)).save(tmp_path / "big.jpg", quality=95)
    image, notes = load_photo(tmp_path / "big.jpg", max_side=500)
    assert image.shape == (3, 375, 500)
    assert notes == ["downscaled 4000x3000 to 500x375 (decoded at 1/8 scale)"]
    assert image.float().mean(dim=(1, 2)).tolist() == pytest.approx([200, 30, 40], abs=3)


@pytest.mark.parametrize(
    ("mode", "fill", "expected", "note"),
    [
        ("RGB", (10, 200, 30), [10, 200, 30], None),
        ("1", 1, [255, 255, 255], "converted from 1-bit black/white to RGB"),
        ("L", 90, [90, 90, 90], "converted from greyscale to RGB"),
        ("LA", (90, 0), [255, 255, 255], "converted from greyscale+alpha to RGB (alpha composited on white)"),
        ("RGBA", (10, 200, 30, 255), [10, 200, 30], "converted from RGBA to RGB (alpha composited on white)"),
        ("I;16", 257 * 100, [100, 100, 100], "converted from 16-bit grey to RGB"),
    ],
)
def test_max_side_shrinks_every_mode_to_the_same_colours(tmp_path, mode, fill, expected, note):
    Image.new(mode, (900, 600), fill).save(tmp_path / "big.png")
    image, notes = load_photo(tmp_path / "big.png", max_side=90)
    assert image.shape == (3, 60, 90) and image.dtype == torch.uint8
    assert image[:, 30, 45].tolist() == expected and bool((image == image[:, :1, :1]).all())
    assert notes == ["downscaled 900x600 to 90x60", *([note] if note else [])]


@pytest.mark.parametrize("transparent", [False, True])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_palette_images_are_shrunk_as_colours_not_indices(tmp_path, transparent, mode):
    # Fine stripes of palette entries 0 and 2: averaging the indices would give entry 1 (pure green).
    stripes = (np.indices((300, 600))[1] % 2 * 2).astype(np.uint8)
    im = Image.fromarray(stripes, "P")
    im.putpalette([0, 0, 0, 0, 255, 0, 200, 200, 200] + [0] * 759)
    im.save(tmp_path / "p.png", **({"transparency": 0} if transparent else {}))
    image, notes = load_photo(tmp_path / "p.png", mode=mode, max_side=100)
    assert image.shape == ((3, 50, 100) if mode == "RGB" else (1, 50, 100))
    black_or_white = 255 if transparent else 0  # transparent entry 0 is composited on white
    assert image[:, 25, 50].tolist() == pytest.approx([(black_or_white + 200) / 2] * len(image), abs=2)
    assert notes[1] == f"converted from palette to {mode}" + (" (alpha composited on white)" if transparent else "")


def test_exif_rotation_survives_shrinking(tmp_path):
    pixels = np.zeros((200, 400, 3), dtype=np.uint8)
    pixels[:, :200, 0] = 255  # left half red; orientation 6 puts it on top
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=95)
    image, notes = load_photo(tmp_path / "r.jpg", max_side=100)
    assert image.shape == (3, 100, 50)
    assert notes == ["downscaled 400x200 to 100x50 (decoded at 1/4 scale)", "rotated per EXIF orientation 6"]
    assert image[0, 10, 25] > 200 and image[0, 90, 25] < 50


def test_small_images_are_not_touched_by_max_side(tmp_path):
    pixels = _noise(30, 40)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image, notes = load_photo(tmp_path / "a.png", max_side=40)
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1)) and notes == []


def test_strips_longer_than_the_aspect_limit_are_refused_before_decoding(tmp_path):
    _png_declaring(tmp_path / "strip.png", 200_000, 200)  # 40 MP, under the pixel cap; no pixel data at all
    message = _raises_one_line(tmp_path / "strip.png", "longer than 50:1", mode="L", max_side=280)
    assert "200000x200" in message
    Image.new("L", (2000, 40)).save(tmp_path / "ok.png")
    assert load_photo(tmp_path / "ok.png")[0].shape == (3, 40, 2000)  # exactly 50:1 is allowed


@pytest.mark.parametrize("fmt", ["EPS", "PDF", "ICO", "PCX", "TGA", "PPM", "SGI"])
def test_formats_outside_the_allowed_set_are_not_images_whatever_the_suffix(tmp_path, fmt):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(path, format=fmt)
    with pytest.raises(NotAnImageError) as info:
        load_photo(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable image") and "\n" not in message
    assert ", ".join(FORMATS) in message
    with pytest.raises(NotAnImageError):
        read_photo(io.BytesIO(path.read_bytes()), "upload")


def test_every_allowed_format_loads(tmp_path):
    for fmt in FORMATS:
        path = tmp_path / f"a.{fmt.lower()}"
        Image.new("RGB", (64, 48), (0, 0, 255)).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        image, _ = load_photo(path, max_side=32)
        assert image.shape == (3, 24, 32), fmt
        assert image[:, 12, 16].tolist() == pytest.approx([0, 0, 255], abs=2), fmt


def test_shrink_averages_uint8_images():
    grey = torch.zeros(1, 100, 400, dtype=torch.uint8)
    grey[0, :, 1::2] = 200
    assert shrink(grey, 40).shape == (1, 10, 40) and shrink(grey, 40).unique().tolist() == [100]
    rgb = torch.full((3, 30, 20), 7, dtype=torch.uint8)
    assert shrink(rgb, 30) is rgb and shrink(rgb, 15).shape == (3, 15, 10)


def test_fashion_pixels_of_a_huge_strip_stay_small():
    # Padded to a square as floats before any shrinking, this took 160 GB.
    notes: list[str] = []
    with pytest.raises(NothingFound, match=r"no garment found: .* \(grey 0\)"):  # a 1 px high strip holds none
        fashion_pixels(torch.zeros(1, 200, 200_000, dtype=torch.uint8), notes)
    assert notes == ["downscaled 200000x200 to 280x1"]


def test_fashion_input_decodes_at_most_max_side(tmp_path):
    shirt = Image.new("L", (6000, 4000), 255)
    shirt.paste(40, (2000, 1000, 4000, 3000))
    shirt.save(tmp_path / "shirt.jpg")
    x, notes = fashion_pixels(*load_photo(tmp_path / "shirt.jpg", mode="L", min_side=MIN_SIDE, max_side=MAX_SIDE))
    assert x.shape == (1, 28, 28) and notes[0] == f"downscaled 6000x4000 to {MAX_SIDE}x187 (decoded at 1/8 scale)"


# ---- Facade label PNGs


def test_huge_label_is_refused_before_decoding(tmp_path):
    _png_declaring(tmp_path / "a.png", 12_000, 12_000)  # 144 MP
    Image.new("RGB", (8, 6)).save(tmp_path / "a.jpg")
    with pytest.raises(DataError, match=r"a\.png: label declares 12000x12000 = 144,000,000 pixels, over the limit"):
        load_folder(tmp_path, progress=False)


def test_label_must_be_a_png_whatever_its_suffix(tmp_path):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.jpg")
    Image.new("L", (8, 6), 1).save(tmp_path / "a.png", format="JPEG")  # lossy: its class numbers would blur
    with pytest.raises(DataError, match=r"a\.png: not a readable label PNG"):
        load_folder(tmp_path, progress=False)
