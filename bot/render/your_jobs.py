"""`/jobs` and `/cancel`: a member's own jobs, and the answers about cancelling one."""

from __future__ import annotations

import discord

from bot.jobs import Job, JobStatus
from bot.render.job_messages import job_link
from bot.render.text import COLOUR_RUNNING, JOB_STATUS_WORDS, STARTING, discord_relative_time, quoted

#: How many jobs `/jobs` lists before "… and N more".
JOBS_LIMIT = 10
#: Longest prompt quoted in a `/jobs` line.
JOBS_PROMPT_CHARS = 60
#: Discord's limit on an autocomplete choice's name.
CHOICE_NAME_LIMIT = 100


def cancel_label(job: Job) -> str:
    """The Cancel button of one job in `/jobs`."""
    return f"Cancel {job.id}"


def job_status_text(job: Job, *, position: int | None = None,
                    progress: tuple[int, int] | None = None, starting: bool = False) -> str:
    """A job's state in one phrase: `waiting (#2)`, `starting`, `running 40%`, `done 3 min
    ago`, … (`position` in the queue and `progress` (iteration, total) where known;
    `starting`: handed to the engine, which has not started it yet)."""
    if job.status is JobStatus.QUEUED:
        return f"waiting (#{position})" if position is not None else "waiting"
    if job.status is JobStatus.RUNNING and starting:
        return STARTING
    if job.status is JobStatus.RUNNING:
        if progress is None or progress[1] <= 0:
            return "running"
        iteration, total = progress
        return f"running {int(100 * min(iteration, total) / total)}%"
    when = f" {discord_relative_time(job.finished_at)}" if job.finished_at else ""
    return f"{JOB_STATUS_WORDS[job.status]}{when}"


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
    return f"Job `{job.id}` has already ended: it is {JOB_STATUS_WORDS[job.status]}."


# ---- what `/cancel` and the Cancel buttons answer (`bot.cancel`)


def cancelled_before_start(job_id: str) -> str:
    return f"Cancelled job `{job_id}` before it started. It was not charged."


def cancel_lost_race(job_id: str, status: JobStatus) -> str:
    """The job left the queue and ended otherwise in the same moment (`status`: how)."""
    return f"Job `{job_id}` could not be cancelled: it is {JOB_STATUS_WORDS[status]}."


def stopping(job_id: str) -> str:
    """The running job: the engine is asked to stop it."""
    return f"Stopping job `{job_id}`… It will not be charged."


def no_record_of_job(job_id: str) -> str:
    return f"I have no record of job `{job_id}`."


def already_ended(job_id: str, status: JobStatus) -> str:
    return f"Job `{job_id}` has already {JOB_STATUS_WORDS[status]}."


def cancelled(job_id: str) -> str:
    return f"Cancelled job `{job_id}`. It was not charged."
