"""Engine <-> bot messages and their framing. Plain stdlib: the bot imports this without torch.

Why a home-made framing rather than e.g. JSON lines: results and previews are binary (PNG,
JPEG, uploaded images); base64 in JSON would cost a third more bytes and a copy. So:

    frame = 4-byte big-endian unsigned length N
          + N bytes of UTF-8 JSON header (an object)
          + header["blob_size"] raw bytes, when the header has a positive `blob_size`

Every header has `type`; a header that concerns a job also has `job` (a string id chosen by
the bot). One frame carries at most one blob. A `submit` may need several images (init
image, image prompts, mask); it lists them in `parts`, in order, and its blob is their
concatenation:

    {"type": "submit", "job": "k3q7", ..., "blob_size": 3000,
     "parts": [{"kind": "init_image", "size": 1000},
               {"kind": "image_prompt", "size": 1500, "weight": 1.0},
               {"kind": "mask_image", "size": 500}]}

Messages (see the dataclasses below for the fields):
    bot -> engine: submit, cancel, ping, shutdown
    engine -> bot: ready, started, progress (+JPEG), done (+PNG), failed, cancelled, pong, error

Limits: a header is at most `MAX_HEADER_SIZE` bytes and a blob at most `MAX_BLOB_SIZE`.
A reader that meets a bad frame raises `ProtocolError`; when `error.recoverable` is true the
stream is still in sync (the bad frame was consumed whole, an oversized blob skipped) and
the reader just goes on. When false (a length prefix so large that it can only be garbage,
a stream that ends mid-frame) there is no way to find the next frame boundary again: the
reader must give up on the stream. A header that is not valid JSON is assumed to carry no
blob, which is right for everything but a sender that both corrupts a header and attaches
a blob; no framing without markers can do better.

The version in `ready` (`PROTOCOL_VERSION`) is bumped on any incompatible change; the bot
refuses a worker that speaks another version.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar, Self, Union

PROTOCOL_VERSION = 1

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

#: Bounds checked when decoding a `submit`; the bot enforces tighter, configured ones.
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 4000
MAX_IMAGE_PROMPTS = 8
MAX_SIDE = 8192
MAX_ITERATIONS = 100_000
MAX_CUTN = 1024
MAX_JOB_ID_CHARS = 128

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
        return self.header["type"]


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
    job = header.get("job") if isinstance(header.get("job"), str) else None
    if not isinstance(header.get("type"), str) or not header["type"]:
        raise ProtocolError("frame header has no `type` string", job=job)
    size = header.get("blob_size", 0)
    if type(size) is not int or size < 0:
        raise ProtocolError("frame header `blob_size` must be a non-negative integer", job=job)
    return header


def _job_of(header: dict[str, Any]) -> str | None:
    job = header.get("job")
    return job if isinstance(job, str) else None


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
                                recoverable=False, job=_job_of(header))
        if size:
            yield (_SKIP, size)
        raise ProtocolError(message, job=_job_of(header))
    header = _parse_header((yield (_READ, length)))
    size = header.get("blob_size", 0)
    if size > MAX_BLOB_SIZE:
        message = f"frame blob of {size} bytes exceeds the {MAX_BLOB_SIZE}-byte limit"
        if size > MAX_SKIPPABLE_BLOB:
            raise ProtocolError(message + "; too large to skip, stream given up",
                                recoverable=False, job=_job_of(header))
        yield (_SKIP, size)
        raise ProtocolError(message + " (skipped)", job=_job_of(header))
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


# --------------------------------------------------------------------------------------
# Field checks used when decoding: a bad field is a recoverable ProtocolError naming it.
# --------------------------------------------------------------------------------------

_MISSING = object()


def _field(h: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    if key in h and h[key] is not None:
        return h[key]
    if default is _MISSING:
        raise ProtocolError(f"`{h.get('type')}` needs `{key}`", job=_job_of(h))
    return default


def _bad(h: dict[str, Any], key: str, what: str) -> ProtocolError:
    return ProtocolError(f"`{h.get('type')}` field `{key}` must be {what}", job=_job_of(h))


def _str(h: dict[str, Any], key: str, default: Any = _MISSING, *, max_chars: int = 10_000,
         empty: bool = True) -> Any:
    value = _field(h, key, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, str) or len(value) > max_chars or (not empty and not value):
        raise _bad(h, key, f"a {'non-empty ' if not empty else ''}string of at most {max_chars} characters")
    return value


def _int(h: dict[str, Any], key: str, default: Any = _MISSING, *, low: int = 0,
         high: int = 2**63 - 1) -> Any:
    value = _field(h, key, default)
    if value is default and default is not _MISSING:
        return value
    if type(value) is not int or not low <= value <= high:
        raise _bad(h, key, f"an integer from {low} to {high}")
    return value


def _float(h: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = _field(h, key, default)
    if value is default and default is not _MISSING:
        return value
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _bad(h, key, "a finite number")
    return float(value)


def _bool(h: dict[str, Any], key: str, default: bool = False) -> bool:
    value = _field(h, key, default)
    if not isinstance(value, bool):
        raise _bad(h, key, "true or false")
    return value


def _job(h: dict[str, Any]) -> str:
    return _str(h, "job", max_chars=MAX_JOB_ID_CHARS, empty=False)


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextPromptSpec:
    """One text prompt and its weight (negative steers away), as `engine.prompts` parses it."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class ImagePromptSpec:
    """An image prompt: the encoded image file (PNG/JPEG/...) as uploaded, and its weight."""

    data: bytes
    weight: float = 1.0


