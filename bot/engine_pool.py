"""Several local engines as one: ENGINE_DEVICES=cuda:0,cuda:1 runs one engine process per
device, and the bot sees a single engine whose capacity is theirs together.

Why a composite rather than a runner that knows of several engines: the runner's fairness
needs only "is there a free place" (`free_capacity`) and "something changed"
(`wait_status_change`), which a pool can answer for all its engines; so the queue, the
quotas and `/status` stay as they are, and the same runner drives one engine, a pool, or
remote workers.

Routing: `submit` sends a job to the engine with the most free places (ties: the order of
ENGINE_DEVICES) and remembers which engine holds it, so that `cancel` goes there. Each
engine supervises its own process, so the crash rule is per engine: a started job whose
engine dies fails (uncharged, "the engine crashed"), a job not started yet waits for that
engine's restart; the other engines go on.

Combined status (the rule `/status` and the runner read):
- state: `ready` while any engine is ready; else `restarting`, `starting`, `down`,
  `not started`, the first of these any engine is in; `down` therefore only when every
  engine is down (or not started); `closed` once the pool is closed;
- `serial`: goes up at every change of any engine (followed from `start()` on) and of the
  pool's own (a failed start, closing), so that a restarted engine wakes the runner like a
  restarted single one;
- `since`: ready, the earliest of the ready engines' `since`; otherwise the latest change;
- `ready`/`last_ready`: one `Ready` for all (capacity summed, the devices listed);
- `restarts` summed; `last_error` the newest of any engine, prefixed with its device.

Starting: `start()` starts every engine at once and returns as soon as one is ready; the
others go on starting in the background, and one that fails is logged with its error, shown
in `/status`, and tried again with backoff while the others serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Protocol

from bot.engine_client import EngineClosedError, EngineStartError
from bot.engine_status import EngineState, EngineStatus, StatusChanges
from bot.worker_status import WorkerState, WorkerStatus
from engine import protocol as p

log = logging.getLogger(__name__)

#: Seconds between tries to start an engine that failed to start while others serve.
RETRY_DELAYS: tuple[float, ...] = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: Which state the pool is in when no engine is ready: the first any engine is in.
_PRECEDENCE = (EngineState.READY, EngineState.RESTARTING, EngineState.STARTING,
               EngineState.DOWN, EngineState.NOT_STARTED, EngineState.CLOSED)


class Member(Protocol):
    """What the pool needs of each engine: `bot.engine_client.EngineClient`'s surface
    (the `Engine` protocol of `bot.services`, which imports this module)."""

    @property
    def ready_info(self) -> p.Ready | None: ...

    @property
    def status(self) -> EngineStatus: ...

    async def wait_status_change(self, after: int) -> EngineStatus: ...

    def free_capacity(self) -> int: ...

    @property
    def workers(self) -> tuple[WorkerStatus, ...]: ...

    async def start(self) -> p.Ready: ...

    def submit(self, job: p.Submit) -> AsyncIterator[p.JobEvent]: ...

    async def cancel(self, job_id: str) -> None: ...

    async def close(self) -> None: ...


class PoolJobStream:
    """One job's events from the engine that holds it; forgets the routing at its end."""

    def __init__(self, pool: EnginePool, job_id: str, events: AsyncIterator[p.JobEvent]) -> None:
        self._pool = pool
        self.job_id = job_id
        self._events = events

    def __aiter__(self) -> PoolJobStream:
        return self

    async def __anext__(self) -> p.JobEvent:
        try:
            event = await self._events.__anext__()
        except StopAsyncIteration:
            self._pool._forget(self.job_id)
            raise
        if isinstance(event, p.TERMINAL_EVENTS):
            self._pool._forget(self.job_id)
        return event

    async def cancel(self) -> None:
        await self._pool.cancel(self.job_id)


