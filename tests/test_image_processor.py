"""ImageProcessor matches BlipImageEvalProcessor's numbers; load_image refuses bad files clearly."""
import numpy as np
import pytest
import torch
from PIL import Image

from dataset import DatasetError, ImageProcessor, load_image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def expected(image, size, resample=Image.BICUBIC):
    """Independent restatement in float64: PIL resize (what torchvision Resize does on PIL images),
    ToTensor (/255, HWC -> CHW), Normalize ((x - mean) / std), one channel at a time."""
    rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), resample)
    hwc = np.array(rgb, dtype=np.float64) / 255.0
    return np.stack([(hwc[:, :, c] - MEAN[c]) / STD[c] for c in range(3)])


def noise_image(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (h, w, channels) if channels else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.mark.parametrize("w,h,mode", [(40, 30, "RGB"), (56, 56, "RGB"), (97, 61, "RGBA"), (33, 70, "L")])
def test_values_match_blip_eval_processor(w, h, mode):
    image = noise_image(w, h, mode)
    out = ImageProcessor(56)(image)
    assert out.shape == (3, 56, 56) and out.dtype == torch.float32 and out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), expected(image, 56), atol=1e-5, rtol=0)


def test_resize_is_bicubic_not_bilinear():
    image = noise_image(40, 30)
    out = ImageProcessor(56)(image).numpy()
    assert np.abs(out - expected(image, 56, Image.BILINEAR)).max() > 0.05


def test_solid_colour_gives_normalised_constants():
    out = ImageProcessor((28, 42))(Image.new("RGB", (10, 10), (255, 0, 51)))
    assert out.shape == (3, 28, 42)
    for c, value in enumerate((255, 0, 51)):
        assert torch.allclose(out[c], torch.full((28, 42), (value / 255 - MEAN[c]) / STD[c]), atol=1e-6)


def test_load_image_reads_and_converts(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (9, 7), 128).save(path)
    img = load_image(str(path))
    assert img.mode == "RGB" and img.size == (9, 7)


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.png: missing"):
        load_image(str(tmp_path / "nope.png"))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(DatasetError, match=r"junk\.png: not a readable image"):
        load_image(str(junk))
    good = tmp_path / "cut.png"
    noise_image(64, 64).save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # a truncated download
    with pytest.raises(DatasetError, match=r"cut\.png: corrupt or unreadable"):
        load_image(str(good))


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(DatasetError, match=r"big\.png: 100x100 = 10000 pixels exceeds .*decompression bomb"):
        load_image(str(path), max_pixels=5000)
    # PIL's own guard (MAX_IMAGE_PIXELS: a warning above it, an error above twice it) is a clear error too.
    for limit in (1000, 6000):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(DatasetError, match=r"big\.png: refused as a decompression bomb"):
            load_image(str(path), max_pixels=None)
