"""The ETA model (`bot.eta`) with numbers: jobs computing together on an engine that
optimises several at once (issue 13), one size at a time, none overtaking another."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from bot.eta import Computing, Pending, engine_capacity, queue_estimates, seconds_per_iteration, start_times
from bot.jobs import Job, JobKind, JobStatus, RunningJob
from bot.scheduler import Scheduler
from tests.bot.conftest import make_settings
from tests.bot.fake_engine import FakeEngine

SQUARE = (64, 64)
WIDE = (96, 48)


# --- the model ---------------------------------------------------------------------------------


def test_with_room_for_one_each_job_starts_when_the_one_before_it_ends() -> None:
    assert start_times(1, [Computing(30, SQUARE)], [Pending(100, SQUARE), Pending(50, SQUARE)]) == [30, 130]


def test_with_room_for_three_three_jobs_start_at_once_and_the_fourth_when_one_ends() -> None:
    pending = [Pending(100, SQUARE), Pending(100, SQUARE), Pending(100, SQUARE), Pending(100, SQUARE)]
    assert start_times(3, [], pending) == [0, 0, 0, 100]


def test_a_waiting_job_takes_the_first_place_freed() -> None:
    computing = [Computing(80, SQUARE), Computing(30, SQUARE)]
    assert start_times(2, computing, [Pending(100, SQUARE), Pending(100, SQUARE)]) == [30, 80]


def test_a_job_of_another_size_waits_until_the_batch_has_drained() -> None:
    computing = [Computing(30, SQUARE), Computing(80, SQUARE)]
    assert start_times(3, computing, [Pending(100, WIDE)]) == [80]


def test_a_job_behind_one_of_another_size_does_not_overtake_it() -> None:
    computing = [Computing(30, SQUARE), Computing(80, SQUARE)]
    # The square one would fit beside the squares at once, but waits its turn behind the
    # wide one, and then for the wide one to end.
    assert start_times(3, computing, [Pending(100, WIDE), Pending(10, SQUARE)]) == [80, 180]


def test_jobs_of_the_new_size_share_the_batch_once_it_has_drained() -> None:
    assert start_times(3, [Computing(30, SQUARE)], [Pending(100, WIDE), Pending(10, WIDE)]) == [30, 30]


def test_an_unknown_size_fits_with_any() -> None:
    assert start_times(2, [Computing(30, SQUARE)], [Pending(100, None)]) == [0]


# --- the engine's capacity ---------------------------------------------------------------------


async def test_the_capacity_is_the_live_engines() -> None:
    engine = FakeEngine(capacity=4)
    await engine.start()
    assert engine_capacity(engine) == 4


async def test_the_capacity_of_a_down_engine_is_the_one_it_last_had() -> None:
    engine = FakeEngine(capacity=4)
    await engine.start()
    engine.go_down()
    assert engine.ready_info is None and engine_capacity(engine) == 4


def test_an_engine_never_started_counts_as_one_at_a_time() -> None:
    assert engine_capacity(FakeEngine(capacity=4)) == 1


# --- queue_estimates: the numbers every place shows ------------------------------------------


@dataclass
class Store:
    speed: float | None

    async def seconds_per_iteration_estimate(self) -> float | None:
        return self.speed


@dataclass
class Services:
    """What `queue_estimates` reads of `bot.services.Services`."""

    store: Store
    engine: FakeEngine
    scheduler: Scheduler = field(default_factory=lambda: Scheduler(None))
    running: dict[str, RunningJob] = field(default_factory=dict)
    settings: Any = field(default_factory=lambda: make_settings(default_size=SQUARE))


def job(job_id: str, user_id: int, iterations: int = 400, size: tuple[int, int] = SQUARE) -> Job:
    return Job(id=job_id, guild_id=1, channel_id=2, user_id=user_id, kind=JobKind.IMAGINE,
               prompt=job_id, iterations=iterations, status=JobStatus.QUEUED, created_at=0.0,
               params={"width": size[0], "height": size[1]})


async def services(capacity: int, speed: float | None = 0.5) -> Services:
    engine = FakeEngine(capacity=capacity)
    await engine.start()
    return Services(Store(speed), engine)


async def test_three_places_share_the_queue_at_the_measured_per_job_speed() -> None:
    s = await services(capacity=3)
    # One job computing: 100 of 400 iterations done at its own 0.4 s each: 120 s left.
    s.running["r"] = RunningJob("r", 9, 100, 400, 0.0, seconds_per_iteration=0.4, started=True, size=SQUARE)
    for index in range(4):
        s.scheduler.submit(job(f"q{index}", user_id=index))

    estimates = await queue_estimates(s)  # type: ignore[arg-type]

    # 400 iterations at 0.5 s = 200 s each: two start now beside "r", the third when "r"
    # ends (120 s), the fourth when the first two end (200 s).
    assert [(e.position, e.starts_in, e.ready_in) for e in estimates.values()] == [
        (1, 0.0, 200.0), (2, 0.0, 200.0), (3, 120.0, 320.0), (4, 200.0, 400.0)]


async def test_with_room_for_one_the_wait_is_the_iterations_ahead_times_the_speed() -> None:
    s = await services(capacity=1)
    s.running["r"] = RunningJob("r", 9, 100, 400, 0.0, seconds_per_iteration=0.4, started=True, size=SQUARE)
    s.scheduler.submit(job("a", 1, iterations=100))
    s.scheduler.submit(job("b", 2, iterations=200))

    estimates = await queue_estimates(s)  # type: ignore[arg-type]

    assert (estimates["a"].starts_in, estimates["b"].starts_in) == (120.0, 120.0 + 100 * 0.5)
    assert estimates["b"].ready_in == pytest.approx(120.0 + 300 * 0.5)


async def test_a_job_the_engine_holds_before_it_starts_is_ahead_of_the_queue() -> None:
    s = await services(capacity=2)
    s.running["r"] = RunningJob("r", 9, 0, 400, 0.0, started=True, size=SQUARE)
    s.running["held"] = RunningJob("held", 8, 0, 400, 0.0, size=WIDE)  # waits for "r"
    s.scheduler.submit(job("q", 1))

    estimates = await queue_estimates(s)  # type: ignore[arg-type]

    # "r" ends at 200 s; "held" (wide) runs 200..400 s; "q" (square) waits for it to end.
    assert estimates["q"].starts_in == 400.0


async def test_without_any_speed_there_are_places_and_no_times() -> None:
    s = await services(capacity=3, speed=None)
    s.scheduler.submit(job("q", 1))

    estimates = await queue_estimates(s)  # type: ignore[arg-type]

    assert (estimates["q"].position, estimates["q"].starts_in, estimates["q"].ready_in) == (1, None, None)


async def test_before_any_job_finished_the_speed_is_the_running_jobs_median() -> None:
    s = await services(capacity=3, speed=None)
    for name, speed in (("a", 0.3), ("b", 0.6), ("c", 0.9)):
        s.running[name] = RunningJob(name, 1, 10, 400, 0.0, seconds_per_iteration=speed, started=True)

    assert await seconds_per_iteration(s) == 0.6  # type: ignore[arg-type]

