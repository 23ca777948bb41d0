"""Remote workers as the bot sees them: plain data, so that what shows them (`/status`, the
log) needs nothing of the Redis backend that tracks them (`bot.redis_backend`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class WorkerState(StrEnum):
    """Where a remote worker stands with the bot; the value is how `/status` may say it."""

    #: Beating, answering pings, running what the bot expects: its capacity counts.
    LIVE = "live"
    #: Finishing its jobs before it stops: takes no more.
    DRAINING = "draining"
    #: Its heartbeat expired or it stopped answering pings: its started jobs failed.
    DEAD = "dead"
    #: Another protocol version or other models, or an unreadable heartbeat: never used.
    REFUSED = "refused"


@dataclass(frozen=True)
class WorkerStatus:
    """One remote worker at one moment."""

    name: str
    state: WorkerState
    device: str
    vqgan: str
    clip: str
    #: The protocol version its Ready says.
    version: int
    #: Jobs it runs at once, jobs it holds now, jobs it finished done since it started.
    capacity: int
    busy: int
    jobs_done: int
    #: When the bot last saw its heartbeat (epoch seconds).
    last_seen: float
    #: Why it is dead or refused (for admins and the log); None when live.
    note: str | None = None
