"""`vqgan-clip worker --redis`: an engine on another machine that takes the bot's jobs from Redis.

Why a bridge around the engine's own `Worker`: everything a job needs (the job loop, the
failure kinds, cancellation within an iteration, pongs while a job computes, and, when the
engine runs several jobs at once, its `Ready.capacity`) is `engine.worker.Worker`. It runs
here unchanged, in a thread, fed through a pair of OS pipes exactly as the bot feeds it
through stdin/stdout; this module only moves frames between those pipes and the streams of
`engine.redis_layout`. So a remote worker runs a job exactly as a local one does.

Why it dials out: the worker connects to Redis, never the other way round, so a GPU box
behind NAT or a home router serves the bot without any port opened.

Life of a worker:
1. load the models (the Worker's `Ready` says what it runs and how many jobs at once);
2. connect (retrying while Redis is unreachable), read what the bot expects
   (`P bot:expect`) and refuse to start on a mismatch; wait out a live worker that holds
   the same name, or refuse;
3. keep the heartbeat `P worker:<name>` (the Ready, busy and done counts, TTL 3 beats)
   fresh; the same beat re-claims (XCLAIM) the job entries it holds, so that the bot's
   XAUTOCLAIM takes only the entries of a worker that stopped beating;
4. claim jobs (XREADGROUP) only while it holds fewer than its capacity, hand each to the
   Worker, publish the Worker's events to the job's events stream, XACK when it ends;
5. obey its control stream: cancel (forwarded to the Worker), ping (forwarded: the
   Worker's own pong goes to the bot's inbox, so a pong proves the engine answers), and
   shutdown (drain: no new jobs, finish the held ones, deregister, exit 0).
SIGTERM and SIGINT drain too; a second one stops at once: the held jobs are cancelled and
the bot reports them as an engine crash (uncharged).

While Redis is unreachable every loop backs off and retries; the running jobs go on and
their events wait in memory, in order (only progress beyond a bound is dropped, never a
start or an end), until they can be published.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine import protocol as p
from engine.redis_layout import (
    CONTROL_TYPES,
    GROUP,
    JOB_TYPES,
    RUN,
    Heartbeat,
    WORKER_MAX_BACKOFF,
    RedisLayout,
    check_worker_name,
    entry_fields,
    heartbeat_fields,
    ids_of,
    is_run,
    new_run,
    read_entry,
    read_expectation,
    stream_entries,
)
from engine.redis_url import RedisTarget, open_client
from engine.serving import BatchRunner, JobRunner
from engine.worker_thread import WorkerThread

log = logging.getLogger("engine.redis_worker")

#: Errors that mean "Redis is not there right now": back off and try again.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
#: Most entries kept in a job's events stream (approximate trim): a run with progress at
#: every iteration must not grow it without bound; the bot reads far faster than that.
EVENTS_MAXLEN = 1000
#: Entries kept in the control streams and the bot's inbox.
CONTROL_MAXLEN = 100
INBOX_MAXLEN = 1000
#: Events waiting to be published beyond which the oldest progress events are dropped.
MAX_BACKLOG = 64
#: Runs cancelled before this worker saw them, remembered so that a late claim is dropped.
CANCELLED_RUNS_KEPT = 256


class WorkerStartError(Exception):
    """The worker cannot serve: the engine did not load, or the bot on this Redis refuses
    it, or another live worker has its name. The message says which and what to do."""


@dataclass(frozen=True)
class RemoteWorkerConfig:
    """How a remote worker reaches Redis and how often it says it is alive."""

    target: RedisTarget
    name: str
    layout: RedisLayout = field(default_factory=RedisLayout)
    #: Seconds between heartbeats; the heartbeat key lives `ttl_beats` of them.
    heartbeat_interval: float = 5.0
    ttl_beats: int = 3
    #: Longest wait of one blocking read (the claim and control loops).
    block: float = 1.0
    #: A job's events stream expires this long after its last event, read or not.
    events_ttl: float = 24 * 3600.0
    #: Longest pause between attempts while Redis is unreachable (the bot's grace after a
    #: Redis restart counts on it: `WORKER_MAX_BACKOFF`).
    max_backoff: float = WORKER_MAX_BACKOFF

    def __post_init__(self) -> None:
        check_worker_name(self.name)

    @property
    def ttl(self) -> float:
        return self.heartbeat_interval * self.ttl_beats


@dataclass
class _Run:
    """A job this worker holds: claimed from `entry`, its events going to `events`."""

    job: str
    run: str
    entry: str
    events: str
    started: bool = False


@dataclass
class _Outgoing:
    """One write waiting for Redis: an entry to add (and the job entry to XACK with it)."""

    key: str
    fields: dict[str, bytes]
    maxlen: int
    expire: float | None = None
    ack: str | None = None
    progress: bool = False


class RemoteWorker:
    """One remote worker: see the module docstring. `await run()` returns the exit code."""

    def __init__(self, config: RemoteWorkerConfig, load_runner: Callable[[], JobRunner | BatchRunner],
                 client: redis.asyncio.Redis | None = None) -> None:
        self.config = config
        self.layout = config.layout
        self.name = config.name
        self._load_runner = load_runner
        self._client = client
        self.instance = new_run()
        self.ready: p.Ready | None = None
        self.capacity = 1
        self.done = 0
        self._runs: dict[str, _Run] = {}
        self._cancelled_runs: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._outgoing: collections.deque[_Outgoing] = collections.deque()
        self._outgoing_changed = asyncio.Event()
        self._capacity_changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._draining = False
        self._hard_stop = False
        self.exit_code = 0
        self._unreachable_since: float | None = None
        self._engine: WorkerThread | None = None

    # ---- public ------------------------------------------------------------------------

    @property
    def busy(self) -> int:
        return len(self._runs)

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self, why: str) -> None:
        """Take no more jobs, finish the held ones, then stop."""
        if not self._draining:
            self._draining = True
            log.info("worker %s: %s; finishing %d held job(s), taking no more", self.name,
                     why, len(self._runs))
            self._capacity_changed.set()
        self._stop_if_drained()

    def stop_now(self, why: str) -> None:
        """Stop at once: the held jobs are cancelled (the bot reports an engine crash)."""
        log.warning("worker %s: %s; stopping now, cancelling %d held job(s)", self.name, why,
                    len(self._runs))
        self._draining = True
        self._hard_stop = True
        self._stop.set()

    async def run(self) -> int:
        """Serve until drained or stopped. WorkerStartError if it cannot start serving."""
        engine = self._engine = WorkerThread(self._load_runner)
        engine.start()
        try:
            self.ready = await self._engine_ready(engine)
            self.capacity = self.ready.capacity
            if self._client is None:
                self._client = open_client(self.config.target,
                                           socket_timeout=self.config.block + 30.0)
            await self._register()
        except BaseException:
            engine.close_input()
            await engine.join(10.0)
            raise
        print(f"worker {self.name}: serving jobs from {self.config.target.shown()} on "
              f"{self.ready.device} (vqgan {self.ready.vqgan}, clip {self.ready.clip}, "
              f"{self.capacity} at once)", file=sys.stderr, flush=True)
        tasks = [asyncio.create_task(coroutine, name=f"redis-worker-{name}") for name, coroutine in (
            ("engine", self._engine_loop(engine)), ("publish", self._publish_loop()),
            ("beat", self._heartbeat_loop()), ("claim", self._claim_loop(engine)),
            ("control", self._control_loop(engine)))]
        for task in tasks:
            task.add_done_callback(self._task_ended)
        try:
            await self._stop.wait()
        finally:
            await self._shut_down(engine, tasks)
        return self.exit_code

    # ---- start -------------------------------------------------------------------------

    async def _engine_ready(self, engine: WorkerThread) -> p.Ready:
        while True:
            message = await engine.messages.get()
            if message is None:
                await engine.join(10.0)
                raise WorkerStartError(f"the engine exited with code {engine.exit_code} "
                                       "before it was ready")
            if isinstance(message, p.Ready):
                return message
            if isinstance(message, p.Error):
                await engine.join(10.0)
                raise WorkerStartError(message.message)
            log.warning("the engine sent %r before ready; ignored", message.TYPE)

    @property
    def client(self) -> redis.asyncio.Redis:
        assert self._client is not None
        return self._client

    async def _register(self) -> None:
        """Connect, check the bot's expectation and the name, create the group. Retries
        while Redis is unreachable; WorkerStartError for what retrying cannot fix."""
        delay = 0.2
        while True:
            try:
                await self._check_expectation(starting=True)
                await self._claim_name()
                await self._ensure_group()
                await self._beat()
                self._reachable()
                return
            except AuthenticationError as error:
                raise WorkerStartError(f"Redis at {self.config.target.shown()} refused the "
                                       f"login: {self.config.target.hide(str(error))}") from None
            except UNREACHABLE as error:
                self._unreachable(error)
            except ResponseError as error:  # NOPERM, WRONGTYPE: settings, not weather
                raise WorkerStartError(f"Redis at {self.config.target.shown()} refused: "
                                       f"{self.config.target.hide(str(error))}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.max_backoff)

    async def _check_expectation(self, starting: bool) -> None:
        raw: dict[bytes, bytes] = await self.client.hgetall(self.layout.expect)  # type: ignore[assignment]
        if not raw:
            return  # no bot has started on this Redis yet: it refuses us itself if need be
        assert self.ready is not None
        try:
            refusal = read_expectation(raw).refusal(self.ready)
        except p.ProtocolError as error:
            refusal = f"its expectation cannot be read ({error})"
        if refusal is None:
            return
        message = f"the bot on {self.config.target.shown()} refuses worker {self.name}: {refusal}"
        if starting:
            raise WorkerStartError(message)
        log.error("%s", message)
        self.exit_code = 1
        self.drain("refused by the bot")

    async def _claim_name(self) -> None:
        """Wait for a previous holder of this name to expire; refuse if it is alive."""
        key = self.layout.heartbeat(self.name)
        waited = 0.0
        while True:
            instance = await self.client.hget(key, "instance")
            if instance is None or ids_of([instance]) == [self.instance]:
                return
            left = await self.client.pttl(key)
            if waited > self.config.ttl + 2.0 or left > (self.config.ttl + 60.0) * 1000:
                raise WorkerStartError(
                    f"another worker named {self.name} is serving on "
                    f"{self.config.target.shown()}; give this one another --name")
            if waited == 0.0:
                log.warning("worker %s: a worker of that name beat %.1f s ago or less; waiting "
                            "to see whether it is gone", self.name, self.config.ttl)
            pause = min(max(left, 100) / 1000.0, 0.5)
            await asyncio.sleep(pause)
            waited += pause

    async def _ensure_group(self) -> None:
        """Create the jobs stream's consumer group at its start (entries the bot added
        before a restart of Redis lost the group are still read)."""
        try:
            await self.client.xgroup_create(self.layout.jobs, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # ---- the loops ---------------------------------------------------------------------

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stop.is_set():
            return
        error = task.exception()
        log.error("worker %s: %s stopped by a bug; stopping", self.name, task.get_name(),
                  exc_info=error)
        self.exit_code = 1
        self.stop_now("an internal error")

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            try:
                await self._beat()
                await self._check_expectation(starting=False)
                self._reachable()
            except UNREACHABLE as error:
                self._unreachable(error)

    async def _beat(self) -> None:
        """Refresh the heartbeat and keep the held job entries claimed."""
        assert self.ready is not None
        beat = Heartbeat(self.name, self.ready, busy=len(self._runs), done=self.done,
                         ttl=self.config.ttl, instance=self.instance, draining=self._draining)
        key = self.layout.heartbeat(self.name)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=dict[Any, Any](heartbeat_fields(beat)))
        pipe.pexpire(key, int(self.config.ttl * 1000))
        pipe.sadd(self.layout.workers, self.name)
        await pipe.execute()
        entries = [run.entry for run in self._runs.values()]
        if entries:
            try:
                await self.client.xclaim(self.layout.jobs, GROUP, self.name, 0,
                                         list[Any](entries), justid=True)
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                # Redis lost the stream (a restart without persistence): the jobs go on,
                # nothing is left to keep claimed.

    async def _claim_loop(self, engine: WorkerThread) -> None:
        block = self.config.block
        delay = 0.2
        while not self._draining:
            free = self.capacity - len(self._runs)
            if free <= 0:
                self._capacity_changed.clear()
                await self._capacity_changed.wait()
                continue
            asked = time.monotonic()
            try:
                reply = await self.client.xreadgroup(GROUP, self.name, {self.layout.jobs: ">"},
                                                     count=free, block=int(block * 1000))
            except UNREACHABLE as error:
                self._unreachable(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.max_backoff)
                continue
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                await self._ensure_group()
                continue
            delay = 0.2
            self._reachable()
            entries = stream_entries(reply)
            for _, entry_id, fields in entries:
                await self._take(engine, entry_id, fields)
            if not entries:
                # A server that answers an empty BLOCK read at once (some fakes and
                # proxies do) must not make this loop spin.
                await asyncio.sleep(max(0.0, block - (time.monotonic() - asked)))

    async def _take(self, engine: WorkerThread, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """One claimed entry: hand it to the engine, or answer why not."""
        raw_run = fields.get(RUN.encode(), b"").decode("utf-8", "replace")
        try:
            entry = read_entry(fields, JOB_TYPES)
            if entry.run is None:
                raise p.ProtocolError("the job entry has no `run`",
                                      job=getattr(entry.message, "job", None))
        except p.ProtocolError as error:
            log.error("worker %s: job entry %s cannot be read: %s", self.name, entry_id, error)
            if error.job and len(error.job) <= p.MAX_JOB_ID_CHARS and is_run(raw_run):
                with contextlib.suppress(p.ProtocolError):
                    self._answer(error.job, raw_run, entry_id,
                                 p.Failed(error.job, f"the engine could not read the job: {error}",
                                          p.FAIL_REJECTED))
                    return
            self._enqueue(_Outgoing("", {}, 0, ack=entry_id))
            return
        submit = entry.message
        assert isinstance(submit, p.Submit) and entry.run is not None
        if entry.run in self._cancelled_runs:
            self._answer(submit.job, entry.run, entry_id, p.Cancelled(submit.job))
            return
        if submit.job in self._runs:
            self._answer(submit.job, entry.run, entry_id,
                         p.Error(f"job {submit.job!r} is already running on worker {self.name}",
                                 submit.job))
            return
        run = _Run(submit.job, entry.run, entry_id, self.layout.events(submit.job, entry.run))
        self._runs[submit.job] = run
        log.info("worker %s: took job %s (%s)", self.name, submit.job, entry_id)
        if not await engine.send(submit):
            log.error("worker %s: the engine no longer takes jobs", self.name)

    def _answer(self, job: str, run: str, entry_id: str, message: p.Message) -> None:
        """A job's only event, sent by this bridge rather than the engine."""
        self._enqueue(_Outgoing(self.layout.events(job, run),
                                entry_fields(message, worker=self.name, instance=self.instance), EVENTS_MAXLEN,
                                self.config.events_ttl, ack=entry_id))

    async def _control_loop(self, engine: WorkerThread) -> None:
        key = self.layout.control(self.name)
        last: str | None = None
        delay = 0.2
        while True:
            try:
                if last is None:
                    newest = ids_of(await self.client.xrevrange(key, count=1))
                    last = newest[0] if newest else "0-0"
                reply = await self.client.xread({key: last}, count=32,
                                                block=int(self.config.block * 1000))
            except UNREACHABLE as error:
                self._unreachable(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.max_backoff)
                continue
            delay = 0.2
            for _, entry_id, fields in stream_entries(reply):
                last = entry_id
                await self._obey(engine, entry_id, fields)

    async def _obey(self, engine: WorkerThread, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            entry = read_entry(fields, CONTROL_TYPES)
        except p.ProtocolError as error:
            log.error("worker %s: control entry %s ignored: %s", self.name, entry_id, error)
            return
        message = entry.message
        if isinstance(message, p.Cancel):
            run = self._runs.get(message.job)
            if run is not None and entry.run in (None, run.run):
                log.info("worker %s: cancelling job %s", self.name, message.job)
                await engine.send(message)
            elif entry.run is not None:
                self._cancelled_runs[entry.run] = None
                while len(self._cancelled_runs) > CANCELLED_RUNS_KEPT:
                    self._cancelled_runs.popitem(last=False)
        elif isinstance(message, p.Ping):
            await engine.send(message)
        elif isinstance(message, p.Shutdown):
            self.drain("shutdown asked on the control stream")

    async def _engine_loop(self, engine: WorkerThread) -> None:
        while True:
            message = await engine.messages.get()
            if message is None:
                if not self._stop.is_set():
                    log.error("worker %s: the engine stopped (exit code %s)", self.name,
                              engine.exit_code)
                    self.exit_code = 1
                    self.stop_now("the engine stopped")
                return
            self._from_engine(message)

    def _from_engine(self, message: p.Message) -> None:
        if isinstance(message, p.Pong):
            self._enqueue(_Outgoing(self.layout.inbox, entry_fields(message, worker=self.name, instance=self.instance),
                                    INBOX_MAXLEN))
            return
        job = getattr(message, "job", None)
        run = self._runs.get(job) if isinstance(job, str) else None
        if run is None:
            if isinstance(message, p.Error):
                log.error("worker %s: the engine says: %s", self.name, message.message)
                if message.fatal:
                    self.exit_code = 1
                    self.stop_now("the engine's input is out of sync")
            elif not (isinstance(message, p.Cancelled) and message.unknown):
                log.debug("worker %s: %s for a job not held: %s", self.name, message.TYPE, job)
            return
        if isinstance(message, p.Cancelled) and message.unknown:
            return  # a cancel that raced with the job's end: its own end decides
        ends = isinstance(message, (*p.TERMINAL_EVENTS, p.Error))
        if isinstance(message, p.Started):
            run.started = True
        self._enqueue(_Outgoing(run.events, entry_fields(message, worker=self.name, instance=self.instance),
                                EVENTS_MAXLEN, self.config.events_ttl,
                                ack=run.entry if ends else None,
                                progress=isinstance(message, p.Progress)))
        if ends:
            del self._runs[run.job]
            if isinstance(message, p.Done):
                self.done += 1
            log.info("worker %s: job %s ended: %s", self.name, run.job, message.TYPE)
            self._capacity_changed.set()
            self._stop_if_drained()

    # ---- publishing --------------------------------------------------------------------

    def _enqueue(self, item: _Outgoing) -> None:
        self._outgoing.append(item)
        if len(self._outgoing) > MAX_BACKLOG:
            for index, queued in enumerate(self._outgoing):
                if queued.progress:
                    del self._outgoing[index]
                    break
        self._outgoing_changed.set()

    async def _publish_loop(self) -> None:
        delay = 0.2
        while True:
            if not self._outgoing:
                self._outgoing_changed.clear()
                await self._outgoing_changed.wait()
                continue
            batch = [self._outgoing.popleft() for _ in range(min(32, len(self._outgoing)))]
            try:
                await self._publish(batch)
            except UNREACHABLE as error:
                self._outgoing.extendleft(reversed(batch))
                self._unreachable(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.max_backoff)
                continue
            delay = 0.2
            self._reachable()

    async def _publish(self, batch: list[_Outgoing]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for item in batch:
            if item.key:
                pipe.xadd(item.key, dict[Any, Any](item.fields), maxlen=item.maxlen,
                          approximate=True)
                if item.expire is not None:
                    pipe.pexpire(item.key, int(item.expire * 1000))
            if item.ack is not None:
                pipe.xack(self.layout.jobs, GROUP, item.ack)
        results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, UNREACHABLE):
                raise result
            if isinstance(result, Exception):
                # An XACK after Redis lost the group, say: nothing to retry.
                log.warning("worker %s: a write was refused: %s", self.name,
                            self.config.target.hide(str(result)))

    async def _flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._outgoing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # ---- stopping ----------------------------------------------------------------------

    def _stop_if_drained(self) -> None:
        if self._draining and not self._runs:
            self._stop.set()

    async def _shut_down(self, engine: WorkerThread, tasks: list[asyncio.Task[Any]]) -> None:
        engine_task = tasks[0]
        for task in tasks:
            if task.get_name().endswith(("claim", "control", "beat")):
                task.cancel()
        engine.close_input()  # the engine cancels what it still runs, and exits
        if not await engine.join(60.0):
            log.error("worker %s: the engine did not stop in 60 s", self.name)
        # The engine's last events (cancelled jobs) reach Redis before the worker leaves.
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(engine_task), 5.0)
        await self._flush(10.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*UNREACHABLE, RedisError):
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.layout.heartbeat(self.name))
            pipe.srem(self.layout.workers, self.name)
            await pipe.execute()
        with contextlib.suppress(Exception):
            await self.client.aclose()
        log.info("worker %s: stopped", self.name)

    # ---- reachability (logged once per outage) -----------------------------------------

    def _unreachable(self, error: BaseException) -> None:
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            log.warning("worker %s: cannot reach Redis at %s (%s); retrying", self.name,
                        self.config.target.shown(), self.config.target.hide(str(error)))

    def _reachable(self) -> None:
        if self._unreachable_since is not None:
            log.warning("worker %s: Redis is back after %.0f s", self.name,
                        time.monotonic() - self._unreachable_since)
            self._unreachable_since = None


def serve_redis(config: RemoteWorkerConfig, load_runner: Callable[[], JobRunner | BatchRunner]) -> int:
    """Run a remote worker in this process until it stops; the exit code. SIGTERM and
    SIGINT drain it (a second one stops it at once)."""

    async def main() -> int:
        worker = RemoteWorker(config, load_runner)
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                worker.drain("stop signal (send it again to stop at once)")
            else:
                worker.stop_now("second stop signal")

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        try:
            return await worker.run()
        except WorkerStartError as error:
            log.error("%s", error)
            print(f"error: {error}", file=sys.stderr, flush=True)
            return 1

    return asyncio.run(main())
