"""Images in and out: decoding untrusted images safely, PNGs with metadata, JPEG thumbnails.

Every image a user sends (init image, image prompt, mask) goes through `load_image`, which
refuses what would be expensive *before* paying for it: the byte size before reading or
decoding, the pixel count from the header before decoding the pixels (decompression bombs),
and formats other than the few we expect. What passes comes back upright (EXIF orientation
applied) and in RGB (transparency flattened on white), so the rest of the engine sees one
kind of image.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import cast

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from engine.errors import InputImageError
from engine.limits import DEFAULT_MAX_IMAGE_BYTES

#: The bot, the worker (`--max-image-bytes`) and the CLI share this one default.
DEFAULT_MAX_BYTES = DEFAULT_MAX_IMAGE_BYTES
DEFAULT_MAX_PIXELS = 36_000_000  # e.g. 6000x6000; about 108 MB once decoded to RGB
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_FORMAT_NAMES = "PNG, JPEG, WEBP, GIF or BMP"


def _file_size(size: int) -> str:
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}".replace(".0 ", " ")
    return f"{size} bytes"


def _too_big(what: str, size: int, max_bytes: int) -> InputImageError:
    shown, limit = _file_size(size), _file_size(max_bytes)
    if shown == limit:  # just over: rounding would make them look equal
        shown, limit = f"{size:,} bytes", f"{limit} ({max_bytes:,} bytes)"
    return InputImageError(f"the {what} is {shown}; the limit is {limit}")


def load_image(
    data: bytes | Path | str,
    *,
    what: str = "image",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_alpha: bool = False,
) -> Image.Image:
    """Decode an untrusted image into an upright RGB `PIL.Image`, or raise `InputImageError`.

    `what` names the image in messages ("the init image is 40 MB; the limit is 8 MB").
    Only the first frame of an animated GIF/WEBP is used. With `keep_alpha`, an image with
    transparency comes back RGBA instead of flattened (masks: opaque means "change").
    """
    if isinstance(data, (str, Path)):
        path = Path(data)
        try:
            size = path.stat().st_size
        except OSError as error:
            raise InputImageError(f"the {what} {path} cannot be read: {error.strerror or error}") from None
        if not path.is_file():
            raise InputImageError(f"the {what} {path} is not a file")
        if size > max_bytes:
            raise _too_big(what, size, max_bytes)
        data = path.read_bytes()
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputImageError(f"the {what} must be bytes or a file path")
    data = bytes(data)
    if len(data) > max_bytes:
        raise _too_big(what, len(data), max_bytes)
    if not data:
        raise InputImageError(f"the {what} is empty")

    with warnings.catch_warnings():
        # Our own pixel limit below is stricter; Pillow's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            # Image.open reads only the header: size and format are known, no pixels decoded.
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError:
            raise InputImageError(
                f"the {what} has too many pixels; the limit is {max_pixels / 1e6:.0f} megapixels"
            ) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise InputImageError(f"the {what} is not an image in a format we accept ({_FORMAT_NAMES})") from None

        width, height = image.size
        if width < 1 or height < 1:
            raise InputImageError(f"the {what} has no pixels")
        if width * height > max_pixels:
            raise InputImageError(
                f"the {what} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
                f"the limit is {max_pixels / 1e6:.0f} megapixels"
            )
        try:
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image) or image
            if keep_alpha and _has_alpha(upright):
                return upright.convert("RGBA")
            return _to_rgb(upright)
        except Image.DecompressionBombError:
            raise InputImageError(f"the {what} has too many pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise InputImageError(f"the {what} could not be decoded (damaged or truncated file: {error})") from None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white (transparent areas read as paper)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit or float greyscale: scale to 8 bits rather than clipping at 255.
        lo, hi = cast(tuple[float, float], image.getextrema())  # one band: (min, max)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def png_bytes(image: Image.Image, metadata: dict[str, str] | None = None) -> bytes:
    """Encode a PNG carrying `metadata` as text chunks (tEXt, or iTXt for non-Latin-1 text).

    The prompt, seed and model names travel inside the file, so a result can be reproduced
    from the file alone.
    """
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def png_metadata(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG written by `png_bytes`."""
    with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
        image.load()
        return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}


def jpeg_thumbnail(image: Image.Image, max_side: int = 256, quality: int = 80) -> bytes:
    """A small JPEG (a few KB) for progress previews: cheap to send every few seconds."""
    thumb = image.convert("RGB")
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def fit_to_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale and centre-crop `image` to exactly `size` (width, height), keeping its aspect."""
    if image.size == tuple(size):
        return image
    return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
