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


async def estimate(services: Services, job_id: str) -> Estimate:
    """Where a queued job stands; position None once it has left the queue."""
    speed = await seconds_per_iteration(services)
    scheduler = services.scheduler
    position = scheduler.position(job_id)
    remaining = running_remaining(services.running, speed)
    if position is None or speed is None or remaining is None:
        return Estimate(position, None, None)
    starts_in = scheduler.eta_seconds(job_id, speed, remaining)
    ready_in = scheduler.eta_seconds(job_id, speed, remaining, include_self=True)
    return Estimate(position, starts_in, ready_in)
