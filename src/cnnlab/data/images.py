"""Loading a user's photo safely: allowed formats only, EXIF rotation, bounded memory, no decompression bombs."""

import glob
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import DataError, NotAnImageError

# What cameras and browsers send. PIL reads many riskier formats (EPS runs Ghostscript), whatever the suffix.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Suffixes of the image files a folder or a pattern given to predict/explain stands for.
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 40_000_000  # a 40-megapixel photo; far larger declared sizes are decompression bombs
# Phone panoramas reach about 10:1; a longer strip holds nothing to predict on once fitted to a square.
MAX_ASPECT = 50

SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_GREY = ("1", "L", "LA", "La", "F", *SIXTEEN_BIT_GREY)  # modes that mode="any" decodes as "L"
_SOURCE_NAMES = {"1": "1-bit black/white", "L": "greyscale", "P": "palette", "LA": "greyscale+alpha"}
EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def image_files(names: list[Path]) -> list[Path]:
    """The image files the user named: files as given, a folder's image files (by suffix, sorted, not
    recursive), and a glob pattern's matches (`'photos/*.jpg'`, quoted so the shell leaves it to us).

    A folder or pattern without images is an error, so a typo never predicts on nothing."""
    files: list[Path] = []
    for name in names:
        if name.is_dir():
            found = sorted(p for p in name.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise DataError(f"{name}: no image files in this folder ({', '.join(SUFFIXES)}); check the folder")
            files += found
        elif not name.exists() and glob.has_magic(str(name)):
            found = sorted(Path(p) for p in glob.glob(str(name), recursive=True) if Path(p).is_file())
            if not found:
                raise DataError(f"{name}: no file matches this pattern; check the pattern")
            files += found
        else:
            files.append(name)
    return files


def label_maps_beside_photos(files: list[Path]) -> list[Path]:
    """The PNGs among `files` that are label maps of a photo also among them: NAME.png (one channel of at
    most 8 bits, as masks are) beside NAME.jpg in the same folder, the layout `evaluate --data` takes."""
    photos = {(p.parent, p.stem) for p in files if p.suffix.lower() in (".jpg", ".jpeg")}
    found = []
    for p in files:
        if p.suffix.lower() == ".png" and (p.parent, p.stem) in photos:
            try:
                with Image.open(p) as im:
                    if im.mode in ("P", "L", "1"):
                        found.append(p)
            except (OSError, SyntaxError):
                pass  # unreadable: left to the photo reader, which names the problem
    return found


def load_photo(
    path: str | Path,
    *,
    mode: str = "RGB",
    max_pixels: int = MAX_PIXELS,
    min_side: int = 1,
    formats: tuple[str, ...] = FORMATS,
    max_side: int | None = None,
) -> tuple[Tensor, list[str]]:
    """Read an image file as uint8 (C, H, W), C = 3 for mode "RGB" or 1 for "L"; mode "any" keeps a grey
    file grey (C = 1) and reads any other in colour (C = 3).

    Returns the pixels and human notes on what was done to them (EXIF rotation, mode conversion,
    downscaling). Any problem with the file raises DataError. See `read_photo` for the parameters.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image file; give the path of a photo")
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes); give a real JPEG or PNG photo")
    return read_photo(
        path, str(path), mode=mode, max_pixels=max_pixels, min_side=min_side, formats=formats, max_side=max_side
    )


def read_photo(
    source: str | Path | BinaryIO,
    name: str,
    *,
    mode: str = "RGB",
    max_pixels: int = MAX_PIXELS,
    min_side: int = 1,
    formats: tuple[str, ...] = FORMATS,
    max_side: int | None = None,
) -> tuple[Tensor, list[str]]:
    """`load_photo` for a path or an open binary file (an upload in memory); `name` stands for it in messages.

    `formats` limits the decoders PIL may try; data in any other format raises NotAnImageError, as
    non-image data does. `max_side` bounds the longer side of the result: larger images are shrunk
    while decoding where the format allows (JPEG at 1/2, 1/4 or 1/8 scale), then resized, so the
    memory a call takes is bounded by what the caller needs rather than by the file's declared size.
    Images over `max_pixels`, under `min_side` or longer than MAX_ASPECT:1 raise DataError before
    any pixel is decoded; any other problem raises DataError too.
    """
    if mode not in ("RGB", "L", "any"):
        raise ValueError(f"mode must be 'RGB', 'L' or 'any', not {mode!r}")
    try:
        # Our own pixel limit is checked from the header, so PIL's softer warning is noise here;
        # its hard DecompressionBombError (over twice its own limit) still stops a bomb at open().
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source, formats=formats) as opened:
                im, notes = _decode(opened, name, mode, max_pixels, min_side, max_side)
    except UnidentifiedImageError as e:
        allowed = ", ".join(formats)
        raise NotAnImageError(
            f"{name}: not a readable image (cnnlab reads only {allowed}); give an image in one of those formats"
        ) from e
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{name}: refused as a possible decompression bomb ({_one_line(e)}); shrink the image first"
        ) from e
    # PIL reports some malformed files with other errors still (found by fuzzing): TypeError for a TIFF
    # frame without dimensions, struct.error for a GIF cut inside a frame header.
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error) as e:
        raise DataError(f"{name}: not a readable image ({_one_line(e)}); give a complete JPEG or PNG") from e
    pixels = np.array(im)
    # numpy makes the channels-first copy: torch's threaded copy of one small image is ~80x slower
    # when another process keeps the cores busy (8 ms against 0.1 ms on a shared 2-core machine).
    pixels = pixels[None] if im.mode == "L" else np.ascontiguousarray(pixels.transpose(2, 0, 1))
    return torch.from_numpy(pixels), notes


def shrink(pixels: Tensor, max_side: int) -> Tensor:
    """uint8 (C, H, W), C = 1 or 3, shrunk by area averaging to at most `max_side` on the longer side.

    PIL does it on the 8-bit pixels: a float copy of a 40-megapixel image alone would take 160 MB per channel.
    """
    _, height, width = pixels.shape
    size = _fit(width, height, max_side)
    if size == (width, height):
        return pixels
    im = Image.fromarray(pixels[0].numpy() if len(pixels) == 1 else pixels.permute(1, 2, 0).numpy())
    small = np.array(im.resize(size, Image.Resampling.BOX))
    return torch.from_numpy(small[None] if small.ndim == 2 else np.ascontiguousarray(small.transpose(2, 0, 1)))


def _decode(
    im: Image.Image, name: str, mode: str, max_pixels: int, min_side: int, max_side: int | None
) -> tuple[Image.Image, list[str]]:
    """The opened `im` decoded, shrunk, upright and in `mode`, with notes on what was done."""
    _check_header(im, name, max_pixels, min_side)
    if mode == "any":
        mode = "L" if im.mode in _GREY else "RGB"
    notes = [f"used the first of {im.n_frames} frames"] if getattr(im, "n_frames", 1) > 1 else []
    width, height = im.size
    target = _fit(width, height, max_side)
    if target != (width, height):
        # JPEG: libjpeg decodes straight to 1/2, 1/4 or 1/8 size, never holding the full image.
        # Other formats ignore the draft and are shrunk once decoded.
        im.draft(None, target)
    im.load()  # decode everything now so a truncated file fails here
    orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    source, transparent = im.mode, "transparency" in im.info
    if target != (width, height):
        scale = round(width / im.width)
        if im.size != target:
            # BOX is exact area averaging, as torch's "area" mode that the models' inputs are resized with.
            im = _resizable(im, mode, transparent).resize(target, Image.Resampling.BOX)
        how = f" (decoded at 1/{scale} scale)" if scale > 1 else ""
        notes.append(f"downscaled {width}x{height} to {target[0]}x{target[1]}{how}")
    if orientation in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[orientation])
        notes.append(f"rotated per EXIF orientation {orientation}")
    return _convert(im, mode, notes, source, transparent), notes


def _check_header(im: Image.Image, name: str, max_pixels: int, min_side: int) -> None:
    width, height = im.size
    if width * height > max_pixels:
        raise DataError(
            f"{name}: declares {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; shrink the image first (this also stops decompression bombs)"
        )
    if min(width, height) < min_side:
        raise DataError(
            f"{name}: {width}x{height} pixels is too small to predict on (under {min_side} px on a side); "
            "give a larger image"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise DataError(
            f"{name}: {width}x{height} pixels is a strip longer than {MAX_ASPECT}:1; crop it to the part to predict on"
        )


def _fit(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size of width x height shrunk to at most `max_side` on the longer side, aspect kept."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, min(max_side, round(width * scale))), max(1, min(max_side, round(height * scale)))


def _resizable(im: Image.Image, mode: str, transparent: bool) -> Image.Image:
    """`im` in a mode whose values may be averaged (palette indices and 16-bit greys may not), on the way to `mode`."""
    if im.mode == "1":
        return im.convert("L")
    if im.mode == "PA" or (im.mode == "P" and transparent):
        return im.convert("RGBA")  # keeps a transparent palette entry transparent, for compositing on white
    if im.mode == "P":
        return im.convert(mode)  # what _convert does anyway, and 1 byte a pixel for "L" instead of 4
    if im.mode in SIXTEEN_BIT_GREY:
        return im.convert("I")
    return im


def _convert(im: Image.Image, mode: str, notes: list[str], source: str, transparent: bool) -> Image.Image:
    """`im` in `mode`; `source` and `transparent` describe the decoded image, which `_resizable` may have changed."""
    if source == mode and im.mode == mode:
        return im
    detail = ""
    if im.mode in SIXTEEN_BIT_GREY:
        # Scale 0..65535 to 0..255 with rounding; PIL's own convert("L") would clip instead.
        wide = np.clip(np.asarray(im), 0, 65535).astype(np.int32)  # int32, not int64: half the memory
        wide += 128
        wide //= 257
        im = Image.fromarray(wide.astype(np.uint8), "L")
    elif source in ("RGBA", "RGBa", "LA", "La", "PA") or transparent:
        # Transparent areas would otherwise come out as whatever colour the encoder left there.
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba)
        detail = " (alpha composited on white)"
    im = im.convert(mode)
    if source != mode:
        source_name = "16-bit grey" if source in SIXTEEN_BIT_GREY else _SOURCE_NAMES.get(source, source)
        notes.append(f"converted from {source_name} to {mode}{detail}")
    return im


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
