"""Length-prefixed frames: a JSON header and an optional binary blob. Stdlib only.

Why a home-made framing rather than e.g. JSON lines: results and previews are binary (PNG,
JPEG, uploaded images); base64 in JSON would cost a third more bytes and a copy. So:

    frame = 4-byte big-endian unsigned length N
          + N bytes of UTF-8 JSON header (an object)
          + header["blob_size"] raw bytes, when the header has a positive `blob_size`

Every header has `type`. One frame carries at most one blob. What the headers mean is
`engine.protocol`'s business; this module only moves frames.

Limits: a header is at most `MAX_HEADER_SIZE` bytes and a blob at most `MAX_BLOB_SIZE`.
A reader that meets a bad frame raises `ProtocolError`; when `error.recoverable` is true the
stream is still in sync (the bad frame was consumed whole, an oversized blob skipped) and
the reader just goes on. When false (a length prefix so large that it can only be garbage,
a stream that ends mid-frame) there is no way to find the next frame boundary again: the
reader must give up on the stream. A header that is not valid JSON is assumed to carry no
blob, which is right for everything but a sender that both corrupts a header and attaches
a blob; no framing without markers can do better.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, BinaryIO

#: Largest JSON header accepted. Headers hold ids, prompts and numbers: 64 KiB is plenty.
MAX_HEADER_SIZE = 64 * 1024
#: Largest blob accepted: a 4096x4096 PNG fits; anything bigger is a bug or an attack.
MAX_BLOB_SIZE = 32 * 1024 * 1024
#: An oversized header up to this size is still read (and thrown away) so that its
#: `blob_size` can be skipped too and the stream stays in sync. Beyond it the length is
#: almost certainly garbage (unframed bytes), and the stream cannot be resynced.
MAX_SKIPPABLE_HEADER = 1024 * 1024
#: An oversized blob up to this size is skipped (read and discarded in chunks); beyond it
#: waiting for that many bytes would hang on garbage, so the stream is given up.
MAX_SKIPPABLE_BLOB = 256 * 1024 * 1024
_SKIP_CHUNK = 64 * 1024

_LENGTH = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame or message that breaks the protocol.

    `recoverable`: the stream is still in sync and reading may go on.
    `job`: the job id from the offending header, when one could be read, so that the
    answer (an `error` event) can name it.
    """

    def __init__(self, message: str, *, recoverable: bool = True, job: str | None = None) -> None:
        super().__init__(message)
        self.recoverable = recoverable
        self.job = job


@dataclass(frozen=True)
class Frame:
    """One decoded frame: the JSON header (a dict with at least `type`) and its blob."""

    header: dict[str, Any]
    blob: bytes = b""

    @property
    def type(self) -> str:
        return str(self.header["type"])


def job_of(header: dict[str, Any]) -> str | None:
    """The header's `job`, when it is a string: what an error about the frame can name."""
    job = header.get("job")
    return job if isinstance(job, str) else None


# --------------------------------------------------------------------------------------
# Framing, sans-IO: one generator says what to read next; sync and async drivers feed it.
# --------------------------------------------------------------------------------------

_READ = "read"
_SKIP = "skip"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a header")


