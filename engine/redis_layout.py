"""Where the bot and remote workers meet in Redis: the key names and what their entries hold.

Why a layout of its own: the bot (`bot/redis_backend.py`) and the workers
(`engine/redis_worker.py`) are different programs, often different versions on different
machines; this module is the one place both read the layout from. Stdlib only (plus
`engine.protocol`): the bot imports it without torch, the engine without discord.

Nothing is pickled. Every stream entry carries exactly one protocol frame
(`protocol.encode_message` bytes, field `frame`), read back through the same reader and
size limits as frames on a pipe (`decode_frame`), plus at most a few plain text fields.

Keys, all under one prefix (default `vqgan-clip:`, so that one Redis ACL rule covers them):

| key | type | what |
| --- | --- | --- |
| `P jobs` | stream, group `workers` | one entry per dispatched job: `frame` (Submit), `run` (the dispatch's token) |
| `P events:<job>:<run>` | stream | the job's events from its worker: `frame` (Started, Progress, Done, Failed, Cancelled, Error), `worker`, `instance`; deleted by the bot after the final one, expiring anyway |
| `P worker:<name>` | hash, TTL | the worker's heartbeat: `ready` (its Ready frame), `busy`, `done`, `ttl`, `instance`, `draining` |
| `P workers` | set | the names of workers that have registered (a name whose heartbeat is gone is dead) |
| `P worker:<name>:control` | stream | to the worker: `frame` (Cancel, Ping, Shutdown), `run` for a cancel |
| `P bot:inbox` | stream | to the bot: `frame` (Pong), `worker`; the bot's own Pong 0 wakes its reader after a dispatch |
| `P bot:expect` | hash | what the bot accepts: `version`, `vqgan`, `clip` (empty = any) |

A job's events go to a stream named after the dispatch (`run`), not only the job: a job
sent again (its worker died before starting it, or the bot restarted) gets a new run, so
a late event of the old run can never end the new one.
"""

from __future__ import annotations

import io
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine import protocol as p

DEFAULT_PREFIX = "vqgan-clip:"
#: The consumer group the workers read `P jobs` through.
GROUP = "workers"
#: The consumer name the bot claims abandoned entries under (never a worker's name).
RECLAIMER = "bot-reclaimer"
FRAME = "frame"
RUN = "run"
WORKER = "worker"
INSTANCE = "instance"
#: An entry holds at most one frame: its header, blob and length prefix.
MAX_ENTRY_BYTES = 4 + p.MAX_HEADER_SIZE + p.MAX_BLOB_SIZE

_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RUN = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Message types each stream may carry; anything else in it is refused.
JOB_TYPES = frozenset({"submit"})
EVENT_TYPES = frozenset({"started", "progress", "done", "failed", "cancelled", "error"})
CONTROL_TYPES = frozenset({"cancel", "ping", "shutdown"})
INBOX_TYPES = frozenset({"pong"})


class LayoutError(ValueError):
    """A prefix or worker name that cannot be used; the message says what is allowed."""


def check_prefix(prefix: str) -> str:
    """The prefix, if usable: 1-64 of letters, digits and `._:-` (no glob characters, so
    that the ACL rule `~PREFIX*` means exactly these keys)."""
    if not _PREFIX.fullmatch(prefix):
        raise LayoutError(f"{prefix!r} is not a usable key prefix: use 1 to 64 letters, digits "
                          f"and . _ : - (default {DEFAULT_PREFIX})")
    return prefix


def check_worker_name(name: str) -> str:
    """The name, if usable as a worker's name: 1-64 of letters, digits and `._-`."""
    if not _NAME.fullmatch(name):
        raise LayoutError(f"{name!r} is not a usable worker name: use 1 to 64 letters, digits "
                          "and . _ - (starting with a letter or digit), e.g. gpu-box-0")
    return name


def new_run() -> str:
    """A fresh dispatch token."""
    return secrets.token_hex(6)


def is_run(text: str) -> bool:
    """Whether `text` can be a dispatch token (what may stand in a key name)."""
    return bool(_RUN.fullmatch(text))


