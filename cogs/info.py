"""`/help`, `/queue` and `/usage`: the commands that explain the bot and where you stand.

None of them queue work or use quota, and all answer ephemerally: they are about the
asker, and a channel full of other people's queue positions helps nobody.

What they say is `bot.render`'s (`help`, `queue`, `quotas`, `settings`); this module
gathers the figures.

`/usage` and `/quota show @user` describe a quota in exactly the same words
(`bot.render.quotas`); times and ETAs come from `bot.render` and `bot.eta`, as in the job
messages.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.app import ImagineBot
from bot.eta import estimate, running_remaining, seconds_per_iteration
from bot.permissions import is_admin, member_role_ids
from bot.requests import member_iterations, member_shape, shape_size
from bot.services import Services
from bot.store import MemberSettings

# ------------------------------------------------------------------ member defaults


def member_defaults_lines(services: Services, member: MemberSettings) -> list[str]:
    """A member's own defaults (`/settings`) against this server's settings, one line each:
    what `/settings` and `/usage` show."""
    settings = services.settings
    shape = member_shape(member)
    return render.member_defaults_lines(
        shape=shape, shape_size=shape_size(settings, shape),
        iterations=member_iterations(settings, member), iterations_set=member.iterations,
        server_size=settings.default_size, server_iterations=settings.default_iterations,
        max_iterations=settings.max_iterations,
    )


# ------------------------------------------------------------------ the cog


class Info(commands.Cog):
    """Commands that explain the bot; they never queue work or use quota."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="How to write prompts: mixing, weights, editing")
    async def help(self, interaction: discord.Interaction) -> None:
        # Ephemeral: help is for the asker, not the channel. Admins also see /quota,
        # which nobody else could run anyway.
        await interaction.response.send_message(embed=render.help_embed(admin=is_admin(interaction)), ephemeral=True)

    @app_commands.command(
        name="queue", description="Your place in the image queue, when it should start, and what is running"
    )
    async def queue(self, interaction: discord.Interaction) -> None:
        text = await queue_text(self.bot.services, interaction.user.id)
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(
        name="usage", description="Your daily image quota here: used, left, and when the next one frees up"
    )
    async def usage(self, interaction: discord.Interaction) -> None:
        services = self.bot.services
        guild_id = interaction.guild_id
        status = await services.quotas.check(
            guild_id, interaction.user.id, member_role_ids(interaction.user, guild_id)
        )
        text = render.usage_text(status, services.quotas.clock(), in_server=guild_id is not None)
        if guild_id is not None:
            member = await services.store.get_member_settings(guild_id, interaction.user.id)
            text += "\n" + render.usage_defaults(member_defaults_lines(services, member))
        await interaction.response.send_message(text, ephemeral=True)


async def queue_text(services: Services, user_id: int) -> str:
    """What `/queue` says to `user_id`: the running jobs, the queue length, their jobs with
    position and ETA (until it starts). Whose prompts it may show: `bot.render.queue`."""
    store, scheduler = services.store, services.scheduler
    now = store.clock()
    speed = await seconds_per_iteration(services)
    running_jobs = list(services.running.values())
    queued = scheduler.queued_jobs()
    now_running: list[render.RunningNow] = []
    for running in running_jobs:
        own = running.user_id == user_id
        own_job = await store.get_job(running.job_id) if own else None
        now_running.append(render.RunningNow(
            own=own, prompt=own_job.prompt if own_job else None, iteration=running.iteration,
            total=running.total, left=running_remaining(running, speed), started=running.started))
    mine: list[render.YourWaitingJob] = []
    for job in queued:
        if job.user_id == user_id:
            where = await estimate(services, job.id)
            mine.append(render.YourWaitingJob(job, where.position, where.starts_in))
    return render.queue_text(now_running, len(queued), mine, now)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Info(bot))