def _parse_header(raw: bytes) -> dict[str, Any]:
    """Bytes -> header dict, or ProtocolError (recoverable: the bytes were consumed)."""
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError(f"frame header is not valid UTF-8 JSON: {error}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"frame header must be a JSON object, not {type(header).__name__}")
    job = job_of(header)
    if not isinstance(header.get("type"), str) or not header["type"]:
        raise ProtocolError("frame header has no `type` string", job=job)
    size = header.get("blob_size", 0)
    if type(size) is not int or size < 0:
        raise ProtocolError("frame header `blob_size` must be a non-negative integer", job=job)
    return header


def _frame_steps() -> Generator[tuple[str, int], bytes, Frame]:
    """Yields (what, n): `read` n bytes and send them in, or `skip` n bytes (send b"").

    Returns the frame, or raises ProtocolError. End-of-stream is the driver's business.
    """
    (length,) = _LENGTH.unpack((yield (_READ, _LENGTH.size)))
    if length == 0:
        raise ProtocolError("frame header is empty (length 0)")
    if length > MAX_HEADER_SIZE:
        if length > MAX_SKIPPABLE_HEADER:
            raise ProtocolError(
                f"frame header length {length} is far beyond the {MAX_HEADER_SIZE}-byte limit: "
                "the stream is garbage or out of sync and cannot be resynced",
                recoverable=False,
            )
        raw = yield (_READ, length)
        message = f"frame header of {length} bytes exceeds the {MAX_HEADER_SIZE}-byte limit"
        try:
            header = _parse_header(raw)
        except ProtocolError:
            raise ProtocolError(message + " (and is not a valid header)") from None
        size = header.get("blob_size", 0)
        if size > MAX_SKIPPABLE_BLOB:
            raise ProtocolError(message + "; its blob is too large to skip, stream given up",
                                recoverable=False, job=job_of(header))
        if size:
            yield (_SKIP, size)
        raise ProtocolError(message, job=job_of(header))
    header = _parse_header((yield (_READ, length)))
    size = header.get("blob_size", 0)
    if size > MAX_BLOB_SIZE:
        message = f"frame blob of {size} bytes exceeds the {MAX_BLOB_SIZE}-byte limit"
        if size > MAX_SKIPPABLE_BLOB:
            raise ProtocolError(message + "; too large to skip, stream given up",
                                recoverable=False, job=job_of(header))
        yield (_SKIP, size)
        raise ProtocolError(message + " (skipped)", job=job_of(header))
    blob = (yield (_READ, size)) if size else b""
    return Frame(header, blob)


def _truncated() -> ProtocolError:
    return ProtocolError("stream ended in the middle of a frame", recoverable=False)


def _read_exact_sync(stream: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(stream: BinaryIO) -> Frame | None:
    """Read one frame from a blocking binary stream. None at a clean end of stream.

    Raises ProtocolError for a bad frame (see `recoverable`).
    """
    steps = _frame_steps()
    what, n = next(steps)
    first = True
    try:
        while True:
            if what == _READ:
                data = _read_exact_sync(stream, n)
                if len(data) < n:
                    if first and not data:
                        return None
                    raise _truncated()
            else:
                left = n
                while left:
                    chunk = stream.read(min(left, _SKIP_CHUNK))
                    if not chunk:
                        raise _truncated()
                    left -= len(chunk)
                data = b""
            first = False
            what, n = steps.send(data)
    except StopIteration as stop:
        return stop.value


async def read_frame_async(reader: asyncio.StreamReader) -> Frame | None:
    """Read one frame from an asyncio stream. None at a clean end of stream.

    Raises ProtocolError for a bad frame (see `recoverable`).
    """
    steps = _frame_steps()
    what, n = next(steps)
    first = True
    try:
        while True:
            try:
                if what == _READ:
                    data = await reader.readexactly(n)
                else:
                    left = n
                    while left:
                        chunk = await reader.readexactly(min(left, _SKIP_CHUNK))
                        left -= len(chunk)
                    data = b""
            except asyncio.IncompleteReadError as error:
                if first and not error.partial:
                    return None
                raise _truncated() from None
            first = False
            what, n = steps.send(data)
    except StopIteration as stop:
        return stop.value


def encode_frame(header: dict[str, Any], blob: bytes = b"") -> bytes:
    """Header + blob -> the bytes of one frame. Sets `blob_size` from the blob.

    Raises ProtocolError (nothing written) for a header or blob over the limits, a header
    without `type`, or a header that JSON cannot hold (NaN, non-string keys, ...).
    """
    if not isinstance(header.get("type"), str):
        raise ProtocolError("a frame header needs a `type` string")
    header = {k: v for k, v in header.items() if k != "blob_size"}
    if blob:
        header["blob_size"] = len(blob)
    try:
        raw = json.dumps(header, ensure_ascii=False, allow_nan=False,
                         separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"header cannot be encoded as JSON: {error}") from None
    if len(raw) > MAX_HEADER_SIZE:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds the {MAX_HEADER_SIZE}-byte limit")
    if len(blob) > MAX_BLOB_SIZE:
        raise ProtocolError(f"blob of {len(blob)} bytes exceeds the {MAX_BLOB_SIZE}-byte limit")
    return _LENGTH.pack(len(raw)) + raw + bytes(blob)


def write_frame(stream: BinaryIO, header: dict[str, Any], blob: bytes = b"") -> None:
    """Write one frame to a blocking binary stream and flush it (the reader waits on it)."""
    stream.write(encode_frame(header, blob))
    stream.flush()


async def write_frame_async(writer: asyncio.StreamWriter, header: dict[str, Any],
                            blob: bytes = b"") -> None:
    """Write one frame to an asyncio stream and wait until it is flushed (backpressure)."""
    writer.write(encode_frame(header, blob))
    await writer.drain()
