"""End to end: SimCord Discord -> the real bot -> a real engine worker process on the tiny
random models (tests/conftest.py `tiny_models`) -> back to the channel.

Slow-ish (the worker imports torch and loads the models once per test), so only the
journeys that matter: `/imagine` and `/edit` with an attachment, a worker killed mid-job
(crash -> Retry -> the retry succeeds), a short job's first preview, and a queue whose
waiting messages follow it. And on the worker's fake runner (`--fake`, no torch), which
serves several jobs at once like the real one (`--batch 3`): three members' jobs computing
together, one cancelled while the others finish; a worker killed with two jobs computing.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from bot.engine_client import EngineClient, worker_command
from bot.jobs import Job, JobStatus
from engine import protocol
from bot.sandbox import ExternallyWaited
from bot.pacing import QUEUE_EDIT_WINDOW
from tests.bot.fake_engine import World, png_bytes, running_world, text_of
from tests.bot.test_queue_notes import assert_no_place_shown_twice

#: Seconds a tiny job may take on a busy CPU before the test gives up.
JOB_TIMEOUT = 120


class RealEngine(ExternallyWaited):
    """The real engine client as the sandbox declares it to SimCord (`bot.sandbox`), and
    the fake engine's `release` that `running_world`'s teardown calls: nothing to release."""

    def release(self) -> None:
        pass


def tiny_worker_command(tiny_models: Any) -> list[str]:
    """The bot's own command line for the worker (`python -m engine worker ...`), on the
    tiny models, on the CPU."""
    return worker_command(vqgan=tiny_models.vqgan_name, clip=tiny_models.clip_name,
                          model_dir=tiny_models.directory, device="cpu")


@pytest.fixture
async def real_engine(tiny_models: Any) -> AsyncIterator[RealEngine]:
    # One CPU thread: the tiny models gain nothing from more, and on a busy machine torch's
    # thread pool spinning against other processes made a 10-iteration job take 15 s, not 1.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    client = EngineClient(tiny_worker_command(tiny_models), env=environment, ready_timeout=120)
    await client.start()
    try:
        yield RealEngine(client)
    finally:
        await client.close()


async def finished(world: World) -> Job:
    """Wait (in real time: the work happens in the engine process) for the only job to end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOB_TIMEOUT
    while True:
        (job,) = await world.services.store.jobs_with_status()
        if job.status.is_finished:
            await world.env.settle()
            return job
        assert loop.time() < deadline, f"job still {job.status} after {JOB_TIMEOUT} s"
        await asyncio.sleep(0.1)


def preview_edit_count(world: World, job_id: str) -> int:
    return sum(1 for body in world.job_edits(job_id)
               if any(a.get("filename", "").endswith(".jpg") for a in body.get("attachments") or []))


E2E_SETTINGS = dict(default_size=(64, 64), max_size=(64, 64), default_iterations=10,
                    default_cutn=4, max_cutn=4, progress_interval=0.0)


async def test_imagine_end_to_end_with_a_real_engine(real_engine: RealEngine) -> None:
    async with running_world(real_engine, **E2E_SETTINGS) as world:  # type: ignore[arg-type]
        result = await world.alice.slash(world.channel, "imagine", prompt="a red apple + a blue sky")
        assert "Queued job" in text_of(result)
        job = await finished(world)
        assert job.status is JobStatus.DONE, job.error
        (message,) = world.bot_messages()
        assert preview_edit_count(world, job.id) >= 2
        (attachment,) = message.attachments
        image = Image.open(io.BytesIO(await attachment.read()))
        assert (image.format, image.size) == ("PNG", (64, 64))
        assert [c.label for row in message.components for c in row.children] == [
            "Reroll", "Vary", "Edit", "Info", "Timelapse"]
        assert job.seed is not None and job.iterations == 10


async def test_edit_with_an_attachment_end_to_end_with_a_real_engine(real_engine: RealEngine) -> None:
    async with running_world(real_engine, **E2E_SETTINGS) as world:  # type: ignore[arg-type]
        source = png_bytes(64, 64, (250, 200, 30))
        result = await world.alice.slash(world.channel, "edit", prompt="a green field",
                                         image=("source.png", source))
        assert "Queued job" in text_of(result)
        job = await finished(world)
        assert job.status is JobStatus.DONE, job.error
        assert (world.services.results_dir / job.input_path).read_bytes() == source
        (message,) = world.bot_messages()
        image = Image.open(io.BytesIO(await message.attachments[0].read()))
        assert image.size == (64, 64)


