"""Checking images users hand the bot, before anything is queued or decoded.

Images come only from Discord attachments (never from URLs a user types: the bot would
then fetch arbitrary addresses from the server it runs on). Every check that can be made
without downloading is made first, from what Discord tells us (content type, file name,
byte size, and width/height when Discord knows them); then the bytes are downloaded and
the image *header* is read with Pillow to learn the real format and pixel count before
any pixel is decoded, which is what stops decompression bombs (a few KB of PNG that
decode to gigabytes). Decoding, EXIF rotation and RGB conversion happen in the engine
(`engine/images.py`), which applies the same limits again.

Every failure is an `AttachmentError` whose message says what was wrong and how to fix
it, fit to show the user as is.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import discord
from PIL import Image

#: Formats the engine decodes, by Pillow format name -> file extension used on disk.
ALLOWED_FORMATS: dict[str, str] = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
ALLOWED_CONTENT_TYPES: frozenset[str] = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"}
)
ALLOWED_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
#: Largest upload accepted. Discord's own limit for most servers is 10 MB; a photo that
#: needs more is far larger than anything the engine works at anyway.
MAX_BYTES = 10 * 1024 * 1024
#: Largest pixel count accepted (e.g. 4096×4096). The engine scales inputs down to at most
#: MAX_SIZE; a bigger input only costs memory and time.
MAX_PIXELS = 4096 * 4096
#: Sub-folder of RESULTS_DIR where input images are kept (so reroll/edit work after a restart).
INPUTS_DIR = "inputs"

_FORMATS_TEXT = "PNG, JPEG, WebP or GIF"


class AttachmentError(Exception):
    """The attachment cannot be used. `str(e)` says why and how to fix it."""


@dataclass(frozen=True)
class CheckedImage:
    """An uploaded image that passed every check: its bytes, format and size."""

    data: bytes
    extension: str  # without the dot: png, jpg, webp, gif
    width: int
    height: int


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def check_metadata(attachment: discord.Attachment) -> None:
    """The checks that need no download: type, byte size and (when known) pixel count."""
    name = attachment.filename or "the file"
    extension = PurePosixPath(name.lower()).suffix
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type:
        is_image = content_type in ALLOWED_CONTENT_TYPES
    else:
        is_image = extension in ALLOWED_EXTENSIONS
    if not is_image:
        raise AttachmentError(
            f"`{name}` is not an image I can use ({content_type or 'unknown type'}). "
            f"Attach a {_FORMATS_TEXT} picture instead."
        )
    if attachment.size > MAX_BYTES:
        raise AttachmentError(
            f"`{name}` is {_megabytes(attachment.size)}; the limit is {_megabytes(MAX_BYTES)}. "
            "Save it smaller (e.g. as a JPEG, or scaled down) and attach it again."
        )
    width, height = attachment.width, attachment.height
    if width and height and width * height > MAX_PIXELS:
        raise AttachmentError(_too_many_pixels(name, width, height))


def _too_many_pixels(name: str, width: int, height: int) -> str:
    side = int(MAX_PIXELS ** 0.5)
    return (
        f"`{name}` is {width}×{height} pixels; the limit is {MAX_PIXELS:,} pixels "
        f"(e.g. {side}×{side}). Scale it down and attach it again."
    )


def check_bytes(data: bytes, name: str = "the file") -> CheckedImage:
    """Read the image header (no pixel decoding) and check format and pixel count."""
    if len(data) > MAX_BYTES:
        raise AttachmentError(
            f"`{name}` is {_megabytes(len(data))}; the limit is {_megabytes(MAX_BYTES)}. "
            "Save it smaller and attach it again."
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns (and over twice its limit, raises) on huge images; our own
            # limit below is stricter, so its warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                image_format = image.format or ""
                width, height = image.size
    except Image.DecompressionBombError:
        raise AttachmentError(
            f"`{name}` has far too many pixels; the limit is {MAX_PIXELS:,}. Scale it down."
        ) from None
    except Exception:  # Pillow raises many kinds for garbage input; all mean "not an image"
        raise AttachmentError(
            f"`{name}` could not be read as an image (it may be damaged or not a picture). "
            f"Attach a {_FORMATS_TEXT} file."
        ) from None
    extension = ALLOWED_FORMATS.get(image_format)
    if extension is None:
        raise AttachmentError(
            f"`{name}` is a {image_format or 'unknown'} image; I can use {_FORMATS_TEXT}. "
            "Convert it and attach it again."
        )
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        raise AttachmentError(_too_many_pixels(name, width, height))
    return CheckedImage(data=data, extension=extension, width=width, height=height)


async def fetch_image(attachment: discord.Attachment) -> CheckedImage:
    """Check an attachment, download it, and check its header. Raises `AttachmentError`."""
    check_metadata(attachment)
    try:
        data = await attachment.read()
    except (discord.HTTPException, discord.NotFound) as error:
        raise AttachmentError(
            f"`{attachment.filename}` could not be downloaded from Discord ({error.__class__.__name__}). "
            "Attach it again."
        ) from None
    return check_bytes(data, attachment.filename)


def first_image_attachment(message: discord.Message) -> discord.Attachment | None:
    """The message's first attachment that looks like an image (by type or name); its
    size limits are checked later by `fetch_image`, so an oversized image gets the size
    message rather than "no image"."""
    for attachment in message.attachments:
        if looks_like_image(attachment):
            return attachment
    return None


def looks_like_image(attachment: discord.Attachment) -> bool:
    content_type = (attachment.content_type or "").lower()
    return content_type.startswith("image/") or PurePosixPath(
        (attachment.filename or "").lower()
    ).suffix in ALLOWED_EXTENSIONS


def save_input(results_dir: Path, name: str, image: CheckedImage) -> str:
    """Write an input image to RESULTS_DIR/inputs/NAME.EXT; returns the path relative to
    RESULTS_DIR (what the store keeps, so the data folder can move)."""
    relative = f"{INPUTS_DIR}/{name}.{image.extension}"
    path = results_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".part")
    temporary.write_bytes(image.data)
    temporary.replace(path)  # never a half-written file under its final name
    return relative
