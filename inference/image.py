"""Images for inference: open a path (or take a PIL image) and make the ViT's pixel tensor.

Files are decoded by `dataset.image_decode` and the pixels made by `dataset.ImageProcessor` (bicubic
resize, CLIP mean/std), both what training uses, so a model sees the same numbers at inference as in
training.
"""
from __future__ import annotations

import base64
import os
from typing import Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from dataset.image_decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, to_rgb
from dataset.image_processor import ImageProcessor

ImageLike = Union[str, os.PathLike, Image.Image]


class ImageLoadError(ValueError):
    """An image that cannot be used, with the reason (missing file, not an image, ...)."""


def open_image(image: ImageLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The RGB picture a path (or a PIL image) shows, decoded as training decodes it
    (`dataset.image_decode`: 16-bit scaled, EXIF orientation applied, transparency on white)."""
    if isinstance(image, Image.Image):
        return to_rgb(image)[0]
    path = os.fspath(image)
    try:
        return decode_image(path, max_pixels).image
    except ImageDecodeError as e:
        raise ImageLoadError(f"image {path}: {e.reason}") from None


def image_from_base64(data: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A VLMEvalKit TSV cell (base64 of the encoded file) as an RGB image, decoded like a file."""
    try:
        raw = base64.b64decode(data, validate=False)
    except (ValueError, TypeError) as e:
        raise ImageLoadError(f"not a base64-encoded image ({e})") from None
    try:
        return decode_image(raw, max_pixels).image
    except ImageDecodeError as e:
        raise ImageLoadError(f"base64 image: {e.reason}") from None


def image_size_of(args) -> Tuple[int, int]:
    """(height, width) of the ViT input, from the model's args (`eva_args.image_size`)."""
    eva = args.eva_args if isinstance(args.eva_args, dict) else vars(args.eva_args)
    size = eva["image_size"]
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))


class Pixels:
    """PIL images -> the ViT's float tensor [n, 3, H, W] on the model's device and dtype."""

    def __init__(self, image_size: Union[int, Sequence[int]], device=None, dtype=torch.float32):
        self.processor = ImageProcessor(image_size if isinstance(image_size, int) else tuple(image_size))
        self.device, self.dtype = device, dtype

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        x = torch.stack([self.processor(img) for img in images])
        return x.to(device=self.device, dtype=self.dtype)


def model_device_dtype(model) -> Tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype
