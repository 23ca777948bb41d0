"""Checking images users hand the bot, before anything is queued.

Images come only from Discord attachments (never from URLs a user types: the bot would
then fetch arbitrary addresses from the server it runs on). Every check that can be made
without downloading is made first, from what Discord tells us (content type, file name,
byte size, and width/height when Discord knows them). Then the bytes are downloaded and
the image *header* is read with Pillow to learn the real format and pixel count before
any pixel is decoded, which is what stops decompression bombs (a few KB of PNG that
decode to gigabytes). Only then, its cost bounded by the pixel count, is the image decoded
in full: a file whose header is fine but whose data is cut short or damaged is refused
here, privately, instead of failing in the engine after it was queued and charged.

The byte limit is the engine's (`engine.limits.DEFAULT_MAX_IMAGE_BYTES`, or the
operator's MAX_IMAGE_MB passed as `max_bytes`), so an image the bot accepts is never
refused by the engine for its size. The engine turns images upright by their EXIF
orientation; `CheckedImage.width/height` are already the upright sides, so a size picked
from them fits what the engine will see. The bytes themselves are kept as uploaded.

Every failure is an `AttachmentError` whose message (`bot.render.attachments`) says what
was wrong and how to fix it, fit to show the user as is.
"""

from __future__ import annotations

import asyncio
import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import discord
from PIL import ExifTags, Image, ImageFile

from bot import render
from bot.errors import UserError
from engine.limits import DEFAULT_MAX_IMAGE_BYTES

#: Formats the engine decodes, by Pillow format name -> file extension used on disk.
ALLOWED_FORMATS: dict[str, str] = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
ALLOWED_CONTENT_TYPES: frozenset[str] = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"}
)
ALLOWED_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
#: Largest pixel count accepted (e.g. 4096×4096). The engine scales inputs down to at most
#: MAX_SIZE; a bigger input only costs memory and time. It also bounds what decoding an
#: upload costs (at most about 64 MB of pixels).
MAX_PIXELS = 4096 * 4096
#: Sub-folder of RESULTS_DIR where input images are kept (so reroll/edit work after a restart).
INPUTS_DIR = "inputs"

#: EXIF orientations that turn the image a quarter turn (transpose, 270°, transverse,
#: 90°): upright, its width and height are swapped.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


class AttachmentError(UserError):
    """The attachment cannot be used. `str(e)` says why and how to fix it."""


@dataclass(frozen=True)
class CheckedImage:
    """An uploaded image that passed every check: its bytes (as uploaded), format, and
    size once turned upright by its EXIF orientation (as the engine will see it)."""

    data: bytes
    extension: str  # without the dot: png, jpg, webp, gif
    width: int
    height: int


def check_metadata(attachment: discord.Attachment, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> None:
    """The checks that need no download: type, byte size and (when known) pixel count."""
    name = attachment.filename
    extension = PurePosixPath((attachment.filename or "").lower()).suffix
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type:
        is_image = content_type in ALLOWED_CONTENT_TYPES
    else:
        is_image = extension in ALLOWED_EXTENSIONS
    if not is_image:
        raise AttachmentError(render.attachment_not_an_image(name, content_type))
    if attachment.size > max_bytes:
        raise AttachmentError(render.attachment_too_large(name, attachment.size, max_bytes))
    width, height = attachment.width, attachment.height
    if width and height and width * height > MAX_PIXELS:
        raise AttachmentError(render.attachment_too_many_pixels(name, width, height, MAX_PIXELS))


_strict_lock = threading.Lock()


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """Pillow with LOAD_TRUNCATED_IMAGES off, and quiet about big images.

    Both are process-wide settings. With LOAD_TRUNCATED_IMAGES on (any library in the
    process may turn it on), Pillow decodes a cut-short or damaged file without complaint,
    and the engine, which leaves it off, would then refuse the queued job. The
    DecompressionBombWarning is noise here: our own pixel limit is stricter. The lock
    keeps two checks (in worker threads) from restoring each other's settings.
    """
    with _strict_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def check_bytes(
    data: bytes, name: str | None = None, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> CheckedImage:
    """Check byte size, format and pixel count from the header, then decode the image.

    The header checks come before any pixel is decoded: they are what bounds the cost
    of decoding. Only the first frame of an animation is decoded, as the engine uses only
    that one. Blocking (up to a few hundred ms for the largest images): from async code
    use `fetch_image`, which runs it in a thread.
    """
    if len(data) > max_bytes:
        raise AttachmentError(render.attachment_too_large(name, len(data), max_bytes))
    with _strict_decoding():
        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
        except Image.DecompressionBombError:
            raise AttachmentError(render.attachment_far_too_many_pixels(name, MAX_PIXELS)) from None
        except Exception:  # Pillow raises many kinds for garbage input; all mean "not an image"
            raise AttachmentError(render.attachment_unreadable(name)) from None
        with image:
            image_format = image.format or ""
            extension = ALLOWED_FORMATS.get(image_format)
            if extension is None:
                raise AttachmentError(render.attachment_wrong_format(name, image_format))
            width, height = image.size
            if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
                raise AttachmentError(render.attachment_too_many_pixels(name, width, height, MAX_PIXELS))
            try:
                image.load()
                orientation = image.getexif().get(ExifTags.Base.Orientation)
            except Exception:  # truncated, corrupt data, bad CRC, broken EXIF: all unreadable
                raise AttachmentError(render.attachment_unreadable(name)) from None
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    return CheckedImage(data=data, extension=extension, width=width, height=height)


async def fetch_image(
    attachment: discord.Attachment, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> CheckedImage:
    """Check an attachment, download it, check and decode it. Raises `AttachmentError`.

    `max_bytes` is the operator's limit (MAX_IMAGE_MB), the same the engine applies.
    """
    check_metadata(attachment, max_bytes=max_bytes)
    try:
        data = await attachment.read()
    except (discord.HTTPException, discord.NotFound) as error:
        raise AttachmentError(render.attachment_not_downloaded(
            attachment.filename, error.__class__.__name__)) from None
    # Decoding the largest images takes a few hundred ms: not on the loop every command shares.
    return await asyncio.to_thread(check_bytes, data, attachment.filename, max_bytes=max_bytes)


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
