"""Engine <-> bot messages, and one codec that derives each message's frame from its fields.

Plain stdlib: the bot imports this without torch. Frames themselves (length prefix, JSON
header, blob, limits, `ProtocolError`) are `engine.framing`'s; the names the bot uses are
re-exported here, so `from engine import protocol as p` is all a caller needs.

Every header has `type`; a header that concerns a job also has `job` (a string id chosen by
the bot). How a message travels follows from its dataclass, so that the twelve messages
cannot drift apart from one another or from their decoders:

- each field, in definition order, is the header key of the same name, except the fields
  that hold bytes;
- a message with one `bytes` field (`progress`, `done`) sends it as the frame's blob;
- a message with several (a `submit` may carry an init image, image prompts and a mask)
  lists them in the header's `parts`, in field order, and its blob is their concatenation:

    {"type": "submit", "job": "k3q7", ..., "blob_size": 3000,
     "parts": [{"kind": "init_image", "size": 1000},
               {"kind": "image_prompt", "size": 1500, "weight": 1.0},
               {"kind": "mask_image", "size": 500}]}

- what a field accepts beyond its type (integer range, text length, list length) and its
  few special cases are in its `Annotated[..., Wire(...)]` type. A field left out of a
  header, or null, takes its dataclass default (or `Wire.absent`); a field with neither is
  required. Keys a message does not have are ignored. A bad field is a recoverable
  `ProtocolError` naming the field and, when the header has one, the job.

So field order is wire order: reordering fields or changing a bound changes the protocol
(tests/engine/test_protocol_wire.py holds the bytes each message must encode to).

Messages (see the dataclasses below for the fields):
    bot -> engine: submit, cancel, ping, shutdown
    engine -> bot: ready, started, progress (+JPEG), done (+PNG), failed, cancelled, pong, error

The version in `ready` (`PROTOCOL_VERSION`) is bumped on any incompatible change; the bot
refuses a worker that speaks another version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, BinaryIO, ClassVar, Self, Union, cast

# Re-exported: callers use them as `protocol.<name>`.
from engine.framing import (  # noqa: F401
    MAX_BLOB_SIZE,
    MAX_HEADER_SIZE,
    MAX_SKIPPABLE_BLOB,
    MAX_SKIPPABLE_HEADER,
    Frame,
    ProtocolError,
    encode_frame,
    job_of,
    read_frame,
    read_frame_async,
    write_frame,
    write_frame_async,
)

PROTOCOL_VERSION = 1

#: Bounds checked when decoding a `submit`; the bot enforces tighter, configured ones.
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 4000
MAX_IMAGE_PROMPTS = 8
MAX_SIDE = 8192
MAX_ITERATIONS = 100_000
MAX_CUTN = 1024
MAX_JOB_ID_CHARS = 128
#: The most jobs one engine may say it optimises at once (`Ready.capacity`).
MAX_CAPACITY = 64


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


@dataclass(frozen=True)
class Wire:
    """What a field accepts beyond its type, and how it travels when that is not plain."""

    low: int = 0                  # integers: the smallest accepted
    high: int = 2**63 - 1         # integers: the largest accepted
    max_chars: int = 10_000       # text: the longest accepted
    non_empty: bool = False       # text: "" is refused
    max_items: int | None = None  # tuples: the most items accepted
    absent: Any = _UNSET          # the value of a field left out or null, where that is not its default
    omit_none: bool = False       # None leaves the key out instead of sending null
    finite_or_null: bool = False  # floats: NaN/inf (which JSON cannot hold) travel as null
    part: str = ""                # bytes: the `kind` of its blob parts, when not the field's name


JobId = Annotated[str, Wire(max_chars=MAX_JOB_ID_CHARS, non_empty=True)]
Side = Annotated[int, Wire(low=1, high=MAX_SIDE)]


# --------------------------------------------------------------------------------------
# The codec: one per dataclass, built from its fields and type hints.
# --------------------------------------------------------------------------------------


class _Context:
    """The header being decoded, so that an error can name its type and job."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.type = header.get("type")
        self.job = job_of(header)

    def bad(self, key: str, what: str) -> ProtocolError:
        return ProtocolError(f"`{self.type}` field `{key}` must be {what}", job=self.job)

    def needs(self, key: str) -> ProtocolError:
        return ProtocolError(f"`{self.type}` needs `{key}`", job=self.job)


