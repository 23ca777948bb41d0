"""The bot's side of remote workers: jobs go to GPU machines through Redis Streams.

Why: one bot, any number of engines on other machines (behind NAT too: workers dial out).
This class has the public surface the job runner uses of `bot.engine_client.EngineClient`
(`start`, `ready_info`, `status`, `wait_status_change`, `submit` -> an async iterator of
the protocol's job events with `cancel`, `cancel`, `ping`, `close`), plus
`free_capacity()` and `workers`. The layout it speaks is `engine.redis_layout`; the other
end is `engine.redis_worker`.

The rules, and why:
- **Fairness stays in the bot.** A job goes into Redis only while the live workers have a
  free slot: their capacities minus the bot's own jobs in flight (the bot's count is exact
  at every moment; heartbeats are seconds old). The runner hands jobs over only while
  `free_capacity()` (those capacities minus every job held here) is above 0, so jobs wait
  in its fair queue, not here; what does wait here goes out in submission order.
- **A started job dies with its worker.** A worker whose heartbeat expires, or that stops
  answering pings, is dead: each job it had started ends `Failed(reason="crash")` with
  the same words as a crash of the local engine (`render.ENGINE_CRASHED`: uncharged, with
  Retry). A job claimed but never started is taken back (its entry claimed by the bot,
  XCLAIM for a dead worker's, XAUTOCLAIM for any entry nobody kept claimed for
  `claim_timeout`) and dispatched again: it never ran, so nothing about it failed.
- **Redis may go away.** While it is unreachable the backend is `down` and reconnects with
  backoff; jobs keep waiting (the runner shows "engine down"); none is lost. When Redis
  comes back empty (restarted without persistence: the bot's `expect` key is gone), the
  jobs dispatched but not started are dispatched again; started ones go on, their worker
  publishing to its stream again. The bot's SQLite stays the source of truth: after a
  bot restart the runner resubmits, and this backend first removes what an earlier run
  left in the jobs stream (cancelling it on the worker that holds it).
- **Workers are checked.** Each heartbeat carries the worker's Ready; one that speaks
  another protocol version or runs other models than the bot expects is refused (logged
  once, with what to do) and never counted. The bot also writes what it expects
  (`P bot:expect`), so such a worker refuses itself before taking a job.
- **Nothing here blocks.** One reader task follows every dispatched job's events stream
  and the bot's inbox in a single blocking XREAD; one supervisor task checks workers,
  reclaims and dispatches every `check_interval` seconds (at once after a `submit`); one
  pinger pings every worker every `ping_interval` seconds.

The Redis password never reaches a log line or a message: the target is shown through
`RedisTarget.shown()` and errors through `RedisTarget.hide()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot import render
from bot.engine_client import EngineClosedError, EngineStartError
from bot.engine_status import EngineLife, EngineState, EngineStatus
from bot.redis_workers import Verdict, WorkerBook
from bot.worker_status import WorkerStatus
from engine import protocol as p
from engine.redis_layout import (
    EVENT_TYPES,
    FRAME,
    GROUP,
    INBOX_TYPES,
    JOB_TYPES,
    RECLAIMER,
    RUN,
    Expectation,
    RedisLayout,
    as_text,
    entry_fields,
    expectation_fields,
    ids_of,
    new_run,
    range_entries,
    read_entry,
    stream_entries,
)
from engine.redis_url import RedisTarget, open_client

log = logging.getLogger(__name__)

#: Errors that mean "Redis is not there right now": back off, reconnect, keep the jobs.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
#: Entries kept in a worker's control stream, and in the bot's inbox.
CONTROL_MAXLEN = 100
INBOX_MAXLEN = 1000
#: The nonce of the pong the bot adds to its own inbox to wake its reader (never pinged).
WAKE_NONCE = 0

_END = object()  # queued after a job's final event: its stream stops there


@dataclass(eq=False)
class _Job:
    submit: p.Submit
    #: The Submit's frame, encoded once at `submit` (over the limits: refused there).
    frame: bytes
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    #: The current dispatch: its token, its entry in the jobs stream, its events stream
    #: and the last event read from it. None: waiting in the bot.
    run: str | None = None
    entry: str | None = None
    events_key: str | None = None
    last_id: str = "0-0"
    #: The worker (name and process) that started it (from its `started` entry).
    worker: str | None = None
    instance: str | None = None
    started: bool = False
    cancel_requested: bool = False
    cancel_sent: bool = False
    finished: bool = False

    @property
    def id(self) -> str:
        return self.submit.job


class RemoteJobStream:
    """The events of one job, as an async iterator: `Started`, `Progress`..., then exactly
    one of `Done`, `Failed`, `Cancelled`, after which iteration stops."""

    def __init__(self, backend: RedisBackend, job: _Job) -> None:
        self._backend = backend
        self._job = job
        self.job_id = job.id

    def __aiter__(self) -> RemoteJobStream:
        return self

    async def __anext__(self) -> p.JobEvent:
        event = await self._job.events.get()
        if event is _END:
            self._job.events.put_nowait(_END)  # iterating again stops again
            raise StopAsyncIteration
        return event

    @property
    def worker(self) -> str | None:
        """The name of the worker that started the job (None until it has)."""
        return self._job.worker

    async def cancel(self) -> None:
        """Same as `backend.cancel(stream.job_id)`."""
        await self._backend.cancel(self.job_id)


class RedisBackend:
    """Remote workers through Redis: see the module docstring."""

    def __init__(
        self,
        target: RedisTarget | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
        layout: RedisLayout | None = None,
        expect: Expectation | None = None,
        ready_timeout: float = 300.0,
        check_interval: float = 1.0,
        claim_timeout: float = 30.0,
        ping_interval: float = 15.0,
        ping_timeout: float = 30.0,
        read_block: float = 1.0,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if target is None and client is None:
            raise ValueError("give a RedisTarget or a client")
        self.target = target
        self._client = client
        self._own_client = client is None
        self.layout = layout or RedisLayout()
        self.expect = expect or Expectation()
        self.ready_timeout = ready_timeout
        self.check_interval = check_interval
        self.claim_timeout = claim_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.read_block = read_block
        self.max_backoff = max_backoff
        self.clock = clock
        #: Workers declared dead since the bot started (what `status.restarts` counts).
        self.workers_lost = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._life = EngineLife(clock)
        #: The `ready_info` the last status change told of (a new one is a change too).
        self._ready_told: p.Ready | None = None
        self._jobs: dict[str, _Job] = {}   # insertion order = submission order
        self._by_entry: dict[str, _Job] = {}
        self._by_events: dict[str, _Job] = {}
        self._book = WorkerBook(self.expect, clock)
        self._pongs: dict[int, tuple[str, asyncio.Future[None]]] = {}
        self._nonces = itertools.count(random.randrange(1, 2**40))  # never WAKE_NONCE
        self._inbox_last = "0-0"
        self._connected = False
        self._ever_connected = False
        self._connected_at = 0.0
        self._connected_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()

    # ---- public API --------------------------------------------------------------------

    @property
    def shown_target(self) -> str:
        return self.target.shown() if self.target is not None else "redis (given client)"

    @property
    def workers(self) -> tuple[WorkerStatus, ...]:
        """Every worker the bot has seen, by name: for `/status`."""
        return self._book.statuses()

    def free_capacity(self) -> int:
        """Jobs the runner may hand over now: the live workers' capacity minus every job
        the bot holds here, sent to Redis or still waiting to be (so that the runner's fair
        queue, not this backend's line, decides what runs next)."""
        return max(0, self._book.capacity() - self._waiting_count())

    def _free_slots(self) -> int:
        """Jobs the live workers could start now beyond the ones already sent to them."""
        capacity = self._book.capacity()
        in_flight = sum(1 for job in self._jobs.values() if job.run is not None and not job.finished)
        return max(0, capacity - in_flight)

    @property
    def ready_info(self) -> p.Ready | None:
        """All live workers as one engine (their devices, the models, their summed
        capacity); None while none is live or Redis is unreachable."""
        live = self._book.live()
        if not live or not self._connected:
            return None
        first = live[0][1].ready
        capacity = min(p.MAX_CAPACITY, self._book.capacity())
        device = ", ".join(f"{name}: {beat.ready.device}" for name, beat in live)
        return p.Ready(p.PROTOCOL_VERSION, device, first.vqgan, first.clip, 0, capacity)

    @property
    def state(self) -> EngineState:
        return self._life.state

    @property
    def status(self) -> EngineStatus:
        """As EngineClient's; `restarts` counts the workers declared dead."""
        return EngineStatus(
            state=self._life.state, since=self._life.since, serial=self._life.changes.serial,
            ready=self.ready_info, last_ready=self._book.last_ready, last_error=self.last_error,
            last_error_at=self.last_error_at, restarts=self.workers_lost)

    async def wait_status_change(self, after: int) -> EngineStatus:
        """The status once its `serial` is past `after` (at once if it already is)."""
        await self._life.changes.wait_past(after)
        return self.status

    async def start(self) -> p.Ready:
        """Connect and wait until a worker the bot accepts is live (EngineStartError after
        `ready_timeout`: no worker, or Redis unreachable). Calling it again waits again;
        the connection and the workers are followed in the background from the first
        call on, so jobs submitted meanwhile go out as soon as a worker is there."""
        if self._closing:
            raise EngineClosedError("the engine client is closed")
        if not self._tasks:
            if self._life.state is EngineState.NOT_STARTED:
                self._set_state(EngineState.STARTING)
            self._tasks = [asyncio.create_task(coroutine, name=f"redis-backend-{name}")
                           for name, coroutine in (("supervisor", self._supervise()),
                                                   ("reader", self._read_loop()),
                                                   ("pinger", self._ping_loop()))]
            for task in self._tasks:
                task.add_done_callback(self._task_ended)
        deadline = time.monotonic() + self.ready_timeout
        serial = self._life.changes.serial
        while (ready := self.ready_info) is None:
            left = deadline - time.monotonic()
            if left <= 0 or self._closing:
                why = self._why_not_ready()
                self._record_error(why)
                self._set_state(EngineState.DOWN)
                raise EngineStartError(why)
            with contextlib.suppress(TimeoutError):
                status = await asyncio.wait_for(self.wait_status_change(serial), min(left, 1.0))
                serial = status.serial
        return ready

    def submit(self, job: p.Submit) -> RemoteJobStream:
        """Queue `job`; returns the stream of its events. It goes to Redis once a worker
        has a free slot. ValueError for a job id already submitted and not finished."""
        if self._closing:
            raise EngineClosedError("the engine client is closed")
        if job.job in self._jobs:
            raise ValueError(f"job {job.job!r} is already submitted")
        try:
            frame = p.encode_message(job)
        except p.ProtocolError as error:  # over the limits: a bug or an absurd upload
            state = _Job(job, b"")
            self._finish(state, p.Failed(job.job, render.job_not_sent(str(error)),
                                         p.FAIL_REJECTED))
            return RemoteJobStream(self, state)
        state = _Job(job, frame)
        self._jobs[job.job] = state
        self._wake.set()
        return RemoteJobStream(self, state)

    async def cancel(self, job_id: str) -> None:
        """Cancel a job: its stream ends with `Cancelled` (at once if no worker had
        started it). Unknown or finished jobs are ignored."""
        job = self._jobs.get(job_id)
        if job is None or job.finished:
            return
        job.cancel_requested = True
        if job.run is None:
            self._finish(job, p.Cancelled(job_id))
            return
        if job.started:
            await self._send_cancel(job)  # the worker answers `cancelled`
            return
        # Sent but not started: take the entry back, tell every worker, and end it now.
        entry, run = job.entry, job.run
        self._finish(job, p.Cancelled(job_id))
        with contextlib.suppress(*UNREACHABLE, RedisError):
            await self._drop_entry(entry)
            await self._broadcast_cancel(job_id, run)

    async def ping(self, timeout: float | None = None) -> float:
        """The slowest round trip, in seconds, of the live workers (through each worker's
        engine, which answers). RuntimeError if none is live, TimeoutError if none answered."""
        live = self._book.live()
        if not live:
            raise RuntimeError("no remote worker is up")
        results = await asyncio.gather(*(self._ping_worker(name, timeout or self.ping_timeout)
                                         for name, _ in live), return_exceptions=True)
        times = [r for r in results if isinstance(r, float)]
        if not times:
            raise TimeoutError("no remote worker answered the ping")
        return max(times)

    async def close(self) -> None:
        """Stop following Redis. Unfinished jobs end `Failed(reason="shutdown")` (the runner
        resumes them at the next start) and are cancelled on the workers that hold them."""
        if self._closing:
            return
        self._closing = True
        self._set_state(EngineState.CLOSED)
        unfinished = [job for job in self._jobs.values() if not job.finished]
        for job in unfinished:
            entry, run, started = job.entry, job.run, job.started
            self._finish(job, p.Failed(job.id, render.ENGINE_SHUT_DOWN, p.FAIL_SHUTDOWN))
            if run is None or not self._connected:
                continue
            with contextlib.suppress(*UNREACHABLE, RedisError, asyncio.TimeoutError):
                async with asyncio.timeout(2.0):
                    if started and job.worker:
                        await self._control(job.worker, p.Cancel(job.id), run)
                    else:
                        await self._drop_entry(entry)
                        await self._broadcast_cancel(job.id, run)
        for task in [*self._tasks, *self._side_tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._side_tasks, return_exceptions=True)
        for _, future in self._pongs.values():
            if not future.done():
                future.set_exception(RuntimeError("the engine client is closed"))
        if self._own_client and self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    # ---- connection and supervision ----------------------------------------------------

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            assert self.target is not None
            self._client = open_client(self.target, socket_timeout=self.read_block + 30.0)
        return self._client

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("remote workers: %s stopped by a bug", task.get_name(),
                      exc_info=task.exception())

    async def _supervise(self) -> None:
        delay = 0.2
        next_check = 0.0
        while not self._closing:
            try:
                if not self._connected:
                    await self._connect()
                    delay = 0.2
                    next_check = 0.0
                if time.monotonic() >= next_check:
                    await self._check()
                    next_check = time.monotonic() + self.check_interval
                    # Ready before a job goes out: a worker may answer it at once.
                    self._update_state()
                await self._dispatch()
                self._update_state()
            except UNREACHABLE as error:
                self._lost(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            except ResponseError as error:  # NOPERM and the like: the operator must act
                if self._record_error(f"Redis at {self.shown_target} refused a command: "
                                      f"{self._hide(error)}"):
                    log.error("remote workers: %s", self.last_error)
                self._set_state(EngineState.DOWN)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            except Exception:  # a bug here must not stop the remote workers for good
                log.exception("remote workers: the supervisor hit an unexpected error")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(),
                                       max(0.01, next_check - time.monotonic()))

    async def _connect(self) -> None:
        """Say what the bot expects, make sure the group exists, find the inbox's end. A
        reconnection to a Redis that lost the bot's keys re-dispatches what it lost."""
        lost = self._ever_connected and not await self.client.exists(self.layout.expect)
        if lost:
            await self._redis_lost_data()
        else:
            await self._write_expectation()
        newest = ids_of(await self.client.xrevrange(self.layout.inbox, count=1))
        if newest and self._inbox_last == "0-0":
            self._inbox_last = newest[0]
        was_down = self._ever_connected
        self._connected = self._ever_connected = True
        self._connected_at = time.monotonic()
        self._connected_event.set()
        log.log(logging.WARNING if was_down else logging.INFO,
                "remote workers: connected to Redis at %s", self.shown_target)

    async def _write_expectation(self) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.layout.expect)
        pipe.hset(self.layout.expect, mapping=dict[Any, Any](expectation_fields(self.expect)))
        await pipe.execute()
        try:
            await self.client.xgroup_create(self.layout.jobs, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _lost(self, error: BaseException) -> None:
        """Redis went away: note it once; the jobs wait, the loops back off."""
        if self._closing:
            return
        if isinstance(error, AuthenticationError):
            message = (f"Redis at {self.shown_target} refused the login: {self._hide(error)} "
                       "(check the user and password in REDIS_URL)")
        else:
            message = f"Redis at {self.shown_target} is unreachable: {self._hide(error)}"
        if self._connected or self.last_error != message:
            log.error("remote workers: %s; %d job(s) wait; reconnecting", message,
                      self._waiting_count())
        self._connected = False
        self._connected_event.clear()
        self._record_error(message)
        self._update_state()

    def _hide(self, error: BaseException) -> str:
        text = str(error) or type(error).__name__
        return self.target.hide(text) if self.target is not None else text

    async def _check(self) -> None:
        """Workers' heartbeats, the entries nobody keeps claimed, what Redis lost."""
        pipe = self.client.pipeline(transaction=False)
        pipe.smembers(self.layout.workers)
        pipe.exists(self.layout.expect)
        pipe.xlen(self.layout.jobs)
        names_raw, expect_exists, length = await pipe.execute()
        if not expect_exists:
            await self._redis_lost_data()
        names = {as_text(n) for n in names_raw} | self._book.names()
        await self._read_heartbeats(sorted(names))
        await self._reclaim_idle()
        if length > len(self._by_entry):
            await self._collect_garbage()
        self._resend_cancels()

    async def _redis_lost_data(self) -> None:
        """Redis came back without the bot's keys (restarted without persistence, or
        flushed): say again what the bot expects, and dispatch again every job whose entry
        is gone and that had not started. Started ones go on: their workers publish to
        their streams again, and a worker that does not come back fails them as a crash."""
        log.warning("remote workers: Redis at %s lost the bot's keys (restarted?); "
                    "dispatching again what had not started", self.shown_target)
        await self._write_expectation()
        self._connected_at = time.monotonic()
        for job in list(self._jobs.values()):
            if job.finished or job.started or job.entry is None:
                continue
            found = await self.client.xrange(self.layout.jobs, job.entry, job.entry, count=1)
            if not found:
                old_run = job.run
                self._redispatch(job, "its entry was lost with Redis's data")
                if old_run is not None:
                    await self._broadcast_cancel(job.id, old_run)

    async def _read_heartbeats(self, names: list[str]) -> None:
        if not names:
            return
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.layout.heartbeat(name))
        replies = await pipe.execute()
        connected_for = time.monotonic() - self._connected_at
        for name, fields in zip(names, replies):
            await self._act(self._book.seen(name, fields, connected_for=connected_for))
        for name in self._book.gone():
            await self.client.srem(self.layout.workers, name)

    async def _act(self, verdict: Verdict | None) -> None:
        if verdict is None:
            return
        if verdict.kind == "died":
            await self._worker_died(verdict.name, verdict.why)
        else:
            await self._instance_ended(verdict.name, verdict.instance)
        self._update_state()

    async def _worker_died(self, name: str, why: str) -> None:
        """Fail the jobs it had started, take back the ones it held unstarted."""
        self.workers_lost += 1
        started = [job for job in self._jobs.values()
                   if job.worker == name and job.started and not job.finished]
        log.error("remote workers: %s is dead: %s; %d started job(s) fail as an engine crash",
                  name, why, len(started))
        self._record_error(f"worker {name} died: {why}")
        await self._fail_started(name, started)
        # Its claimed entries, started or not, whoever's they are.
        with contextlib.suppress(ResponseError):
            pending = await self.client.xpending_range(
                self.layout.jobs, GROUP, "-", "+", 1000, consumername=name)
            ids = [as_text(row["message_id"]) for row in pending]
            if ids:
                claimed = await self.client.xclaim(self.layout.jobs, GROUP, RECLAIMER, 0,
                                                   list[Any](ids), justid=True)
                for entry_id in ids_of(claimed):
                    await self._reclaimed(entry_id, name)

    async def _instance_ended(self, name: str, instance: str) -> None:
        """The worker restarted under its name before the bot saw its heartbeat lapse: the
        jobs the old process started died with it. (Its unstarted claims are left idle by
        the new process, and XAUTOCLAIM takes them back.)"""
        started = [job for job in self._jobs.values() if job.worker == name
                   and job.instance == instance and job.started and not job.finished]
        self.workers_lost += 1
        log.error("remote workers: %s restarted; %d job(s) it had started fail as an engine "
                  "crash", name, len(started))
        await self._fail_started(name, started)

    async def _fail_started(self, name: str, started: list[_Job]) -> None:
        """Started jobs of a worker that died fail as an engine crash; their entries go, and
        the worker (should it still run them) is told to cancel."""
        for job in started:
            entry, run = job.entry, job.run
            self._crashed(job)
            with contextlib.suppress(*UNREACHABLE, RedisError):
                await self._drop_entry(entry)
                if run is not None:
                    await self._control(name, p.Cancel(job.id), run)

    async def _reclaim_idle(self) -> None:
        """XAUTOCLAIM: entries nobody kept claimed for `claim_timeout` (workers re-claim
        theirs at every heartbeat) belong to a worker that stopped."""
        start = "0-0"
        for _ in range(100):
            try:
                reply = await self.client.xautoclaim(
                    self.layout.jobs, GROUP, RECLAIMER, int(self.claim_timeout * 1000),
                    start_id=start, count=100, justid=True)
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                await self._write_expectation()
                return
            # JUSTID: redis-py gives the ids alone; the cursor is then not returned.
            ids = ids_of(reply)
            for entry_id in ids:
                await self._reclaimed(entry_id, None)
            if len(ids) < 100:
                return
            start = "0-0"

    async def _reclaimed(self, entry_id: str, worker: str | None) -> None:
        """An entry the bot took back from a worker that stopped: drop it, and fail
        (started) or dispatch again (never started) its job."""
        job = self._by_entry.get(entry_id)
        if job is None or job.finished:
            await self._drop_entry(entry_id)
            return
        assert job.events_key is not None
        kinds = {read_kind(fields) for _, fields in
                 range_entries(await self.client.xrange(job.events_key, job.last_id, "+"))}
        if job.finished or self._by_entry.get(entry_id) is not job:
            return
        if kinds & {"done", "failed", "cancelled", "error"}:
            await self.client.xack(self.layout.jobs, GROUP, entry_id)
            return  # the reader delivers its end
        holder = worker or "a worker"
        run = job.run
        if job.started or "started" in kinds or "progress" in kinds:
            log.error("remote workers: job %s had started on %s, which stopped; it fails as "
                      "an engine crash", job.id, job.worker or holder)
            self._crashed(job)
        else:
            log.warning("remote workers: job %s was claimed by %s and never started; "
                        "dispatching it again", job.id, holder)
            self._redispatch(job, "claimed and never started")
        await self._drop_entry(entry_id)
        if run is not None:  # should the holder come back, it drops that run
            if worker is not None:
                await self._control(worker, p.Cancel(job.id), run)
            else:
                await self._broadcast_cancel(job.id, run)

    async def _collect_garbage(self) -> None:
        """Entries in the jobs stream that are not this bot's (an earlier run left them):
        cancel each on the worker that holds it, then delete it."""
        holders = {}
        with contextlib.suppress(ResponseError):
            for row in await self.client.xpending_range(self.layout.jobs, GROUP, "-", "+", 1000):
                holders[as_text(row["message_id"])] = as_text(row["consumer"])
        for entry_id, fields in range_entries(await self.client.xrange(self.layout.jobs,
                                                                       count=1000)):
            if entry_id in self._by_entry:
                continue
            holder = holders.get(entry_id)
            if holder is not None and holder != RECLAIMER:
                with contextlib.suppress(p.ProtocolError):
                    entry = read_entry(fields, JOB_TYPES)
                    job_id = getattr(entry.message, "job", None)
                    if isinstance(job_id, str) and entry.run is not None:
                        await self._control(holder, p.Cancel(job_id), entry.run)
            log.info("remote workers: removed job entry %s left by an earlier run%s", entry_id,
                     f" (cancelled on {holder})" if holder else "")
            await self._drop_entry(entry_id)

    # ---- dispatch ----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Hand waiting jobs to Redis, oldest first, while the live workers have room; then
        wake the reader, whose blocking read does not follow the new jobs' streams yet."""
        sent = 0
        try:
            sent = await self._dispatch_some()
        finally:
            if sent:
                await self.client.xadd(self.layout.inbox,
                                       dict[Any, Any](entry_fields(p.Pong(WAKE_NONCE))),
                                       maxlen=INBOX_MAXLEN, approximate=True)

    async def _dispatch_some(self) -> int:
        free = self._free_slots()
        sent = 0
        for job in list(self._jobs.values()):
            if free <= 0:
                return sent
            if job.finished or job.run is not None:
                continue
            if job.cancel_requested:
                self._finish(job, p.Cancelled(job.id))
                continue
            run = new_run()
            entry = await self.client.xadd(self.layout.jobs, {FRAME: job.frame, RUN: run})
            job.run, job.entry = run, as_text(entry)
            job.events_key, job.last_id = self.layout.events(job.id, run), "0-0"
            self._by_entry[job.entry] = job
            self._by_events[job.events_key] = job
            free -= 1
            sent += 1
            log.debug("remote workers: job %s dispatched (%s)", job.id, job.entry)
        return sent

    def _redispatch(self, job: _Job, why: str) -> None:
        """Back to waiting here: it goes out again, first, when a worker has room."""
        self._forget_dispatch(job)
        job.started, job.worker = False, None
        if job.cancel_requested:
            self._finish(job, p.Cancelled(job.id))
        log.info("remote workers: job %s waits to be dispatched again: %s", job.id, why)
        self._wake.set()

    def _forget_dispatch(self, job: _Job) -> None:
        if job.entry is not None:
            self._by_entry.pop(job.entry, None)
        if job.events_key is not None:
            self._by_events.pop(job.events_key, None)
        job.run = job.entry = job.events_key = None
        job.last_id = "0-0"

    # ---- events ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        delay = 0.2
        while not self._closing:
            if not self._connected:
                await self._connected_event.wait()
                continue
            streams = {self.layout.inbox: self._inbox_last}
            for key, job in self._by_events.items():
                streams[key] = job.last_id
            try:
                reply = await self.client.xread(dict[Any, Any](streams), count=64,
                                                block=int(self.read_block * 1000))
            except UNREACHABLE as error:
                self._lost(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            except Exception:  # a key of the wrong type, say: log it, keep reading
                log.exception("remote workers: reading the events failed")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            delay = 0.2
            for key, entry_id, fields in stream_entries(reply):
                try:
                    self._route(key, entry_id, fields)
                except Exception:  # a bug here must not stop the reader
                    log.exception("remote workers: cannot route entry %s of %s", entry_id, key)

    def _route(self, key: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        if key == self.layout.inbox:
            self._inbox_last = entry_id
            self._route_pong(fields)
            return
        job = self._by_events.get(key)
        if job is None or job.finished:
            return
        job.last_id = entry_id
        try:
            entry = read_entry(fields, EVENT_TYPES)
        except p.ProtocolError as error:
            log.error("remote workers: job %s: an event from %s cannot be read (skipped): %s",
                      job.id, as_text(fields.get(b"worker", b"?")), error)
            return
        message = entry.message
        if getattr(message, "job", None) != job.id:
            log.error("remote workers: job %s: its stream holds an event of job %r (skipped)",
                      job.id, getattr(message, "job", None))
            return
        if isinstance(message, p.Started | p.Progress) and not job.started:
            job.started, job.worker, job.instance = True, entry.worker, entry.instance
        if isinstance(message, p.Started | p.Progress):
            job.events.put_nowait(message)
        elif isinstance(message, p.Error):
            log.error("remote workers: job %s: worker %s refused it: %s", job.id, entry.worker,
                      message.message)
            if not job.started:
                self._finish(job, p.Failed(job.id, render.engine_refused(message.message),
                                           p.FAIL_REJECTED))
        elif isinstance(message, p.Cancelled):
            if job.cancel_requested:
                self._finish(job, message)
            elif not job.started:
                self._redispatch(job, f"worker {entry.worker} stopped before starting it")
            else:  # the worker was stopped at once, mid-job, without the bot asking
                log.error("remote workers: job %s was cancelled by worker %s (stopped "
                          "mid-job); it fails as an engine crash", job.id, entry.worker)
                self._crashed(job)
        else:
            assert isinstance(message, p.Done | p.Failed)
            self._finish(job, message)

    def _route_pong(self, fields: dict[bytes, bytes]) -> None:
        try:
            entry = read_entry(fields, INBOX_TYPES)
        except p.ProtocolError as error:
            log.warning("remote workers: an inbox entry cannot be read (skipped): %s", error)
            return
        assert isinstance(entry.message, p.Pong)
        waiting = self._pongs.get(entry.message.nonce)
        if waiting is not None and not waiting[1].done():
            waiting[1].set_result(None)

    # ---- pings -------------------------------------------------------------------------

    async def _ping_worker(self, name: str, timeout: float) -> float:
        nonce = next(self._nonces)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs[nonce] = (name, future)
        started = time.monotonic()
        try:
            await self._control(name, p.Ping(nonce))
            await asyncio.wait_for(future, timeout)
        finally:
            self._pongs.pop(nonce, None)
        return time.monotonic() - started

    async def _ping_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.ping_interval)
            if not self._connected:
                continue
            targets = self._book.ping_targets()
            results = await asyncio.gather(
                *(self._ping_worker(name, self.ping_timeout) for name in targets),
                return_exceptions=True)
            for name, result in zip(targets, results):
                if isinstance(result, float | TimeoutError):
                    await self._act(self._book.pinged(name, isinstance(result, float),
                                                      self.ping_timeout))
                    self._update_state()
                elif isinstance(result, UNREACHABLE):
                    self._lost(result)

    # ---- writing -----------------------------------------------------------------------

    async def _control(self, worker: str, message: p.Message, run: str | None = None) -> None:
        await self.client.xadd(self.layout.control(worker),
                               dict[Any, Any](entry_fields(message, run=run)),
                               maxlen=CONTROL_MAXLEN, approximate=True)

    async def _send_cancel(self, job: _Job) -> None:
        if job.worker is None or job.run is None:
            return
        try:
            await self._control(job.worker, p.Cancel(job.id), job.run)
            job.cancel_sent = True
        except (*UNREACHABLE, RedisError) as error:
            log.warning("remote workers: cannot send the cancel of job %s yet: %s", job.id,
                        self._hide(error))

    def _resend_cancels(self) -> None:
        for job in self._jobs.values():
            if job.cancel_requested and job.started and not job.cancel_sent and not job.finished:
                self._side_task(self._send_cancel(job))

    async def _broadcast_cancel(self, job_id: str, run: str) -> None:
        """Cancel a run on every worker that may have claimed it (who did is not known
        until it starts); a worker that has not seen it yet drops it when it does."""
        for name in self._book.usable():
            await self._control(name, p.Cancel(job_id), run)

    async def _drop_entry(self, entry_id: str | None) -> None:
        if entry_id is None:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.layout.jobs, GROUP, entry_id)
        pipe.xdel(self.layout.jobs, entry_id)
        await pipe.execute()

    def _side_task(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # ---- jobs ending -------------------------------------------------------------------

    def _crashed(self, job: _Job) -> None:
        """Its worker died mid-job: what a crash of the local engine gives (uncharged)."""
        if job.cancel_requested:
            self._finish(job, p.Cancelled(job.id))
        else:
            self._finish(job, p.Failed(job.id, render.ENGINE_CRASHED, p.FAIL_CRASH))

    def _finish(self, job: _Job, event: p.JobEvent) -> None:
        if job.finished:
            return
        job.finished = True
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]
        entry, events_key = job.entry, job.events_key
        self._forget_dispatch(job)
        job.events.put_nowait(event)
        job.events.put_nowait(_END)
        if (entry is not None or events_key is not None) and self._connected and not self._closing:
            self._side_task(self._clean_up(entry, events_key))
        self._wake.set()  # a slot may be free

    async def _clean_up(self, entry: str | None, events_key: str | None) -> None:
        """A finished job's entry and events stream go (they expire anyway)."""
        with contextlib.suppress(*UNREACHABLE, RedisError):
            await self._drop_entry(entry)
            if events_key is not None:
                await self.client.delete(events_key)

    # ---- state -------------------------------------------------------------------------

    def _update_state(self) -> None:
        if self._closing or self._life.state is EngineState.NOT_STARTED:
            return
        ready = self.ready_info
        if ready is not None:
            if self._life.state is EngineState.READY and ready != self._ready_told:
                # A worker came, went or changed: the runner may have room now (it looks
                # again at every status change), and /status shows the new devices.
                self._notify()
            self._ready_told = ready
            self._set_state(EngineState.READY)
        elif self._life.state is not EngineState.STARTING:
            if self._connected:
                self._record_error(self._why_not_ready())
            self._set_state(EngineState.DOWN)

    def _why_not_ready(self) -> str:
        if not self._connected:
            return self.last_error or f"Redis at {self.shown_target} is not reachable yet"
        refused = self._book.refused()
        text = f"no remote worker is live on Redis at {self.shown_target}"
        if refused:
            text += "; refused: " + "; ".join(refused)
        return text

    def _set_state(self, state: EngineState) -> None:
        previous = self._life.state
        if self._life.enter(state):
            log.info("remote workers: state %s -> %s", previous.value, state.value)

    def _notify(self) -> None:
        """Wake `wait_status_change`: what is live changed (a new state wakes it too)."""
        self._life.changes.bump()

    def _record_error(self, text: str) -> bool:
        """Keep `text` as the last error; whether it is new (worth logging)."""
        if text == self.last_error:
            return False
        self.last_error = text
        self.last_error_at = self.clock()
        return True

    def _waiting_count(self) -> int:
        return sum(1 for job in self._jobs.values() if not job.finished)


def read_kind(fields: dict[bytes, bytes]) -> str:
    """The message type of an entry's frame, without decoding its blob ("" if unreadable)."""
    try:
        return read_entry(fields, EVENT_TYPES).message.TYPE
    except p.ProtocolError:
        return ""