@dataclass(frozen=True)
class Submit:
    """bot -> engine: run a job. The engine answers started/progress*/done|failed|cancelled.

    Sizes are (width, height) in pixels; the engine rounds them to the VQGAN factor.
    `seed` None = the engine picks one (and reports it in `done`).
    `replace` (a source phrase) and `mask_image` (white = change) make a masked edit of
    `init_image`. `progress_every`: iterations between `progress` events (0 = none).
    `preview_size`: longest side of the JPEG preview in `progress`.
    """

    TYPE: ClassVar[str] = "submit"
    job: str
    prompts: tuple[TextPromptSpec, ...]
    width: int = 512
    height: int = 512
    iterations: int = 400
    seed: int | None = None
    cutn: int = 32
    image_prompts: tuple[ImagePromptSpec, ...] = ()
    init_image: bytes | None = None
    replace: str | None = None
    mask_image: bytes | None = None
    progress_every: int = 10
    preview_size: int = 256

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        parts: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        if self.init_image is not None:
            parts.append({"kind": "init_image", "size": len(self.init_image)})
            blobs.append(self.init_image)
        for prompt in self.image_prompts:
            parts.append({"kind": "image_prompt", "size": len(prompt.data), "weight": prompt.weight})
            blobs.append(prompt.data)
        if self.mask_image is not None:
            parts.append({"kind": "mask_image", "size": len(self.mask_image)})
            blobs.append(self.mask_image)
        header = {
            "type": self.TYPE, "job": self.job,
            "prompts": [{"text": p.text, "weight": p.weight} for p in self.prompts],
            "width": self.width, "height": self.height, "iterations": self.iterations,
            "seed": self.seed, "cutn": self.cutn, "replace": self.replace,
            "progress_every": self.progress_every, "preview_size": self.preview_size,
            "parts": parts,
        }
        return header, b"".join(blobs)

    @classmethod
    def from_frame(cls, h: dict[str, Any], blob: bytes) -> Submit:
        job = _job(h)
        raw_prompts = _field(h, "prompts")
        if not isinstance(raw_prompts, list) or len(raw_prompts) > MAX_PROMPTS:
            raise _bad(h, "prompts", f"a list of at most {MAX_PROMPTS} {{text, weight}} objects")
        prompts = []
        for item in raw_prompts:
            if not isinstance(item, dict):
                raise _bad(h, "prompts", "a list of {text, weight} objects")
            item = {"type": "submit", "job": job, **item}
            prompts.append(TextPromptSpec(_str(item, "text", max_chars=MAX_PROMPT_CHARS),
                                          _float(item, "weight", 1.0)))
        raw_parts = _field(h, "parts", [])
        if not isinstance(raw_parts, list):
            raise _bad(h, "parts", "a list of {kind, size} objects")
        init_image = mask_image = None
        image_prompts: list[ImagePromptSpec] = []
        offset = 0
        for item in raw_parts:
            if not isinstance(item, dict):
                raise _bad(h, "parts", "a list of {kind, size} objects")
            item = {"type": "submit", "job": job, **item}
            kind = _str(item, "kind")
            size = _int(item, "size", low=0, high=len(blob) - offset)
            data = blob[offset:offset + size]
            offset += size
            if kind == "init_image" and init_image is None:
                init_image = data
            elif kind == "mask_image" and mask_image is None:
                mask_image = data
            elif kind == "image_prompt" and len(image_prompts) < MAX_IMAGE_PROMPTS:
                image_prompts.append(ImagePromptSpec(data, _float(item, "weight", 1.0)))
            else:
                raise _bad(h, "parts", "at most one init_image, one mask_image and "
                           f"{MAX_IMAGE_PROMPTS} image_prompt parts")
        if offset != len(blob):
            raise ProtocolError(f"`submit` parts add up to {offset} bytes but the blob has "
                                f"{len(blob)}", job=job)
        replace = _str(h, "replace", None, max_chars=MAX_PROMPT_CHARS)
        return cls(
            job=job, prompts=tuple(prompts),
            width=_int(h, "width", 512, low=1, high=MAX_SIDE),
            height=_int(h, "height", 512, low=1, high=MAX_SIDE),
            iterations=_int(h, "iterations", 400, low=1, high=MAX_ITERATIONS),
            seed=_int(h, "seed", None, low=0, high=2**63 - 1),
            cutn=_int(h, "cutn", 32, low=1, high=MAX_CUTN),
            image_prompts=tuple(image_prompts), init_image=init_image,
            replace=replace, mask_image=mask_image,
            progress_every=_int(h, "progress_every", 10, low=0, high=MAX_ITERATIONS),
            preview_size=_int(h, "preview_size", 256, low=16, high=MAX_SIDE),
        )


