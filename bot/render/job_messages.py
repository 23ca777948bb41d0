"""A job's message in the channel, from queued to its result, failure or cancel, and the
private answer that it was queued.

Images travel as message attachments and the embeds point at them with
`attachment://NAME` (Discord shows an attached file inside the embed that names it,
instead of as a separate file under the message).
"""

from __future__ import annotations

import discord

from bot.jobs import Job
from bot.render.text import (
    COLOUR_CANCELLED,
    COLOUR_DONE,
    COLOUR_FAILED,
    COLOUR_QUEUED,
    COLOUR_RUNNING,
    FIELD_LIMIT,
    TITLE_LIMIT,
    discord_relative_time,
    format_duration,
    message_link,
    quoted,
    user_text,
)

BAR_WIDTH = 20
#: What users read while the engine cannot run jobs; never the reason, which can hold paths.
ENGINE_DOWN_TEXT = "The image engine is down; your image keeps its place."
#: A `replace` phrase quoted in a job's description.
REPLACE_LIMIT = 102
#: The messages of the failures the bot makes up itself (`engine.protocol.Failed.message`,
#: fit to show as is, like the engine's own): the engine died under the job
#: (`bot.engine_client`)...
ENGINE_CRASHED = "the engine crashed and was restarted; you were not charged"
#: ... the bot shut down before the job ended (the runner shows `interrupted_embed` instead:
#: the job resumes at the next start)...
ENGINE_SHUT_DOWN = "the engine was shut down before your job finished; you were not charged"
#: ... or the job's starting image is gone from disk when it is its turn (`bot.runner`).
INPUT_IMAGE_GONE = ("the image this job starts from is no longer on the bot's disk; "
                    "attach it again with /edit")


def engine_refused(message: str) -> str:
    """The engine answered a job it had not started with an error (`message` is its own)."""
    return f"the engine refused this job: {message}"


def job_not_sent(error: str) -> str:
    """The job's frame broke the protocol's limits (a bug, or an absurd upload)."""
    return f"the job could not be sent to the engine: {error}"


#: The failure a job keeps (`Job.error`) when its message could not be posted: it was
#: refused then (`bot.enqueue`), and the member read `render.CANNOT_POST_JOB` (a missing
#: permission) or `render.DISCORD_FAILED_TO_POST_JOB` (Discord failing).
JOB_NOT_POSTED = "the job's message could not be posted"


def internal_error(job_id: str) -> str:
    """The failure a job keeps (`Job.error`) after a bug; its message shows
    `apology_embed`."""
    return f"internal error (job {job_id})"


#: A failed job's message after a long stop (`bot.retry.fail_unresumed`).
NOT_RESUMED_TEXT = (
    "interrupted when the bot stopped, and not resumed: the bot was away too long to run it "
    "unasked. Press Retry to make it now"
)


def progress_bar(iteration: int, total: int, width: int = BAR_WIDTH) -> str:
    """`████████░░░░░░░░░░░░ 40%`: readable on every client, no custom emoji needed."""
    fraction = 0.0 if total <= 0 else min(1.0, max(0.0, iteration / total))
    filled = int(round(fraction * width))
    return "█" * filled + "░" * (width - filled) + f" {int(fraction * 100)}%"


def size_text(job: Job) -> str:
    width, height = job.params.get("width"), job.params.get("height")
    return f"{width}×{height}" if width and height else "?"


def describe_kind(job: Job) -> str:
    if job.kind == "edit":
        replace = job.params.get("replace")
        return f"Editing ({quoted(replace, REPLACE_LIMIT)} → prompt)" if replace else "Editing"
    if job.kind == "reroll":
        return "Reroll"
    if job.kind == "vary":
        return "Varying"
    return "Imagining"


def describe_done(job: Job) -> str:
    if job.kind == "edit":
        replace = job.params.get("replace")
        return f"Edited ({quoted(replace, REPLACE_LIMIT)} → prompt)" if replace else "Edited"
    if job.kind == "reroll":
        return "Rerolled"
    if job.kind == "vary":
        return "Varied"
    return "Imagined"


def queued_answer(job: Job, position: int | None, eta_seconds: float | None,
                  *, engine_down: bool = False) -> str:
    """The ephemeral answer to the command: it is queued, where, and roughly when (no time
    while the engine is down: there is none to give)."""
    place = f"position {position} in the queue" if position is not None else "in the queue"
    if engine_down:
        when = "waiting: the image engine is down, and your image keeps its place."
    elif eta_seconds is None:
        when = "no time estimate yet (this is the first image since the bot started)."
    else:
        when = f"ready in about {format_duration(eta_seconds)}."
    return (
        f"Queued job `{job.id}`, {place}, {when} "
        "Its progress appears in this channel; use the **Cancel** button there to stop it."
    )


def _base_embed(job: Job, colour: discord.Colour) -> discord.Embed:
    embed = discord.Embed(title=user_text(job.prompt, TITLE_LIMIT), colour=colour)
    embed.set_footer(text=f"job {job.id} · {size_text(job)} · {job.iterations} iterations")
    return embed


