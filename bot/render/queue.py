"""`/queue`: the running jobs (several at once when the engine batches), the queue's
length, and the asker's own waiting jobs with their place and when each should start.

Privacy: the queue is shared by every server and channel the bot is in, so a running
job's prompt is shown only when it is the asker's own (`RunningNow.prompt`); otherwise it
is "another member's image" with its progress. Other people's waiting jobs are only
counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.jobs import Job
from bot.render.text import STARTING, discord_relative_time, format_duration, quoted

#: Longest prompt quoted back in `/queue`; longer ones are cut with an ellipsis.
PROMPT_PREVIEW_CHARS = 80

QUEUE_EMPTY = "The queue is empty and nothing is running: a new image starts right away."


@dataclass(frozen=True)
class RunningNow:
    """A job running now, as `/queue` tells one member about it."""

    own: bool  # the asker's
    prompt: str | None  # its prompt: only the asker's own, when the store still has it
    iteration: int
    total: int
    left: float | None  # seconds, estimated (None or 0: not said)
    #: False while the engine holds it before it starts: it reads "starting", no iteration.
    started: bool = True


@dataclass(frozen=True)
class YourWaitingJob:
    """One of the asker's waiting jobs: its place (1 = next) and seconds until it starts
    (None while nothing has finished to estimate from)."""

    job: Job
    position: int | None
    starts_in: float | None


def _running_line(running: RunningNow) -> str:
    whose = f"your image {quoted(running.prompt, PROMPT_PREVIEW_CHARS)}" if running.prompt else (
        "your image" if running.own else "another member's image"
    )
    if not running.started:
        return f"{whose}: {STARTING}"
    progress = f"{running.iteration}/{running.total} iterations"
    left = f", about {format_duration(running.left)} left" if running.left else ""
    return f"{whose}: {progress}{left}"


def queue_text(running: Sequence[RunningNow], waiting: int, mine: Sequence[YourWaitingJob],
               now: float) -> str:
    """What `/queue` says: the jobs `running` (in the order they were handed to the
    engine), the number of `waiting` jobs, and the asker's own among them (`mine`, in queue
    order); times are relative to `now`."""
    if not running and not waiting:
        return QUEUE_EMPTY
    lines: list[str] = []
    if not running:
        lines.append("**Running now:** nothing.")
    elif len(running) == 1:
        lines.append(f"**Running now:** {_running_line(running[0])}.")
    else:
        lines.append(f"**Running now:** {len(running)} images at once:\n"
                     + "\n".join(f"• {_running_line(job)}." for job in running))

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