@dataclass(frozen=True)
class _JobOnly:
    """The frame of a message whose only field is the job id (`cancel`, `started`)."""

    TYPE: ClassVar[str]
    job: str

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        return {"type": self.TYPE, "job": self.job}, b""

    @classmethod
    def from_frame(cls, h: dict[str, Any], blob: bytes) -> Self:
        return cls(_job(h))


@dataclass(frozen=True)
class _NonceOnly:
    """The frame of a message whose only field is a nonce (`ping`, `pong`)."""

    TYPE: ClassVar[str]
    nonce: int = 0

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        return {"type": self.TYPE, "nonce": self.nonce}, b""

    @classmethod
    def from_frame(cls, h: dict[str, Any], blob: bytes) -> Self:
        return cls(_int(h, "nonce", 0, low=-(2**63), high=2**63 - 1))


@dataclass(frozen=True)
class Cancel(_JobOnly):
    """bot -> engine: stop a job. Running: stops within one iteration; queued: removed.
    The engine answers `cancelled` (with `unknown` true if it never heard of the job or
    the job had already finished). Field: `job`."""

    TYPE: ClassVar[str] = "cancel"


@dataclass(frozen=True)
class Ping(_NonceOnly):
    """bot -> engine: are you alive? Answered with `pong` (same nonce) even mid-job.
    Field: `nonce` (default 0)."""

    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Shutdown:
    """bot -> engine: cancel everything and exit 0."""

    TYPE: ClassVar[str] = "shutdown"

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        return {"type": self.TYPE}, b""

    @classmethod
    def from_frame(cls, h: dict[str, Any], blob: bytes) -> Shutdown:
        return cls()


