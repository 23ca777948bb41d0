"""End to end with remote workers: SimCord Discord -> the real bot with ENGINE_BACKEND=redis
(the engine `build_engine` picks for those settings) -> a real redis-server on 127.0.0.1 ->
two worker processes on the fake runner (`python -m engine worker --fake --redis`) -> back
to the channel.

Needs a redis-server: skipped where none is found, failed in CI (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.jobs import JobStatus
from bot.redis_backend import RedisBackend
from bot.services import build_engine
from engine.redis_url import parse_redis_url
from tests.bot.fake_engine import World, fast_settings, running_world, text_of
from tests.bot.test_e2e import E2E_SETTINGS, JOB_TIMEOUT, RealEngine, computing_at_once, ended
from tests.redis_server import LocalRedis, Workers


@pytest.fixture
async def remote_engine(redis_server: LocalRedis, workers: Workers) -> AsyncIterator[RealEngine]:
    """The bot's engine for ENGINE_BACKEND=redis, started (outside the bot's tasks, as the
    sandbox does) once both workers are live."""
    # 40 iterations of 0.05 s: 2 s a job, long enough to see two computing at once.
    workers.start("w1", seconds_per_iteration=0.05)
    workers.start("w2", seconds_per_iteration=0.05)
    settings = redis_settings(redis_server)
    engine = build_engine(fast_settings(**settings))
    assert isinstance(engine, RedisBackend)
    try:
        await engine.start()
        async with asyncio.timeout(JOB_TIMEOUT):
            while engine.free_capacity() < 2:
                await asyncio.sleep(0.05)
        yield RealEngine(engine)
    except BaseException:
        print(workers.logs())
        raise
    finally:
        await engine.close()


def redis_settings(server: LocalRedis) -> dict[str, object]:
    """The settings an operator writes for remote workers on the fake runner (whose Ready
    names its models "fake": the bot expects its own VQGAN_MODEL and CLIP_MODEL)."""
    return {**E2E_SETTINGS, "default_iterations": 40, "engine_backend": "redis",
            "redis_url": parse_redis_url(server.url), "vqgan_model": "fake", "clip_model": "fake"}


async def status_fields(world: World) -> dict[str, str]:
    result = await world.mod.slash(world.channel, "status")
    assert result.response is not None
    return {field.name: field.value for field in result.response.embeds[0].fields}


async def test_images_run_on_two_remote_workers_at_once_and_status_lists_both(
        redis_server: LocalRedis, remote_engine: RealEngine, workers: Workers) -> None:
    inner = remote_engine.inner
    assert isinstance(inner, RedisBackend)
    try:
        async with running_world(remote_engine, **redis_settings(redis_server)) as world:  # type: ignore[arg-type]
            for member in (world.alice, world.bob, world.mod):
                result = await member.slash(world.channel, "imagine", prompt=f"by {member.name}")
                assert "Queued job" in text_of(result)
            alice, bob, mod = await world.services.store.jobs_with_status()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + JOB_TIMEOUT  # for this wait and the /status one below
            # Room for two (one per worker): two compute together, the third waits its turn.
            await computing_at_once(world, 2, "two jobs never computed at once")
            running = world.services.running
            assert list(running) == [alice.id, bob.id]
            assert world.services.scheduler.position(mod.id) == 1

            # /status names both; each shows its job once its heartbeat (every 0.2 s) says so.
            while True:
                lines = (await status_fields(world))["Workers (2)"].splitlines()
                assert [line.split(" ")[0] for line in lines] == ["`w1`", "`w2`"]
                assert all("`fake`" in line for line in lines), lines
                if all("busy 1/1" in line for line in lines):
                    break
                assert loop.time() < deadline, lines
                await asyncio.sleep(0.05)

            for job in (await ended(world, alice.id), await ended(world, bob.id),
                        await ended(world, mod.id)):
                assert job.status is JobStatus.DONE, job.error
                (result,) = [m for m in world.bot_messages() if m.id == job.result_message_id]
                assert result.content.startswith(f"<@{job.user_id}>") and result.attachments
            # Each worker finished at least one of them (its heartbeat counts them).
            async with asyncio.timeout(JOB_TIMEOUT):
                while sum(w.jobs_done for w in inner.workers) < 3:
                    await asyncio.sleep(0.05)
            assert all(w.jobs_done >= 1 for w in inner.workers), inner.workers
    except BaseException:
        print(workers.logs())
        raise
