"""skutag.images: every accepted mode becomes the exact RGB we expect; every bad input has its kind."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from skutag.images import ImageError, _draft, load_image, open_image
from tests.inputs import awkward_inputs, encode, png_header_only, rotated_jpeg


def exact(data: bytes, size: int = 256):
    """Decode with no resampling: the image is size x size, resize is a no-op, crop is the centre."""
    return load_image(data, resize_size=size, image_size=size)


def test_rgb_png_gives_exact_pixels_and_size():
    pixels = np.random.default_rng(0).integers(0, 256, (256, 300, 3), dtype=np.uint8)
    out = load_image(encode(Image.fromarray(pixels), "PNG"), resize_size=256, image_size=224)
    assert out.pixels.shape == (224, 224, 3) and out.pixels.dtype == np.uint8
    assert (out.width, out.height, out.format) == (300, 256, "PNG")
    np.testing.assert_array_equal(out.pixels, pixels[16:240, 38:262])


@pytest.mark.parametrize("size", [(300, 500), (640, 480), (1000, 1000), (257, 1200)])
def test_matches_torchvision_resize_and_center_crop(size):
    from torchvision import transforms

    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    expected = np.asarray(transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(image))
    difference = np.abs(load_image(encode(image, "PNG")).pixels.astype(int) - expected.astype(int))
    # One resampling of the kept region: the same grid and filter, fixed-point rounding only.
    assert difference.max() <= 1


def test_zero_byte_file_is_empty(tmp_path):
    path = tmp_path / "zero.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert err.value.kind == "empty"


def test_text_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is a product description, not a photo\n")
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert err.value.kind == "not_image"


def test_truncated_jpeg_is_truncated_not_padded():
    pixels = np.random.default_rng(2).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG", quality=90)
    with pytest.raises(ImageError) as err:
        load_image(data[: len(data) // 2])
    assert err.value.kind == "truncated"


@pytest.mark.parametrize("side", [30000, 10000])  # Pillow's bomb error, and its warning turned error
def test_header_claiming_huge_size_is_too_large(side):
    with pytest.raises(ImageError) as err:
        load_image(png_header_only(side, side))
    assert err.value.kind == "too_large"


def test_max_pixels_is_configurable():
    data = encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(ImageError) as err:
        load_image(data, max_pixels=300 * 300 - 1)
    assert err.value.kind == "too_large"


def test_unsupported_format_is_refused():
    with pytest.raises(ImageError) as err:
        load_image(encode(Image.new("RGB", (300, 300)), "PPM"))
    assert err.value.kind == "unsupported_format"


def test_missing_file_and_directory_are_unreadable(tmp_path):
    for path in (tmp_path / "missing.jpg", tmp_path):
        with pytest.raises(ImageError) as err:
            load_image(path)
        assert err.value.kind == "unreadable"


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (256, 256), (0, 255, 255, 0))  # pure red in CMYK
    out = exact(encode(cmyk, "JPEG", quality=95))
    assert out.format == "JPEG"
    np.testing.assert_allclose(out.pixels.reshape(-1, 3).mean(axis=0), (255, 0, 0), atol=3)


def test_sixteen_bit_png_is_scaled_not_clipped():
    gray = np.full((256, 256), 40000, dtype=np.uint16)
    gray[:, :128] = 65535
    image = Image.fromarray(gray)
    assert image.mode.startswith("I;16")
    out = exact(encode(image, "PNG"))
    assert set(np.unique(out.pixels[:, :96])) == {255}
    assert set(np.unique(out.pixels[:, 128:])) == {156}  # round(40000 / 257); clipping would give 255


def test_palette_png_with_transparency_composites_on_white():
    image = Image.new("P", (256, 256), 0)
    image.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    image.paste(1, (128, 0, 256, 256))
    data = encode(image, "PNG", transparency=0)
    out = exact(data)
    assert set(map(tuple, out.pixels[:, :96].reshape(-1, 3))) == {(255, 255, 255)}
    assert set(map(tuple, out.pixels[:, 128:].reshape(-1, 3))) == {(200, 10, 20)}


def test_palette_png_without_transparency():
    image = Image.new("P", (256, 256), 1)
    image.putpalette([0, 0, 0, 10, 120, 230] + [0] * 762)
    assert set(map(tuple, exact(encode(image, "PNG")).pixels.reshape(-1, 3))) == {(10, 120, 230)}


def test_rgba_composites_on_white():
    rgba = Image.new("RGBA", (256, 256), (255, 0, 0, 128))
    out = exact(encode(rgba, "PNG"))
    assert set(map(tuple, out.pixels.reshape(-1, 3))) == {(255, 127, 127)}


def test_la_composites_on_white_and_l_is_gray():
    la = Image.new("LA", (256, 256), (0, 0))  # black, fully transparent
    assert set(np.unique(exact(encode(la, "PNG")).pixels)) == {255}
    gray = Image.new("L", (256, 256), 77)
    assert set(map(tuple, exact(encode(gray, "PNG")).pixels.reshape(-1, 3))) == {(77, 77, 77)}


def test_one_bit_image_is_black_and_white():
    image = Image.new("1", (256, 256), 0)
    image.paste(1, (0, 0, 256, 128))
    out = exact(encode(image, "PNG"))
    assert set(np.unique(out.pixels[:96])) == {255}
    assert set(np.unique(out.pixels[160:])) == {0}


def test_exif_rotated_jpeg_comes_out_rotated():
    out = load_image(rotated_jpeg(), resize_size=256, image_size=224)
    assert (out.width, out.height) == (256, 320)
    np.testing.assert_allclose(out.pixels[:100].reshape(-1, 3).mean(axis=0), (220, 0, 0), atol=6)
    np.testing.assert_allclose(out.pixels[124:].reshape(-1, 3).mean(axis=0), (0, 0, 220), atol=6)


def test_gif_uses_first_frame():
    frames = [Image.new("RGB", (256, 256), (250, 0, 0)), Image.new("RGB", (256, 256), (0, 0, 250))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixel = exact(data).pixels[100, 100]
    assert pixel[0] > 200 and pixel[2] < 50


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "TIFF", "JPEG"])
def test_other_accepted_formats(fmt):
    image = Image.new("RGB", (400, 300), (30, 160, 90))
    out = load_image(encode(image, fmt, **({"quality": 95} if fmt in ("WEBP", "JPEG") else {})))
    assert out.format == fmt and out.pixels.shape == (224, 224, 3)
    np.testing.assert_allclose(out.pixels.reshape(-1, 3).mean(axis=0), (30, 160, 90), atol=4)


def test_jpeg_is_decoded_at_the_smallest_draft_scale_that_covers_the_target():
    data = encode(Image.new("RGB", (2000, 1500), (100, 100, 100)), "JPEG")
    image = open_image(data)
    _draft(image, 256)
    assert image.size == (500, 375)  # 1/4: 1/8 would be 250x188, shorter than 256
    image = open_image(data)
    _draft(image, 400)
    assert image.size == (1000, 750)  # 1/2
    out = load_image(data)
    assert (out.width, out.height) == (2000, 1500) and out.pixels.shape == (224, 224, 3)


def test_draft_output_stays_close_to_full_decode():
    from torchvision import transforms

    pixels = np.zeros((1000, 1000, 3), dtype=np.uint8)
    pixels[:, :500] = (200, 40, 40)
    pixels[:, 500:] = (40, 40, 200)
    data = encode(Image.fromarray(pixels), "JPEG", quality=95)
    full = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(
        Image.open(io.BytesIO(data))
    )
    difference = np.abs(load_image(data).pixels.astype(int) - np.asarray(full).astype(int))
    assert difference.mean() < 2.0


def test_crop_only_and_resize_only():
    data = encode(Image.new("RGB", (640, 480)), "PNG")
    assert load_image(data, resize_size=256, image_size=None).pixels.shape == (256, 341, 3)
    assert load_image(data, resize_size=None, image_size=224).pixels.shape == (224, 224, 3)


def test_every_awkward_input_has_its_expected_outcome():
    for name, (data, kind) in awkward_inputs().items():
        if kind is None:
            assert load_image(data).pixels.shape == (224, 224, 3), name
        else:
            with pytest.raises(ImageError) as err:
                load_image(data)
            assert err.value.kind == kind, name
