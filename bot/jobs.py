"""The job record shared by the store, the scheduler, the quotas and the cogs.

Plain data only (no discord, no torch, no database): the domain layer passes `Job`
objects around, the store persists them and the scheduler orders them. Discord ids are
ints; timestamps are UTC epoch seconds (floats), so they compare and subtract without
time-zone surprises and turn into Discord `<t:EPOCH:R>` stamps directly.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """Where a job is in its life. Stored as the lower-case string value."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        """True once nothing will happen to the job any more."""
        return self in FINISHED_STATUSES

    @property
    def is_charged(self) -> bool:
        """True if the job counts against the user's quota (see `CHARGED_STATUSES`)."""
        return self in CHARGED_STATUSES


#: Jobs that have used (or are about to use) the GPU count against the quota; failed
#: and cancelled jobs are not charged, so a crash or a changed mind costs nothing.
CHARGED_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DONE}
)
FINISHED_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED}
)


class JobKind(StrEnum):
    """The known kinds of job. The store accepts any string so new kinds need no migration."""

    IMAGINE = "imagine"
    EDIT = "edit"
    REROLL = "reroll"
    VARY = "vary"


#: The discord.py custom event (`bot.dispatch`) that wakes the job runner when a job is
#: queued: whoever queues dispatches it, so nothing that queues imports the runner.
JOB_QUEUED_EVENT = "vqc_job_queued"


def new_job_id() -> str:
    """A short random id people can read and quote to an admin (`k3q7xm2a`): 40 random bits
    in lower-case RFC 4648 base32, 8 characters with no 0 or 1 to mistake for O or l."""
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()


def normalize_job_id(text: str) -> str:
    """What a user typed -> the stored form (ids are lower case, surrounding space ignored)."""
    return text.strip().lower()


@dataclass
class Job:
    """One request to make or edit an image, as stored in the `jobs` table.

    `params` holds the generation options as JSON-able values (size, seed asked for,
    cutn, replace, ...). `iterations` is authoritative for the iteration count: the
    requested count while queued/running, the count actually run once done (the
    seconds-per-iteration estimate and ETAs are computed from it).
    Paths (`input_path`, `result_path`) are strings, relative to RESULTS_DIR by
    convention, so the data directory can be moved; the images live on disk, not in the DB.
    """

    id: str
    guild_id: int | None  # None for a direct message
    channel_id: int
    user_id: int
    kind: str
    prompt: str
    iterations: int
    params: dict[str, Any] = field(default_factory=dict)
    status: JobStatus = JobStatus.QUEUED
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    input_path: str | None = None
    parent_id: str | None = None  # the job whose result a reroll/edit starts from
    progress_message_id: int | None = None
    result_message_id: int | None = None
    result_path: str | None = None
    seed: int | None = None  # the seed actually used (reported by the engine)
    seconds: float | None = None  # generation time reported by the engine
    error: str | None = None  # for failed jobs: a message fit to show the user
    #: For failed jobs: the kind of failure, an `engine.protocol.FAIL_*` reason (or the
    #: bot's own, `bot.retry`), which decides whether it gets a Retry button. None for
    #: failures recorded before it was kept.
    failure: str | None = None
    timelapse_message_id: int | None = None  # the message showing its timelapse, once posted


#: `Job.failure` of a job whose input image was gone from disk when it was to run (the
#: engine's reasons are `engine.protocol.FAIL_*`).
FAIL_INPUT_MISSING = "input_missing"


@dataclass(frozen=True)
class ImageSource:
    """Where the image an edit starts from was found, for the answer that names it: a
    link to its message (None for an upload to the command itself), a small picture of it,
    and whose it is (`job_id`: one of the bot's results; `author_id`: a member's message;
    neither: the asker's own upload, `filename`)."""

    jump_url: str | None = None
    thumbnail_url: str | None = None
    job_id: str | None = None
    author_id: int | None = None
    filename: str | None = None


@dataclass(frozen=True)
class QueueNote:
    """What a waiting job's message says about its place (`bot.queue_notes`): its position
    (1 = next; None: none shown), when it should be ready (epoch seconds, shown as a Discord
    relative time; None: no estimate yet), or that the engine is down (then neither)."""

    position: int | None
    ready_at: int | None = None
    engine_down: bool = False


#: The note of a waiting job while the engine is down: no place, no time.
ENGINE_DOWN_NOTE = QueueNote(None, None, engine_down=True)


@dataclass
class RunningJob:
    """A job between leaving the queue and its last event, as the job runner last heard
    of it; `/queue`, `/status`, `/jobs` and ETAs read it, and a cancel is recorded on it."""

    job_id: str
    user_id: int
    iteration: int
    total: int
    started_at: float
    #: Measured on this job so far; None until the first progress event. Measured while
    #: it shared the engine's steps with the others, so it is this job's own pace.
    seconds_per_iteration: float | None = None
    #: Whether the engine has been handed the job (a cancel must then go to the engine).
    submitted: bool = False
    #: Whether the engine said `Started`: it is computing, not waiting in the engine for
    #: room in the batch (until then it has no iteration to show).
    started: bool = False
    #: (width, height): an engine that batches runs only jobs of one size together.
    size: tuple[int, int] | None = None
    #: Set when someone asked to cancel it; `cancelled_by` says who (None: unknown).
    cancel_requested: bool = False
    cancelled_by: int | None = None
    #: Its "Starting" was not shown (the channel's edit pace had no room, `bot.pacing`):
    #: its first progress event is shown as soon as there is room.
    message_behind: bool = False
