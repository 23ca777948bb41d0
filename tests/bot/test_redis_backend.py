"""bot/redis_backend.py on fakeredis, against workers driven by hand (their heartbeats,
claims and events written by the test), so that every rule can be put to the test: the
capacity accounting, refusals, a worker's death before and after a job started, the
reclaim of a claimed job never started, cancel, pings, Redis losing its data, and the
password kept out of every log line and error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import fakeredis
import pytest
from redis.exceptions import ResponseError

from bot.engine_client import EngineStartError
from bot.engine_status import EngineState
from bot.redis_backend import RedisBackend, RemoteJobStream
from bot.render import ENGINE_CRASHED, ENGINE_SHUT_DOWN
from bot.worker_status import WorkerState
from engine import protocol as p
from engine.redis_layout import (
    CONTROL_TYPES,
    GROUP,
    JOB_TYPES,
    Expectation,
    Heartbeat,
    RedisLayout,
    entry_fields,
    heartbeat_fields,
    read_entry,
    read_expectation,
    stream_entries,
)
from engine.redis_url import parse_redis_url

LAYOUT = RedisLayout()
TIMEOUT = 10.0
PASSWORD = "n0t-in-any-log-9f3b"


class HandWorker:
    """A worker whose every move is the test's: beat, claim, publish, read its control."""

    def __init__(self, redis, name: str, *, capacity: int = 1, version: int = 1,
                 vqgan: str = "vq", clip: str = "cl", ttl: float = 0.3) -> None:
        self.redis, self.name, self.ttl = redis, name, ttl
        self.ready = p.Ready(version, "cuda:0", vqgan, clip, 100, capacity)
        self.instance = f"{name}-1"   # another process under this name: another instance
        self._beating: asyncio.Task | None = None
        self._control_last = "0-0"

    async def beat(self) -> None:
        key = LAYOUT.heartbeat(self.name)
        await self.redis.hset(key, mapping=heartbeat_fields(
            Heartbeat(self.name, self.ready, ttl=self.ttl, instance=self.instance)))
        await self.redis.pexpire(key, int(self.ttl * 1000))
        await self.redis.sadd(LAYOUT.workers, self.name)

    def start_beating(self) -> None:
        async def loop() -> None:
            while True:
                await self.beat()
                await asyncio.sleep(self.ttl / 3)
        self._beating = asyncio.create_task(loop())

    def stop_beating(self) -> None:
        if self._beating is not None:
            self._beating.cancel()

    async def claim(self, count: int = 1) -> list[tuple[str, p.Submit, str]]:
        try:
            reply = await self.redis.xreadgroup(GROUP, self.name, {LAYOUT.jobs: ">"},
                                                count=count)
        except ResponseError:  # no group (yet, or Redis lost it): as a worker, try again
            return []
        out = []
        for _, entry_id, fields in stream_entries(reply):
            entry = read_entry(fields, JOB_TYPES)
            assert isinstance(entry.message, p.Submit) and entry.run
            out.append((entry_id, entry.message, entry.run))
        return out

    async def claim_one(self) -> tuple[str, p.Submit, str]:
        async with asyncio.timeout(TIMEOUT):
            while not (got := await self.claim()):
                await asyncio.sleep(0.02)
        return got[0]

    async def publish(self, job: str, run: str, message: p.Message) -> None:
        await self.redis.xadd(LAYOUT.events(job, run), entry_fields(
            message, worker=self.name, instance=self.instance))

    async def controls(self) -> list[tuple[p.Message, str | None]]:
        reply = await self.redis.xread({LAYOUT.control(self.name): self._control_last})
        out = []
        for _, entry_id, fields in stream_entries(reply):
            self._control_last = entry_id
            entry = read_entry(fields, CONTROL_TYPES)
            out.append((entry.message, entry.run))
        return out

    async def wait_control(self, kind: type) -> tuple[p.Message, str | None]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                for message, run in await self.controls():
                    if isinstance(message, kind):
                        return message, run
                await asyncio.sleep(0.02)

    async def answer_pings(self) -> None:
        while True:
            for message, _ in await self.controls():
                if isinstance(message, p.Ping):
                    await self.redis.xadd(LAYOUT.inbox, entry_fields(
                        p.Pong(message.nonce), worker=self.name))
            await asyncio.sleep(0.02)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def redis(server):
    return fakeredis.FakeAsyncRedis(server=server)


