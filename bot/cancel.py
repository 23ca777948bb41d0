"""Cancelling a job, wherever it is: waiting in the queue, between the queue and the
engine, or computing. Used by the Cancel button; the caller has checked the clicker may.

The job runner and this module share the state a cancel needs through `Services`: the
queue, and `services.running` (the jobs that left the queue, each with `submitted` once
the engine has it). A waiting job ends here at once; a running one is marked, the engine
is asked to stop it if it has it, and the runner ends it when the engine says so (or,
before submitting, when it sees the mark); the other running jobs go on.
"""

from __future__ import annotations

from bot import render
from bot.services import Services
from bot.store import JobStateError


async def cancel_job(services: Services, job_id: str, *, by_user_id: int | None = None) -> str:
    """Cancel a queued or running job; returns what to tell the person who asked."""
    if services.scheduler.remove(job_id) is not None:
        try:
            job = await services.store.mark_cancelled(job_id)
        except JobStateError as error:
            services.messages.release(job_id)  # out of the queue: its place is free
            return render.cancel_lost_race(job_id, error.current)
        await services.messages.cancelled(job, by_user_id)
        return render.cancelled_before_start(job_id)
    running = services.running.get(job_id)
    if running is not None:
        running.cancel_requested = True
        running.cancelled_by = by_user_id
        if running.submitted:
            await services.engine.cancel(job_id)
        return render.stopping(job_id)
    stored = await services.store.get_job(job_id)
    if stored is None:
        return render.no_record_of_job(job_id)
    if stored.status.is_finished:
        return render.already_ended(job_id, stored.status)
    # Queued in the store but in no queue (should not happen): settle it.
    cancelled = await services.store.mark_cancelled(job_id)
    await services.messages.cancelled(cancelled, by_user_id)
    return render.cancelled(job_id)