@dataclass(frozen=True)
class _Field:
    """One field as the codec sees it. `kind`: str, int, float, bool, bytes, or items (a
    tuple of a dataclass, `item`)."""

    name: str
    kind: str
    optional: bool = False
    wire: Wire = Wire()
    default: Any = _UNSET
    item: type | None = None

    @property
    def when_missing(self) -> Any:
        return self.default if self.wire.absent is _UNSET else self.wire.absent

    @property
    def part_kind(self) -> str:
        return self.wire.part or self.name

    @property
    def holds_bytes(self) -> bool:
        return self.kind == "bytes" or (self.item is not None and bool(_codec(self.item).blob_fields))


_SCALARS: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", bytes: "bytes"}


def _describe(spec: dataclasses.Field[Any], hint: Any) -> _Field:
    wire = Wire()
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        wire = next((extra for extra in extras if isinstance(extra, Wire)), wire)
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(options) != 1:
            raise TypeError(f"field {spec.name}: only `X | None` unions can travel")
        optional, hint = True, options[0]
    if spec.default_factory is not dataclasses.MISSING:
        raise TypeError(f"field {spec.name}: give a plain default, not a factory")
    default = _UNSET if spec.default is dataclasses.MISSING else spec.default
    if hint in _SCALARS:
        return _Field(spec.name, _SCALARS[hint], optional, wire, default)
    args = typing.get_args(hint)
    if (typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis
            and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]) and not optional):
        return _Field(spec.name, "items", False, wire, default, args[0])
    raise TypeError(f"field {spec.name}: {hint!r} cannot travel in a frame")