@pytest.fixture
async def backend(server) -> AsyncIterator[RedisBackend]:
    made = RedisBackend(client=fakeredis.FakeAsyncRedis(server=server), ready_timeout=TIMEOUT,
                        check_interval=0.05, read_block=0.05, claim_timeout=0.5,
                        ping_interval=3600, ping_timeout=0.3,
                        expect=Expectation(p.PROTOCOL_VERSION, "vq", "cl"))
    yield made
    await made.close()


def submit(job: str) -> p.Submit:
    return p.Submit(job, (p.TextPromptSpec("a fox"),), 64, 64, iterations=4)


async def until(check, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def events_of(stream: RemoteJobStream) -> list[p.JobEvent]:
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in stream]


async def length_is(redis, count: int) -> bool:
    return await redis.xlen(LAYOUT.jobs) == count


async def test_jobs_go_to_redis_only_while_live_workers_have_room(backend, redis) -> None:
    a, b = HandWorker(redis, "a", capacity=2), HandWorker(redis, "b", capacity=3)
    a.start_beating()
    b.start_beating()
    ready = await backend.start()
    await until(lambda: _is(backend.free_capacity() == 5))
    assert ready.capacity >= 2 and read_expectation(await redis.hgetall(LAYOUT.expect)) == (
        Expectation(p.PROTOCOL_VERSION, "vq", "cl"))
    streams = [backend.submit(submit(f"j{i}")) for i in range(7)]
    await until(lambda: length_is(redis, 5))
    await asyncio.sleep(0.2)  # several rounds: the two others stay in the bot
    assert await redis.xlen(LAYOUT.jobs) == 5 and backend.free_capacity() == 0
    assert backend.ready_info is not None and backend.ready_info.capacity == 5
    entry, job, run = await a.claim_one()
    assert job.job == "j0"  # oldest first
    await a.publish(job.job, run, p.Started(job.job))
    await a.publish(job.job, run, p.Done(job.job, b"png", 1, 0.1, 4, 64, 64))
    assert [e.TYPE for e in await events_of(streams[0])] == ["started", "done"]
    # Its slot went to the sixth job, and its entry left the stream.
    await until(lambda: _entries_are(redis, {f"j{i}" for i in range(1, 6)}))
    a.stop_beating()
    b.stop_beating()


async def _is(value: bool) -> bool:
    return value


async def _entries_are(redis, jobs: set[str]) -> bool:
    entries = stream_entries([[LAYOUT.jobs, await redis.xrange(LAYOUT.jobs)]])
    return {read_entry(f, JOB_TYPES).message.job for _, _, f in entries} == jobs


async def test_without_a_worker_start_fails_and_nothing_is_dispatched(server, redis) -> None:
    backend = RedisBackend(client=fakeredis.FakeAsyncRedis(server=server), ready_timeout=0.3,
                           check_interval=0.05, read_block=0.05)
    try:
        stream = backend.submit(submit("j1"))
        with pytest.raises(EngineStartError, match="no remote worker is live"):
            await backend.start()
        assert backend.status.state is EngineState.DOWN
        await asyncio.sleep(0.2)
        assert await redis.xlen(LAYOUT.jobs) == 0
        late = HandWorker(redis, "late")
        late.start_beating()   # a worker started late picks up the waiting job
        _, job, _ = await late.claim_one()
        assert job.job == "j1" and backend.status.state is EngineState.READY
        late.stop_beating()
    finally:
        await backend.close()
    assert [e.TYPE for e in await events_of(stream)] == ["failed"]


