"""Images for the ViT with PIL and numpy only: RGB, bicubic resize, /255, CLIP mean/std, CHW float32.

Same numbers as the official BlipImageEvalProcessor (torchvision Resize on a PIL image is PIL's
bicubic resize; ToTensor divides by 255; Normalize subtracts mean and divides by std).
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .image_decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from .records import DatasetError, Problem

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageProcessor:
    """`ImageProcessor(image_size)(pil_image)` -> float32 tensor [3, image_size, image_size]."""

    def __init__(self, image_size: Union[int, Tuple[int, int]], mean=CLIP_MEAN, std=CLIP_STD):
        self.height, self.width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.BICUBIC)  # PIL takes (w, h)
        x = np.asarray(image, dtype=np.float32) / np.float32(255.0)  # [H, W, 3] in [0, 1]
        x = x.transpose(2, 0, 1)  # [H, W, 3] -> [3, H, W]
        x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def __repr__(self) -> str:
        return f"ImageProcessor({self.height}x{self.width}, bicubic, CLIP mean/std)"


def vision_inputs(pixels: torch.Tensor) -> dict:
    """The official `vision_*` inputs for n images [n, 3, H, W]: the ViT's dummy ids and mask [n, 1]."""
    n = pixels.shape[0]
    return {"image": pixels, "input_ids": torch.zeros(n, 1, dtype=torch.long),
            "attention_mask": torch.ones(n, 1, dtype=torch.long)}


def load_image(path: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
               where: Optional[Problem] = None, conversions: Optional[Counter] = None) -> Image.Image:
    """Open and fully decode an image as the 8-bit RGB picture it shows (`dataset.image_decode`: 16-bit
    scaled, EXIF orientation applied, transparency on white); any failure is a DatasetError naming the
    file. `conversions`, when given, counts the conversions made (by name).
    """
    try:
        decoded = decode_image(path, max_pixels)
    except ImageDecodeError as e:
        w = where or Problem(path, None, None, "")
        reason = "missing (no such file)" if e.kind == "missing" else e.reason
        raise DatasetError(Problem(w.file, w.line, w.record_id, f"image {path}: {reason}")) from None
    if conversions is not None:
        conversions.update(decoded.conversions)
    return decoded.image
