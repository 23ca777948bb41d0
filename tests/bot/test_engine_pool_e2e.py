"""End to end with ENGINE_DEVICES: SimCord Discord -> the real bot -> an `EnginePool` of two
real engine processes (`python -m engine worker --fake`, standing in for cuda:0 and cuda:1)
-> back to the channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.engine_client import EngineClient
from bot.engine_pool import EnginePool
from bot.jobs import JobStatus
from tests.bot.fake_engine import World, running_world, text_of
from tests.bot.test_e2e import E2E_SETTINGS, JOB_TIMEOUT, RealEngine, computing_at_once, ended
from tests.bot.test_engine_client import fake_command

DEVICES = ("cuda:0", "cuda:1")


@pytest.fixture
async def pooled_engine() -> AsyncIterator[RealEngine]:
    """Both engines started outside the bot's tasks (as the sandbox starts its engine)."""
    # 40 iterations of 0.05 s: 2 s a job, long enough to see two computing at once.
    pool = EnginePool({device: EngineClient(fake_command(0.05), name=device)
                       for device in DEVICES})
    try:
        await pool.start()
        async with asyncio.timeout(JOB_TIMEOUT):
            while pool.free_capacity() < 2:
                await pool.wait_status_change(pool.status.serial)
        yield RealEngine(pool)
    finally:
        await pool.close()


async def status_fields(world: World) -> dict[str, str]:
    result = await world.mod.slash(world.channel, "status")
    assert result.response is not None
    return {field.name: field.value for field in result.response.embeds[0].fields}


async def test_two_members_jobs_run_at_once_on_two_engines_and_status_lists_both(
        pooled_engine: RealEngine) -> None:
    pool = pooled_engine.inner
    assert isinstance(pool, EnginePool)
    async with running_world(pooled_engine, **{**E2E_SETTINGS, "default_iterations": 40}) as world:  # type: ignore[arg-type]
        for member in (world.alice, world.bob):
            result = await member.slash(world.channel, "imagine", prompt=f"by {member.name}")
            assert "Queued job" in text_of(result)
        alice, bob = await world.services.store.jobs_with_status()
        await computing_at_once(world, 2, "two jobs never computed at once")
        assert {pool.holder(alice.id), pool.holder(bob.id)} == set(DEVICES)

        lines = (await status_fields(world))["Workers (2)"].splitlines()
        assert [line.split(" ")[0] for line in lines] == ["`cuda:0`", "`cuda:1`"]

        for job in (await ended(world, alice.id), await ended(world, bob.id)):
            assert job.status is JobStatus.DONE, job.error