async def test_workers_of_another_protocol_or_models_are_refused_once_and_clearly(
        backend, redis, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bot.redis_backend")
    old = HandWorker(redis, "old", version=2)
    other = HandWorker(redis, "other", vqgan="wikiart_16384")
    good = HandWorker(redis, "good")
    for worker in (old, other, good):
        worker.start_beating()
    await backend.start()
    await asyncio.sleep(0.3)  # many checks
    states = {w.name: (w.state, w.note) for w in backend.workers}
    assert states["good"][0] is WorkerState.LIVE
    assert states["old"][0] is WorkerState.REFUSED and "protocol version 2" in states["old"][1]
    assert states["other"][0] is WorkerState.REFUSED and "'wikiart_16384'" in states["other"][1]
    assert backend.free_capacity() == 1
    refusals = [r.getMessage() for r in caplog.records if "refusing worker" in r.getMessage()]
    assert len(refusals) == 2, refusals
    assert any("old: it speaks protocol version 2" in line for line in refusals)
    for worker in (old, other, good):
        worker.stop_beating()


async def test_a_worker_whose_heartbeat_expires_mid_job_fails_it_as_a_crash(backend, redis) -> None:
    a = HandWorker(redis, "a")
    a.start_beating()
    await backend.start()
    stream = backend.submit(submit("j1"))
    _, job, run = await a.claim_one()
    await a.publish(job.job, run, p.Started(job.job))
    await a.publish(job.job, run, p.Progress(job.job, 1, 4, 0.5, 0.1, b""))
    a.stop_beating()
    events = await events_of(stream)
    assert [e.TYPE for e in events] == ["started", "progress", "failed"]
    assert events[-1] == p.Failed("j1", ENGINE_CRASHED, p.FAIL_CRASH)
    # Dead once its heartbeat has been gone longer than the grace after the bot connected
    # (the TTL and a worker's backoff, WORKER_MAX_BACKOFF); the idle claim may fail the
    # job before that.
    await until(lambda: _is({w.name: w.state for w in backend.workers}["a"] is WorkerState.DEAD))
    assert backend.status.restarts == 1
    # Should it come back, it is told to drop that run.
    message, cancelled_run = await a.wait_control(p.Cancel)
    assert message == p.Cancel("j1") and cancelled_run == run


async def test_a_worker_restarted_under_its_name_fails_what_the_old_process_started(
        backend, redis) -> None:
    a = HandWorker(redis, "a", ttl=5.0)   # restarted well before its heartbeat lapses
    a.start_beating()
    await backend.start()
    stream = backend.submit(submit("j1"))
    _, job, run = await a.claim_one()
    await a.publish("j1", run, p.Started("j1"))
    await until(lambda: _is(backend._jobs["j1"].started))
    a.instance = "a-2"
    await a.beat()
    events = await events_of(stream)
    assert events[-1] == p.Failed("j1", ENGINE_CRASHED, p.FAIL_CRASH)
    assert {w.name: w.state for w in backend.workers}["a"] is WorkerState.LIVE
    a.stop_beating()


async def test_a_job_claimed_and_never_started_is_dispatched_again(backend, redis) -> None:
    a, b = HandWorker(redis, "a"), HandWorker(redis, "b")
    a.start_beating()
    await backend.start()
    stream = backend.submit(submit("j1"))
    _, first, first_run = await a.claim_one()
    a.stop_beating()  # died before starting it
    b.start_beating()
    _, again, run = await b.claim_one()
    assert again == first and run != first_run
    await b.publish(again.job, run, p.Started(again.job))
    await b.publish(again.job, run, p.Done(again.job, b"png", 1, 0.1, 4, 64, 64))
    assert [e.TYPE for e in await events_of(stream)] == ["started", "done"]
    pending = await redis.xpending_range(LAYOUT.jobs, GROUP, "-", "+", 10)
    assert [row["consumer"] for row in pending] == [b"b"]  # a's claim was taken back
    b.stop_beating()


async def test_an_entry_nobody_keeps_claimed_is_taken_back_by_xautoclaim(backend, redis) -> None:
    a = HandWorker(redis, "a")
    a.start_beating()
    await backend.start()
    stream = backend.submit(submit("j1"))
    ghost = HandWorker(redis, "ghost")  # never beats: unknown to the bot
    await until(lambda: length_is(redis, 1))
    _, job, ghost_run = await ghost.claim_one()
    # After claim_timeout (0.5 s) with no XCLAIM to keep it, the bot takes it back.
    _, again, run = await a.claim_one()
    assert again.job == "j1" and run != ghost_run
    await a.publish("j1", run, p.Started("j1"))
    await a.publish("j1", run, p.Done("j1", b"png", 1, 0.1, 4, 64, 64))
    assert [e.TYPE for e in await events_of(stream)] == ["started", "done"]
    a.stop_beating()


async def test_cancel_before_dispatch_before_start_and_after_start(backend, redis) -> None:
    a = HandWorker(redis, "a")
    a.start_beating()
    await backend.start()
    running = backend.submit(submit("run"))
    waiting = backend.submit(submit("wait"))  # no room: stays in the bot
    _, job, run = await a.claim_one()
    await a.publish("run", run, p.Started("run"))
    await waiting.cancel()
    assert [e.TYPE for e in await events_of(waiting)] == ["cancelled"]
    await until(lambda: _is(backend._jobs["run"].started))
    await backend.cancel("run")
    message, cancel_run = await a.wait_control(p.Cancel)
    assert message == p.Cancel("run") and cancel_run == run
    await a.publish("run", run, p.Cancelled("run"))
    assert [e.TYPE for e in await events_of(running)] == ["started", "cancelled"]
    # Sent but not started: ends at once, its entry leaves the stream.
    sent = backend.submit(submit("sent"))
    await until(lambda: length_is(redis, 1))
    await sent.cancel()
    assert [e.TYPE for e in await events_of(sent)] == ["cancelled"]
    assert await redis.xlen(LAYOUT.jobs) == 0
    a.stop_beating()


async def test_a_worker_that_stops_answering_pings_is_dead_until_it_answers(server, redis) -> None:
    backend = RedisBackend(client=fakeredis.FakeAsyncRedis(server=server), ready_timeout=TIMEOUT,
                           check_interval=0.05, read_block=0.05, ping_interval=0.1,
                           ping_timeout=0.3)
    deaf = HandWorker(redis, "deaf", ttl=5.0)
    deaf.start_beating()
    try:
        await backend.start()
        stream = backend.submit(submit("j1"))
        _, job, run = await deaf.claim_one()
        await deaf.publish("j1", run, p.Started("j1"))
        events = await events_of(stream)
        assert events[-1] == p.Failed("j1", ENGINE_CRASHED, p.FAIL_CRASH)
        worker = {w.name: w for w in backend.workers}["deaf"]
        assert worker.state is WorkerState.DEAD and "ping" in (worker.note or "")
        assert backend.free_capacity() == 0
        answering = asyncio.create_task(deaf.answer_pings())
        await until(lambda: _is(backend.free_capacity() == 1))
        answering.cancel()
    finally:
        deaf.stop_beating()
        await backend.close()


async def test_a_malformed_event_is_skipped_and_the_job_goes_on(backend, redis, caplog) -> None:
    a = HandWorker(redis, "a")
    a.start_beating()
    await backend.start()
    stream = backend.submit(submit("j1"))
    _, _, run = await a.claim_one()
    await redis.xadd(LAYOUT.events("j1", run), {"frame": b"\x00\x00\x00\x03abc", "worker": "a"})
    await a.publish("j1", run, p.Started("other-job"))
    await a.publish("j1", run, p.Done("j1", b"png", 1, 0.1, 4, 64, 64))
    assert [e.TYPE for e in await events_of(stream)] == ["done"]
    assert "cannot be read" in caplog.text and "event of job 'other-job'" in caplog.text
    a.stop_beating()


async def test_redis_losing_its_data_dispatches_again_what_had_not_started(backend, redis) -> None:
    a = HandWorker(redis, "a")
    a.start_beating()
    await backend.start()
    stream = backend.submit(submit("j1"))
    await until(lambda: length_is(redis, 1))
    await redis.flushall()
    _, job, run = await a.claim_one()
    assert job.job == "j1"
    assert await redis.exists(LAYOUT.expect)
    await a.publish("j1", run, p.Started("j1"))
    await a.publish("j1", run, p.Done("j1", b"png", 1, 0.1, 4, 64, 64))
    assert [e.TYPE for e in await events_of(stream)] == ["started", "done"]
    a.stop_beating()


async def test_a_redis_that_comes_back_empty_gets_the_unstarted_jobs_again(
        server, backend, redis) -> None:
    a = HandWorker(redis, "a")
    a.start_beating()
    await backend.start()
    stream = backend.submit(submit("j1"))
    await until(lambda: length_is(redis, 1))
    a.stop_beating()
    await redis.flushall()
    server.connected = False      # Redis gone: the bot is down, the job waits
    await until(lambda: _is(backend.status.state is EngineState.DOWN))
    server.connected = True       # back, empty
    a.start_beating()
    _, job, run = await a.claim_one()
    assert job.job == "j1"
    await a.publish("j1", run, p.Started("j1"))
    await a.publish("j1", run, p.Done("j1", b"png", 1, 0.1, 4, 64, 64))
    assert [e.TYPE for e in await events_of(stream)] == ["started", "done"]
    a.stop_beating()


async def test_what_an_earlier_bot_left_is_cancelled_and_removed(server, redis) -> None:
    a = HandWorker(redis, "a", capacity=2)
    a.start_beating()
    await redis.xgroup_create(LAYOUT.jobs, GROUP, id="0", mkstream=True)
    await redis.xadd(LAYOUT.jobs, entry_fields(submit("old"), run="r0"))
    await a.claim_one()                                   # running on a when the bot died
    await redis.xadd(LAYOUT.jobs, entry_fields(submit("older"), run="r1"))  # never claimed
    backend = RedisBackend(client=fakeredis.FakeAsyncRedis(server=server), check_interval=0.05,
                           read_block=0.05)
    try:
        await backend.start()
        await until(lambda: length_is(redis, 0))
        message, run = await a.wait_control(p.Cancel)
        assert message == p.Cancel("old") and run == "r0"
    finally:
        a.stop_beating()
        await backend.close()


async def test_a_job_over_the_frame_limits_fails_at_once(backend) -> None:
    huge = p.Submit("big", (p.TextPromptSpec("x"),), init_image=b"\0" * (p.MAX_BLOB_SIZE + 1))
    events = await events_of(backend.submit(huge))
    assert isinstance(events[0], p.Failed) and events[0].reason == p.FAIL_REJECTED


async def test_close_ends_unfinished_jobs_as_shut_down(server, redis) -> None:
    backend = RedisBackend(client=fakeredis.FakeAsyncRedis(server=server), check_interval=0.05,
                           read_block=0.05)
    a = HandWorker(redis, "a")
    a.start_beating()
    await backend.start()
    stream = backend.submit(submit("j1"))
    _, _, run = await a.claim_one()
    await a.publish("j1", run, p.Started("j1"))
    await until(lambda: _is(backend._jobs["j1"].started))
    await backend.close()
    events = await events_of(stream)
    assert events[-1] == p.Failed("j1", ENGINE_SHUT_DOWN, p.FAIL_SHUTDOWN)
    message, cancel_run = await a.wait_control(p.Cancel)   # and it stops on the worker
    assert cancel_run == run
    assert backend.status.state is EngineState.CLOSED
    a.stop_beating()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_redis_keeps_jobs_waiting_and_never_shows_the_password(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    target = parse_redis_url(f"redis://bot:{PASSWORD}@127.0.0.1:{closed_port()}/0")
    backend = RedisBackend(target, ready_timeout=1.0, check_interval=0.05, read_block=0.05,
                           max_backoff=0.2)
    stream = backend.submit(submit("j1"))
    with pytest.raises(EngineStartError) as caught:
        await backend.start()
    assert "unreachable" in str(caught.value) and "bot:***@127.0.0.1" in str(caught.value)
    status = backend.status
    assert status.state is EngineState.DOWN and status.ready is None
    await backend.close()
    events = await events_of(stream)
    assert events == [p.Failed("j1", ENGINE_SHUT_DOWN, p.FAIL_SHUTDOWN)]
    shown = "\n".join([str(caught.value), repr(status), repr(backend.target), caplog.text])
    assert "Connection refused" in caplog.text or "connect" in caplog.text.lower()
    assert PASSWORD not in shown and PASSWORD[:8] not in shown


async def test_ping_measures_every_live_worker(backend, redis) -> None:
    a = HandWorker(redis, "a")
    a.start_beating()
    await backend.start()
    answering = asyncio.create_task(a.answer_pings())
    try:
        assert 0 <= await backend.ping(timeout=TIMEOUT) < TIMEOUT
    finally:
        answering.cancel()
        a.stop_beating()
        with contextlib.suppress(asyncio.CancelledError):
            await answering


async def test_a_new_jobs_events_are_read_without_waiting_out_the_readers_block(
        server, redis) -> None:
    # The reader blocks 4 s on the streams it knew; a dispatch must wake it (the events
    # then come in well under the block: this is not a speed test, the margin is wide).
    backend = RedisBackend(client=fakeredis.FakeAsyncRedis(server=server), check_interval=0.05,
                           read_block=4.0)
    a = HandWorker(redis, "a")
    a.start_beating()
    try:
        await backend.start()
        await asyncio.sleep(0.2)  # the reader is in its long block
        stream = backend.submit(submit("j1"))
        _, _, run = await a.claim_one()
        await a.publish("j1", run, p.Started("j1"))
        await a.publish("j1", run, p.Done("j1", b"png", 1, 0.1, 4, 64, 64))
        async with asyncio.timeout(2.0):
            assert [e.TYPE async for e in stream] == ["started", "done"]
    finally:
        a.stop_beating()
        await backend.close()


async def test_free_capacity_counts_jobs_held_in_the_bot_not_only_those_sent(backend, redis) -> None:
    worker = HandWorker(redis, "a", capacity=2)
    worker.start_beating()
    await backend.start()
    await until(lambda: _is(backend.free_capacity() == 2))
    backend.submit(submit("j1"))  # held here until the supervisor sends it

    assert backend.free_capacity() == 1
    worker.stop_beating()


async def test_a_worker_joining_a_ready_backend_is_a_status_change(backend, redis) -> None:
    first, second = HandWorker(redis, "a"), HandWorker(redis, "b")
    first.start_beating()
    await backend.start()
    serial = backend.status.serial
    second.start_beating()

    status = await asyncio.wait_for(backend.wait_status_change(serial), 5.0)

    assert status.state is EngineState.READY and status.ready is not None
    assert status.ready.capacity == 2
    first.stop_beating()
    second.stop_beating()