async def ended(world: World, job_id: str) -> Job:
    """Wait (in real time) for one job to end; the job as stored once the bot has settled
    (its result or failure posted)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOB_TIMEOUT
    while True:
        job = await world.services.store.get_job(job_id)
        assert job is not None
        if job.status.is_finished:
            await world.env.settle()
            settled = await world.services.store.get_job(job_id)
            assert settled is not None
            return settled
        assert loop.time() < deadline, f"job still {job.status} after {JOB_TIMEOUT} s"
        await asyncio.sleep(0.05)


async def test_a_job_whose_worker_is_killed_gets_retry_and_the_retry_succeeds(
    real_engine: RealEngine,
) -> None:
    # 40 iterations, a progress event each: time enough to kill the worker mid-job.
    async with running_world(real_engine, **{**E2E_SETTINGS, "default_iterations": 40}) as world:  # type: ignore[arg-type]
        await world.alice.slash(world.channel, "imagine", prompt="a red apple")
        (job,) = await world.services.store.jobs_with_status()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + JOB_TIMEOUT
        while job.id not in world.services.running or world.services.running[job.id].iteration < 1:
            assert loop.time() < deadline, "the job never reported progress"
            await asyncio.sleep(0.01)
        ready = real_engine.ready_info
        assert ready is not None
        os.kill(ready.pid, signal.SIGKILL)

        crashed = await ended(world, job.id)
        assert (crashed.status, crashed.failure) == (JobStatus.FAILED, protocol.FAIL_CRASH)
        (message,) = world.bot_messages()
        assert [c.label for row in message.components for c in row.children] == ["Retry"]

        result = await world.alice.click(message, label="Retry")
        assert "Queued job" in text_of(result)
        retry = (await world.services.store.jobs_with_status())[-1]
        done = await ended(world, retry.id)
        assert done.status is JobStatus.DONE, done.error
        assert done.params["retry_of"] == job.id and done.iterations == 40
        assert real_engine.ready_info is not None and real_engine.ready_info.pid != ready.pid


async def computing_at_once(world: World, count: int, what: str) -> None:
    """Wait (in real time) until `count` jobs are running and each has computed at least
    one iteration: they compute together. `what` is the failure's message."""
    running = world.services.running
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOB_TIMEOUT
    while not (len(running) == count and all(job.iteration >= 1 for job in running.values())):
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


