"""`/jobs` and `/cancel`: your own jobs in this server, and stopping one.

`/jobs` lists the asker's waiting and running jobs, then their most recent finished ones
(at most `render.JOBS_LIMIT`, then "… and N more"): status, prompt, a link to each job's
message, and a Cancel button per waiting or running job (the same `CancelButton` as on
the job's message: a `DynamicItem`, so it works after a restart). Private, like `/queue`.

`/cancel [job]` cancels the asker's newest waiting or running job, or the one named (its
id autocompletes from the asker's unfinished jobs; an admin's from everyone's here).
Admins (Manage Server, `bot.permissions.may_manage`) may cancel anyone's job by id. It
needs no message: `bot.cancel` works from the store and the queue, so a job whose
message was deleted is cancelled all the same.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.app import ImagineBot
from bot.cancel import cancel_job
from bot.errors import NotAllowed, UserError
from bot.interactions import answer, defer
from bot.jobs import Job, JobStatus, normalize_job_id
from bot.permissions import is_admin, may_manage
from bot.services import Services
from bot.views import CancelButton

#: Autocomplete offers at most this many jobs (Discord's limit).
MAX_CHOICES = 25


def job_status(services: Services, job: Job) -> str:
    """The job's state as `/jobs` shows it: its place in the queue, its progress."""
    running = services.running.get(job.id)
    progress = None
    if running is not None and running.started:
        progress = (running.iteration, running.total)
    return render.job_status_text(job, position=services.scheduler.position(job.id),
                                  progress=progress,
                                  starting=running is not None and not running.started)


class Jobs(commands.Cog):
    """Your jobs: list them, cancel one."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="jobs", description="Your recent and waiting images here: status, prompt, link, and cancel"
    )
    @app_commands.guild_only()
    async def jobs(self, interaction: discord.Interaction) -> None:
        services = self.bot.services
        store = services.store
        guild_id, user_id = interaction.guild_id, interaction.user.id
        recent = await store.recent_jobs(guild_id, user_id, render.JOBS_LIMIT)
        more = await store.count_jobs(guild_id, user_id) - len(recent)
        lines = [render.job_line(job, job_status(services, job)) for job in recent]
        embed = render.jobs_embed(lines, more)
        unfinished = [job for job in recent if not job.status.is_finished]
        if not unfinished:
            await interaction.response.send_message(embed=embed, ephemeral=True)
            return
        view = discord.ui.View(timeout=None)
        for job in unfinished:
            view.add_item(CancelButton(job.id, label=render.cancel_label(job)))
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)

    @app_commands.command(
        name="cancel", description="Cancel your newest waiting or running image, or the job you name"
    )
    @app_commands.describe(job="The job's id (from /jobs or its message); default: your newest unfinished job")
    @app_commands.guild_only()
    async def cancel(self, interaction: discord.Interaction,
                     job: app_commands.Range[str, 1, 40] | None = None) -> None:
        services = self.bot.services
        target = await self._target(interaction, job)
        if target.status.is_finished:
            raise UserError(render.already_finished(target))
        await defer(interaction)
        await answer(interaction, await cancel_job(services, target.id, by_user_id=interaction.user.id))

    async def _target(self, interaction: discord.Interaction, job_id: str | None) -> Job:
        """The job `/cancel` means, if the asker may cancel it; else a refusal."""
        store = self.bot.services.store
        if job_id is None:
            newest = await store.recent_jobs(interaction.guild_id, interaction.user.id, 1)
            if not newest or newest[0].status.is_finished:
                raise UserError(render.no_job_to_cancel())
            return newest[0]
        job = await store.get_job(job_id)
        if job is None or job.guild_id != interaction.guild_id:
            raise UserError(render.unknown_job(job_id))
        if not may_manage(interaction, job.user_id):
            raise NotAllowed(render.not_your_job(job))
        return job

    @cancel.autocomplete("job")
    async def cancel_job_choices(self, interaction: discord.Interaction,
                                 current: str) -> list[app_commands.Choice[str]]:
        """The asker's waiting and running jobs here (everyone's for an admin), newest
        first, those whose id or prompt contains what was typed."""
        user_id = None if is_admin(interaction) else interaction.user.id
        jobs = await self.bot.services.store.jobs_with_status(
            JobStatus.QUEUED, JobStatus.RUNNING, guild_id=interaction.guild_id, user_id=user_id)
        typed = normalize_job_id(current)
        matching = [job for job in reversed(jobs)
                    if typed in job.id or typed in job.prompt.lower()]
        return [app_commands.Choice(name=render.job_choice_name(job), value=job.id)
                for job in matching[:MAX_CHOICES]]


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Jobs(bot))
