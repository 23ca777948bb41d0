"""Refusals of uploaded images (`bot.attachments`): what was wrong with the file, and how to
fix it. A file name is the user's text: quoted, shortened, and unable to ping anyone."""

from __future__ import annotations

from bot.render.text import quoted, user_text

#: The formats the engine decodes, as users read them.
IMAGE_FORMATS = "PNG, JPEG, WebP or GIF"


def file_name(filename: str | None) -> str:
    """A file name as messages show it: quoted, shortened, and unable to ping anyone or
    break the layout (it is text the user chose)."""
    return quoted(filename, 80) if filename else "the file"


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def attachment_not_an_image(filename: str | None, content_type: str) -> str:
    return (f"{file_name(filename)} is not an image I can use "
            f"({user_text(content_type or 'unknown type', 60)}). "
            f"Attach a {IMAGE_FORMATS} picture instead.")


def attachment_too_large(filename: str | None, size: int, max_bytes: int) -> str:
    return (f"{file_name(filename)} is {_megabytes(size)}; the limit is {_megabytes(max_bytes)}. "
            "Save it smaller (e.g. as a JPEG, or scaled down) and attach it again.")


def attachment_too_many_pixels(filename: str | None, width: int, height: int,
                               max_pixels: int) -> str:
    side = int(max_pixels ** 0.5)
    return (f"{file_name(filename)} is {width}×{height} pixels; the limit is {max_pixels:,} "
            f"pixels (e.g. {side}×{side}). Scale it down and attach it again.")


def attachment_far_too_many_pixels(filename: str | None, max_pixels: int) -> str:
    """A decompression bomb: Pillow refused even to read its header."""
    return f"{file_name(filename)} has far too many pixels; the limit is {max_pixels:,}. Scale it down."


def attachment_unreadable(filename: str | None) -> str:
    return (f"{file_name(filename)} could not be read as an image (it may be damaged or not a "
            f"picture). Attach a {IMAGE_FORMATS} file.")


def attachment_wrong_format(filename: str | None, image_format: str) -> str:
    return (f"{file_name(filename)} is a {image_format or 'unknown'} image; I can use "
            f"{IMAGE_FORMATS}. Convert it and attach it again.")


def attachment_not_downloaded(filename: str | None, error_name: str) -> str:
    return (f"{file_name(filename)} could not be downloaded from Discord ({error_name}). "
            "Attach it again.")
