"""The engine dies and cannot start again (a model file removed, say), through SimCord.

Nothing waiting fails: queued jobs keep their place, the job handed to the engine but not
started waits in it, and their messages say "the image engine is down; your image keeps
its place", never why (the reason names the server's files: that is for the log and
`/status`). When the engine is back they show their place again and run. A job that had
started when the engine died fails, uncharged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from bot.jobs import Job, JobStatus
from bot.render import ENGINE_DOWN_TEXT
from tests.bot.fake_engine import START_ERROR, FakeEngine, World, running_world, text_of

#: Bits of the engine's error that must never reach a user (see `START_ERROR`).
SERVER_DETAILS = ("/srv", "tiny.ckpt")


async def job_now(world: World, job: Job) -> Job:
    stored = await world.services.store.get_job(job.id)
    assert stored is not None
    return stored


def shown(world: World, job: Job) -> str:
    """What the job's channel message says now (its embed's description)."""
    message = next(m for m in world.bot_messages() if m.id == job.progress_message_id)
    return message.embeds[0].description or ""


def engine_down_edits(world: World, job: Job) -> int:
    return sum(ENGINE_DOWN_TEXT in str(body.get("embeds")) for body in world.edits_of(job.progress_message_id))


@dataclass
class Jobs:
    """alice's job computing, bob's next in line, alice's second after it."""

    computing: Job
    next: Job
    later: Job


async def three_jobs(world: World) -> Jobs:
    await world.alice.slash(world.channel, "imagine", prompt="computing")
    await world.bob.slash(world.channel, "imagine", prompt="next")
    await world.alice.slash(world.channel, "imagine", prompt="later")
    computing, next_, later = await world.services.store.jobs_with_status()
    return Jobs(computing, next_, later)


async def engine_dies(world: World) -> Jobs:
    """Three jobs as in `Jobs`, then the engine dies and every restart fails."""
    jobs = await three_jobs(world)
    world.engine.go_down()
    await world.catch_up()
    return jobs


# --- the job that had started -------------------------------------------------------------


async def test_a_started_job_fails_uncharged_when_the_engine_dies() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        jobs = await engine_dies(world)

        computing = await job_now(world, jobs.computing)
        assert computing.status is JobStatus.FAILED
        assert "not charged" in shown(world, computing)
        assert (await world.services.quotas.check(world.guild.id, world.alice.id)).used == 1  # "later" only


# --- the jobs that wait ----------------------------------------------------------------------


async def test_waiting_jobs_are_not_failed_and_keep_their_place_while_the_engine_is_down() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        jobs = await engine_dies(world)

        # "next" was handed to the engine, which holds it until it is back; "later" is
        # still first in the queue.
        assert (await job_now(world, jobs.next)).status is JobStatus.RUNNING
        assert list(world.services.running) == [jobs.next.id]
        assert (await job_now(world, jobs.later)).status is JobStatus.QUEUED
        assert world.services.scheduler.position(jobs.later.id) == 1


async def test_waiting_jobs_say_the_engine_is_down_without_the_reason() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        jobs = await engine_dies(world)

        for job in (jobs.next, jobs.later):
            text = shown(world, job)
            assert ENGINE_DOWN_TEXT in text
            assert not any(detail in text for detail in SERVER_DETAILS)


async def test_a_job_queued_while_the_engine_is_down_says_so_too() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        await engine_dies(world)

        await world.bob.slash(world.channel, "imagine", prompt="late")
        await world.catch_up()
        late = (await world.services.store.jobs_with_status())[-1]
        assert ENGINE_DOWN_TEXT in shown(world, late)


async def test_the_answer_to_a_job_queued_while_the_engine_is_down_promises_no_time() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        await engine_dies(world)

        answer = text_of(await world.bob.slash(world.channel, "imagine", prompt="late"))
        assert "Queued job" in answer and "the image engine is down" in answer
        assert "keeps its place" in answer and "ready in" not in answer


async def test_a_restart_that_fails_again_edits_no_message() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        jobs = await engine_dies(world)
        edits = len(world.edits_of(jobs.later.progress_message_id))

        world.engine.go_down()  # another death, another failed restart
        await world.catch_up()

        assert len(world.edits_of(jobs.later.progress_message_id)) == edits
        assert engine_down_edits(world, jobs.later) == 1


async def test_a_job_waiting_for_the_engine_can_be_cancelled() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        jobs = await engine_dies(world)
        message = next(m for m in world.bot_messages() if m.id == jobs.next.progress_message_id)

        await world.bob.click(message, label="Cancel")
        await world.env.settle()

        assert (await job_now(world, jobs.next)).status is JobStatus.CANCELLED
        assert list(world.services.running) == [jobs.later.id]  # the next one waits now


# --- the engine is back ----------------------------------------------------------------------


async def test_when_the_engine_is_back_waiting_jobs_show_their_place_again() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        jobs = await engine_dies(world)

        world.engine.come_back()  # still blocked: "next" starts and holds, "later" waits
        await world.catch_up()

        assert "Starting" in shown(world, jobs.next)
        assert "Waiting in the queue (#1)" in shown(world, jobs.later)


async def test_when_the_engine_is_back_waiting_jobs_run_in_their_order() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        jobs = await engine_dies(world)

        world.engine.come_back()
        world.engine.release()
        await world.env.settle()

        assert world.engine.jobs_received == [jobs.computing.id, jobs.next.id, jobs.later.id]
        for job in (jobs.next, jobs.later):
            assert (await job_now(world, job)).status is JobStatus.DONE


# --- the operator ----------------------------------------------------------------------------


async def test_the_log_says_the_engine_is_down_and_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    async with running_world(FakeEngine(blocked=True)) as world:
        await engine_dies(world)

    down = [r for r in caplog.records if "engine is down" in r.getMessage()]
    assert down and START_ERROR in down[0].getMessage()
    assert down[0].levelno == logging.ERROR
