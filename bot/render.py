"""What the job messages say: the queued answer, the progress embed, the result, failures.

Pure functions from job state to text and `discord.Embed`s, so the wording lives in one
place and tests can check it without a running bot. Images travel as message attachments
and the embeds point at them with `attachment://NAME` (Discord shows an attached file
inside the embed that names it, instead of as a separate file under the message).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping

import discord

from bot.engine_client import EngineState, EngineStatus
from bot.jobs import ImageSource, Job, JobStatus
from bot.stats import GuildStats, Spread

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


# ---- issue 11 items 7-8: the result's Info and Timelapse buttons

def message_link(guild_id: int | None, channel_id: int, message_id: int) -> str:
    """The URL that jumps to a message (`@me` stands for the guild in direct messages)."""
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def info_embed(job: Job, metadata: Mapping[str, str], command: str,
               source_link: str | None = None) -> discord.Embed:
    """Info, answered privately: what made the image and the command that makes it again.

    `metadata` is the result PNG's text chunks (what the engine ran with); `command` the
    shell line from `bot.recipe`, shown in a code block as it is (it holds no three
    backticks in a row, so it cannot end the block; a code block shows text, never
    Markdown or mentions). `source_link` jumps to the message of the image an edit
    started from, when that was a result of the bot."""
    embed = discord.Embed(title=user_text(job.prompt, TITLE_LIMIT), colour=COLOUR_DONE)
    lines = [
        f"How job `{job.id}` was made, and the command that makes it again:",
        f"```sh\n{command}\n```",
        _remake_note(metadata.get("device")),
        "The models are found by name in your MODEL_DIR (`vqgan-clip download NAME` "
        "fetches a known one).",
    ]
    if job.input_path:
        where = f" ([its message]({source_link}))" if source_link else ""
        lines.append(
            f"`{job.input_path}` is the image this edit started from{where}: the exact file "
            "is in the bot's results folder (RESULTS_DIR) under that name. A copy with the "
            "same pixels does as well."
        )
    # Within an embed description's 4096 characters: prompts are at most 500 characters and
    # `replace` 100, so even quoted for the shell (a `'` becomes five) the command stays
    # under about 3300, and the rest is short.
    embed.description = "\n".join(lines)
    if user_text(job.prompt) != embed.title:  # the title was shortened: the whole prompt
        embed.add_field(name="Prompt", value=user_text(job.prompt, FIELD_LIMIT), inline=False)
    embed.add_field(name="Seed", value=f"`{job.seed}`" if job.seed is not None else "?")
    embed.add_field(name="Size", value=metadata.get("size", size_text(job)).replace("x", "×"))
    embed.add_field(name="Iterations", value=str(job.iterations))
    embed.add_field(name="Cutouts (cutn)",
                    value=metadata.get("cutn", str(job.params.get("cutn") or "?")))
    embed.add_field(name="Models", value=f"VQGAN `{metadata.get('vqgan', '?')}`, "
                                         f"CLIP `{metadata.get('clip', '?')}`")
    took = format_duration(job.seconds) if job.seconds is not None else "?"
    if job.finished_at is not None:
        took += f", finished {discord_relative_time(job.finished_at)}"
    embed.add_field(name="Time", value=took)
    embed.set_footer(text=f"job {job.id} · only you can see this")
    return embed


def _remake_note(device: str | None) -> str:
    """How exactly the command remakes the image, by the device the engine used."""
    if device == "cpu":
        return ("The engine made it on the CPU: on a computer with the same kind of CPU and "
                "the same PyTorch, this makes the same PNG, byte for byte.")
    if device is None:
        return ("The image does not record where it was made: if that was a CPU, this makes "
                "the same PNG on one like it; after a GPU, a close image.")
    return (f"The engine made it on a GPU (`{device}`), whose numbers round differently: "
            "this makes a close image on the CPU, not the same bytes.")


def no_result_text(job: Job, what: str) -> str:
    """A button that needs a finished image, on a job without one (any more)."""
    return f"Job `{job.id}` has no finished image to {what}."


def result_missing_text(job: Job) -> str:
    return f"The image of job `{job.id}` is no longer on the bot's disk."


CANNOT_POST_TIMELAPSE = (
    "I can't post the timelapse in this channel. Ask a server admin to give me the **Send "
    "Messages** and **Attach Files** permissions here."
)


def timelapse_post_text(job: Job, frames: int) -> str:
    """The channel message that carries a timelapse (a reply to the result)."""
    return (f"Timelapse of job `{job.id}` for <@{job.user_id}>: {quoted(job.prompt, 300)}, "
            f"{frames} steps of {job.iterations} iterations, then the result.")


def timelapse_posted_text(url: str) -> str:
    return f"Posted the timelapse in the channel: {url}"


def timelapse_already_text(url: str) -> str:
    return f"This image's timelapse is already in the channel: {url}"


def timelapse_busy_text(job: Job) -> str:
    return (f"The timelapse of job `{job.id}` is being posted right now; it appears in the "
            "channel in a moment.")


def no_timelapse_text(job: Job) -> str:
    return (f"Job `{job.id}` has no timelapse: its steps were not kept (it was made before "
            "the bot kept them, or they were removed).")


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


# ---- issue 11 items 9-10: /blocklist, /stats (admins), /settings and /usage (members) ----

BLOCKLIST_NO_TERMS = (
    "Name a word or phrase, e.g. `/blocklist add terms:gore`; separate several with commas "
    "(`gore, blood bath`)."
)
#: How much of `/blocklist list` one answer shows (a message holds 2000 characters).
BLOCKLIST_LIST_CHARS = 1700


def blocklist_term_too_long(term: str, limit: int) -> str:
    return (f"{quoted(term, 40)} is {len(term)} characters; an entry may have at most {limit}. "
            "Block a shorter word or phrase.")


def blocklist_term_without_words(term: str) -> str:
    return (f"{quoted(term, 40)} has no letters or digits, so it can never match a whole word. "
            "Block words or phrases, e.g. `gore`.")


def prompt_blocked(term: str) -> str:
    """The private refusal of a blocked request: which entry (escaped, as all user text),
    and that nothing was queued or charged."""
    return (f"This server's admins have blocked {quoted(term, 90)}, and your request contains "
            "it. Rephrase it and try again. Nothing was queued and you were not charged.")


def _quoted_list(terms: list[str]) -> str:
    return ", ".join(quoted(term, 90) for term in terms)


def blocklist_full(count: int, adding: int, limit: int) -> str:
    return (f"The blocklist has {count} of at most {limit} entries, so {adding} more do not fit; "
            "nothing was added. Remove some with `/blocklist remove`, or block fewer at once.")


def blocklist_added(added: list[str], already: list[str], full: list[str], count: int,
                    limit: int) -> str:
    lines = []
    if added:
        lines.append(f"Blocked on this server: {_quoted_list(added)}. Prompts with "
                     f"{'it' if len(added) == 1 else 'them'} are now refused, privately and free.")
    if already:
        lines.append(f"Already blocked, nothing changed: {_quoted_list(already)}.")
    if full:
        lines.append(f"Not added, the blocklist is full ({limit}): {_quoted_list(full)}.")
    lines.append(f"-# The blocklist has {count} of at most {limit} entries.")
    return "\n".join(lines)


def blocklist_removed(removed: list[str], missing: list[str], count: int) -> str:
    lines = []
    if removed:
        lines.append(f"No longer blocked: {_quoted_list(removed)}.")
    if missing:
        lines.append(f"Not on the blocklist, nothing changed: {_quoted_list(missing)}. "
                     "See `/blocklist list`.")
    lines.append(f"-# The blocklist has {count} {'entry' if count == 1 else 'entries'}.")
    return "\n".join(lines)


def blocklist_list(terms: list[str], limit: int) -> str:
    """`/blocklist list`: every entry that fits in one message, then how many more."""
    if not terms:
        return ("Nothing is blocked on this server. Add words or phrases with "
                "`/blocklist add terms:...`.")
    head = f"**Blocked on this server** ({len(terms)} of at most {limit}):\n"
    shown: list[str] = []
    length = len(head)
    for term in terms:
        item = quoted(term, 90)
        if length + len(item) + 2 > BLOCKLIST_LIST_CHARS:
            break
        shown.append(item)
        length += len(item) + 2
    more = len(terms) - len(shown)
    return head + ", ".join(shown) + (f"\n… and {more} more." if more else "")


#: Labels of the shapes (`bot.requests.SHAPES`), as `/imagine size:` offers them.
SHAPE_LABELS: dict[str, str] = {
    "square": "square (1:1)",
    "portrait": "portrait (3:4)",
    "landscape": "landscape (4:3)",
    "wide": "wide (16:9)",
    "tall": "tall (9:16)",
}


def settings_iterations_out_of_range(asked: int, maximum: int) -> str:
    return (f"Your default `iterations` must be between 1 and {maximum} on this server "
            f"(you asked for {asked}).")


def settings_reset_conflict(field_name: str) -> str:
    return (f"You asked to both set and reset `{field_name}`: do one of the two. "
            "`reset` puts the server's default back.")


def member_defaults_lines(*, shape: str | None, shape_size: tuple[int, int],
                          iterations: int | None, iterations_set: int | None,
                          server_size: tuple[int, int], server_iterations: int,
                          max_iterations: int) -> list[str]:
    """A member's defaults, one line each, as `/settings` and `/usage` show them.

    `shape` is the member's own shape (None: the server's default size) and `shape_size` the
    size it gives here; `iterations` is what applies (the member's own, capped at
    MAX_ITERATIONS; None: the server's), `iterations_set` what the member stored."""
    server_size_text = f"{server_size[0]}×{server_size[1]}"
    if shape is None:
        shape_line = f"Shape: **the server's default**, {server_size_text}."
    else:
        shape_line = (f"Shape: **{SHAPE_LABELS.get(shape, shape)}**, "
                      f"{shape_size[0]}×{shape_size[1]}, your own "
                      f"(server default: {server_size_text}).")
    if iterations is None:
        iterations_line = f"Iterations: **the server's default**, {server_iterations}."
    elif iterations_set is not None and iterations_set > iterations:
        iterations_line = (f"Iterations: **{iterations}**, your own: you set {iterations_set}, and "
                           f"this server now allows at most {max_iterations}.")
    else:
        iterations_line = (f"Iterations: **{iterations}**, your own "
                           f"(server default: {server_iterations}, at most {max_iterations}).")
    return [shape_line, iterations_line]


def settings_text(lines: list[str], *, changed: bool) -> str:
    """`/settings`: the member's defaults and how they apply."""
    head = "Saved. " if changed else ""
    return "\n".join([
        f"**{head}Your defaults on this server**", *lines,
        "-# They apply when you leave `size` out of `/imagine` (a starting image keeps its "
        "own shape) and `iterations` out of `/imagine` or `/edit`; an option you give still "
        "wins. Change them with `/settings shape:… iterations:…`, or put the server's "
        "defaults back with `/settings reset:…`.",
    ])


def usage_defaults(lines: list[str]) -> str:
    """The part of `/usage` that names the member's defaults."""
    return "\n".join(["**Your defaults** (`/settings`)", *lines])


def stat_duration(seconds: float | None) -> str:
    """`under 1 s`, `42 s`, `1 min 35 s`, `2 h 5 min`: a measured duration, rounded to the
    nearest unit (unlike `format_duration`, an estimate rounded up: "2 min" for a median
    of 95 s would misreport a measurement)."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return "under 1 s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _spread_text(spread: Spread, noun: str) -> str:
    if spread.count == 0:
        return f"no {noun} yet"
    return (f"median {stat_duration(spread.median)} · 95% within {stat_duration(spread.p95)} "
            f"({spread.count} {noun})")


def _utc_date(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%a %Y-%m-%d")


#: The longest bar of the images-per-day chart.
STATS_BAR_WIDTH = 12


#: What each kind of failure (`Job.failure`) means, as `/stats` lists them.
FAILURE_CAUSES: dict[str, str] = {
    "crash": "the engine crashed",
    "out_of_memory": "out of memory",
    "shutdown": "interrupted by a restart",
    "prompt": "a prompt the engine refused",
    "input_image": "an image the engine could not use",
    "input_missing": "an input image gone from disk",
    "rejected": "a job the engine refused",
    "engine": "another engine error",
    "internal": "a bug (internal error)",
}


def failure_cause(kind: str | None) -> str:
    if kind is None:
        return "not recorded (failed before this version)"
    return FAILURE_CAUSES.get(kind, kind)


def stats_embed(stats: GuildStats) -> discord.Embed:
    """`/stats`, for admins: the server's last days (what counts is said in `bot.stats`)."""
    embed = discord.Embed(title="This server's images, last 7 days", colour=COLOUR_RUNNING)
    most = max((count for _day, count in stats.per_day), default=0)
    rows = []
    for day, count in stats.per_day:
        bar = "█" * (math.ceil(count / most * STATS_BAR_WIDTH) if most else 0)
        rows.append(f"{_utc_date(day)} {bar:<{STATS_BAR_WIDTH}} {count}")
    embed.add_field(name=f"Images per day (UTC): {stats.images} in all",
                    value="```\n" + "\n".join(rows) + "\n```", inline=False)
    top = "\n".join(f"{rank}. <@{user_id}>: {count} {'image' if count == 1 else 'images'}"
                    for rank, (user_id, count) in enumerate(stats.top_users, 1))
    embed.add_field(name="Top members", value=top or "nobody yet", inline=False)
    embed.add_field(name="GPU time", value=f"{stats.gpu_seconds / 60:.1f} min", inline=False)
    embed.add_field(name="Waiting (queued → started)",
                    value=_spread_text(stats.waiting, "jobs started"), inline=False)
    embed.add_field(name="Running (started → done)",
                    value=_spread_text(stats.running, "images"), inline=False)
    if stats.failed == 0:
        failures = "none"
    else:
        lines = [f"{count} × {failure_cause(kind)}" for kind, count in stats.failures]
        other = stats.failed - sum(count for _cause, count in stats.failures)
        if other:
            lines.append(f"{other} × other causes")
        failures = "\n".join(lines)
    embed.add_field(name=f"Failures: {stats.failed}", value=failures, inline=False)
    embed.set_footer(text=f"This server only, since 00:00 UTC on {_utc_date(stats.since)}. "
                          "Only you can see this.")
    return embed


# ---- issue 11 items 4-6: the edited image named, Retry, /jobs and /cancel

NO_IMAGE_MESSAGE = (
    "I found no image to edit in this channel. Attach one: `/edit prompt:withered flowers "
    "image:<file>`, or right-click a message with an image -> Apps -> **Edit image**, or "
    "make one first with `/imagine`."
)
NO_IMAGE_IN_MESSAGE = (
    "That message has no image I can edit (PNG, JPEG, WebP or GIF). "
    "Pick a message with a picture, or use `/edit` with `image:`."
)
HIDDEN_IMAGES_MESSAGE = (
    "I can't see other members' images here: attach it (`/edit prompt:withered flowers "
    "image:<file>`), or right-click it -> Apps -> **Edit image**. "
    "(Without Discord's Message Content permission I can't tell whether the newest messages "
    "here hold an image, so I won't guess an older one.)"
)
#: A failed job's message after a long stop (`bot.retry.fail_unresumed`).
NOT_RESUMED_TEXT = (
    "interrupted when the bot stopped, and not resumed: the bot was away too long to run it "
    "unasked. Press Retry to make it now"
)
RETRY_LABEL = "Retry"
#: How many jobs `/jobs` lists before "… and N more".
JOBS_LIMIT = 10
#: Longest prompt quoted in a `/jobs` line.
JOBS_PROMPT_CHARS = 60
#: Discord's limit on an autocomplete choice's name.
CHOICE_NAME_LIMIT = 100


def job_link(job: Job) -> str | None:
    """A jump link to the job's message (its result, else its progress), if it has one."""
    message_id = job.result_message_id or job.progress_message_id
    return None if message_id is None else message_link(job.guild_id, job.channel_id, message_id)


def source_embed(source: ImageSource) -> discord.Embed:
    """Under the queued answer of an edit: which image it edits, with a link to its message
    and a small picture of it (an embed thumbnail, which Discord shows small)."""
    if source.job_id is not None:
        what = f"the result of job `{source.job_id}`"
    elif source.author_id is not None:
        what = f"the image in <@{source.author_id}>'s message"
    else:
        what = f"your attachment {quoted(source.filename, 80)}" if source.filename else "your attachment"
    text = f"[{what}]({source.jump_url})" if source.jump_url else what
    embed = discord.Embed(description=f"Editing {text}.", colour=COLOUR_QUEUED)
    if source.thumbnail_url:
        embed.set_thumbnail(url=source.thumbnail_url)
    return embed


def hidden_images(newest_visible: str | None = None, *, is_result: bool = False) -> str:
    """`/edit` without an image when the newest messages are hidden from the bot; with a
    link to the newest image it can see, if any, and how to edit that one instead."""
    if newest_visible is None:
        return HIDDEN_IMAGES_MESSAGE
    how = "press its **Edit** button" if is_result else "right-click it -> Apps -> **Edit image**"
    return (f"{HIDDEN_IMAGES_MESSAGE}\nTo edit the newest image I can see, "
            f"[this one]({newest_visible}), {how}.")


def preview_not_editable(job: Job) -> str:
    """The "Edit image" menu on a job still being made: its picture is only a preview."""
    return (f"Job `{job.id}` is not finished: this message shows a preview, not its image. "
            "Once it is done, use **Edit** on the result (or this menu again).")


def not_retryable(job: Job) -> str:
    return (f"Job `{job.id}` can't be retried: only jobs that failed on the bot's side (a "
            "crash, too little memory, a restart) can. Change the request and ask again.")


def retry_smaller_label(size: tuple[int, int]) -> str:
    return f"Retry smaller ({size[0]}×{size[1]})"


def cancel_label(job: Job) -> str:
    """The Cancel button of one job in `/jobs`."""
    return f"Cancel {job.id}"


def job_status_text(job: Job, *, position: int | None = None,
                    progress: tuple[int, int] | None = None) -> str:
    """A job's state in one phrase: `waiting (#2)`, `running 40%`, `done 3 min ago`, …
    (`position` in the queue and `progress` (iteration, total) where known)."""
    if job.status is JobStatus.QUEUED:
        return f"waiting (#{position})" if position is not None else "waiting"
    if job.status is JobStatus.RUNNING:
        if progress is None or progress[1] <= 0:
            return "running"
        iteration, total = progress
        return f"running {int(100 * min(iteration, total) / total)}%"
    when = f" {discord_relative_time(job.finished_at)}" if job.finished_at else ""
    return f"{job.status.value}{when}"


def jobs_embed(lines: list[str], more: int) -> discord.Embed:
    """`/jobs`: one line per job (from `job_line`), then how many older ones are not shown."""
    embed = discord.Embed(title="Your jobs in this server", colour=COLOUR_RUNNING)
    if not lines:
        embed.description = "You have no jobs here yet. Make one with `/imagine`."
        return embed
    if more:
        lines = [*lines, f"… and {more} more."]
    embed.description = "\n".join(lines)
    embed.set_footer(text="Cancel a waiting or running job below, or with /cancel.")
    return embed


def job_line(job: Job, status: str) -> str:
    """`` `k3q7xm2a` · **running 40%** · “a castle” · [message](link) ``"""
    parts = [f"`{job.id}`", f"**{status}**", quoted(job.prompt, JOBS_PROMPT_CHARS)]
    link = job_link(job)
    if link is not None:
        parts.append(f"[message]({link})")
    return " · ".join(parts)


def job_choice_name(job: Job) -> str:
    """A `/cancel` autocomplete choice: `k3q7xm2a · waiting · a castle` (plain text: choice
    names show no Markdown and ping nobody), at most CHOICE_NAME_LIMIT characters."""
    head = f"{job.id} · {job_status_text(job)} · "
    prompt = " ".join(job.prompt.split())
    room = CHOICE_NAME_LIMIT - len(head)
    if len(prompt) > room:
        prompt = prompt[: room - 1].rstrip() + "…"
    return head + prompt


def no_job_to_cancel() -> str:
    return "You have no waiting or running job in this server. `/jobs` lists yours."


def unknown_job(job_id: str) -> str:
    return f"I have no job {quoted(job_id, 40)} in this server. `/jobs` lists yours."


def not_your_job(job: Job) -> str:
    return (f"Job `{job.id}` belongs to <@{job.user_id}>: only they or a server admin "
            "(Manage Server) can cancel it.")


def already_finished(job: Job) -> str:
    return f"Job `{job.id}` has already ended: it is {job.status.value}."