@dataclass(frozen=True)
class RedisLayout:
    """The key names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    @property
    def jobs(self) -> str:
        return f"{self.prefix}jobs"

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    @property
    def inbox(self) -> str:
        return f"{self.prefix}bot:inbox"

    @property
    def expect(self) -> str:
        return f"{self.prefix}bot:expect"

    def heartbeat(self, worker: str) -> str:
        return f"{self.prefix}worker:{worker}"

    def control(self, worker: str) -> str:
        return f"{self.prefix}worker:{worker}:control"

    def events(self, job: str, run: str) -> str:
        return f"{self.prefix}events:{job}:{run}"


# --------------------------------------------------------------------------------------
# Entries: one frame and a few text fields.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A decoded stream entry: its message and its text fields (`run`, `worker`)."""

    message: p.Message
    run: str | None = None
    worker: str | None = None
    #: The worker process (its heartbeat's `instance`): a worker restarted under the same
    #: name is another instance, and the jobs the old one started died with it.
    instance: str | None = None


def entry_fields(message: p.Message, *, run: str | None = None, worker: str | None = None,
                 instance: str | None = None) -> dict[str, bytes]:
    """The fields of an entry carrying `message`. ProtocolError if it is over the limits."""
    fields = {FRAME: p.encode_message(message)}
    for name, value in ((RUN, run), (WORKER, worker), (INSTANCE, instance)):
        if value is not None:
            fields[name] = value.encode()
    return fields


def stream_entries(reply: Any) -> list[tuple[str, str, dict[bytes, bytes]]]:
    """An XREAD/XREADGROUP reply (RESP2, as redis-py returns it) -> (stream, entry id,
    fields) in order; entries deleted meanwhile (no fields) are left out."""
    out = []
    for key, entries in reply or ():
        for entry_id, fields in entries or ():
            if entry_id is not None and fields is not None:
                out.append((_str(key), _str(entry_id), dict(fields)))
    return out


def range_entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """An XRANGE/XREVRANGE reply -> (entry id, fields), deleted entries left out."""
    return [(_str(entry_id), dict(fields)) for entry_id, fields in reply or ()
            if entry_id is not None and fields is not None]


def as_text(value: Any) -> str:
    """A reply item (bytes, as redis-py returns them) as text."""
    return _str(value)


def _str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def ids_of(reply: Any) -> list[str]:
    """Entry ids as text, from a JUSTID reply or an XRANGE/XREVRANGE reply."""
    return [_str(item[0] if isinstance(item, (list, tuple)) else item) for item in reply or ()]


def decode_frame(data: bytes) -> p.Message:
    """The one frame in `data`, read with the pipe's reader and limits, as a message.

    ProtocolError (recoverable: the entry is simply skipped) for anything else: an empty
    or truncated frame, an oversized header or blob, trailing bytes, a bad message.
    """
    if len(data) > MAX_ENTRY_BYTES:
        raise p.ProtocolError(f"an entry of {len(data)} bytes is over the "
                              f"{MAX_ENTRY_BYTES}-byte limit of one frame")
    buffer = io.BytesIO(data)
    try:
        frame = p.read_frame(buffer)
    except p.ProtocolError as error:
        raise p.ProtocolError(str(error), job=error.job) from None
    if frame is None:
        raise p.ProtocolError("the entry's frame is empty")
    if buffer.tell() != len(data):
        raise p.ProtocolError(f"the entry holds {len(data) - buffer.tell()} bytes after its frame",
                              job=p.job_of(frame.header))
    return p.decode_message(frame)


def _text(fields: Mapping[bytes, bytes], name: str) -> str | None:
    raw = fields.get(name.encode())
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise p.ProtocolError(f"the entry's `{name}` is not UTF-8 text") from None


def read_entry(fields: Mapping[bytes, bytes], types: frozenset[str]) -> Entry:
    """A stream entry's fields (as redis-py returns them: bytes to bytes) -> Entry.

    `types`: the message types this stream may carry. ProtocolError, naming the job when
    it can, for an entry without a frame, with a bad one, of another type, or with a
    malformed `run`/`worker`.
    """
    data = fields.get(FRAME.encode())
    if data is None:
        raise p.ProtocolError("the entry has no `frame` field")
    message = decode_frame(data)
    job = getattr(message, "job", None)
    if message.TYPE not in types:
        raise p.ProtocolError(f"`{message.TYPE}` does not belong in this stream (expected "
                              f"{', '.join(sorted(types))})", job=job)
    run = _text(fields, RUN)
    if run is not None and not is_run(run):
        raise p.ProtocolError("the entry's `run` is not a run token", job=job)
    worker = _text(fields, WORKER)
    if worker is not None and not _NAME.fullmatch(worker):
        raise p.ProtocolError("the entry's `worker` is not a worker name", job=job)
    instance = _text(fields, INSTANCE)
    if instance is not None and not is_run(instance):
        raise p.ProtocolError("the entry's `instance` is not an instance token", job=job)
    return Entry(message, run, worker, instance)