async def all_finished(world: World, count: int) -> list[Job]:
    """Wait (in real time) for `count` jobs to end, moving the simulated clock along as the
    sandbox does, so that paced edits of waiting messages go out meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOB_TIMEOUT * count
    while True:
        jobs = await world.services.store.jobs_with_status()
        if len(jobs) == count and all(job.status.is_finished for job in jobs):
            await world.catch_up()
            return jobs
        assert loop.time() < deadline, [job.status for job in jobs]
        await world.env.advance_time(QUEUE_EDIT_WINDOW)
        await asyncio.sleep(0.1)


async def test_a_short_job_shows_its_first_preview_at_once_with_a_real_engine(real_engine: RealEngine) -> None:
    # An hour between progress edits: only the first preview, which goes out at once.
    settings = {**E2E_SETTINGS, "progress_interval": 3600.0}
    async with running_world(real_engine, **settings) as world:  # type: ignore[arg-type]
        await world.alice.slash(world.channel, "imagine", prompt="a red apple")
        job = await finished(world)
        assert job.status is JobStatus.DONE, job.error
        previews = [body for body in world.job_edits(job.id)
                    if any(a.get("filename", "").endswith(".jpg") for a in body.get("attachments") or [])]
        assert len(previews) == 1
        assert "iteration 1/10" in previews[0]["embeds"][0]["description"]


async def test_waiting_messages_follow_the_queue_with_a_real_engine(real_engine: RealEngine) -> None:
    async with running_world(real_engine, **E2E_SETTINGS) as world:  # type: ignore[arg-type]
        for member, prompt in ((world.alice, "first"), (world.bob, "second"), (world.alice, "third")):
            assert "Queued job" in text_of(await member.slash(world.channel, "imagine", prompt=prompt))
        jobs = await all_finished(world, 3)
        assert [job.status for job in jobs] == [JobStatus.DONE] * 3
        _, second, third = jobs
        told = [body["embeds"][0]["description"] for body in world.job_edits(third.id)]
        places = [text.split("(#")[1][0] for text in told if "(#" in text]
        moves = [place for i, place in enumerate(places) if i == 0 or places[i - 1] != place]
        assert moves == ["2", "1"], told  # moved up when "first" ended and "second" began
        assert "Starting" in told[len(places)]
        assert any("(#1)" in body["embeds"][0]["description"] for body in world.job_edits(second.id))
        assert_no_place_shown_twice(world)


@pytest.fixture
async def batching_engine() -> AsyncIterator[RealEngine]:
    """The engine process on its fake runner, three jobs at once: 0.05 s a step."""
    command = [sys.executable, "-m", "engine", "worker", "--fake", "--batch", "3",
               "--fake-seconds-per-iteration", "0.05"]
    client = EngineClient(command, ready_timeout=120)
    await client.start()
    try:
        yield RealEngine(client)
    finally:
        await client.close()


async def test_three_members_jobs_compute_at_once_in_a_batching_engine_and_a_cancel_stops_one(
    batching_engine: RealEngine,
) -> None:
    # 100 steps of 0.05 s: 5 s together, time enough to see all three computing.
    settings = {**E2E_SETTINGS, "default_iterations": 100}
    async with running_world(batching_engine, **settings) as world:  # type: ignore[arg-type]
        assert batching_engine.ready_info is not None and batching_engine.ready_info.capacity == 3
        members = (world.alice, world.bob, world.mod)
        for member in members:
            await member.slash(world.channel, "imagine", prompt=f"by {member.name}")
        alice, bob, mod = await world.services.store.jobs_with_status()
        await computing_at_once(world, 3, "the three jobs never computed at once")
        running = world.services.running
        # All three have progressed and none has ended: they compute together.
        assert all(job.iteration < job.total for job in running.values())

        message = next(m for m in world.bot_messages() if m.id == bob.progress_message_id)
        await world.bob.click(message, label="Cancel")

        cancelled = await ended(world, bob.id)
        assert cancelled.status is JobStatus.CANCELLED
        assert alice.id in running and mod.id in running  # the others go on
        for job in (await ended(world, alice.id), await ended(world, mod.id)):
            assert job.status is JobStatus.DONE, job.error
            (result,) = [m for m in world.bot_messages() if m.id == job.result_message_id]
            assert result.content.startswith(f"<@{job.user_id}>") and result.attachments
            assert job.iterations == 100


async def test_a_batching_engine_killed_with_two_jobs_computing_fails_both_uncharged_and_the_next_runs() -> None:
    command = [sys.executable, "-m", "engine", "worker", "--fake", "--batch", "2",
               "--fake-seconds-per-iteration", "0.05"]
    client = EngineClient(command, ready_timeout=120, restart_delay=0.1)
    await client.start()
    engine = RealEngine(client)
    try:
        settings = {**E2E_SETTINGS, "default_iterations": 100}
        async with running_world(engine, **settings) as world:  # type: ignore[arg-type]
            for member in (world.alice, world.bob, world.mod):
                await member.slash(world.channel, "imagine", prompt=f"by {member.name}")
            alice, bob, mod = await world.services.store.jobs_with_status()
            running = world.services.running
            loop = asyncio.get_running_loop()
            deadline = loop.time() + JOB_TIMEOUT
            while not (len(running) == 2 and all(job.iteration >= 1 for job in running.values())):
                assert loop.time() < deadline, "the two jobs never computed at once"
                await asyncio.sleep(0.01)
            ready = engine.ready_info
            assert ready is not None and list(running) == [alice.id, bob.id]
            os.kill(ready.pid, signal.SIGKILL)

            for job in (await ended(world, alice.id), await ended(world, bob.id)):
                assert (job.status, job.failure) == (JobStatus.FAILED, protocol.FAIL_CRASH)
            for member in (world.alice, world.bob):
                assert (await world.services.quotas.check(world.guild.id, member.id)).used == 0
            third = await ended(world, mod.id)  # waited in the queue, ran on the new worker
            assert third.status is JobStatus.DONE, third.error
            assert engine.ready_info is not None and engine.ready_info.pid != ready.pid
    finally:
        await client.close()