class _Codec:
    """Encodes and decodes one dataclass (a message, or an item inside one)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.type: str = getattr(cls, "TYPE", cls.__name__)
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = [_describe(spec, hints[spec.name]) for spec in dataclasses.fields(cls)]
        self.header_fields = [f for f in fields if not f.holds_bytes]
        self.blob_fields = [f for f in fields if f.holds_bytes]
        blob = self.blob_fields
        # One plain `bytes` field is the blob; otherwise optional bytes and tuples of items
        # with one bytes field each travel as `parts`.
        self.raw_blob = len(blob) == 1 and blob[0].kind == "bytes" and not blob[0].optional
        if not self.raw_blob:
            for f in blob:
                if f.kind == "bytes" and not f.optional:
                    raise TypeError(f"{cls.__name__}.{f.name}: a bytes part must be optional")
                if f.item is not None:
                    item = _codec(f.item)
                    if not item.raw_blob or {"kind", "size"} & {g.name for g in item.header_fields}:
                        raise TypeError(f"{cls.__name__}.{f.name}: items need one bytes field "
                                        "and no field named kind or size")
        limits = [f"one {f.part_kind}" if f.kind == "bytes" else f"{f.wire.max_items} {f.part_kind}"
                  for f in blob]
        self.parts_limit = ("at most " + ", ".join(limits[:-1]) + " and " + limits[-1] + " parts"
                            if len(limits) > 1 else "")

    # -- encoding ------------------------------------------------------------------------

    def encode(self, message: Any) -> tuple[dict[str, Any], bytes]:
        header: dict[str, Any] = {"type": self.type, **self.encode_fields(message)}
        if self.raw_blob:
            return header, bytes(getattr(message, self.blob_fields[0].name))
        if not self.blob_fields:
            return header, b""
        parts: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for f in self.blob_fields:
            value = getattr(message, f.name)
            if f.item is None:
                if value is not None:
                    parts.append({"kind": f.part_kind, "size": len(value)})
                    blobs.append(value)
                continue
            item_codec = _codec(f.item)
            for item in value:
                data = getattr(item, item_codec.blob_fields[0].name)
                parts.append({"kind": f.part_kind, "size": len(data),
                              **item_codec.encode_fields(item)})
                blobs.append(data)
        header["parts"] = parts
        return header, b"".join(blobs)

    def encode_fields(self, obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self.header_fields:
            value = getattr(obj, f.name)
            if value is None and f.wire.omit_none:
                continue
            if f.item is not None:
                item_codec = _codec(f.item)
                value = [item_codec.encode_fields(item) for item in value]
            elif f.kind == "float" and f.wire.finite_or_null and not math.isfinite(value):
                value = None
            out[f.name] = value
        return out

    # -- decoding ------------------------------------------------------------------------

    def decode(self, header: dict[str, Any], blob: bytes) -> Any:
        context = _Context(header)
        if blob and not self.blob_fields:
            raise ProtocolError(f"`{self.type}` carries no blob", job=context.job)
        values = self.decode_fields(context, header)
        if self.raw_blob:
            values[self.blob_fields[0].name] = blob
        elif self.blob_fields:
            values.update(self._decode_parts(context, header, blob))
        return self.cls(**values)

    def decode_fields(self, context: _Context, header: dict[str, Any],
                      prefix: str = "") -> dict[str, Any]:
        return {f.name: _decode_value(context, f, prefix + f.name, header.get(f.name))
                for f in self.header_fields}

    def _decode_parts(self, context: _Context, header: dict[str, Any],
                      blob: bytes) -> dict[str, Any]:
        raw_parts = header.get("parts")
        raw_parts = [] if raw_parts is None else raw_parts
        if not isinstance(raw_parts, list):
            raise context.bad("parts", "a list of {kind, size} objects")
        slots = {f.part_kind: f for f in self.blob_fields}
        values: dict[str, Any] = {f.name: None if f.item is None else [] for f in self.blob_fields}
        offset = 0
        for index, part in enumerate(raw_parts):
            if not isinstance(part, dict):
                raise context.bad("parts", "a list of {kind, size} objects")
            key = f"parts[{index}]"
            kind = _decode_value(context, _Field("kind", "str"), f"{key}.kind", part.get("kind"))
            size_field = _Field("size", "int", wire=Wire(high=len(blob) - offset))
            size = _decode_value(context, size_field, f"{key}.size", part.get("size"))
            data = blob[offset:offset + size]
            offset += size
            slot = slots.get(kind)
            if slot is None:
                raise context.bad("parts", self.parts_limit)
            if slot.item is None:
                if values[slot.name] is not None:
                    raise context.bad("parts", self.parts_limit)
                values[slot.name] = data
                continue
            items = values[slot.name]
            if slot.wire.max_items is not None and len(items) >= slot.wire.max_items:
                raise context.bad("parts", self.parts_limit)
            item_codec = _codec(slot.item)
            item_values = item_codec.decode_fields(context, part, f"{key}.")
            item_values[item_codec.blob_fields[0].name] = data
            items.append(slot.item(**item_values))
        if offset != len(blob):
            raise ProtocolError(f"`{self.type}` parts add up to {offset} bytes but the blob has "
                                f"{len(blob)}", job=context.job)
        return {name: tuple(value) if isinstance(value, list) else value
                for name, value in values.items()}


def _decode_value(context: _Context, f: _Field, key: str, value: Any) -> Any:
    """A header value checked against its field: the value to construct with, or a
    recoverable ProtocolError naming `key`."""
    if value is None:
        if f.when_missing is _UNSET:
            raise context.needs(key)
        return f.when_missing
    wire = f.wire
    if f.kind == "str":
        if not isinstance(value, str) or len(value) > wire.max_chars or (wire.non_empty and not value):
            raise context.bad(key, f"a {'non-empty ' if wire.non_empty else ''}string of at most "
                                   f"{wire.max_chars} characters")
        return value
    if f.kind == "int":
        if type(value) is not int or not wire.low <= value <= wire.high:
            raise context.bad(key, f"an integer from {wire.low} to {wire.high}")
        return value
    if f.kind == "float":
        if type(value) not in (int, float) or not math.isfinite(value):
            raise context.bad(key, "a finite number")
        return float(value)
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise context.bad(key, "true or false")
        return value
    assert f.item is not None, f"{f.kind} fields travel in the blob"
    item_codec = _codec(f.item)
    shape = "{" + ", ".join(g.name for g in item_codec.header_fields) + "}"
    if not isinstance(value, list) or (wire.max_items is not None and len(value) > wire.max_items):
        limit = "" if wire.max_items is None else f"at most {wire.max_items} "
        raise context.bad(key, f"a list of {limit}{shape} objects")
    items = []
    for index, raw in enumerate(value):
        if not isinstance(raw, dict):
            raise context.bad(key, f"a list of {shape} objects")
        items.append(f.item(**item_codec.decode_fields(context, raw, f"{key}[{index}].")))
    return tuple(items)


_CODECS: dict[type, _Codec] = {}


def _codec(cls: type) -> _Codec:
    """The codec of `cls`, built on first use (two threads may both build it: harmless)."""
    codec = _CODECS.get(cls)
    if codec is None:
        codec = _CODECS[cls] = _Codec(cls)
    return codec


class _Message:
    """What every message shares: its frame comes from its fields (see the module doc)."""

    TYPE: ClassVar[str]

    def to_frame(self) -> tuple[dict[str, Any], bytes]:
        return _codec(type(self)).encode(self)

    @classmethod
    def from_frame(cls, header: dict[str, Any], blob: bytes = b"") -> Self:
        return cast(Self, _codec(cls).decode(header, blob))


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextPromptSpec:
    """One text prompt and its weight (negative steers away), as `engine.prompts` parses it."""

    text: Annotated[str, Wire(max_chars=MAX_PROMPT_CHARS)]
    weight: float = 1.0


@dataclass(frozen=True)
class ImagePromptSpec:
    """An image prompt: the encoded image file (PNG/JPEG/...) as uploaded, and its weight."""

    data: bytes
    weight: float = 1.0


@dataclass(frozen=True)
class Submit(_Message):
    """bot -> engine: run a job. The engine answers started/progress*/done|failed|cancelled.

    Sizes are (width, height) in pixels; the engine rounds them to the VQGAN factor.
    `seed` None = the engine picks one (and reports it in `done`).
    `replace` (a source phrase) and `mask_image` (white = change) make a masked edit of
    `init_image`. `progress_every`: iterations between `progress` events (0 = none).
    `preview_size`: longest side of the JPEG preview in `progress`.
    """

    TYPE: ClassVar[str] = "submit"
    job: JobId
    prompts: Annotated[tuple[TextPromptSpec, ...], Wire(max_items=MAX_PROMPTS)]
    width: Side = 512
    height: Side = 512
    iterations: Annotated[int, Wire(low=1, high=MAX_ITERATIONS)] = 400
    seed: int | None = None
    cutn: Annotated[int, Wire(low=1, high=MAX_CUTN)] = 32
    # The images travel as parts in this order: init image, image prompts, mask.
    init_image: bytes | None = None
    image_prompts: Annotated[tuple[ImagePromptSpec, ...],
                             Wire(max_items=MAX_IMAGE_PROMPTS, part="image_prompt")] = ()
    replace: Annotated[str | None, Wire(max_chars=MAX_PROMPT_CHARS)] = None
    mask_image: bytes | None = None
    progress_every: Annotated[int, Wire(high=MAX_ITERATIONS)] = 10
    preview_size: Annotated[int, Wire(low=16, high=MAX_SIDE)] = 256


@dataclass(frozen=True)
class _JobOnly(_Message):
    """A message whose only field is the job id (`cancel`, `started`)."""

    job: JobId


@dataclass(frozen=True)
class _NonceOnly(_Message):
    """A message whose only field is a nonce (`ping`, `pong`)."""

    nonce: Annotated[int, Wire(low=-(2**63))] = 0


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
class Shutdown(_Message):
    """bot -> engine: cancel everything and exit 0."""

    TYPE: ClassVar[str] = "shutdown"


@dataclass(frozen=True)
class Ready(_Message):
    """engine -> bot, once, after the models are loaded: what it runs on, and `capacity`, how
    many jobs it optimises at once (ENGINE_BATCH). The bot keeps up to that many submitted;
    an engine that does not say (older ones) runs one at a time."""

    TYPE: ClassVar[str] = "ready"
    version: int
    device: Annotated[str, Wire(absent="")]
    vqgan: Annotated[str, Wire(absent="")]
    clip: Annotated[str, Wire(absent="")]
    pid: int = 0
    capacity: Annotated[int, Wire(low=1, high=MAX_CAPACITY)] = 1


@dataclass(frozen=True)
class Started(_JobOnly):
    """engine -> bot: the job left the engine's queue and is computing. Field: `job`."""

    TYPE: ClassVar[str] = "started"