@dataclass(frozen=True)
class Ready:
    """engine -> bot, once, after the models are loaded: what it runs on."""

    TYPE: ClassVar[str] = "ready"
    version: int
    device: str
    vqgan: str
    clip: str
    pid: int = 0

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        return {"type": self.TYPE, "version": self.version, "device": self.device,
                "vqgan": self.vqgan, "clip": self.clip, "pid": self.pid}, b""

    @classmethod
    def from_frame(cls, h: dict[str, Any], blob: bytes) -> Ready:
        return cls(_int(h, "version", low=0), _str(h, "device", ""), _str(h, "vqgan", ""),
                   _str(h, "clip", ""), _int(h, "pid", 0))


@dataclass(frozen=True)
class Started(_JobOnly):
    """engine -> bot: the job left the engine's queue and is computing. Field: `job`."""

    TYPE: ClassVar[str] = "started"


@dataclass(frozen=True)
class Progress:
    """engine -> bot: iteration `iteration` of `total` is done; `preview` is a small JPEG."""

    TYPE: ClassVar[str] = "progress"
    job: str
    iteration: int
    total: int
    loss: float
    elapsed: float = 0.0
    preview: bytes = b""

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        # A diverged run can have a NaN/inf loss, which JSON cannot carry: it travels as
        # null and comes back as NaN, rather than costing the user their previews.
        loss = self.loss if math.isfinite(self.loss) else None
        return {"type": self.TYPE, "job": self.job, "iteration": self.iteration,
                "total": self.total, "loss": loss, "elapsed": self.elapsed}, self.preview

    @classmethod
    def from_frame(cls, h: dict[str, Any], blob: bytes) -> Progress:
        return cls(_job(h), _int(h, "iteration"), _int(h, "total"), _float(h, "loss", math.nan),
                   _float(h, "elapsed", 0.0), blob)


@dataclass(frozen=True)
class Done:
    """engine -> bot: the job finished; `png` is the image (with its metadata)."""

    TYPE: ClassVar[str] = "done"
    job: str
    png: bytes
    seed: int
    seconds: float
    iterations: int = 0
    width: int = 0
    height: int = 0

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        return {"type": self.TYPE, "job": self.job, "seed": self.seed, "seconds": self.seconds,
                "iterations": self.iterations, "width": self.width,
                "height": self.height}, self.png

    @classmethod
    def from_frame(cls, h: dict[str, Any], blob: bytes) -> Done:
        return cls(_job(h), blob, _int(h, "seed"), _float(h, "seconds"), _int(h, "iterations", 0),
                   _int(h, "width", 0), _int(h, "height", 0))


#: Values of `Failed.reason`, so the bot can react per kind without parsing messages.
FAIL_OUT_OF_MEMORY = "out_of_memory"
FAIL_PROMPT = "prompt"
FAIL_INPUT_IMAGE = "input_image"
FAIL_ENGINE = "engine"        # another EngineError (message fit to show as is)
FAIL_INTERNAL = "internal"    # a bug: "internal engine error: Type: ..."
FAIL_REJECTED = "rejected"    # the engine refused the submit frame itself
FAIL_CRASH = "crash"          # set by the bot's client: the worker died mid-job
FAIL_SHUTDOWN = "shutdown"    # set by the bot's client: closed while the job was pending


@dataclass(frozen=True)
class Failed:
    """engine -> bot: the job failed. `message` is fit to show the user as is."""

    TYPE: ClassVar[str] = "failed"
    job: str
    message: str
    reason: str = FAIL_ENGINE

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        return {"type": self.TYPE, "job": self.job, "message": self.message,
                "reason": self.reason}, b""

    @classmethod
    def from_frame(cls, h: dict[str, Any], blob: bytes) -> Failed:
        return cls(_job(h), _str(h, "message"), _str(h, "reason", FAIL_ENGINE))