# --------------------------------------------------------------------------------------
# The heartbeat, and what the bot expects of workers.
# --------------------------------------------------------------------------------------


#: Longest pause between a worker's attempts to reach Redis (`WorkerConfig.max_backoff`):
#: after Redis comes back, a worker beats again within this plus its heartbeat interval,
#: so the bot waits that long before it calls a missing heartbeat a death.
WORKER_MAX_BACKOFF = 2.0


@dataclass(frozen=True)
class Heartbeat:
    """What a worker says about itself every few seconds (`P worker:<name>`, with a TTL)."""

    name: str
    ready: p.Ready
    #: Jobs it holds now (claimed and not finished) and jobs it finished done since it started.
    busy: int = 0
    done: int = 0
    #: Seconds the key lives without a refresh: past that the worker is gone.
    ttl: float = 15.0
    #: Random per process: two processes under one name are told apart.
    instance: str = ""
    #: Finishing its jobs before it exits: takes no more.
    draining: bool = False


def heartbeat_fields(beat: Heartbeat) -> dict[str, bytes]:
    return {
        "name": beat.name.encode(),
        "ready": p.encode_message(beat.ready),
        "busy": str(beat.busy).encode(),
        "done": str(beat.done).encode(),
        "ttl": repr(float(beat.ttl)).encode(),
        "instance": beat.instance.encode(),
        "draining": b"1" if beat.draining else b"0",
    }


def read_heartbeat(fields: Mapping[bytes, bytes]) -> Heartbeat:
    """A heartbeat hash -> Heartbeat; ProtocolError for a malformed one."""
    try:
        name = check_worker_name((_text(fields, "name") or ""))
    except LayoutError as error:
        raise p.ProtocolError(f"heartbeat: {error}") from None
    data = fields.get(b"ready")
    if data is None:
        raise p.ProtocolError(f"heartbeat of {name}: no `ready` frame")
    ready = decode_frame(data)
    if not isinstance(ready, p.Ready):
        raise p.ProtocolError(f"heartbeat of {name}: `ready` holds a {ready.TYPE!r} frame")
    try:
        busy = int(_text(fields, "busy") or "0")
        done = int(_text(fields, "done") or "0")
        ttl = float(_text(fields, "ttl") or "nan")
    except ValueError:
        raise p.ProtocolError(f"heartbeat of {name}: busy, done and ttl must be numbers") from None
    if not (0 <= busy <= p.MAX_CAPACITY and done >= 0 and 0 < ttl <= 3600):
        raise p.ProtocolError(f"heartbeat of {name}: busy, done or ttl out of range")
    return Heartbeat(name, ready, busy, done, ttl, _text(fields, "instance") or "",
                     _text(fields, "draining") == "1")


@dataclass(frozen=True)
class Expectation:
    """What the bot accepts of a worker: its protocol version and, when given, its models."""

    version: int = p.PROTOCOL_VERSION
    vqgan: str | None = None
    clip: str | None = None

    def refusal(self, ready: p.Ready) -> str | None:
        """Why a worker that says `ready` cannot serve this bot, or None if it can. The
        text says what to do about it; both the bot's log and the refused worker print it."""
        if ready.version != self.version:
            return (f"it speaks protocol version {ready.version} and the bot speaks "
                    f"{self.version}: install the same version of vqgan-clip-bot on both")
        wrong = [f"{kind} {have!r} (the bot expects {want!r})"
                 for kind, have, want in (("vqgan", ready.vqgan, self.vqgan),
                                          ("clip", ready.clip, self.clip))
                 if want and have != want]
        if wrong:
            return ("it runs " + " and ".join(wrong) + ": start the worker with the bot's "
                    "VQGAN_MODEL and CLIP_MODEL (--vqgan, --clip)")
        return None


def expectation_fields(expectation: Expectation) -> dict[str, bytes]:
    return {"version": str(expectation.version).encode(),
            "vqgan": (expectation.vqgan or "").encode(),
            "clip": (expectation.clip or "").encode()}


def read_expectation(fields: Mapping[bytes, bytes]) -> Expectation:
    """The bot's expectation hash -> Expectation; ProtocolError for a malformed one."""
    try:
        version = int(_text(fields, "version") or "")
    except ValueError:
        raise p.ProtocolError("the bot's expectation has no protocol version") from None
    return Expectation(version, _text(fields, "vqgan") or None, _text(fields, "clip") or None)