@dataclass(frozen=True)
class Progress(_Message):
    """engine -> bot: iteration `iteration` of `total` is done; `preview` is a small JPEG."""

    TYPE: ClassVar[str] = "progress"
    job: JobId
    iteration: int
    total: int
    # A diverged run can have a NaN/inf loss, which JSON cannot carry: it travels as null
    # and comes back as NaN, rather than costing the user their previews.
    loss: Annotated[float, Wire(absent=math.nan, finite_or_null=True)]
    elapsed: float = 0.0
    preview: bytes = b""


@dataclass(frozen=True)
class Done(_Message):
    """engine -> bot: the job finished; `png` is the image (with its metadata)."""

    TYPE: ClassVar[str] = "done"
    job: JobId
    png: bytes
    seed: int
    seconds: float
    iterations: int = 0
    width: int = 0
    height: int = 0


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
class Failed(_Message):
    """engine -> bot: the job failed. `message` is fit to show the user as is."""

    TYPE: ClassVar[str] = "failed"
    job: JobId
    message: str
    reason: str = FAIL_ENGINE


@dataclass(frozen=True)
class Cancelled(_Message):
    """engine -> bot: the job was cancelled (or, `unknown`, was not there to cancel)."""

    TYPE: ClassVar[str] = "cancelled"
    job: JobId
    unknown: bool = False


