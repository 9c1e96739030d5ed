"""skutag.images: every accepted mode becomes the exact RGB we expect; every bad input has its kind."""

from __future__ import annotations

import errno
import io
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from skutag.formats import avif_available
from skutag.images import (
    DEFAULT_MAX_BYTES,
    ERROR_KINDS,
    ImageError,
    draft,
    is_image_path,
    load_image,
    open_image,
    read_file,
)
from tests.support.inputs import (
    avif_bytes,
    awkward_inputs,
    encode,
    heic_bytes,
    hostile_inputs,
    png_header_only,
    rotated_jpeg,
    smooth_image,
    tiff_with_strip_offsets_type,
)
from tests.support.photos import REAL_PHOTOS, needs_photos


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
    draft(image, 256)
    assert image.size == (500, 375)  # 1/4: 1/8 would be 250x188, shorter than 256
    image = open_image(data)
    draft(image, 400)
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


# -- any exception a decoder raises is an ImageError of a stable kind (issue 9) ------------------


@pytest.mark.parametrize(
    ("field_type", "exception", "words"),
    [(5, "TypeError", "IFDRational"), (16, "OverflowError", "too large to convert")],
)
def test_damaged_tiff_tags_are_corrupt_and_name_the_exception(field_type, exception, words):
    data = tiff_with_strip_offsets_type(field_type)
    with pytest.raises(exception_type(exception)):  # what Pillow itself raises on these bytes
        Image.open(io.BytesIO(data)).load()
    with pytest.raises(ImageError) as err:
        load_image(data)
    assert err.value.kind == "corrupt"
    assert exception in err.value.message and words in err.value.message


def exception_type(name: str) -> type[BaseException]:
    return {"TypeError": TypeError, "OverflowError": OverflowError}[name]


RAISED = [
    (OverflowError("Python int too large to convert to C ssize_t"), "corrupt"),
    (TypeError("'IFDRational' object cannot be interpreted as an integer"), "corrupt"),
    (RuntimeError("Failed to decode image"), "corrupt"),
    (struct.error("unpack requires a buffer of 4 bytes"), "corrupt"),
    (ValueError("invalid extents"), "corrupt"),
    (IndexError("list index out of range"), "corrupt"),
    (KeyError(34665), "corrupt"),
    (ZeroDivisionError("division by zero"), "corrupt"),
    (SyntaxError("not a TIFF file"), "corrupt"),
    (OSError("image file is truncated (3 bytes not processed)"), "truncated"),
    (EOFError(), "truncated"),
    (Image.DecompressionBombError("Image size (1 pixels) exceeds limit"), "too_large"),
]


@pytest.mark.parametrize(("exc", "kind"), RAISED, ids=[type(e).__name__ for e, _ in RAISED])
@pytest.mark.parametrize("where", ["open", "load", "convert"])
def test_every_exception_type_becomes_its_kind(monkeypatch, exc, kind, where):
    def raiser(*args, **kwargs):
        raise exc

    target = (Image, "open") if where == "open" else (Image.Image, where)
    data = encode(Image.new("L", (300, 300), 9), "PNG")  # L: needs convert to become RGB
    monkeypatch.setattr(*target, raiser)
    with pytest.raises(ImageError) as err:
        load_image(data)
    assert err.value.kind == kind
    if kind != "too_large" or isinstance(exc, MemoryError):
        assert type(exc).__name__ in err.value.message


def _kind_of(data: bytes) -> str:
    try:
        load_image(data)
    except ImageError as exc:
        return exc.kind
    return "ok"


def test_memory_error_is_too_large_in_a_worker_and_propagates_in_the_main_process(monkeypatch):
    import multiprocessing

    def raiser(*args, **kwargs):
        raise MemoryError()

    data = encode(Image.new("RGB", (300, 300)), "PNG")
    monkeypatch.setattr(Image.Image, "load", raiser)
    with pytest.raises(MemoryError):  # never a permanent row for a shortage of the whole run
        load_image(data)
    with multiprocessing.get_context("fork").Pool(1) as pool:  # a decode worker inherits the patch
        assert pool.apply(_kind_of, (data,)) == "too_large"


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)])
def test_interrupts_pass_through(monkeypatch, exc):
    def raiser(*args, **kwargs):
        raise exc

    data = encode(Image.new("RGB", (300, 300)), "PNG")
    monkeypatch.setattr(Image.Image, "load", raiser)
    with pytest.raises(type(exc)):
        load_image(data)


def test_hostile_and_new_format_inputs_have_their_expected_outcome():
    for name, (data, kind) in hostile_inputs().items():
        if kind is None:
            assert load_image(data).pixels.shape == (224, 224, 3), name
        else:
            with pytest.raises(ImageError) as err:
                load_image(data)
            assert err.value.kind == kind, (name, err.value.message)


