"""`/status`, for admins: the image engine, the queue and today's jobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import discord

from bot.engine_status import EngineState, EngineStatus
from bot.jobs import JobStatus, RunningJob
from bot.worker_status import WorkerState, WorkerStatus
from bot.render.text import (
    COLOUR_CANCELLED,
    COLOUR_DONE,
    COLOUR_FAILED,
    JOB_STATUS_WORDS,
    STARTING,
    discord_relative_time,
)

#: How much of the engine's last error `/status` shows (an embed field holds 1024).
STATUS_ERROR_LIMIT = 900
#: How many workers `/status` names one by one (a field holds 1024 characters).
STATUS_WORKERS_LIMIT = 6
#: How many of the jobs the engine has `/status` names one by one (a field holds 1024).
STATUS_RUNNING_LIMIT = 16
#: How `/status` says the engine's state.
ENGINE_STATE_WORDS: dict[EngineState, str] = {
    EngineState.NOT_STARTED: "not started",
    EngineState.STARTING: "starting",
    EngineState.READY: "ready",
    EngineState.RESTARTING: "restarting",
    EngineState.DOWN: "down",
    EngineState.CLOSED: "closed",
}
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
    pid = f" · pid {ready.pid}" if engine.ready is not None and ready.pid else ""
    return f"`{ready.device}`{pid}{note}", f"VQGAN `{ready.vqgan}`, CLIP `{ready.clip}`{note}"


def _engine_capacity(engine: EngineStatus) -> str:
    """How many jobs the engine optimises at once: the live worker's, else the last one's."""
    ready, note = engine.ready, ""
    if ready is None and engine.last_ready is not None:
        ready, note = engine.last_ready, " (when it last ran)"
    if ready is None:
        return "not known until the engine starts"
    if ready.capacity == 1:
        return f"1 image at a time{note}"
    return f"{ready.capacity} images at once{note}"


def status_running_line(running: RunningJob) -> str:
    """One job the engine has: its id and iteration, or that it is starting."""
    state = f"iteration {running.iteration}/{running.total}" if running.started else STARTING
    return f"job `{running.job_id}`, {state}"


def _running_text(running: Sequence[RunningJob]) -> str:
    if not running:
        return "nothing running"
    if len(running) == 1:
        return status_running_line(running[0])
    shown = [status_running_line(job) for job in running[:STATUS_RUNNING_LIMIT]]
    more = len(running) - len(shown)
    return (f"{len(running)} running:\n" + "\n".join(shown)
            + (f"\n… and {more} more" if more else ""))


def status_worker_line(worker: WorkerStatus) -> str:
    """One engine process or remote worker: name, state, device, models, how busy, jobs
    done, when last seen, and why it is not used (if it is not)."""
    if worker.state is WorkerState.LIVE or worker.state is WorkerState.DRAINING:
        busy = (f"busy {worker.busy}/{worker.capacity}" if worker.busy
                else f"idle (room for {worker.capacity})")
    else:
        busy = "not used"
    state = "" if worker.state is WorkerState.LIVE else f" **{worker.state.value}**"
    line = (f"`{worker.name}`{state} · `{worker.device}` · VQGAN `{worker.vqgan}`, "
            f"CLIP `{worker.clip}` · {busy} · {worker.jobs_done} done · last seen "
            f"{discord_relative_time(worker.last_seen)}")
    if worker.note:
        note = worker.note.replace("`", "'")
        line += f"\n  {note[:150] + '…' if len(note) > 150 else note}"
    return line


def _workers_text(workers: Sequence[WorkerStatus]) -> str:
    shown = [status_worker_line(worker) for worker in workers[:STATUS_WORKERS_LIMIT]]
    more = len(workers) - len(shown)
    text = "\n".join(shown) + (f"\n… and {more} more" if more else "")
    return text if len(text) <= 1024 else text[:1023] + "…"


def status_embed(
    engine: EngineStatus,
    *,
    queued: int,
    running: Sequence[RunningJob],
    finished_today: Mapping[JobStatus, int],
    configured_models: tuple[str, str],
    workers: Sequence[WorkerStatus] = (),
) -> discord.Embed:
    """`/status`, for admins only: the engine (state, device, models, how many jobs it
    runs at once, restarts, the last error in full, paths and all), the queue and every
    job the engine has, and the jobs that ended today (UTC).

    `running` are the jobs that left the queue and have not ended, in the order they were
    handed over; `finished_today` counts jobs by final status (done, failed, cancelled);
    `workers` are the engine's processes or remote workers, each on a line of its own."""
    embed = discord.Embed(title="Image engine status",
                          colour=STATUS_COLOURS.get(engine.state, COLOUR_CANCELLED))
    restarts = {0: "no restarts", 1: "restarted once"}.get(engine.restarts,
                                                           f"restarted {engine.restarts} times")
    embed.add_field(name="Engine", value=f"**{ENGINE_STATE_WORDS[engine.state]}** since "
                    f"{discord_relative_time(engine.since)} · {restarts}", inline=False)
    device, models = _engine_models(engine, configured_models)
    embed.add_field(name="Device", value=device)
    embed.add_field(name="Models", value=models)
    embed.add_field(name="Capacity", value=_engine_capacity(engine))
    if workers:
        embed.add_field(name=f"Workers ({len(workers)})", value=_workers_text(workers),
                        inline=False)
    embed.add_field(name="Queue", value=f"{queued} waiting · {_running_text(running)}", inline=False)
    counts = " · ".join(f"{finished_today.get(status, 0)} {JOB_STATUS_WORDS[status]}"
                        for status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED))
    embed.add_field(name="Today (since 00:00 UTC)", value=counts, inline=False)
    if engine.last_error is not None:
        when = (f"{discord_relative_time(engine.last_error_at)}\n"
                if engine.last_error_at is not None else "")
        embed.add_field(name="Last error",
                        value=when + code_block(engine.last_error, STATUS_ERROR_LIMIT),
                        inline=False)
    embed.set_footer(text="Only you can see this: the error may name the server's files.")
    return embed
