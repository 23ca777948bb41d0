"""Issue 11 item 5: Retry on failures that were not the user's doing.

An engine crash, running out of memory and an interruption by a restart get Retry (out of
memory also "Retry smaller" at the suggested size); failures caused by bad input get none.
A retry is a new job for the clicker with the same request, charged like Reroll, and the
buttons work after a restart. (The real engine's crash path: tests/bot/test_e2e.py.)
"""

from __future__ import annotations

from typing import Any

import pytest

from bot.jobs import JobKind, JobStatus
from bot.render import ENGINE_CRASHED
from bot.retry import RESUME_WITHIN
from engine import protocol
from engine.limits import out_of_memory_advice, smaller_size
from bot.views import failure_view
from tests.bot.fake_engine import FakeEngine, World, png_file, running_world, text_of


async def jobs(world: World):
    return await world.services.store.jobs_with_status()


def labels(message: Any) -> list[str]:
    return [c.label for row in message.components for c in row.children]


def message_of(world: World, message_id: int) -> Any:
    return next(m for m in world.bot_messages() if m.id == message_id)


def failing(reason: str, message: str = "it failed") -> FakeEngine:
    return FakeEngine(fail_with=message, fail_reason=reason)


async def test_a_crashed_job_gets_retry_which_queues_the_same_request_for_the_clicker() -> None:
    engine = failing(protocol.FAIL_CRASH, ENGINE_CRASHED)
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a fox + snow:2", seed=7,
                                iterations=12, size="landscape")
        (failed,) = await jobs(world)
        assert (failed.status, failed.failure) == (JobStatus.FAILED, protocol.FAIL_CRASH)
        message = message_of(world, failed.progress_message_id)
        assert labels(message) == ["Retry"]

        engine.fail_with = None
        result = await world.bob.click(message, label="Retry")
        assert result.ephemeral and "Queued job" in text_of(result)
        original, retried = engine.submits
        assert retried.prompts == original.prompts
        assert (retried.width, retried.height, retried.iterations, retried.seed) == (
            original.width, original.height, 12, 7)
        job = (await jobs(world))[-1]
        assert (job.user_id, job.kind, job.status) == (world.bob.id, JobKind.IMAGINE, JobStatus.DONE)
        assert job.params["retry_of"] == failed.id


async def test_a_retried_edit_starts_from_the_same_image_and_replace() -> None:
    engine = failing(protocol.FAIL_CRASH, ENGINE_CRASHED)
    async with running_world(engine) as world:
        name, data = png_file()
        await world.alice.slash(world.channel, "edit", prompt="withered", image=(name, data),
                                replace="flowers")
        (failed,) = await jobs(world)
        engine.fail_with = None
        await world.alice.click(message_of(world, failed.progress_message_id), label="Retry")
        retried = engine.submits[-1]
        assert (retried.init_image, retried.replace) == (data, "flowers")
        assert (await jobs(world))[-1].input_path == failed.input_path