@dataclass(frozen=True)
class Pong(_NonceOnly):
    """engine -> bot: answer to `ping`, same nonce. Field: `nonce` (default 0)."""

    TYPE: ClassVar[str] = "pong"


@dataclass(frozen=True)
class Error(_Message):
    """engine -> bot: a frame the engine could not accept (malformed, oversized, unknown
    type, duplicate job id, ...). `job` names the job when the header had one (any string:
    the engine echoes what it was sent). `fatal`: the stream could not be resynced and the
    worker is exiting."""

    TYPE: ClassVar[str] = "error"
    message: str
    # `fatal` comes before `job` on the wire; keyword-only so that Error(message, job) reads.
    fatal: bool = field(default=False, kw_only=True)
    job: Annotated[str | None, Wire(max_chars=MAX_JOB_ID_CHARS, omit_none=True)] = None


Message = Union[Submit, Cancel, Ping, Shutdown, Ready, Started, Progress, Done, Failed,
                Cancelled, Pong, Error]
#: The events of one job, as the bot's client yields them.
JobEvent = Union[Started, Progress, Done, Failed, Cancelled]
#: Events after which nothing more comes for that job.
TERMINAL_EVENTS = (Done, Failed, Cancelled)

MESSAGE_TYPES: dict[str, type[_Message]] = {
    cls.TYPE: cls for cls in (Submit, Cancel, Ping, Shutdown, Ready, Started, Progress, Done,
                              Failed, Cancelled, Pong, Error)
}
TO_ENGINE = frozenset({"submit", "cancel", "ping", "shutdown"})
TO_BOT = frozenset(MESSAGE_TYPES) - TO_ENGINE

# Built now, so that a field no codec can carry fails the import rather than a job.
for _cls in MESSAGE_TYPES.values():
    _codec(_cls)
del _cls


def decode_message(frame: Frame) -> Message:
    """Frame -> typed message. ProtocolError (recoverable) for an unknown type or bad field."""
    cls = MESSAGE_TYPES.get(frame.type)
    if cls is None:
        raise ProtocolError(f"unknown message type {frame.type!r}", job=job_of(frame.header))
    return cast(Message, cls.from_frame(frame.header, frame.blob))


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
