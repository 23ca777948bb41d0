"""What the job messages say: the queued answer, the progress embed, the result, failures.

Pure functions from job state to text and `discord.Embed`s, so the wording lives in one
place and tests can check it without a running bot. Images travel as message attachments
and the embeds point at them with `attachment://NAME` (Discord shows an attached file
inside the embed that names it, instead of as a separate file under the message).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import discord

from bot.engine_client import EngineState, EngineStatus
from bot.jobs import Job

#: Colours per state, so a glance at the channel tells waiting, working, done, failed.
COLOUR_QUEUED = discord.Colour.light_grey()
COLOUR_RUNNING = discord.Colour.blurple()
COLOUR_DONE = discord.Colour.green()
COLOUR_FAILED = discord.Colour.red()
COLOUR_CANCELLED = discord.Colour.dark_grey()

BAR_WIDTH = 20
#: What users read while the engine cannot run jobs; never the reason, which can hold paths.
ENGINE_DOWN_TEXT = "The image engine is down; your image keeps its place."
#: Embed titles are limited to 256 characters; prompts may be 500.
TITLE_LIMIT = 256
#: Embed field values are limited to 1024 characters.
FIELD_LIMIT = 1024
#: A `replace` phrase quoted in a job's description.
REPLACE_LIMIT = 102


def progress_bar(iteration: int, total: int, width: int = BAR_WIDTH) -> str:
    """`████████░░░░░░░░░░░░ 40%`: readable on every client, no custom emoji needed."""
    fraction = 0.0 if total <= 0 else min(1.0, max(0.0, iteration / total))
    filled = int(round(fraction * width))
    return "█" * filled + "░" * (width - filled) + f" {int(fraction * 100)}%"


def format_duration(seconds: float) -> str:
    """`45 s`, `3 min`, `1 h 5 min`: coarse on purpose (an ETA is an estimate) and rounded
    *up*, so a wait is never promised shorter than it is."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{max(1, math.ceil(seconds))} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def discord_relative_time(epoch: float) -> str:
    """A Discord timestamp (`<t:EPOCH:R>`) that each reader's client shows as "in 3 hours"."""
    return f"<t:{math.ceil(epoch)}:R>"


def user_text(text: str, limit: int | None = None) -> str:
    """Text a user typed (a prompt, a phrase, a file name), made safe to show anywhere: on
    one line, Markdown escaped so it cannot change the layout, mentions defused
    (`@everyone`, `<@id>`, `<@&id>` are shown, never resolved or pinged, whatever the
    message's allowed mentions say), and at most `limit` characters, escapes included,
    cut with an ellipsis."""
    text = " ".join(text.split())
    safe = _escape(text)
    if limit is None or len(safe) <= limit:
        return safe
    cut = limit - 1
    while cut > 0:
        safe = _escape(text[:cut].rstrip()) + "…"
        if len(safe) <= limit:
            return safe
        cut -= len(safe) - limit
    return "…"


def _escape(text: str) -> str:
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def quoted(text: str, limit: int | None = None) -> str:
    """`“a castle”`: user text in quotes, safe as `user_text`."""
    return f"“{user_text(text, None if limit is None else limit - 2)}”"


def size_text(job: Job) -> str:
    width, height = job.params.get("width"), job.params.get("height")
    return f"{width}×{height}" if width and height else "?"


def describe_kind(job: Job) -> str:
    if job.kind == "edit":
        replace = job.params.get("replace")
        return f"Editing ({quoted(replace, REPLACE_LIMIT)} → prompt)" if replace else "Editing"
    if job.kind == "reroll":
        return "Reroll"
    return "Imagining"


def describe_done(job: Job) -> str:
    if job.kind == "edit":
        replace = job.params.get("replace")
        return f"Edited ({quoted(replace, REPLACE_LIMIT)} → prompt)" if replace else "Edited"
    if job.kind == "reroll":
        return "Rerolled"
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


# ---- issue 11 items 1-3: who a job message names and notifies

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


# ------------------------------------------------------------------ /status (admins)

#: How much of the engine's last error `/status` shows (an embed field holds 1024).
STATUS_ERROR_LIMIT = 900
STATUS_COLOURS: dict[EngineState, discord.Colour] = {
    EngineState.READY: COLOUR_DONE,
    EngineState.STARTING: discord.Colour.orange(),
    EngineState.RESTARTING: discord.Colour.orange(),
    EngineState.DOWN: COLOUR_FAILED,
}


def utc_day_start(now: float) -> float:
    """00:00 UTC of the day `now` is in: where `/status` starts counting "today"."""
    return now - now % 86400


def code_block(text: str, limit: int) -> str:
    """`text` in a code block, at most `limit` characters of it (the head: the engine's
    errors say what is wrong first, then quote its log), and unable to close the block
    early."""
    text = text.strip().replace("```", "`\u200b``")
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return f"```\n{text}\n```"


def _engine_models(engine: EngineStatus, configured: tuple[str, str]) -> tuple[str, str]:
    """(device line, models line): from the live worker, else the last one, else settings."""
    ready, note = engine.ready, ""
    if ready is None and engine.last_ready is not None:
        ready, note = engine.last_ready, " (when it last ran)"
    if ready is None:
        vqgan, clip = configured
        return "not known until the engine starts", f"VQGAN `{vqgan}`, CLIP `{clip}` (configured)"
    pid = f" · pid {ready.pid}" if engine.ready is not None else ""
    return f"`{ready.device}`{pid}{note}", f"VQGAN `{ready.vqgan}`, CLIP `{ready.clip}`{note}"


def status_embed(
    engine: EngineStatus,
    *,
    queued: int,
    running: tuple[str, int, int] | None,
    finished_today: Mapping[str, int],
    configured_models: tuple[str, str],
) -> discord.Embed:
    """`/status`, for admins only: the engine (state, device, models, restarts, the last
    error in full, paths and all), the queue, and the jobs that ended today (UTC).

    `running` is (job id, iteration, total) of the job that left the queue, if any;
    `finished_today` counts jobs by final status ("done", "failed", "cancelled")."""
    embed = discord.Embed(title="Image engine status",
                          colour=STATUS_COLOURS.get(engine.state, COLOUR_CANCELLED))
    restarts = {0: "no restarts", 1: "restarted once"}.get(engine.restarts,
                                                           f"restarted {engine.restarts} times")
    embed.add_field(name="Engine", value=f"**{engine.state.value}** since "
                    f"{discord_relative_time(engine.since)} · {restarts}", inline=False)
    device, models = _engine_models(engine, configured_models)
    embed.add_field(name="Device", value=device)
    embed.add_field(name="Models", value=models)
    if running is None:
        current = "nothing running"
    else:
        job_id, iteration, total = running
        current = f"job `{job_id}`, iteration {iteration}/{total}"
    embed.add_field(name="Queue", value=f"{queued} waiting · {current}", inline=False)
    counts = " · ".join(f"{finished_today.get(status, 0)} {status}"
                        for status in ("done", "failed", "cancelled"))
    embed.add_field(name="Today (since 00:00 UTC)", value=counts, inline=False)
    if engine.last_error is not None:
        when = (f"{discord_relative_time(engine.last_error_at)}\n"
                if engine.last_error_at is not None else "")
        embed.add_field(name="Last error",
                        value=when + code_block(engine.last_error, STATUS_ERROR_LIMIT),
                        inline=False)
    embed.set_footer(text="Only you can see this: the error may name the server's files.")
    return embed