def queued_embed(job: Job, position: int | None, ready_at: float | None) -> discord.Embed:
    """A waiting job: its place, and when it should be ready (epoch seconds), as a Discord
    timestamp (`<t:EPOCH:R>`) that every client shows as a live "in 4 minutes", so the
    message stays right without being edited until the estimate itself moves."""
    embed = _base_embed(job, COLOUR_QUEUED)
    lines = [describe_kind(job), "Waiting in the queue"
             + (f" (#{position})" if position is not None else "") + "."]
    if ready_at is not None:
        lines.append(f"Expected to be ready {discord_relative_time(ready_at)}.")
    embed.description = "\n".join(lines)
    return embed


def waiting_for_engine_embed(job: Job) -> discord.Embed:
    """Shown on waiting jobs while the engine is down: the job is safe, not lost. The reason
    is for the operator (log, `/status`): it may name the server's files."""
    embed = _base_embed(job, COLOUR_QUEUED)
    embed.description = (
        f"{describe_kind(job)}\n"
        f"{ENGINE_DOWN_TEXT} It starts when the engine is back."
    )
    return embed


def started_embed(job: Job) -> discord.Embed:
    embed = _base_embed(job, COLOUR_RUNNING)
    embed.description = f"{describe_kind(job)}\nStarting…\n`{progress_bar(0, job.iterations)}`"
    return embed


def progress_embed(
    job: Job, iteration: int, total: int, eta_seconds: float | None, preview_name: str | None
) -> discord.Embed:
    embed = _base_embed(job, COLOUR_RUNNING)
    lines = [
        describe_kind(job),
        f"`{progress_bar(iteration, total)}` iteration {iteration}/{total}",
    ]
    if eta_seconds is not None:
        lines.append(f"About {format_duration(eta_seconds)} left.")
    embed.description = "\n".join(lines)
    if preview_name:
        embed.set_image(url=f"attachment://{preview_name}")
    return embed


def result_embed(job: Job, *, seed: int, seconds: float, width: int, height: int,
                 image_name: str) -> discord.Embed:
    embed = discord.Embed(title=user_text(job.prompt, TITLE_LIMIT), colour=COLOUR_DONE)
    embed.description = describe_done(job)
    if user_text(job.prompt) != embed.title:  # the title was shortened: the whole prompt
        embed.add_field(name="Prompt", value=user_text(job.prompt, FIELD_LIMIT), inline=False)
    embed.add_field(name="Seed", value=f"`{seed}`")
    embed.add_field(name="Size", value=f"{width}×{height}")
    embed.add_field(name="Time", value=format_duration(seconds))
    embed.set_image(url=f"attachment://{image_name}")
    embed.set_footer(text=f"job {job.id} · {job.iterations} iterations")
    return embed


def not_charged(message: str) -> str:
    """Append "you were not charged" unless the engine's message already says so."""
    text = message.strip().rstrip(".")
    if "not charged" in text.lower():
        return text + "."
    return text + ". You were not charged for this image."


def failed_embed(job: Job, message: str) -> discord.Embed:
    embed = _base_embed(job, COLOUR_FAILED)
    # The engine's message may quote the prompt: shown as text, like every user text.
    embed.description = (f"{describe_kind(job)}\n"
                         f"**Failed:** {user_text(not_charged(message), 1000)}")
    return embed


def cancelled_embed(job: Job, by_user_id: int | None = None) -> discord.Embed:
    embed = _base_embed(job, COLOUR_CANCELLED)
    who = f" by <@{by_user_id}>" if by_user_id is not None else ""
    embed.description = (
        f"{describe_kind(job)}\n**Cancelled**{who}. It was not charged."
    )
    return embed


def apology_embed(job: Job) -> discord.Embed:
    """An unexpected error (a bug): say sorry, name the job id for the operator's logs."""
    embed = _base_embed(job, COLOUR_FAILED)
    embed.description = (
        f"{describe_kind(job)}\n"
        f"Sorry, something went wrong on our side with job `{job.id}`. You were not charged; "
        "please try again, and if it keeps happening tell the server admin this job id."
    )
    return embed


def interrupted_embed(job: Job) -> discord.Embed:
    embed = _base_embed(job, COLOUR_QUEUED)
    embed.description = (
        f"{describe_kind(job)}\n"
        "Interrupted: the bot is restarting. This image starts again when it is back."
    )
    return embed


def requester_content(job: Job) -> str:
    """The text of a job's message while it waits and runs: whose image it is. Sent with no
    allowed mentions, so it names the requester without notifying them."""
    return f"For <@{job.user_id}>"


def ready_content(job: Job) -> str:
    """The text of the result's message, which notifies the requester (and nobody else)."""
    return f"<@{job.user_id}>, your image is ready."


def failed_content(job: Job) -> str:
    """The text of a failure's message, which notifies the requester (and nobody else)."""
    return f"<@{job.user_id}>, your image could not be made."


def job_link(job: Job) -> str | None:
    """A jump link to the job's message (its result, else its progress), if it has one."""
    message_id = job.result_message_id or job.progress_message_id
    return None if message_id is None else message_link(job.guild_id, job.channel_id, message_id)
