"""Issue 11 item 6: `/jobs` (your recent and waiting jobs here) and `/cancel [job]`."""

from __future__ import annotations

from typing import Any

import discord
import pytest

from bot.jobs import JobStatus
from bot.render import JOBS_LIMIT
from tests.bot.fake_engine import FakeEngine, World, running_world, text_of


async def jobs(world: World):
    return await world.services.store.jobs_with_status()


def listing(result: Any) -> tuple[str, list[str]]:
    """(the /jobs embed's text, its button labels); fails unless private."""
    assert result.ephemeral
    response = result.response
    (embed,) = response.embeds
    labels = [c["label"] for row in response.components for c in row["components"]]
    return embed.description, labels


def link(world: World, message_id: int) -> str:
    return f"https://discord.com/channels/{world.guild.id}/{world.channel.id}/{message_id}"


async def a_running_and_a_waiting_job(world: World) -> tuple[Any, Any]:
    """alice: one job running (held by the engine) and one waiting behind it."""
    world.engine.block()
    await world.alice.slash(world.channel, "imagine", prompt="running one")
    await world.alice.slash(world.channel, "imagine", prompt="waiting one")
    running, waiting = (await jobs(world))[-2:]
    assert (running.status, waiting.status) == (JobStatus.RUNNING, JobStatus.QUEUED)
    return running, waiting


def cleaner(world: World) -> Any:
    """A member who may delete other people's messages (Manage Messages)."""
    role = world.guild.create_role("cleaners", permissions=discord.Permissions(manage_messages=True))
    return world.guild.add_member(world.env.create_user("carol"), roles=[role])


# --- /jobs ---------------------------------------------------------------------------------


async def test_jobs_lists_status_prompt_and_a_link_for_each_of_my_jobs() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a *bold* @everyone cat")
        (done,) = await jobs(world)
        running, waiting = await a_running_and_a_waiting_job(world)
        text, labels = listing(await world.alice.slash(world.channel, "jobs"))
        lines = text.splitlines()
        assert [line.split(" · ")[0] for line in lines] == [f"`{j.id}`" for j in (waiting, running, done)]
        assert "**waiting (#1)**" in lines[0] and "**running" in lines[1] and "**done" in lines[2]
        assert link(world, waiting.progress_message_id) in lines[0]
        assert link(world, done.result_message_id) in lines[2]
        # The prompt as text: Markdown shown, nobody pinged.
        assert "\\*bold\\*" in lines[2] and "@everyone" not in lines[2].replace("@\u200beveryone", "")
        assert labels == [f"Cancel {waiting.id}", f"Cancel {running.id}"]


async def test_jobs_shows_only_my_jobs() -> None:
    async with running_world() as world:
        await world.bob.slash(world.channel, "imagine", prompt="bob's")
        text, labels = listing(await world.alice.slash(world.channel, "jobs"))
        assert "no jobs here yet" in text and labels == []


async def test_jobs_caps_the_list_and_says_how_many_more() -> None:
    async with running_world() as world:
        for n in range(JOBS_LIMIT + 2):
            await world.alice.slash(world.channel, "imagine", prompt=f"image {n}")
        text, _ = listing(await world.alice.slash(world.channel, "jobs"))
        lines = text.splitlines()
        assert len(lines) == JOBS_LIMIT + 1 and lines[-1] == "… and 2 more."
        assert "image 11" in lines[0]  # newest first


async def test_cancel_button_in_jobs_cancels_that_job() -> None:
    async with running_world() as world:
        _, waiting = await a_running_and_a_waiting_job(world)
        shown = await world.alice.slash(world.channel, "jobs")
        result = await world.alice.click(shown.response.message, label=f"Cancel {waiting.id}")
        assert "Cancelled job" in text_of(result)
        assert (await world.services.store.get_job(waiting.id)).status is JobStatus.CANCELLED


# --- /cancel -------------------------------------------------------------------------------


async def test_cancel_without_a_job_cancels_my_newest_unfinished_job() -> None:
    async with running_world() as world:
        running, waiting = await a_running_and_a_waiting_job(world)
        first = await world.alice.slash(world.channel, "cancel")
        assert first.ephemeral and f"Cancelled job `{waiting.id}` before it started" in text_of(first)
        second = await world.alice.slash(world.channel, "cancel")
        assert f"Stopping job `{running.id}`" in text_of(second)
        await world.env.settle()
        assert [j.status for j in await jobs(world)] == [JobStatus.CANCELLED] * 2


async def test_cancel_a_named_job_as_typed() -> None:
    async with running_world() as world:
        running, _ = await a_running_and_a_waiting_job(world)
        result = await world.alice.slash(world.channel, "cancel", job=f" {running.id.upper()} ")
        assert f"Stopping job `{running.id}`" in text_of(result)


async def test_cancel_with_nothing_to_cancel_says_so() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="done already")
        result = await world.alice.slash(world.channel, "cancel")
        assert result.ephemeral and "no waiting or running job" in text_of(result)


