"""`/queue`, `/usage` and the admin part of `/help`, through SimCord."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import discord
import pytest
import simcord

from bot.app import ImagineBot
from bot.jobs import Job, JobKind
from bot.quotas import WINDOW_SECONDS
from bot.render import HELP_ADMIN_FIELD
from bot.services import RunningJob, Services
from tests.bot.conftest import make_settings, reply

CONFIGURED_DEFAULT = 5
#: A finished job of 400 iterations in 200 s: the bot then estimates 0.5 s per iteration.
SECONDS_PER_ITERATION = 0.5


@pytest.fixture
def simcord_bot() -> ImagineBot:
    return ImagineBot(make_settings(default_daily_quota=CONFIGURED_DEFAULT), cogs=("cogs.info", "cogs.admin"))


@dataclass
class Server:
    env: simcord.Env
    guild: simcord.GuildHandle
    channel: simcord.ChannelHandle
    alice: simcord.MemberActor
    bob: simcord.MemberActor
    admin: simcord.MemberActor
    patrons: simcord.RoleHandle

    @property
    def services(self) -> Services:
        services = self.env.bot.services
        assert services is not None
        return services

    async def add_job(self, member: simcord.MemberActor, prompt: str, iterations: int = 400) -> Job:
        return await self.services.store.add_job(
            guild_id=self.guild.id, channel_id=self.channel.id, user_id=member.id,
            kind=JobKind.IMAGINE, prompt=prompt, iterations=iterations,
        )

    async def queue(self, member: simcord.MemberActor, prompt: str, iterations: int = 400) -> Job:
        """Store a job and put it in the queue, as /imagine does."""
        job = await self.add_job(member, prompt, iterations)
        self.services.scheduler.submit(job)
        return job

    async def finish_one(self, member: simcord.MemberActor, seconds: float = 400 * SECONDS_PER_ITERATION) -> Job:
        """A done job of 400 iterations, which gives the bot its speed estimate."""
        job = await self.add_job(member, "an old one")
        await self.services.store.mark_running(job.id)
        return await self.services.store.mark_done(job.id, result_path="x.png", seed=1, seconds=seconds)


@pytest.fixture
def server(env: simcord.Env) -> Server:
    guild = env.create_guild("art club")
    mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    patrons = guild.create_role("patrons")
    return Server(
        env=env,
        guild=guild,
        channel=guild.create_text_channel("general"),
        alice=guild.add_member(env.create_user("alice")),
        bob=guild.add_member(env.create_user("bob")),
        admin=guild.add_member(env.create_user("admin"), roles=[mods]),
        patrons=patrons,
    )


def timestamps(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"<t:(\d+):R>", text)]


# --- /queue --------------------------------------------------------------------------------


async def test_queue_when_empty_says_a_new_image_starts_right_away(server: Server) -> None:
    text = reply(await server.alice.slash(server.channel, "queue"))

    assert "queue is empty" in text and "nothing is running" in text


async def test_queue_shows_my_job_at_position_2_behind_another_members(server: Server) -> None:
    await server.finish_one(server.bob)
    await server.queue(server.bob, "bob's secret castle", iterations=400)
    mine = await server.queue(server.alice, "a forest in low poly", iterations=100)

    before = time.time()
    text = reply(await server.alice.slash(server.channel, "queue"))
    after = time.time()

    assert "2 images in the queue" in text
    assert f"#2 “a forest in low poly” (job `{mine.id}`)" in text
    assert "bob's secret castle" not in text  # other people's prompts are not shown
    # Bob's 400 iterations at 0.5 s each run first: Alice starts in 200 s.
    assert "in about 4 min" in text
    (stamp,) = timestamps(text)
    assert math.ceil(before + 200) <= stamp <= math.ceil(after + 200)


async def test_queue_with_a_running_job_shows_its_progress_and_counts_it_in_the_eta(server: Server) -> None:
    await server.finish_one(server.bob)
    running = await server.add_job(server.bob, "bob's private dragon")
    await server.services.store.mark_running(running.id)
    server.services.running[running.id] = RunningJob(
        job_id=running.id, user_id=server.bob.id, iteration=100, total=400,
        started_at=time.time() - 60, seconds_per_iteration=0.4, started=True,
    )
    await server.queue(server.alice, "a lighthouse")

    text = reply(await server.alice.slash(server.channel, "queue"))

    assert "Running now:** another member's image: 100/400 iterations, about 2 min left" in text
    assert "bob's private dragon" not in text
    assert "1 image in the queue" in text
    # 300 iterations left at the running job's measured 0.4 s = 120 s until Alice's starts.
    assert "#1 “a lighthouse”" in text and "in about 2 min" in text


async def test_queue_shows_my_own_running_prompt(server: Server) -> None:
    running = await server.add_job(server.alice, "my own dragon")
    await server.services.store.mark_running(running.id)
    server.services.running[running.id] = RunningJob(
        job_id=running.id, user_id=server.alice.id, iteration=10, total=400, started_at=time.time(),
        started=True,
    )

    text = reply(await server.alice.slash(server.channel, "queue"))

    assert "your image “my own dragon”: 10/400 iterations" in text
    assert "You have no images waiting" in text


async def test_queue_shows_each_job_running_at_once_and_one_not_started_as_starting(server: Server) -> None:
    computing = await server.add_job(server.bob, "bob's dragon")
    held = await server.add_job(server.alice, "my wide castle")
    for job in (computing, held):
        await server.services.store.mark_running(job.id)
    server.services.running[computing.id] = RunningJob(
        job_id=computing.id, user_id=server.bob.id, iteration=100, total=400,
        started_at=time.time(), seconds_per_iteration=0.4, started=True,
    )
    server.services.running[held.id] = RunningJob(
        job_id=held.id, user_id=server.alice.id, iteration=0, total=400, started_at=time.time(),
    )

    text = reply(await server.alice.slash(server.channel, "queue"))

    assert ("**Running now:** 2 images at once:\n"
            "• another member's image: 100/400 iterations, about 2 min left.\n"
            "• your image “my wide castle”: starting.") in text


async def test_queue_without_any_finished_job_has_no_time_estimate(server: Server) -> None:
    await server.queue(server.alice, "a lighthouse")

    text = reply(await server.alice.slash(server.channel, "queue"))

    assert "#1 “a lighthouse”" in text
    assert "no time estimate yet" in text
    assert timestamps(text) == []


# --- /usage --------------------------------------------------------------------------------


async def test_usage_of_a_fresh_member_shows_the_full_default_and_no_reset(server: Server) -> None:
    text = reply(await server.alice.slash(server.channel, "usage"))

    assert "5 images per 24 h" in text and "the bot's default" in text
    assert "Used in the last 24 h: 0 · left: 5" in text
    assert timestamps(text) == []


async def test_usage_counts_charged_jobs_not_failed_ones_and_says_when_a_slot_frees(server: Server) -> None:
    store = server.services.store
    first = await server.finish_one(server.alice)
    await server.queue(server.alice, "waiting")
    failed = await server.add_job(server.alice, "broke")
    await store.mark_failed(failed.id, "out of GPU memory")
    cancelled = await server.add_job(server.alice, "changed my mind")
    await store.mark_cancelled(cancelled.id)

    text = reply(await server.alice.slash(server.channel, "usage"))

    assert "Used in the last 24 h: 2 · left: 3" in text
    assert timestamps(text) == [math.ceil(first.created_at + WINDOW_SECONDS)]
    assert "Next slot frees" in text


async def test_usage_when_used_up_says_when_the_next_image_is_possible(server: Server) -> None:
    await server.services.store.set_quota_override(server.guild.id, server.alice.id, 1)
    first = await server.add_job(server.alice, "only one")

    text = reply(await server.alice.slash(server.channel, "usage"))

    assert "Used in the last 24 h: 1 · left: 0" in text
    assert "Next image possible" in text
    assert timestamps(text) == [math.ceil(first.created_at + WINDOW_SECONDS)]


async def test_usage_with_an_unlimited_role_says_unlimited(server: Server) -> None:
    carol = server.guild.add_member(server.env.create_user("carol"), roles=[server.patrons])
    await server.services.store.add_unlimited_role(server.guild.id, server.patrons.id)

    text = reply(await carol.slash(server.channel, "usage"))

    assert "**unlimited** (from an unlimited role)" in text


async def test_usage_of_another_member_is_not_shown_to_me(server: Server) -> None:
    await server.add_job(server.bob, "bob's")

    text = reply(await server.alice.slash(server.channel, "usage"))

    assert "Used in the last 24 h: 0" in text


async def test_usage_in_direct_messages_uses_the_bot_default(env: simcord.Env) -> None:
    user = env.create_user("dora")

    text = reply(await user.slash("usage"))

    assert "in direct messages" in text and "5 images per 24 h" in text


# --- /help ---------------------------------------------------------------------------------


def help_text(result: simcord.InteractionResult) -> str:
    assert result.response is not None and result.response.ephemeral
    (embed,) = result.response.embeds
    return "\n".join(f"{f.name}\n{f.value}" for f in embed.fields)


async def test_help_mentions_queue_and_usage_to_everyone(server: Server) -> None:
    text = help_text(await server.alice.slash(server.channel, "help"))

    assert "/queue" in text and "/usage" in text
    assert HELP_ADMIN_FIELD[0] not in text and "/quota" not in text


async def test_help_mentions_quota_to_admins(server: Server) -> None:
    text = help_text(await server.admin.slash(server.channel, "help"))

    assert HELP_ADMIN_FIELD[0] in text
    assert "/quota set" in text and "/quota unlimited" in text
