"""`/help`, `/queue` and `/usage`: the commands that explain the bot and where you stand.

None of them queue work or use quota, and all answer ephemerally: they are about the
asker, and a channel full of other people's queue positions helps nobody.

The help text lives here as constants so that tests and README can quote the same
examples, and so the grammar stays described in one place on the Discord side
(the grammar itself is `engine/prompts.py`).

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
from bot.jobs import Job
from bot.permissions import is_admin, member_role_ids
from bot.render import discord_relative_time, format_duration, quoted
from bot.requests import member_iterations, member_shape, shape_size
from bot.services import Services
from bot.store import MemberSettings

HELP_TITLE = "How to ask for an image"
HELP_DESCRIPTION = (
    "Describe the picture you want with `/imagine`. The bot draws it step by step: one "
    "message shows it forming, then the finished image arrives with its seed."
)
#: (field name, field value) pairs of the help embed, in order.
HELP_FIELDS: tuple[tuple[str, str], ...] = (
    (
        "Make an image",
        "`/imagine a forest rendered in low poly`",
    ),
    (
        "Mix ideas with `+`",
        "`/imagine a watercolor painting + a baseball game`\n"
        "Each part pulls the image toward itself. `|` separates parts too: "
        "`a castle | sunset`.",
    ),
    (
        "Weight a part with `text:weight`",
        "`/imagine a lighthouse:2 + fog` makes the lighthouse count twice as much.\n"
        "A negative weight steers away: `a city street + cars:-1`.",
    ),
    (
        "Edit an image",
        "`/edit withered flowers` edits the latest image in this channel.\n"
        "Or attach one: `/edit prompt:withered flowers image:<file>`, or right-click an "
        "image -> Apps -> **Edit image**.",
    ),
    (
        "Buttons on a finished image",
        "**Reroll**: the same prompt with a new seed. **Vary**: a short re-run of this image "
        "with a new seed (a quarter of its iterations): the same picture, other details. "
        "**Edit**: change it with a new prompt. Each is a new image for whoever clicks.\n"
        "**Info** (only you see it): seed, size, models, and the `vqgan-clip` command that "
        "makes the same image. **Timelapse**: posts an animation of the image forming.",
    ),
    (
        "Tips",
        "Concrete nouns and styles work best (`oil painting`, `pixel art`, "
        "`trending on artstation`). The same prompt with the same seed gives the same image.",
    ),
    (
        "Where you stand",
        "`/queue` shows your place in the queue and when your image should start.\n"
        "`/usage` shows your daily quota: how many images you have left and when the "
        "next one frees up.",
    ),
    (
        "Your jobs",
        "`/jobs` lists your waiting and recent images here, with links and Cancel buttons.\n"
        "`/cancel` stops your newest waiting or running image; `/cancel job:k3q7xm2a` a given "
        "one. An image that failed on the bot's side gets a **Retry** button.",
    ),
    (
        "Your defaults",
        "`/settings shape:wide iterations:300` sets your own default shape and iterations on "
        "this server, used whenever you leave them out. `/settings` alone shows them; "
        "`reset:` puts the server's back.",
    ),
)
#: Shown only to members with Manage Server (the only ones who can use its commands).
HELP_ADMIN_FIELD: tuple[str, str] = (
    "For admins: `/quota`, `/status`, `/blocklist`, `/stats`",
    "`/quota set @member images:20` (or `unlimited:True`; `images:0` = may not make images), "
    "`/quota reset @member`, `/quota default images:10` (or `unlimited:True`), "
    "`/quota reset-default`, `/quota unlimited @role` (`remove:True` to undo), "
    "`/quota show [@member]`.\n"
    "`/status`: the image engine (state, device, models, last error), the queue and "
    "today's jobs.\n"
    "`/blocklist add gore, blood bath` refuses prompts with those words or phrases (whole "
    "words, any case); `/blocklist remove`, `/blocklist list`.\n"
    "`/stats`: this server's last 7 days: images per day, top members, GPU time, waits, "
    "failures. All of these need Manage Server.",
)

#: Longest prompt quoted back in `/queue`; longer ones are cut with an ellipsis.
PROMPT_PREVIEW_CHARS = 80


def help_embed(*, admin: bool = False) -> discord.Embed:
    """The embed `/help` answers with; `admin` adds the field of the admin commands."""
    embed = discord.Embed(title=HELP_TITLE, description=HELP_DESCRIPTION, colour=discord.Colour.blurple())
    fields = HELP_FIELDS + ((HELP_ADMIN_FIELD,) if admin else ())
    for name, value in fields:
        embed.add_field(name=name, value=value, inline=False)
    return embed


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
        await interaction.response.send_message(embed=help_embed(admin=is_admin(interaction)), ephemeral=True)

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
    """What `/queue` says to `user_id`: the running job, the queue length, their jobs with
    position and ETA (until it starts).

    Privacy: the queue is shared by every server and channel the bot is in, so the running
    job may belong to another server or to a channel the asker cannot see. Its prompt is
    therefore shown only when it is the asker's own; otherwise it is "another member's
    image" with its progress, which is all anyone needs to judge the wait. The same holds
    for other people's queued jobs: they are only counted.
    """
    store, scheduler, running = services.store, services.scheduler, services.running
    now = store.clock()
    speed = await seconds_per_iteration(services)
    running_left = running_remaining(running, speed)
    queued = scheduler.queued_jobs()

    if running is None and not queued:
        return "The queue is empty and nothing is running: a new image starts right away."

    lines: list[str] = []
    if running is None:
        lines.append("**Running now:** nothing.")
    else:
        own_job: Job | None = None
        if running.user_id == user_id:
            own_job = await store.get_job(running.job_id)
        whose = f"your image {quoted(own_job.prompt, PROMPT_PREVIEW_CHARS)}" if own_job else (
            "your image" if running.user_id == user_id else "another member's image"
        )
        progress = f"{running.iteration}/{running.total} iterations"
        left = f", about {format_duration(running_left)} left" if running_left else ""
        lines.append(f"**Running now:** {whose}: {progress}{left}.")

    noun = "image" if len(queued) == 1 else "images"
    lines.append(f"**Waiting:** {len(queued)} {noun} in the queue.")

    mine = [job for job in queued if job.user_id == user_id]
    if not mine:
        lines.append("You have no images waiting.")
        return "\n".join(lines)
    lines.append("**Yours:**")
    for job in mine:
        where = await estimate(services, job.id)
        position, eta = where.position, where.starts_in
        if eta is None:
            when = "no time estimate yet (no image has finished yet)"
        elif eta < 1:
            when = "starts next"
        else:
            when = f"starts {discord_relative_time(now + eta)} (in about {format_duration(eta)})"
        lines.append(f"#{position} {quoted(job.prompt, PROMPT_PREVIEW_CHARS)} (job `{job.id}`): {when}")
    return "\n".join(lines)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Info(bot))
