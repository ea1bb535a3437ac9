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


def _decoders(path):
    """The picture as training (dataset.load_image) and inference (path, base64 TSV cell) decode it."""
    import base64
    from inference.image import image_from_base64, open_image
    return [load_image(str(path)), open_image(str(path)),
            image_from_base64(base64.b64encode(path.read_bytes()).decode())]


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    from collections import Counter
    gradient = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))  # [8, 256], dark to light
    path = tmp_path / "deep.png"
    Image.fromarray(gradient).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored as 16-bit greyscale
    want = np.round(gradient / 257.0)
    for img in _decoders(path):
        x = np.asarray(img).astype(np.int64)  # [8, 256, 3]
        assert img.mode == "RGB" and x.shape == (8, 256, 3)
        assert np.abs(x - want[:, :, None]).max() <= 1, "16-bit values must be scaled, not clipped"
        assert x[0, 0, 0] == 0 and x[0, -1, 0] == 255 and 120 < x.mean() < 135
    counts = Counter()
    load_image(str(path), conversions=counts)
    assert counts == Counter({"high bit depth": 1})


def test_exif_orientation_is_applied(tmp_path):
    from collections import Counter
    stored = np.zeros((20, 30, 3), dtype=np.uint8)  # stored 30 wide, 20 high
    stored[:, :10] = (255, 0, 0)  # red on the stored left
    stored[:5, :] += np.array([0, 0, 200], dtype=np.uint8)  # blue tint on the stored top
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: shown rotated 90 degrees clockwise
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif)
    shown = np.rot90(stored, k=-1)  # clockwise quarter turn: [30, 20, 3]
    for img in _decoders(path):
        assert img.size == (20, 30) and np.array_equal(np.asarray(img), shown)
    counts = Counter()
    load_image(str(path), conversions=counts)
    assert counts == Counter({"EXIF orientation": 1})


def test_transparency_is_composited_on_white(tmp_path):
    from collections import Counter
    from dataset.image_decode import BACKGROUND
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)  # fully transparent black ...
    rgba[:, 6:] = (255, 0, 0, 128)  # ... and half-transparent red on the right
    rgba[:2, :2] = (0, 255, 0, 255)  # an opaque green corner
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert BACKGROUND == (255, 255, 255)
    for img in _decoders(path):
        x = np.asarray(img).astype(np.int64)
        assert (x[5, 3] == (255, 255, 255)).all()  # hidden black shows the background, not black
        assert np.abs(x[5, 9] - (255, 127, 127)).max() <= 1  # half red over white
        assert (x[0, 0] == (0, 255, 0)).all()
    palette = Image.fromarray(rgba[:, :, :3]).convert("P")
    palette.info["transparency"] = palette.getpixel((3, 5))  # the black entry is transparent
    palette.save(tmp_path / "palette.png", transparency=palette.getpixel((3, 5)))
    assert (np.asarray(load_image(str(tmp_path / "palette.png")))[5, 3] == (255, 255, 255)).all()
    counts = Counter()
    load_image(str(path), conversions=counts)
    Image.fromarray(rgba[:, :, :3]).convert("RGBA").save(tmp_path / "opaque.png")  # alpha, all opaque: nothing to do
    load_image(str(tmp_path / "opaque.png"), conversions=counts)
    assert counts == Counter({"transparency": 1})


def test_a_directory_given_as_an_image_says_so(tmp_path):
    from inference.image import ImageLoadError, open_image
    (tmp_path / "pics.png").mkdir()
    with pytest.raises(DatasetError, match=r"pics\.png: is a directory, not an image file"):
        load_image(str(tmp_path / "pics.png"))
    with pytest.raises(ImageLoadError, match=r"pics\.png: is a directory, not an image file"):
        open_image(tmp_path / "pics.png")
