"""Loading a user's photo safely: any common format, EXIF rotation, and no decompression bombs."""

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..errors import DataError, NotAnImageError

_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_SOURCE_NAMES = {"1": "1-bit black/white", "L": "greyscale", "P": "palette", "LA": "greyscale+alpha"}
_EXIF_ORIENTATION = 0x0112
MAX_PIXELS = 40_000_000  # a 40-megapixel photo; far larger declared sizes are decompression bombs


def load_photo(
    path: str | Path, *, mode: str = "RGB", max_pixels: int = MAX_PIXELS, min_side: int = 1
) -> tuple[Tensor, list[str]]:
    """Read an image file as uint8 (C, H, W), C = 3 for mode "RGB" or 1 for "L".

    Returns the pixels and human notes on what was done to them (EXIF rotation, mode conversion).
    Any problem with the file raises DataError.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image file; give the path of a photo")
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes); give a real JPEG or PNG photo")
    return read_photo(path, str(path), mode=mode, max_pixels=max_pixels, min_side=min_side)


def read_photo(
    source: str | Path | BinaryIO,
    name: str,
    *,
    mode: str = "RGB",
    max_pixels: int = MAX_PIXELS,
    min_side: int = 1,
    formats: tuple[str, ...] | None = None,
) -> tuple[Tensor, list[str]]:
    """`load_photo` for a path or an open binary file (an upload in memory); `name` stands for it in messages.

    `formats` limits the decoders PIL may try (for untrusted input); data in any other format raises
    NotAnImageError, as non-image data does. Any other problem raises DataError.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    notes: list[str] = []
    try:
        # Our own pixel limit is checked from the header below, so PIL's softer warning is noise here;
        # its hard DecompressionBombError (over twice its own limit) still stops a bomb at open().
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source, formats=formats) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise DataError(
                        f"{name}: declares {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{max_pixels:,}; shrink the image first (this also stops decompression bombs)"
                    )
                if min(width, height) < min_side:
                    raise DataError(
                        f"{name}: {width}x{height} pixels is too small to predict on (under {min_side} px on a "
                        f"side); give a larger image"
                    )
                if getattr(im, "n_frames", 1) > 1:
                    notes.append(f"used the first of {im.n_frames} frames")
                im.load()  # decode everything now so a truncated file fails here
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                im = ImageOps.exif_transpose(im)
    except UnidentifiedImageError as e:
        raise NotAnImageError(f"{name}: not a readable image (no image format cnnlab reads); give a JPEG or PNG") from e
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{name}: refused as a possible decompression bomb ({_one_line(e)}); shrink the image first"
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"{name}: not a readable image ({_one_line(e)}); give a complete JPEG or PNG") from e
    if orientation in range(2, 9):
        notes.append(f"rotated per EXIF orientation {orientation}")
    im = _convert(im, mode, notes)
    pixels = np.array(im)
    # numpy makes the channels-first copy: torch's threaded copy of one small image is ~80x slower
    # when another process keeps the cores busy (8 ms against 0.1 ms on a shared 2-core machine).
    pixels = pixels[None] if mode == "L" else np.ascontiguousarray(pixels.transpose(2, 0, 1))
    return torch.from_numpy(pixels), notes


def _convert(im: Image.Image, mode: str, notes: list[str]) -> Image.Image:
    source = im.mode
    if source == mode:
        return im
    detail = ""
    if source in _SIXTEEN_BIT_GREY:
        # Scale 0..65535 to 0..255 with rounding; PIL's own convert("L") would clip instead.
        wide = np.asarray(im).astype(np.int64)
        im = Image.fromarray(((np.clip(wide, 0, 65535) + 128) // 257).astype(np.uint8), "L")
        source_name = "16-bit grey"
    else:
        source_name = _SOURCE_NAMES.get(source, source)
        if source in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
            # Transparent areas would otherwise come out as whatever colour the encoder left there.
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba)
            detail = " (alpha composited on white)"
    im = im.convert(mode)
    notes.append(f"converted from {source_name} to {mode}{detail}")
    return im


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
