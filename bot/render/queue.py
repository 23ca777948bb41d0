"""`/queue`: the running job, the queue's length, and the asker's own waiting jobs with
their place and when each should start.

Privacy: the queue is shared by every server and channel the bot is in, so the running
job's prompt is shown only when it is the asker's own (`RunningNow.prompt`); otherwise it
is "another member's image" with its progress. Other people's waiting jobs are only
counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.jobs import Job
from bot.render.text import discord_relative_time, format_duration, quoted

#: Longest prompt quoted back in `/queue`; longer ones are cut with an ellipsis.
PROMPT_PREVIEW_CHARS = 80

QUEUE_EMPTY = "The queue is empty and nothing is running: a new image starts right away."


@dataclass(frozen=True)
class RunningNow:
    """The job running now, as `/queue` tells one member about it."""

    own: bool  # the asker's
    prompt: str | None  # its prompt: only the asker's own, when the store still has it
    iteration: int
    total: int
    left: float | None  # seconds, estimated (None or 0: not said)


@dataclass(frozen=True)
class YourWaitingJob:
    """One of the asker's waiting jobs: its place (1 = next) and seconds until it starts
    (None while nothing has finished to estimate from)."""

    job: Job
    position: int | None
    starts_in: float | None


def queue_text(running: RunningNow | None, waiting: int, mine: Sequence[YourWaitingJob],
               now: float) -> str:
    """What `/queue` says: `running` (None: nothing), the number of `waiting` jobs, and the
    asker's own among them (`mine`, in queue order); times are relative to `now`."""
    if running is None and not waiting:
        return QUEUE_EMPTY
    lines: list[str] = []
    if running is None:
        lines.append("**Running now:** nothing.")
    else:
        whose = f"your image {quoted(running.prompt, PROMPT_PREVIEW_CHARS)}" if running.prompt else (
            "your image" if running.own else "another member's image"
        )
        progress = f"{running.iteration}/{running.total} iterations"
        left = f", about {format_duration(running.left)} left" if running.left else ""
        lines.append(f"**Running now:** {whose}: {progress}{left}.")

    noun = "image" if waiting == 1 else "images"
    lines.append(f"**Waiting:** {waiting} {noun} in the queue.")

    if not mine:
        lines.append("You have no images waiting.")
        return "\n".join(lines)
    lines.append("**Yours:**")
    for entry in mine:
        eta = entry.starts_in
        if eta is None:
            when = "no time estimate yet (no image has finished yet)"
        elif eta < 1:
            when = "starts next"
        else:
            when = f"starts {discord_relative_time(now + eta)} (in about {format_duration(eta)})"
        job = entry.job
        lines.append(f"#{entry.position} {quoted(job.prompt, PROMPT_PREVIEW_CHARS)} (job `{job.id}`): {when}")
    return "\n".join(lines)