@dataclass(frozen=True)
class Cancelled:
    """engine -> bot: the job was cancelled (or, `unknown`, was not there to cancel)."""

    TYPE: ClassVar[str] = "cancelled"
    job: str
    unknown: bool = False

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        return {"type": self.TYPE, "job": self.job, "unknown": self.unknown}, b""

    @classmethod
    def from_frame(cls, h: dict[str, Any], blob: bytes) -> Cancelled:
        return cls(_job(h), _bool(h, "unknown"))


@dataclass(frozen=True)
class Pong(_NonceOnly):
    """engine -> bot: answer to `ping`, same nonce. Field: `nonce` (default 0)."""

    TYPE: ClassVar[str] = "pong"


@dataclass(frozen=True)
class Error:
    """engine -> bot: a frame the engine could not accept (malformed, oversized, unknown
    type, duplicate job id, ...). `job` names the job when the header had one. `fatal`:
    the stream could not be resynced and the worker is exiting."""

    TYPE: ClassVar[str] = "error"
    message: str
    job: str | None = None
    fatal: bool = False

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        header: dict[str, Any] = {"type": self.TYPE, "message": self.message, "fatal": self.fatal}
        if self.job is not None:
            header["job"] = self.job
        return header, b""

    @classmethod
    def from_frame(cls, h: dict[str, Any], blob: bytes) -> Error:
        return cls(_str(h, "message"), _str(h, "job", None, max_chars=MAX_JOB_ID_CHARS),
                   _bool(h, "fatal"))


Message = Union[Submit, Cancel, Ping, Shutdown, Ready, Started, Progress, Done, Failed,
                Cancelled, Pong, Error]
#: The events of one job, as the bot's client yields them.
JobEvent = Union[Started, Progress, Done, Failed, Cancelled]
#: Events after which nothing more comes for that job.
TERMINAL_EVENTS = (Done, Failed, Cancelled)

MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls for cls in (Submit, Cancel, Ping, Shutdown, Ready, Started, Progress, Done,
                              Failed, Cancelled, Pong, Error)
}
TO_ENGINE = frozenset({"submit", "cancel", "ping", "shutdown"})
TO_BOT = frozenset(MESSAGE_TYPES) - TO_ENGINE


def decode_message(frame: Frame) -> Message:
    """Frame -> typed message. ProtocolError (recoverable) for an unknown type or bad field."""
    cls = MESSAGE_TYPES.get(frame.type)
    if cls is None:
        raise ProtocolError(f"unknown message type {frame.type!r}", job=_job_of(frame.header))
    if frame.blob and cls not in (Submit, Progress, Done):
        raise ProtocolError(f"`{frame.type}` carries no blob", job=_job_of(frame.header))
    return cls.from_frame(frame.header, frame.blob)


def encode_message(message: Message) -> bytes:
    """Typed message -> the bytes of its frame."""
    header, blob = message.to_frame()
    return encode_frame(header, blob)


def read_message(stream: BinaryIO) -> Message | None:
    """`read_frame` + `decode_message`. None at a clean end of stream."""
    frame = read_frame(stream)
    return None if frame is None else decode_message(frame)


async def read_message_async(reader: asyncio.StreamReader) -> Message | None:
    """`read_frame_async` + `decode_message`. None at a clean end of stream."""
    frame = await read_frame_async(reader)
    return None if frame is None else decode_message(frame)


def write_message(stream: BinaryIO, message: Message) -> None:
    """Write one message to a blocking binary stream and flush it."""
    stream.write(encode_message(message))
    stream.flush()


async def write_message_async(writer: asyncio.StreamWriter, message: Message) -> None:
    """Write one message to an asyncio stream and drain it."""
    writer.write(encode_message(message))
    await writer.drain()

