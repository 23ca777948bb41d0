"""Uploaded images: what is refused before downloading, what is refused after, and the
size the rest of the bot is told."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image, ImageFile

import bot.attachments as attachments
from engine.limits import DEFAULT_MAX_IMAGE_BYTES

MiB = 1024 * 1024
ORIENTATION = 0x0112  # the EXIF tag


def fake_attachment(**fields: object) -> SimpleNamespace:
    defaults = dict(filename="a.png", content_type="image/png", size=100, width=None, height=None)
    return SimpleNamespace(**{**defaults, **fields})


class DownloadableAttachment:
    """Enough of a `discord.Attachment` for `fetch_image`, counting downloads."""

    def __init__(self, data: bytes, *, size: int | None = None, filename: str = "a.png") -> None:
        self.filename = filename
        self.content_type = "image/png"
        self.size = len(data) if size is None else size
        self.width = self.height = None
        self.downloads = 0
        self._data = data

    async def read(self) -> bytes:
        self.downloads += 1
        return self._data


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def encoded(image_format: str, size: tuple[int, int] = (64, 48), **options: object) -> bytes:
    """A real image with detail in it (noise), so that cutting it short loses pixel data."""
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(buffer, image_format, **options)
    return buffer.getvalue()


def with_orientation(image_format: str, orientation: int, size: tuple[int, int] = (40, 30)) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encoded(image_format, size, exif=exif)


def png_with_idat(data: bytes) -> bytes:
    """A valid PNG whose (single) IDAT chunk is replaced by `data`, with a correct CRC."""
    png = encoded("PNG")
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[start : start + 4])
    chunk = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    return png[:start] + chunk + png[start + 12 + length :]


def png_with_flipped_bytes_in_idat() -> bytes:
    png = bytearray(encoded("PNG"))
    start = png.index(b"IDAT") + 20
    for index in range(start, start + 40):
        png[index] ^= 0xFF
    return bytes(png)


# ---------------------------------------------------------------- before downloading


def test_metadata_check_uses_discords_width_and_height_before_downloading() -> None:
    with pytest.raises(attachments.AttachmentError, match="8000×8000"):
        attachments.check_metadata(fake_attachment(width=8000, height=8000))  # type: ignore[arg-type]


def test_metadata_check_falls_back_to_the_extension_without_a_content_type() -> None:
    attachments.check_metadata(fake_attachment(content_type=None, filename="b.JPG"))  # type: ignore[arg-type]
    with pytest.raises(attachments.AttachmentError, match="not an image"):
        attachments.check_metadata(fake_attachment(content_type=None, filename="b.exe"))  # type: ignore[arg-type]


def test_metadata_check_refuses_a_file_the_engine_would_refuse_by_default() -> None:
    """The engine refuses files over DEFAULT_MAX_IMAGE_BYTES: a bot that let them through
    would queue and charge a job bound to fail."""
    over = fake_attachment(size=DEFAULT_MAX_IMAGE_BYTES + 1)
    with pytest.raises(attachments.AttachmentError, match=r"the limit is 8\.0 MB.*smaller"):
        attachments.check_metadata(over)  # type: ignore[arg-type]


def test_metadata_check_uses_the_byte_limit_it_is_given() -> None:
    """The operator sets the limit (MAX_IMAGE_MB); the message names that limit."""
    attachments.check_metadata(fake_attachment(size=2 * MiB), max_bytes=3 * MiB)  # type: ignore[arg-type]
    with pytest.raises(attachments.AttachmentError, match=r"2\.0 MB; the limit is 1\.0 MB"):
        attachments.check_metadata(fake_attachment(size=2 * MiB), max_bytes=1 * MiB)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the bytes


def test_byte_check_refuses_data_the_engine_would_refuse_by_default() -> None:
    with pytest.raises(attachments.AttachmentError, match=r"the limit is 8\.0 MB.*smaller"):
        attachments.check_bytes(b"\0" * (DEFAULT_MAX_IMAGE_BYTES + 1), "big.png")


def test_byte_check_uses_the_byte_limit_it_is_given() -> None:
    data = png_bytes(8, 8)
    with pytest.raises(attachments.AttachmentError, match="the limit is"):
        attachments.check_bytes(data, "x.png", max_bytes=len(data) - 1)
    assert attachments.check_bytes(data, "x.png", max_bytes=len(data)).data == data


def test_header_check_refuses_a_decompression_bomb_without_decoding_it() -> None:
    # 25 megapixels of one colour compress to a few KB: small upload, huge decode. The
    # check reads only the size in the header (IHDR) and refuses it.
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < DEFAULT_MAX_IMAGE_BYTES
    with pytest.raises(attachments.AttachmentError, match="5000×5000 pixels"):
        attachments.check_bytes(buffer.getvalue(), "bomb.png")


def test_header_check_refuses_formats_the_engine_does_not_take() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    with pytest.raises(attachments.AttachmentError, match="TIFF"):
        attachments.check_bytes(buffer.getvalue(), "scan.tif")


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "GIF"])
def test_an_intact_image_of_every_accepted_format_passes(image_format: str) -> None:
    checked = attachments.check_bytes(encoded(image_format), "ok")
    assert (checked.width, checked.height) == (64, 48)


def test_checked_image_reports_format_and_size() -> None:
    checked = attachments.check_bytes(png_bytes(40, 30), "ok.png")
    assert (checked.extension, checked.width, checked.height) == ("png", 40, 30)


DAMAGED = {
    "truncated png": lambda: encoded("PNG")[: len(encoded("PNG")) // 2],
    "truncated jpeg": lambda: encoded("JPEG")[: len(encoded("JPEG")) // 2],
    "png with flipped bytes in its data": png_with_flipped_bytes_in_idat,
    "png whose data is garbage with a valid crc": lambda: png_with_idat(b"not zlib data" * 20),
}


@pytest.mark.parametrize("damaged", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_image_with_a_sound_header_could_not_be_read(damaged) -> None:
    """Its header passes; only decoding finds the damage. Found here, it is a private
    answer; found in the engine, it was a queued, charged job failing in public."""
    data = damaged()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (64, 48)  # the header really is fine
    with pytest.raises(attachments.AttachmentError, match="could not be read as an image"):
        attachments.check_bytes(data, "broken")


@pytest.mark.parametrize("damaged", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_image_is_refused_even_where_pillow_is_set_to_load_truncated_images(
    damaged, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOAD_TRUNCATED_IMAGES is process-wide: any library in the bot may turn it on, and
    then Pillow decodes a damaged file without complaint."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(attachments.AttachmentError, match="could not be read as an image"):
        attachments.check_bytes(damaged(), "broken")


def test_checking_leaves_pillows_load_truncated_images_setting_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    attachments.check_bytes(png_bytes(8, 8), "ok.png")
    with pytest.raises(attachments.AttachmentError):
        attachments.check_bytes(DAMAGED["truncated png"](), "broken")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


# ---------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_a_jpeg_turned_a_quarter_by_exif_reports_its_upright_size(orientation: int) -> None:
    """A phone photo taken upright is stored landscape with orientation 6 (or 8); the
    engine turns it upright, so an edit size picked from the stored sides crops it."""
    checked = attachments.check_bytes(with_orientation("JPEG", orientation), "photo.jpg")
    assert (checked.width, checked.height) == (30, 40)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_a_jpeg_not_turned_a_quarter_by_exif_keeps_its_stored_size(orientation: int) -> None:
    checked = attachments.check_bytes(with_orientation("JPEG", orientation), "photo.jpg")
    assert (checked.width, checked.height) == (40, 30)


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_exif_orientation_counts_in_png_and_webp_too(image_format: str) -> None:
    checked = attachments.check_bytes(with_orientation(image_format, 6), "upright")
    assert (checked.width, checked.height) == (30, 40)


def test_the_checked_bytes_are_the_upload_unchanged() -> None:
    """The engine applies the orientation itself; turning the pixels here too would turn
    them twice."""
    data = with_orientation("JPEG", 6)
    assert attachments.check_bytes(data, "photo.jpg").data == data


# ---------------------------------------------------------------- fetching


async def test_fetch_refuses_by_discords_size_before_downloading() -> None:
    attachment = DownloadableAttachment(png_bytes(8, 8), size=2 * MiB)
    with pytest.raises(attachments.AttachmentError, match=r"the limit is 1\.0 MB"):
        await attachments.fetch_image(attachment, max_bytes=1 * MiB)  # type: ignore[arg-type]
    assert attachment.downloads == 0


async def test_fetch_refuses_downloaded_bytes_over_the_limit_it_is_given() -> None:
    """Discord's size is only a claim; the bytes themselves are measured again."""
    data = png_bytes(8, 8)
    attachment = DownloadableAttachment(data, size=10)
    with pytest.raises(attachments.AttachmentError, match="the limit is"):
        await attachments.fetch_image(attachment, max_bytes=len(data) - 1)  # type: ignore[arg-type]


async def test_fetch_refuses_a_damaged_image() -> None:
    attachment = DownloadableAttachment(DAMAGED["truncated png"]())
    with pytest.raises(attachments.AttachmentError, match="could not be read as an image"):
        await attachments.fetch_image(attachment)  # type: ignore[arg-type]


async def test_fetch_returns_the_checked_upright_image() -> None:
    attachment = DownloadableAttachment(with_orientation("JPEG", 6), filename="photo.jpg")
    checked = await attachments.fetch_image(attachment)  # type: ignore[arg-type]
    assert (checked.extension, checked.width, checked.height) == ("jpg", 30, 40)


# ---------------------------------------------------------------- saving


def test_inputs_are_saved_under_results_dir_inputs(tmp_path: Path) -> None:
    checked = attachments.check_bytes(png_bytes(8, 8), "x.png")
    relative = attachments.save_input(tmp_path, "job1", checked)
    assert relative == "inputs/job1.png"
    assert (tmp_path / relative).read_bytes() == checked.data
    assert not list(tmp_path.rglob("*.part"))
