"""Decoding an image file into the 8-bit RGB picture it shows; training and inference both read images here.

`img.convert("RGB")` alone gets three kinds of file wrong, so they are converted first (and named, so
the inspector can count them):

- 16-bit (and 32-bit integer) greyscale, e.g. a 16-bit PNG: PIL clips values above 255, which turns
  the picture almost white. The values are scaled to 8 bit instead (65535 -> 255).
- EXIF orientation (phone photos): the pixels are stored rotated and a tag says how to show them. The
  tag is applied, so the model sees what a viewer shows.
- Transparency (an alpha channel, or a transparent palette/colour key): dropping alpha shows whatever
  colour the hidden pixels happen to hold. They are composited on a fixed white background
  (`BACKGROUND`), as a page shows them.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default decompression-bomb limit (about 0.25 GB at 24 bit)

# The conversions `to_rgb` may make, by name (what the inspector counts).
HIGH_BIT_DEPTH, EXIF_ORIENTATION, TRANSPARENCY = "high bit depth", "EXIF orientation", "transparency"
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # integer greyscale wider than 8 bit
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageDecodeError(ValueError):
    """An image file that cannot be used; `kind` is missing | directory | too_large | bomb | unreadable | corrupt."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # mode "RGB", 8 bit, upright
    conversions: Tuple[str, ...]  # which of HIGH_BIT_DEPTH, EXIF_ORIENTATION, TRANSPARENCY were applied


def decode_image(source: Union[str, os.PathLike, bytes], max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Decoded:
    """Open a file path (or the bytes of an encoded file), fully decode it and convert it with `to_rgb`.

    The size is checked from the header before decoding, so a decompression bomb costs nothing.
    """
    if isinstance(source, (bytes, bytearray)):
        opener = io.BytesIO(source)
    else:
        path = os.fspath(source)
        if os.path.isdir(path):
            raise ImageDecodeError("directory", "is a directory, not an image file")
        if not os.path.isfile(path):
            raise ImageDecodeError("missing", "no such file")
        opener = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opener) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageDecodeError("too_large", f"{w}x{h} = {w * h} pixels exceeds the {max_pixels}-pixel "
                                                        f"limit (decompression bomb guard; raise max_pixels if the "
                                                        f"image is genuine)")
                img.load()
                image, conversions = to_rgb(img)
                return Decoded(image, conversions)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError("bomb", f"refused as a decompression bomb: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("unreadable", "not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated data, bad chunks, broken headers
        raise ImageDecodeError("corrupt", f"corrupt or unreadable image: {e}") from None


def to_rgb(img: Image.Image) -> Tuple[Image.Image, Tuple[str, ...]]:
    """(8-bit RGB image as a viewer shows it, the conversions made): EXIF orientation applied, wide
    integer greyscale scaled to 8 bit, transparency composited on `BACKGROUND`."""
    conversions = []
    orientation = img.getexif().get(0x0112, 1)  # 0x0112: the EXIF Orientation tag; 1 = as stored
    if orientation not in (1, None):
        img = ImageOps.exif_transpose(img)
        conversions.append(EXIF_ORIENTATION)
    if img.mode in _WIDE_MODES:
        img = _scale_to_8_bit(img)
        conversions.append(HIGH_BIT_DEPTH)
    if img.mode in _ALPHA_MODES or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:  # some pixel is not opaque
            background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
            img = Image.alpha_composite(background, rgba)
            conversions.append(TRANSPARENCY)
        else:
            img = rgba
    return (img if img.mode == "RGB" else img.convert("RGB")), tuple(conversions)


def _scale_to_8_bit(img: Image.Image) -> Image.Image:
    """16-bit greyscale (PIL modes I;16*, and I, as which PIL reports 16-bit PNGs) -> 8-bit L, 65535 -> 255."""
    x = np.asarray(img).astype(np.float64)  # [H, W]
    x = np.clip(x, 0, 65535) / 257.0  # 65535 / 257 = 255: full scale to full scale
    return Image.fromarray(np.round(x).astype(np.uint8), "L")
