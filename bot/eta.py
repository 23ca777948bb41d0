"""How long until a job starts or is ready: the one estimate behind the queued answer, the
job messages and `/queue`, so no two places can tell a member different times.

Speed: the median seconds per iteration of recent finished jobs (`Store`), which is
stable across prompts and sizes; on a fresh install, before any job has finished, the
running jobs' own measured speed. A job's seconds are its own time in the engine, so when
the engine optimises several jobs at once this is the pace of one job among the others:
slower than a job alone, and it is the pace the waiting jobs will have. A computing job's
remaining time is measured on it once it reports progress.

When: the engine optimises up to `capacity` jobs at once (`Ready.capacity`, ENGINE_BATCH),
only jobs of one size together; a job of another size waits in the engine until those
have all ended, and the engine starts jobs in the order the runner handed them over (the
queue's order), so no job overtakes one that waits. `start_times` plays that forward: the
jobs computing now end when their remaining time is up; then each job handed over but not
started, and each queued job in run order, starts at the first moment there is room for it
(a place free, and no job of another size computing) and no earlier than the one before
it. With a capacity of 1 this is the plain sum: the running job's remaining time plus the
iterations ahead times the speed. What the model leaves out: a GPU whose memory fits
fewer jobs than the capacity (the engine then runs fewer), and a batch's pace changing
with how full it is.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bot.requests import job_size
from bot.services import Engine, RunningJob, Services

Size = tuple[int, int]


@dataclass(frozen=True)
class Estimate:
    """A queued job's place (1 = next) and seconds until it starts and until it is ready;
    times are None while there is nothing to estimate from (no job has finished yet)."""

    position: int | None
    starts_in: float | None
    ready_in: float | None


@dataclass(frozen=True)
class Computing:
    """A job the engine is computing: seconds until it ends, and its size (None: unknown,
    taken to fit with any)."""

    remaining: float
    size: Size | None


@dataclass(frozen=True)
class Pending:
    """A job not started yet, in the order the engine will take it: its whole run in
    seconds, and its size (None: unknown, taken to fit with any)."""

    seconds: float
    size: Size | None


def _fits(a: Size | None, b: Size | None) -> bool:
    return a is None or b is None or a == b


def start_times(capacity: int, computing: Sequence[Computing], pending: Sequence[Pending]) -> list[float]:
    """Seconds from now until each of `pending` starts, in order (see the module docstring).

    `capacity` below 1 counts as 1. Exact in the model: a job starts the moment the last
    job in its way ends, never on a rounded slot."""
    capacity = max(1, capacity)
    batch = [(max(0.0, job.remaining), job.size) for job in computing]
    now = 0.0
    starts: list[float] = []
    for job in pending:
        batch = [(end, size) for end, size in batch if end > now]
        if any(not _fits(size, job.size) for _, size in batch):
            now = max(end for end, _ in batch)  # another size: the batch drains first
            batch = []
        elif len(batch) >= capacity:
            ends = sorted(end for end, _ in batch)
            now = ends[len(batch) - capacity]  # the first end that leaves a place free
            batch = [(end, size) for end, size in batch if end > now]
        starts.append(now)
        batch.append((now + job.seconds, job.size))
    return starts


def engine_capacity(engine: Engine) -> int:
    """How many jobs the engine optimises at once: the live worker's `Ready.capacity`, else
    the last one's (it comes back with the same settings), else 1."""
    status = engine.status
    ready = status.ready or status.last_ready
    return ready.capacity if ready is not None else 1


async def seconds_per_iteration(services: Services) -> float | None:
    """The speed used for every estimate (see the module docstring)."""
    measured = await services.store.seconds_per_iteration_estimate()
    if measured is None:
        speeds = [r.seconds_per_iteration for r in services.running.values()
                  if r.seconds_per_iteration is not None]
        return statistics.median(speeds) if speeds else None
    return measured


def running_remaining(running: RunningJob | None, speed: float | None) -> float | None:
    """Seconds left on a running job: measured on it once it reports progress, else from
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

    The speed is read first; the queue and the running jobs are then read without an
    await, so the positions and times are of one moment."""
    return estimates_at(services, await seconds_per_iteration(services))


def estimates_at(services: Services, speed: float | None) -> dict[str, Estimate]:
    """`queue_estimates` at a speed read before (`seconds_per_iteration`): no await, so a
    caller can queue a job and answer with its place before any other task runs."""
    queued = services.scheduler.queued_jobs()
    computing: list[Computing] = []
    pending: list[Pending] = []
    known = speed is not None
    for running in services.running.values():
        left = running_remaining(running, speed)
        if left is None:
            known = False
        elif running.started:
            computing.append(Computing(left, running.size))
        else:  # handed to the engine, waiting there for room: first in line
            pending.append(Pending(left, running.size))
    if speed is None or not known:
        return {job.id: Estimate(position, None, None)
                for position, job in enumerate(queued, start=1)}
    settings = services.settings
    ahead = len(pending)
    pending += [Pending(job.iterations * speed, job_size(settings, job)) for job in queued]
    starts = start_times(engine_capacity(services.engine), computing, pending)
    return {job.id: Estimate(position, start, start + job.iterations * speed)
            for position, (job, start) in enumerate(zip(queued, starts[ahead:]), start=1)}


async def estimate(services: Services, job_id: str) -> Estimate:
    """Where a queued job stands; position None once it has left the queue."""
    return estimate_at(services, job_id, await seconds_per_iteration(services))


def estimate_at(services: Services, job_id: str, speed: float | None) -> Estimate:
    """`estimate` at a speed read before: no await (see `estimates_at`)."""
    return estimates_at(services, speed).get(job_id, Estimate(None, None, None))
