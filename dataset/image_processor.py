"""Images for the ViT with PIL and numpy only: RGB, bicubic resize, /255, CLIP mean/std, CHW float32.

Same numbers as the official BlipImageEvalProcessor (torchvision Resize on a PIL image is PIL's
bicubic resize; ToTensor divides by 255; Normalize subtracts mean and divides by std).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .records import DatasetError, Problem

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default decompression-bomb limit (about 0.25 GB at 24 bit)


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
               where: Optional[Problem] = None) -> Image.Image:
    """Open and fully decode an image as RGB; any failure is a DatasetError naming the file.

    The size is checked from the header before decoding, so a decompression bomb costs nothing.
    """
    def fail(reason: str) -> DatasetError:
        w = where or Problem(path, None, None, "")
        return DatasetError(Problem(w.file, w.line, w.record_id, f"image {path}: {reason}"))

    if not os.path.isfile(path):
        raise fail("missing (no such file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise fail(f"{w}x{h} = {w * h} pixels exceeds the {max_pixels}-pixel limit "
                               f"(decompression bomb guard; raise max_pixels if the image is genuine)")
                img.load()
                return img.convert("RGB")
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise fail(f"refused as a decompression bomb: {e}") from None
    except Image.UnidentifiedImageError:
        raise fail("not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated data, bad chunks, broken headers
        raise fail(f"corrupt or unreadable image: {e}") from None
