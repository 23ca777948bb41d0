"""Telling people their image is done (issue 11, item 1), through SimCord.

Discord notifies a member mentioned in a *new* message's text, where the message's allowed
mentions let it; an edit that adds a mention notifies nobody. So the result and a failure
are new messages that mention the requester, allowing exactly that one user; everything
else the bot writes allows no mention at all. SimCord computes who a message pings
(`ping_user_ids`) from its text and allowed mentions, as Discord does.
"""

from __future__ import annotations

from typing import Any

from bot.jobs import Job, JobStatus
from tests.bot.fake_engine import FakeEngine, World, running_world, text_of


def pinged(world: World, message_id: int) -> list[int]:
    """Whom the bot's message pings (SimCord: mentions in its text its allowed mentions let)."""
    return world.env.backend.get_message(world.channel.id, message_id).ping_user_ids


def posts(world: World) -> list[Any]:
    """The bodies of every message the bot posted in the channel, in order."""
    path = f"/channels/{world.channel.id}/messages"
    return [r.json for r in world.env.http_requests if r.method == "POST" and r.path == path]


def deleted(world: World) -> list[int]:
    prefix = f"/channels/{world.channel.id}/messages/"
    return [int(r.path.removeprefix(prefix)) for r in world.env.http_requests
            if r.method == "DELETE" and r.path.startswith(prefix)]


async def only_job(world: World) -> Job:
    (job,) = await world.services.store.jobs_with_status()
    return job


async def test_the_result_is_a_new_message_that_pings_the_requester() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        job = await only_job(world)
        (message,) = world.bot_messages()
        assert job.status is JobStatus.DONE and message.id == job.result_message_id
        assert message.content == f"<@{world.alice.id}>, your image is ready."
        assert pinged(world, message.id) == [world.alice.id]
        # Pinged when it was posted, not by an edit (Discord notifies only new messages).
        assert world.edits_of(message.id) == []
        assert posts(world)[-1]["allowed_mentions"] == {"parse": [], "users": [world.alice.id]}


async def test_the_progress_message_is_replaced_by_the_result() -> None:
    engine = FakeEngine(blocked=True, hold_at_step=1)
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        (progress,) = world.bot_messages()
        engine.release()
        await world.env.settle()
        job = await only_job(world)
        assert deleted(world) == [progress.id]
        assert [m.id for m in world.bot_messages()] == [job.result_message_id]
        assert job.progress_message_id == job.result_message_id  # the job's one message


async def test_a_failure_is_a_new_message_that_pings_the_requester() -> None:
    async with running_world(FakeEngine(fail_with="the prompt could not be encoded")) as world:
        await world.bob.slash(world.channel, "imagine", prompt="a lighthouse")
        job = await only_job(world)
        (message,) = world.bot_messages()
        assert job.status is JobStatus.FAILED and job.progress_message_id == message.id
        assert message.content == f"<@{world.bob.id}>, your image could not be made."
        assert "could not be encoded" in (message.embeds[0].description or "")
        assert pinged(world, message.id) == [world.bob.id]


async def test_a_reroll_pings_whoever_rerolled_not_the_first_requester() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        (first,) = world.bot_messages()
        await world.bob.click(first, label="Reroll")
        reroll = (await world.services.store.jobs_with_status())[-1]
        assert reroll.status is JobStatus.DONE
        assert pinged(world, reroll.result_message_id) == [world.bob.id]


async def test_waiting_and_running_messages_name_the_requester_without_a_ping() -> None:
    engine = FakeEngine(blocked=True, hold_at_step=1)
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="running")
        await world.alice.slash(world.channel, "imagine", prompt="waiting")
        for message in world.bot_messages():
            assert message.content == f"For <@{world.alice.id}>"
            assert pinged(world, message.id) == []


async def test_a_cancel_is_shown_in_place_and_pings_nobody() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="held")
        await world.alice.slash(world.channel, "imagine", prompt="changed my mind")
        waiting = (await world.services.store.jobs_with_status())[-1]
        message = next(m for m in world.bot_messages() if m.id == waiting.progress_message_id)
        await world.mod.click(message, label="Cancel")
        cancelled = next(m for m in world.bot_messages() if m.id == waiting.progress_message_id)
        assert "Cancelled" in (cancelled.embeds[0].description or "")
        assert pinged(world, cancelled.id) == []


async def test_a_result_that_cannot_be_posted_is_shown_in_the_progress_message() -> None:
    engine = FakeEngine(blocked=True, hold_at_step=1)
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        (progress,) = world.bot_messages()
        world.env.inject_error("POST", f"/channels/{world.channel.id}/messages", status=500, times=None)
        engine.release()
        await world.env.settle()
        job = await only_job(world)
        assert job.status is JobStatus.DONE and job.result_message_id == progress.id
        (message,) = world.bot_messages()
        assert message.attachments[0].filename == f"{job.id}.png"


async def test_a_result_whose_post_and_edit_both_fail_is_posted_on_a_second_try() -> None:
    """Seen in the soak: Discord failed the result's post (500) and then the fallback edit of
    the progress message (429), and the done, charged job showed no picture at all. One
    more round (post, then edit) shows it. Every edit fails here, so that the fallback's is
    sure to (a progress edit would otherwise take a one-time fault first)."""
    engine = FakeEngine(blocked=True, hold_at_step=1)
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        (progress,) = world.bot_messages()
        world.env.inject_error("POST", f"/channels/{world.channel.id}/messages", status=500, times=1)
        world.env.inject_error("PATCH", f"/channels/{world.channel.id}/messages/*", status=429,
                               message="You are being rate limited.", times=None)
        engine.release()
        await world.env.settle()
        job = await only_job(world)
        assert job.status is JobStatus.DONE
        (message,) = world.bot_messages()
        assert message.id == job.result_message_id != progress.id
        assert message.attachments[0].filename == f"{job.id}.png"
        assert pinged(world, message.id) == [world.alice.id]
        world.errors_seen = len(world.env.errors)


async def test_the_result_buttons_work_after_a_restart() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        await world.restart()
        (result,) = world.bot_messages()
        answer = await world.bob.click(result, label="Reroll")
        assert "Queued job" in text_of(answer)
        await world.env.settle()
        jobs = await world.services.store.jobs_with_status()
        assert [j.status for j in jobs] == [JobStatus.DONE, JobStatus.DONE]