def test_image_error_pickles_and_its_message_is_valid_utf8():
    import pickle

    error = pickle.loads(pickle.dumps(ImageError("corrupt", "bad byte \udce9 in a name")))
    assert error.kind == "corrupt" and isinstance(error, ImageError)
    error.message.encode("utf-8")  # surrogates were escaped
    assert set(ERROR_KINDS) >= {"timeout", "crashed"}


# -- AVIF and HEIC ----------------------------------------------------------------------------


def close_to_source(decoded, source: Image.Image) -> float:
    expected = np.asarray(source.resize((decoded.pixels.shape[1], decoded.pixels.shape[0]))).astype(int)
    return float(np.abs(decoded.pixels.astype(int) - expected).mean())


@pytest.mark.skipif(not avif_available(), reason="this Pillow has no AVIF support")
def test_avif_decodes_close_to_the_source():
    source = smooth_image(320, 240)
    out = load_image(avif_bytes(source), resize_size=None, image_size=None)
    assert (out.format, out.width, out.height, out.pixels.shape) == ("AVIF", 320, 240, (240, 320, 3))
    assert close_to_source(out, source) < 3.0


def test_heic_decodes_close_to_the_source():
    source = smooth_image(320, 240)
    out = load_image(heic_bytes(source), resize_size=None, image_size=None)
    assert (out.format, out.width, out.height, out.pixels.shape) == ("HEIF", 320, 240, (240, 320, 3))
    assert close_to_source(out, source) < 3.0
    assert load_image(heic_bytes(source)).pixels.shape == (224, 224, 3)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_avif_and_heic_with_exif_orientation_come_out_upright(fmt):
    import pillow_heif

    if fmt == "AVIF" and not avif_available():
        pytest.skip("this Pillow has no AVIF support")
    stored = Image.new("RGB", (320, 256), (220, 0, 0))
    stored.paste((0, 0, 220), (160, 0, 320, 256))  # left red, right blue; orientation 6: red on top
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    if fmt == "AVIF":
        stored.save(buffer, format="AVIF", quality=90, exif=exif)
    else:
        pillow_heif.from_pillow(stored).save(buffer, quality=90, exif=exif.tobytes())
    out = load_image(buffer.getvalue(), resize_size=256, image_size=224)
    assert (out.format, out.width, out.height) == (fmt, 256, 320)
    np.testing.assert_allclose(out.pixels[:100].reshape(-1, 3).mean(axis=0), (220, 0, 0), atol=6)
    np.testing.assert_allclose(out.pixels[124:].reshape(-1, 3).mean(axis=0), (0, 0, 220), atol=6)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_avif_and_heic_are_truncated(cut):
    for data in (avif_bytes(), heic_bytes()):
        with pytest.raises(ImageError) as err:
            load_image(data[: int(len(data) * cut)])
        assert err.value.kind == "truncated", err.value.message


def test_avif_without_a_decoder_is_unsupported_format(monkeypatch):
    from skutag import formats

    monkeypatch.setattr(formats, "avif_available", lambda: False)
    with pytest.raises(ImageError) as err:
        load_image(avif_bytes())
    assert err.value.kind == "unsupported_format" and "AVIF" in err.value.message