class EnginePool:
    """Engines by name (their device), in ENGINE_DEVICES order: see the module docstring."""

    def __init__(
        self,
        engines: Mapping[str, Member],
        *,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not engines:
            raise ValueError("an engine pool needs at least one engine")
        self.engines: dict[str, Member] = dict(engines)
        self.retry_delays = tuple(retry_delays) or (1.0,)
        self.clock = clock
        #: Which engine holds each job submitted and not ended, by job id.
        self._holders: dict[str, str] = {}
        #: Failed start attempts per engine (`start` waits for a new one from each).
        self._failures: dict[str, int] = dict.fromkeys(self.engines, 0)
        self._errors: dict[str, str] = {}
        self._starters: list[asyncio.Task[None]] = []
        self._closing = False
        self._closed_at = 0.0
        #: Goes up at every change of an engine's status or of the pool's (`status.serial`).
        self._changes = StatusChanges()
        #: One task per engine that follows its status (in the pool's tasks, not the
        #: caller's, so that `wait_status_change` waits on a single event).
        self._followers: list[asyncio.Task[None]] = []

    # ---- state -------------------------------------------------------------------------

    @property
    def ready_info(self) -> p.Ready | None:
        """The ready engines as one (devices listed, capacity summed); None while none is."""
        return self._combined({name: e.ready_info for name, e in self.engines.items()})

    @property
    def status(self) -> EngineStatus:
        """The engines' statuses combined by the rule in the module docstring."""
        statuses = {name: engine.status for name, engine in self.engines.items()}
        serial = self._changes.serial
        if self._closing:
            state, since = EngineState.CLOSED, self._closed_at
        else:
            states = {s.state for s in statuses.values()}
            state = next(candidate for candidate in _PRECEDENCE if candidate in states)
            in_state = [s.since for s in statuses.values() if s.state is state]
            since = (min(in_state) if state is EngineState.READY
                     else max(s.since for s in statuses.values()))
        with_error = [(s.last_error_at or 0.0, name, s) for name, s in statuses.items()
                      if s.last_error is not None]
        last_error = last_error_at = None
        if with_error:
            at, name, newest = max(with_error, key=lambda item: item[0])
            last_error, last_error_at = f"{name}: {newest.last_error}", newest.last_error_at
        return EngineStatus(
            state=state, since=since, serial=serial,
            ready=self._combined({name: s.ready for name, s in statuses.items()}),
            last_ready=self._combined({name: s.last_ready for name, s in statuses.items()}),
            last_error=last_error, last_error_at=last_error_at,
            restarts=sum(s.restarts for s in statuses.values()))

    @property
    def state(self) -> EngineState:
        return self.status.state

    async def wait_status_change(self, after: int) -> EngineStatus:
        """The status once its `serial` is past `after`: any engine's change, or the pool's
        (at once if it already is)."""
        await self._changes.wait_past(after)
        return self.status

    def free_capacity(self) -> int:
        """The engines' free places together."""
        return sum(engine.free_capacity() for engine in self.engines.values())

    @property
    def workers(self) -> tuple[WorkerStatus, ...]:
        """Each engine process, named by its device; one that never started (its start
        failed) is listed dead with why, so that `/status` shows every device asked for."""
        shown: list[WorkerStatus] = []
        for name, engine in self.engines.items():
            workers = engine.workers
            if workers:
                shown += [dataclasses.replace(worker, name=name) for worker in workers]
                continue
            status = engine.status
            if status.last_error is None:
                continue
            known = self.status.last_ready
            shown.append(WorkerStatus(
                name=name, state=WorkerState.DEAD, device=name,
                vqgan=known.vqgan if known else "", clip=known.clip if known else "",
                version=p.PROTOCOL_VERSION, capacity=0, busy=0, jobs_done=0,
                last_seen=status.since, note=status.last_error))
        return tuple(shown)

    def holder(self, job_id: str) -> str | None:
        """The name of the engine a job was sent to (None once it ended)."""
        return self._holders.get(job_id)

    # ---- jobs --------------------------------------------------------------------------

    async def start(self) -> p.Ready:
        """Start every engine; return once one is ready. EngineStartError (each device's
        error) if every engine failed an attempt first. Calling it again waits again: the
        engines that failed are retried in the background from the first call on."""
        if self._closing:
            raise EngineClosedError("the engine pool is closed")
        if not self._starters:
            self._followers = [asyncio.create_task(self._follow(name),
                                                   name=f"engine-pool-follow-{name}")
                               for name in self.engines]
            self._starters = [asyncio.create_task(self._keep_starting(name),
                                                  name=f"engine-pool-start-{name}")
                              for name in self.engines]
        failures = dict(self._failures)
        serial = self.status.serial
        while (ready := self.ready_info) is None:
            if self._closing:
                raise EngineClosedError("the engine pool is closed")
            if all(self._failures[name] > failures[name] for name in self.engines):
                raise EngineStartError("no engine could start: " + "; ".join(
                    f"{name}: {self._errors.get(name, 'unknown error')}" for name in self.engines))
            serial = (await self.wait_status_change(serial)).serial
        return ready

    def submit(self, job: p.Submit) -> PoolJobStream:
        """Send `job` to the engine with the most free places (ties: the first listed);
        with none free (the runner hands one over while nothing is ready), to the first
        engine that is live or coming back, where it waits as it would on a single engine."""
        if self._closing:
            raise EngineClosedError("the engine pool is closed")
        if job.job in self._holders:
            raise ValueError(f"job {job.job!r} is already submitted")
        name = self._pick()
        events = self.engines[name].submit(job)
        self._holders[job.job] = name
        log.debug("job %s goes to the engine on %s", job.job, name)
        return PoolJobStream(self, job.job, events)

    async def cancel(self, job_id: str) -> None:
        """Cancel on the engine that holds the job; unknown or ended jobs are ignored."""
        name = self._holders.get(job_id)
        if name is not None:
            await self.engines[name].cancel(job_id)

    async def ping(self, timeout: float | None = None) -> float:
        """The slowest round trip of the ready engines; RuntimeError if none is ready."""
        times = []
        for engine in self.engines.values():
            ping = getattr(engine, "ping", None)
            if engine.ready_info is not None and ping is not None:
                times.append(await ping(timeout))
        if not times:
            raise RuntimeError("no engine is running")
        return max(times)

    async def close(self) -> None:
        """Stop retrying starts and close every engine (each fails its unfinished jobs as
        a shutdown, as a single engine does)."""
        if self._closing:
            return
        self._closing = True
        self._closed_at = self.clock()
        self._notify()
        await self._cancel(self._starters)
        results = await asyncio.gather(*(engine.close() for engine in self.engines.values()),
                                       return_exceptions=True)
        for name, result in zip(self.engines, results):
            if isinstance(result, BaseException):
                log.error("the engine on %s did not close cleanly: %s", name, result)
        await self._cancel(self._followers)

    # ---- internals ---------------------------------------------------------------------

    def _pick(self) -> str:
        free = {name: engine.free_capacity() for name, engine in self.engines.items()}
        best = max(self.engines, key=lambda name: free[name])  # max keeps the first of ties
        if free[best] > 0:
            return best
        rank = {state: index for index, state in enumerate(_PRECEDENCE)}
        return min(self.engines, key=lambda name: rank[self.engines[name].status.state])

    def _forget(self, job_id: str) -> None:
        self._holders.pop(job_id, None)

    async def _keep_starting(self, name: str) -> None:
        """Start one engine, retrying with backoff until it is ready or the pool closes."""
        engine = self.engines[name]
        attempt = 0
        while not self._closing:
            try:
                await engine.start()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
                attempt += 1
                self._errors[name] = str(error)
                self._failures[name] += 1
                self._notify()
                log.error("the engine on %s could not start (attempt %d; the other devices "
                          "serve; retrying in %.0f s): %s", name, attempt, delay, error)
                await asyncio.sleep(delay)
                continue
            log.info("the engine on %s is ready", name)
            return

    async def _follow(self, name: str) -> None:
        engine = self.engines[name]
        serial = engine.status.serial
        while True:
            serial = (await engine.wait_status_change(serial)).serial
            self._notify()

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _notify(self) -> None:
        self._changes.bump()

    @staticmethod
    def _combined(readies: Mapping[str, p.Ready | None]) -> p.Ready | None:
        known = [(name, ready) for name, ready in readies.items() if ready is not None]
        if not known:
            return None
        first = known[0][1]
        device = ", ".join(name if ready.device == name else f"{name}: {ready.device}"
                           for name, ready in known)
        capacity = min(p.MAX_CAPACITY, sum(ready.capacity for _, ready in known))
        return p.Ready(p.PROTOCOL_VERSION, device, first.vqgan, first.clip, 0, capacity)
