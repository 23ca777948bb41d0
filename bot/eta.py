"""How long until a job starts or is ready: the one estimate behind the queued answer, the
job messages and `/queue`, so no two places can tell a member different times.

Speed: the median seconds per iteration of recent finished jobs (`Store`), which is
stable across prompts and sizes; on a fresh install, before any job has finished, the
running job's own measured speed. The running job's remaining time is measured on it
once it reports progress.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.services import RunningJob, Services


@dataclass(frozen=True)
class Estimate:
    """A queued job's place (1 = next) and seconds until it starts and until it is ready;
    times are None while there is nothing to estimate from (no job has finished yet)."""

    position: int | None
    starts_in: float | None
    ready_in: float | None


async def seconds_per_iteration(services: Services) -> float | None:
    """The speed used for every estimate (see the module docstring)."""
    measured = await services.store.seconds_per_iteration_estimate()
    if measured is None and services.running is not None:
        return services.running.seconds_per_iteration
    return measured


def running_remaining(running: RunningJob | None, speed: float | None) -> float | None:
    """Seconds left on the running job: measured on it once it reports progress, else from
    `speed`; 0 when nothing runs; None when nothing is known."""
    if running is None:
        return 0.0
    if running.seconds_per_iteration is not None:
        return max(0, running.total - running.iteration) * running.seconds_per_iteration
    if speed is None:
        return None
    return max(0, running.total - running.iteration) * speed


async def queue_estimates(services: Services) -> dict[str, Estimate]:
    """Every queued job's estimate, in run order: the one computation behind `estimate`
    (the queued answer, `/queue`) and the waiting jobs' messages (`bot.queue_notes`).

    The speed is read first; the queue is then read without an await, so the positions
    and times are of one moment of the queue."""
    speed = await seconds_per_iteration(services)
    remaining = running_remaining(services.running, speed)
    estimates: dict[str, Estimate] = {}
    for position, (job, ahead) in enumerate(services.scheduler.iterations_ahead(), start=1):
        if speed is None or remaining is None:
            estimates[job.id] = Estimate(position, None, None)
            continue
        starts_in = max(0.0, remaining) + ahead * speed
        estimates[job.id] = Estimate(position, starts_in, starts_in + job.iterations * speed)
    return estimates


async def estimate(services: Services, job_id: str) -> Estimate:
    """Where a queued job stands; position None once it has left the queue."""
    return (await queue_estimates(services)).get(job_id, Estimate(None, None, None))