def test_heic_without_pillow_heif_is_unsupported_format_naming_it(tmp_path):
    """In a fresh process where `import pillow_heif` fails (as on an install without it)."""
    path = tmp_path / "phone.heic"
    path.write_bytes(heic_bytes())
    script = (
        "import sys; sys.modules['pillow_heif'] = None\n"
        "from skutag.images import ImageError, load_image\n"
        "try:\n"
        f"    load_image({str(path)!r})\n"
        "except ImageError as exc:\n"
        "    print(exc.kind, '|', exc.message)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    kind, _, message = result.stdout.strip().partition(" | ")
    assert kind == "unsupported_format" and "pillow-heif" in message, result.stdout + result.stderr


def test_extensions_include_new_and_refused_formats():
    for name in ("a.avif", "b.HEIC", "c.heif", "d.jp2", "e.jxl", "f.psd", "g.ico", "h.tga", "i.svg"):
        assert is_image_path(name), name
    assert is_image_path(b"caf\xe9.jpg") and not is_image_path("notes.txt")


# -- sized before read ------------------------------------------------------------------------


def test_oversize_file_is_refused_from_its_size_without_being_read(tmp_path, monkeypatch):
    import skutag.image_files as image_files

    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(DEFAULT_MAX_BYTES + 1)  # sparse: nothing is written, nothing must be read

    def no_read(*args, **kwargs):
        raise AssertionError("the file was read")

    monkeypatch.setattr(image_files, "_read_at_most", no_read)
    for call in (lambda: read_file(path, max_bytes=DEFAULT_MAX_BYTES), lambda: load_image(path)):
        with pytest.raises(ImageError) as err:
            call()
        assert err.value.kind == "too_large" and "max-bytes" in err.value.message


def test_max_bytes_boundary_and_bytes_input(tmp_path):
    data = encode(Image.new("RGB", (300, 300), (5, 6, 7)), "PNG")
    path = tmp_path / "exact.png"
    path.write_bytes(data)
    assert read_file(path, max_bytes=len(data)) == data
    assert read_file(path, max_bytes=None) == data
    with pytest.raises(ImageError) as err:
        read_file(path, max_bytes=len(data) - 1)
    assert err.value.kind == "too_large"
    with pytest.raises(ImageError) as err:
        load_image(path, max_bytes=len(data) - 1)
    assert err.value.kind == "too_large"
    assert load_image(path, max_bytes=len(data)).pixels.shape == (224, 224, 3)
    assert load_image(data, max_bytes=1).pixels.shape == (224, 224, 3)  # bytes in memory: already sized


def test_a_file_that_grows_after_the_stat_is_read_up_to_the_limit_only(tmp_path):
    from skutag.image_files import _read_at_most

    path = tmp_path / "growing.jpg"
    path.write_bytes(bytes(200))
    for size, max_bytes, expected in ((10, 100, 101), (10, None, 200), (200, 1000, 200), (10, 1000, 200)):
        fd = os.open(path, os.O_RDONLY)  # sized at `size` bytes, 200 by the time it is read
        try:
            assert len(_read_at_most(fd, size, max_bytes)) == expected  # 101: read_file refuses it
        finally:
            os.close(fd)


def test_non_utf8_bytes_path_reads_and_fifo_is_unreadable_without_blocking(tmp_path):
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    data = encode(Image.new("RGB", (300, 300)), "JPEG")
    with open(name, "wb") as f:
        f.write(data)
    assert read_file(name) == data
    assert load_image(read_file(name)).pixels.shape == (224, 224, 3)
    with pytest.raises(ImageError) as err:
        read_file(os.path.join(os.fsencode(tmp_path), b"missing\xff.jpg"))
    assert err.value.kind == "unreadable" and "missing\\xff.jpg" in err.value.message
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError) as err:
        read_file(fifo)
    assert err.value.kind == "unreadable" and "not a regular file" in err.value.message


def test_transient_read_errors_are_retried_then_unreadable(tmp_path, monkeypatch):
    import skutag.image_files as image_files
    import skutag.retries as storage

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    path = tmp_path / "nfs.jpg"
    data = encode(Image.new("RGB", (300, 300)), "JPEG")
    path.write_bytes(data)
    real, calls = image_files._read_at_most, []

    def flaky(*args):
        calls.append(1)
        if len(calls) <= 2:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real(*args)

    monkeypatch.setattr(image_files, "_read_at_most", flaky)
    assert read_file(path) == data and len(calls) == 3

    def broken(*args):
        calls.append(1)
        raise OSError(errno.EIO, "Input/output error")

    calls.clear()
    monkeypatch.setattr(image_files, "_read_at_most", broken)
    with pytest.raises(ImageError) as err:
        read_file(path)
    assert err.value.kind == "unreadable" and "Input/output error" in err.value.message
    assert len(calls) == storage.RETRIES

    def denied(*args):
        calls.append(1)
        raise PermissionError(errno.EACCES, "Permission denied")

    calls.clear()
    monkeypatch.setattr(image_files, "_read_at_most", denied)
    with pytest.raises(ImageError) as err:
        read_file(path)
    assert err.value.kind == "unreadable" and len(calls) == 1  # not transient: no retry


# -- real photos (../shared/data; a user's clone does not have them) ---------------------------


@needs_photos
@pytest.mark.parametrize("folder", ["catalog-photos", "clothing"])
def test_real_photos_are_listed_and_decode_as_before(folder):
    """Every real photo is listed; a spread of them decodes to the pixels of a full decode + torchvision."""
    from torchvision import transforms

    from skutag.bench.baselines import image_files

    files = image_files(REAL_PHOTOS / folder)
    on_disk = [p for p in (REAL_PHOTOS / folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    assert len(files) == len(on_disk) > 300
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    for path in files[:: len(files) // 12]:
        out = load_image(path)
        assert out.format == "JPEG" and out.pixels.shape == (224, 224, 3)
        with Image.open(path) as image:
            expected = np.asarray(reference(image.convert("RGB"))).astype(int)
        assert np.abs(out.pixels.astype(int) - expected).mean() < 3.0, path  # draft decode, one resampling
