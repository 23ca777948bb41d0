"""The buttons of a result (Info, Timelapse) and of a failure (Retry, Retry smaller): their
labels, answers and refusals.
"""

from __future__ import annotations

from collections.abc import Mapping

import discord

from bot.jobs import Job, JobStatus
from bot.render.job_messages import size_text
from bot.render.text import (
    COLOUR_DONE,
    FIELD_LIMIT,
    JOB_STATUS_WORDS,
    TITLE_LIMIT,
    discord_relative_time,
    format_duration,
    quoted,
    user_text,
)

#: The buttons' labels and emoji (their colours are `bot.views`').
CANCEL_LABEL = "Cancel"
CANCEL_EMOJI = "✖️"
REROLL_LABEL = "Reroll"
REROLL_EMOJI = "🎲"
VARY_LABEL = "Vary"
VARY_EMOJI = "🔀"
EDIT_LABEL = "Edit"
EDIT_EMOJI = "✏️"
INFO_LABEL = "Info"
INFO_EMOJI = "ℹ️"
TIMELAPSE_LABEL = "Timelapse"
TIMELAPSE_EMOJI = "🎞️"
RETRY_LABEL = "Retry"
RETRY_EMOJI = "🔁"
RETRY_SMALLER_LABEL = "Retry smaller"
RETRY_SMALLER_EMOJI = "🔽"

#: The Edit button's and the "Edit image" menu's modal.
EDIT_MODAL_TITLE = "Edit image"
EDIT_PROMPT_LABEL = "Prompt"
EDIT_PROMPT_PLACEHOLDER = "withered flowers  (a + b mixes, text:2 weights)"
EDIT_REPLACE_LABEL = "Replace (optional)"
EDIT_REPLACE_PLACEHOLDER = "e.g. flowers: only that part changes"


def job_forgotten(job_id: str) -> str:
    """A button of a job the store does not know (any more)."""
    return f"I have no record of job `{job_id}` any more."


def only_requester_cancels(job: Job) -> str:
    """Cancel, clicked by someone who is neither the requester nor an admin."""
    return (f"Only <@{job.user_id}>, who asked for this image, or a server admin "
            "(Manage Server) can cancel it.")


def cancel_too_late(job: Job) -> str:
    """Cancel on a job that has already ended."""
    ended = "finished" if job.status is JobStatus.DONE else "ended"
    return f"Job `{job.id}` has already {JOB_STATUS_WORDS[job.status]} ({ended})."


CANNOT_POST_TIMELAPSE = (
    "I can't post the timelapse in this channel. Ask a server admin to give me the **Send "
    "Messages** and **Attach Files** permissions here."
)


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


#: What each button that needs a finished image would do with it, as `no_result_text`
#: says it.
EDIT_VERB = "edit"
VARY_VERB = "vary"
INFO_VERB = "describe"
TIMELAPSE_VERB = "animate"


def no_result_text(job: Job, what: str) -> str:
    """A button that needs a finished image, on a job without one (any more); `what` is
    the button's verb (`EDIT_VERB`, ...)."""
    return f"Job `{job.id}` has no finished image to {what}."


def result_missing_text(job: Job) -> str:
    return f"The image of job `{job.id}` is no longer on the bot's disk."


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


def not_retryable(job: Job) -> str:
    return (f"Job `{job.id}` can't be retried: only jobs that failed on the bot's side (a "
            "crash, too little memory, a restart) can. Change the request and ask again.")


def retry_smaller_label(size: tuple[int, int]) -> str:
    return f"Retry smaller ({size[0]}×{size[1]})"
