"""The engine's state as the bot sees it: plain data, so that what shows it (`bot.render`,
`/status`, the runner) needs nothing of the client that tracks it (`bot.engine_client`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from engine import protocol as p


class EngineState(StrEnum):
    """Where the engine is in its life (the value is its name in the log; `/status` says it
    with `render.ENGINE_STATE_WORDS`)."""

    NOT_STARTED = "not started"
    #: `start()` is loading the models (a retry after a failed start stays `down`).
    STARTING = "starting"
    READY = "ready"
    #: The worker died; a new one is being started (jobs that had not started wait).
    RESTARTING = "restarting"
    #: A start or restart failed; retrying with backoff while jobs keep their place.
    DOWN = "down"
    CLOSED = "closed"


@dataclass(frozen=True)
class EngineStatus:
    """A snapshot of the engine's state, for the runner and for `/status`."""

    state: EngineState
    #: When `state` began (epoch seconds).
    since: float
    #: Goes up by one at every change of `state`: `wait_status_change(after=serial)`.
    serial: int
    #: The live worker's `ready` (device, models, pid); None unless `state` is ready.
    ready: p.Ready | None
    #: The last worker's `ready`, kept after it died: what was running before.
    last_ready: p.Ready | None
    #: The last start or crash error in full (may name the server's files), and when.
    last_error: str | None
    last_error_at: float | None
    #: Workers started again after one died.
    restarts: int


class StatusChanges:
    """How every engine backend tells of a status change: a serial that counts changes, and
    one event per serial, so that a waiter that passes the serial it last saw misses
    nothing, and several changes while nobody looked wake it once."""

    def __init__(self) -> None:
        self.serial = 0
        self._changed = asyncio.Event()  # replaced at every change

    def bump(self) -> None:
        """One change: wake everyone waiting."""
        self.serial += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_past(self, after: int) -> None:
        """Return once `serial` is past `after` (at once if it already is)."""
        while self.serial <= after:
            await self._changed.wait()


class EngineLife:
    """The state one engine backend is in and since when, each move a status change: the
    rule for moving (a no-op into the same state; nothing leaves `closed`) kept in one
    place for `EngineClient` and `RedisBackend`, which hold one each."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.state = EngineState.NOT_STARTED
        #: When `state` began (epoch seconds, by `clock`).
        self.since = clock()
        self.changes = StatusChanges()

    def enter(self, state: EngineState) -> bool:
        """Move to `state` and wake the waiters; False (and nothing changes) if already
        there or closed."""
        if state is self.state or self.state is EngineState.CLOSED:
            return False
        self.state = state
        self.since = self.clock()
        self.changes.bump()
        return True
