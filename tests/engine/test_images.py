"""Untrusted images: refused cheaply when too big or not images; upright RGB otherwise."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from engine.errors import InputImageError
from engine.images import fit_to_size, jpeg_thumbnail, load_image, png_bytes, png_metadata


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds the pixels of a 1x1 image."""
    data = bytearray(_encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def test_oversized_bytes_refused_before_reading_the_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * (3 * 1024 * 1024))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the file was read"))
    with pytest.raises(InputImageError, match=r"the init image is 3(\.0)? MB; the limit is 2 MB"):
        load_image(path, what="init image", max_bytes=2 * 1024 * 1024)


def test_oversized_bytes_refused_for_in_memory_data() -> None:
    with pytest.raises(InputImageError, match="the limit is 1 MB"):
        load_image(b"x" * (1024 * 1024 + 1), max_bytes=1024 * 1024)


def test_an_image_just_over_the_limit_is_told_in_bytes_not_as_equal_sizes() -> None:
    with pytest.raises(InputImageError) as error:
        load_image(b"x" * (1024 * 1024 + 1), what="mask", max_bytes=1024 * 1024)
    assert str(error.value) == "the mask is 1,048,577 bytes; the limit is 1 MB (1,048,576 bytes)"


def test_a_small_limit_is_told_in_kilobytes_or_bytes() -> None:
    with pytest.raises(InputImageError) as error:
        load_image(b"x" * 2048, what="mask", max_bytes=1000)
    assert str(error.value) == "the mask is 2 KB; the limit is 1000 bytes"


def test_the_default_limit_is_the_one_the_bot_and_worker_share() -> None:
    from engine import images, limits

    assert images.DEFAULT_MAX_BYTES == limits.DEFAULT_MAX_IMAGE_BYTES
    with pytest.raises(InputImageError, match="the limit is 8 MB"):
        load_image(b"x" * (limits.DEFAULT_MAX_IMAGE_BYTES + 2048))


def test_decompression_bomb_refused_from_header_before_decoding() -> None:
    bomb = _png_claiming_size(12_000, 12_000)
    assert len(bomb) < 200
    # Decoding would fail on the missing pixel data; the refusal must come from the header check.
    with pytest.raises(InputImageError, match=r"12000x12000 pixels \(144 megapixels\); the limit is 36"):
        load_image(bomb, what="init image")


def test_pillow_bomb_limit_is_reported_as_input_error() -> None:
    bomb = _png_claiming_size(60_000, 60_000)  # beyond Pillow's own hard limit
    with pytest.raises(InputImageError, match="pixels"):
        load_image(bomb)


@pytest.mark.parametrize(
    "data",
    [b"hello, I am not an image", b"%PDF-1.4 ...", b"\x89PNG\r\n\x1a\n garbage"],
)
def test_non_image_refused(data: bytes) -> None:
    with pytest.raises(InputImageError, match="not an image in a format we accept"):
        load_image(data, what="init image")


def test_disallowed_format_refused() -> None:
    tiff = _encode(Image.new("RGB", (4, 4)), "TIFF")
    with pytest.raises(InputImageError, match="PNG, JPEG, WEBP, GIF or BMP"):
        load_image(tiff)


def test_truncated_image_refused_with_clear_message() -> None:
    data = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(InputImageError, match="could not be decoded"):
        load_image(data[: len(data) // 2])


def test_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="cannot be read"):
        load_image(tmp_path / "nope.png", what="mask")


def test_exif_orientation_applied() -> None:
    image = Image.new("RGB", (40, 20), "red")
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    loaded = load_image(_encode(image, "JPEG", exif=exif, quality=95))
    assert loaded.size == (20, 40)
    r, g, b = loaded.getpixel((10, 2))  # the blue stripe is now at the top
    assert b > 200 and r < 60


def test_rgba_flattened_on_white() -> None:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (255, 0, 0, 255))
    loaded = load_image(_encode(image, "PNG"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((5, 5)) == (255, 255, 255)
    assert loaded.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_allowed_formats_load_as_rgb(fmt: str) -> None:
    loaded = load_image(_encode(Image.new("RGB", (16, 12), (10, 200, 30)), fmt))
    assert loaded.mode == "RGB" and loaded.size == (16, 12)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, b = load_image(data).getpixel((4, 4))
    assert r > 200 and b < 50


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    image = Image.new("I;16", (4, 1))
    for x, v in enumerate((0, 20_000, 40_000, 65_535)):
        image.putpixel((x, 0), v)
    loaded = load_image(_encode(image, "PNG"))
    values = [loaded.getpixel((x, 0))[0] for x in range(4)]
    assert values[0] == 0 and values[-1] == 255 and 0 < values[1] < values[2] < 255


def test_png_metadata_round_trip() -> None:
    meta = {"prompt": "a forest:2 + low poly", "seed": "42", "note": "ünïcödé ✓"}
    data = png_bytes(Image.new("RGB", (8, 8)), meta)
    assert png_metadata(data) == meta
    assert Image.open(io.BytesIO(data)).format == "PNG"


def test_jpeg_thumbnail_is_small_and_bounded() -> None:
    image = Image.effect_noise((1024, 512), 40).convert("RGB")
    data = jpeg_thumbnail(image, max_side=128)
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG" and max(thumb.size) == 128 and thumb.size[0] == 2 * thumb.size[1]
    assert len(data) < 16_000


def test_fit_to_size_crops_to_exact_size() -> None:
    assert fit_to_size(Image.new("RGB", (300, 100)), (64, 48)).size == (64, 48)


def test_keep_alpha_returns_rgba_for_transparent_images() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((1, 1), (0, 0, 0, 255))
    loaded = load_image(_encode(image, "PNG"), keep_alpha=True)
    assert loaded.mode == "RGBA" and loaded.getpixel((1, 1))[3] == 255 and loaded.getpixel((0, 0))[3] == 0
    assert load_image(_encode(Image.new("RGB", (4, 4)), "PNG"), keep_alpha=True).mode == "RGB"