async def test_out_of_memory_also_offers_retry_smaller_at_the_suggested_size() -> None:
    engine = failing(protocol.FAIL_OUT_OF_MEMORY, out_of_memory_advice((128, 128)))
    async with running_world(engine, default_size=(128, 128)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a huge castle")
        (failed,) = await jobs(world)
        message = message_of(world, failed.progress_message_id)
        small = smaller_size((128, 128))  # what the engine's advice suggests
        assert labels(message) == ["Retry", f"Retry smaller ({small[0]}×{small[1]})"]
        assert f"{small[0]}x{small[1]}" in message.embeds[0].description  # the advice agrees

        engine.fail_with = None
        await world.alice.click(message, label=f"Retry smaller ({small[0]}×{small[1]})")
        retried = engine.submits[-1]
        assert (retried.width, retried.height) == small
        assert (await jobs(world))[-1].status is JobStatus.DONE


async def test_out_of_memory_at_the_smallest_size_offers_only_retry() -> None:
    engine = failing(protocol.FAIL_OUT_OF_MEMORY, out_of_memory_advice((64, 64)))
    async with running_world(engine, default_size=(64, 64)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a castle")
        (failed,) = await jobs(world)
        assert labels(message_of(world, failed.progress_message_id)) == ["Retry"]


@pytest.mark.parametrize("reason", [protocol.FAIL_PROMPT, protocol.FAIL_INPUT_IMAGE,
                                    protocol.FAIL_REJECTED, protocol.FAIL_ENGINE,
                                    protocol.FAIL_INTERNAL])
async def test_failures_caused_by_the_request_get_no_retry(reason: str) -> None:
    async with running_world(failing(reason)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a castle")
        (failed,) = await jobs(world)
        assert (failed.status, failed.failure) == (JobStatus.FAILED, reason)
        message = message_of(world, failed.progress_message_id)
        assert "it failed" in message.embeds[0].description and labels(message) == []


async def test_retry_works_after_a_restart() -> None:
    async with running_world(failing(protocol.FAIL_CRASH, ENGINE_CRASHED)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="after the restart")
        (failed,) = await jobs(world)
        new_engine = await world.restart()
        result = await world.alice.click(message_of(world, failed.progress_message_id), label="Retry")
        assert "Queued job" in text_of(result)
        assert [s.prompts[0].text for s in new_engine.submits] == ["after the restart"]
        assert (await jobs(world))[-1].status is JobStatus.DONE


async def test_retry_is_charged_to_the_clickers_quota() -> None:
    engine = failing(protocol.FAIL_CRASH, ENGINE_CRASHED)
    async with running_world(engine, default_daily_quota=1) as world:
        await world.alice.slash(world.channel, "imagine", prompt="crashes")
        (failed,) = await jobs(world)
        engine.fail_with = None
        await world.bob.slash(world.channel, "imagine", prompt="bob's one image")
        result = await world.bob.click(message_of(world, failed.progress_message_id), label="Retry")
        assert result.ephemeral and "You have used 1 of 1" in text_of(result)
        assert len(engine.submits) == 2
        # The crash itself cost alice nothing, so her retry goes through.
        assert "Queued job" in text_of(
            await world.alice.click(message_of(world, failed.progress_message_id), label="Retry"))


async def test_a_job_asked_a_day_before_a_restart_is_not_resumed_but_offered_retry() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="long ago")
        await world.bob.slash(world.channel, "imagine", prompt="waiting long")
        await world.alice.slash(world.channel, "imagine", prompt="recent")
        old_running, old_waiting, recent = await jobs(world)
        store = world.services.store
        for job in (old_running, old_waiting):
            await store.update_job(job.id, created_at=store.clock() - RESUME_WITHIN - 60)

        new_engine = await world.restart()
        await world.env.settle()
        store = world.services.store  # the restarted bot's
        assert [s.prompts[0].text for s in new_engine.submits] == ["recent"]
        for job in (old_running, old_waiting):
            ended = await store.get_job(job.id)
            assert (ended.status, ended.failure) == (JobStatus.FAILED, protocol.FAIL_SHUTDOWN)
            # The failure was posted as a new message (to notify): the job's message now.
            message = message_of(world, ended.progress_message_id)
            assert labels(message) == ["Retry"] and "not resumed" in message.embeds[0].description

        ended = await store.get_job(old_running.id)
        await world.alice.click(message_of(world, ended.progress_message_id), label="Retry")
        assert [s.prompts[0].text for s in new_engine.submits] == ["recent", "long ago"]


async def test_retry_on_a_job_that_cannot_be_retried_is_refused() -> None:
    # A Retry button can only be on a retryable failure; a crafted or stale click is refused.
    async with running_world(failing(protocol.FAIL_PROMPT)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a castle")
        (failed,) = await jobs(world)
        failed.failure = protocol.FAIL_CRASH  # the button as a crash would have shown it
        view = failure_view(world.settings, failed)
        assert view is not None
        message = message_of(world, failed.progress_message_id)
        await message.edit(view=view)
        result = await world.alice.click(message_of(world, failed.progress_message_id), label="Retry")
        assert result.ephemeral and "can't be retried" in text_of(result)
        assert len(await jobs(world)) == 1