async def test_cancel_of_a_finished_or_unknown_job_is_refused() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="done already")
        (done,) = await jobs(world)
        assert "already ended" in text_of(await world.alice.slash(world.channel, "cancel", job=done.id))
        assert "I have no job" in text_of(await world.alice.slash(world.channel, "cancel", job="nosuchjob"))


async def test_only_the_owner_or_an_admin_may_cancel_a_job_by_id() -> None:
    async with running_world() as world:
        running, _ = await a_running_and_a_waiting_job(world)
        refused = await world.bob.slash(world.channel, "cancel", job=running.id)
        assert "belongs to" in text_of(refused) and "Manage Server" in text_of(refused)
        assert (await world.services.store.get_job(running.id)).status is JobStatus.RUNNING
        allowed = await world.mod.slash(world.channel, "cancel", job=running.id)
        assert "Stopping job" in text_of(allowed)
        await world.env.settle()
        assert (await world.services.store.get_job(running.id)).status is JobStatus.CANCELLED


async def test_cancel_autocompletes_my_unfinished_jobs_and_an_admin_sees_everyones() -> None:
    async with running_world() as world:
        running, waiting = await a_running_and_a_waiting_job(world)
        await world.bob.slash(world.channel, "imagine", prompt="bob waits")
        mine = await world.alice.autocomplete(world.channel, "cancel", "job", "")
        assert [c["value"] for c in mine] == [waiting.id, running.id]
        assert mine[0]["name"] == f"{waiting.id} · waiting · waiting one"
        assert [c["value"] for c in await world.alice.autocomplete(
            world.channel, "cancel", "job", "runn")] == [running.id]
        assert len(await world.mod.autocomplete(world.channel, "cancel", "job", "")) == 3


# --- a deleted job message -------------------------------------------------------------------


async def test_cancel_works_when_the_waiting_jobs_message_was_deleted() -> None:
    async with running_world() as world:
        _, waiting = await a_running_and_a_waiting_job(world)
        message = next(m for m in world.bot_messages() if m.id == waiting.progress_message_id)
        await cleaner(world).delete(message)
        result = await world.alice.slash(world.channel, "cancel", job=waiting.id)
        assert "Cancelled job" in text_of(result)
        assert (await world.services.store.get_job(waiting.id)).status is JobStatus.CANCELLED
        # Nothing is posted in its place: whoever cancelled was answered.
        assert waiting.progress_message_id not in [m.id for m in world.bot_messages()]
        assert len(world.bot_messages()) == 1


@pytest.mark.parametrize("then", ["cancel", "finish"])
async def test_a_running_job_whose_message_was_deleted_is_not_edited_again(then: str) -> None:
    engine = FakeEngine(blocked=True, progress_steps=6, hold_at_step=1)
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="deleted")
        (job,) = await jobs(world)
        (message,) = world.bot_messages()
        edits_before = len(world.edits_of(message.id))
        await cleaner(world).delete(message)
        if then == "cancel":
            assert "Stopping job" in text_of(await world.alice.slash(world.channel, "cancel"))
        engine.release()
        await world.env.settle()
        job = await world.services.store.get_job(job.id)
        # Its five remaining progress edits and its end: one 404, then no more tries.
        assert len(world.edits_of(message.id)) == edits_before + 1
        if then == "cancel":
            assert job.status is JobStatus.CANCELLED and world.bot_messages() == []
        else:  # the result matters: posted anew
            assert job.status is JobStatus.DONE
            (posted,) = world.bot_messages()
            assert posted.id == job.result_message_id and posted.attachments


async def test_a_deleted_job_message_is_forgotten_once_the_job_has_ended() -> None:
    """What the bot remembers of deleted messages (so as not to edit them again) lasts as long
    as their jobs, not as long as the bot."""
    async with running_world(FakeEngine(blocked=True)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="deleted")
        (message,) = world.bot_messages()
        await cleaner(world).delete(message)
        await world.alice.slash(world.channel, "cancel")
        world.engine.release()
        await world.env.settle()
        messages = world.services.messages
        assert messages._deleted == set() and messages._gone == set()


def test_an_autocomplete_choice_fits_discords_limit_whatever_the_prompt() -> None:
    from bot.jobs import Job
    from bot.render import CHOICE_NAME_LIMIT, job_choice_name

    job = Job(id="k3q7xm2a", guild_id=1, channel_id=2, user_id=3, kind="imagine",
              prompt="a very   long\nprompt " * 40, iterations=10)
    name = job_choice_name(job)
    assert len(name) <= CHOICE_NAME_LIMIT and name.endswith("…") and "\n" not in name
    assert name.startswith("k3q7xm2a · waiting · a very long prompt")


async def test_jobs_says_starting_for_a_job_the_engine_holds_before_it_starts() -> None:
    async with running_world(FakeEngine(capacity=2, blocked=True)) as world:
        await world.bob.slash(world.channel, "imagine", prompt="square")
        await world.alice.slash(world.channel, "imagine", prompt="wide", size="wide")  # waits for the square

        text, _ = listing(await world.alice.slash(world.channel, "jobs"))

        assert "**starting**" in text and "running" not in text
