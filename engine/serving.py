"""What the worker needs from the thing that computes images: the runner interfaces.

Why two: the engine serves several jobs at once (issue 13) by advancing them together, one
iteration at a time, so the worker drives a `BatchRunner` step by step and each job joins
and leaves at a step boundary. A runner that can only run one job from start to end (a
`JobRunner`, such as the tests' scripted ones) still serves, one job at a time, through
`OneAtATime`. `run_alone` goes the other way: one job through a `BatchRunner`'s steps,
for callers that want a job's result and nothing else.

Stdlib only, like the protocol it speaks: no runner needs torch to be described.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeGuard, cast

from engine import protocol as p

__all__ = ["BatchRunner", "JobEvents", "JobRunner", "OneAtATime", "as_batch_runner", "run_alone"]

ProgressCallback = Callable[[p.Progress], None]


def _never() -> bool:
    return False


@dataclass(frozen=True, eq=False)
class JobEvents:
    """Where a runner reports one job: `progress` at its progress points, `end` exactly once
    with the result or the exception that ended it (`Cancelled`, an `EngineError`, or a bug),
    and `should_cancel`, which may turn true from another thread at any time."""

    progress: ProgressCallback
    end: Callable[[p.Done | BaseException], None]
    should_cancel: Callable[[], bool] = _never


class JobRunner(Protocol):
    """Runs one job from start to end (the worker serves it one job at a time)."""

    device: str
    vqgan: str
    clip: str

    def run(self, job: p.Submit, on_progress: ProgressCallback,
            should_cancel: Callable[[], bool]) -> p.Done:
        """Run one job. Raises engine.errors.Cancelled, an EngineError, or anything (a bug)."""

    def free_memory(self) -> None:
        """Give back cached device memory after a failure (out of memory in particular)."""


class BatchRunner(Protocol):
    """Advances up to `capacity` jobs together, one step (iteration) at a time.

    The worker calls everything from one thread. A job's events go to the `JobEvents` given
    to `start`; `step` raises only for a bug of the runner itself, never for a job's failure.
    """

    device: str
    vqgan: str
    clip: str
    capacity: int  # the most jobs it runs at once (`ready.capacity`)

    @property
    def busy(self) -> bool:
        """Some job is started and not yet ended."""

    def can_start(self, job: p.Submit) -> bool:
        """Whether `job` may start now, beside the running jobs (size, room, memory). Always
        true when nothing runs, so a job that fits nowhere else runs alone."""

    def start(self, job: p.Submit, events: JobEvents) -> None:
        """Start `job`; it advances from the next `step`. A job that cannot start (a bad
        image, a bad prompt) ends at once through `events.end`."""

    def step(self) -> None:
        """One step boundary: cancelled jobs end, every running job advances one iteration,
        and those that finished (or failed) end."""

    def free_memory(self) -> None:
        """Give back cached device memory after a failure (out of memory in particular)."""


def is_batch_runner(runner: JobRunner | BatchRunner) -> TypeGuard[BatchRunner]:
    return callable(getattr(runner, "step", None)) and callable(getattr(runner, "can_start", None))


class OneAtATime:
    """A `JobRunner` as a `BatchRunner` of capacity 1: a step runs the whole job."""

    capacity = 1

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self.device, self.vqgan, self.clip = runner.device, runner.vqgan, runner.clip
        self._job: tuple[p.Submit, JobEvents] | None = None

    @property
    def busy(self) -> bool:
        return self._job is not None

    def can_start(self, job: p.Submit) -> bool:
        return self._job is None

    def start(self, job: p.Submit, events: JobEvents) -> None:
        assert self._job is None, "one job at a time"
        self._job = (job, events)

    def step(self) -> None:
        if self._job is None:
            return
        (job, events), self._job = self._job, None
        try:
            done = self.runner.run(job, events.progress, events.should_cancel)
        except Exception as error:
            events.end(error)
            return
        events.end(done)

    def free_memory(self) -> None:
        self.runner.free_memory()


def as_batch_runner(runner: JobRunner | BatchRunner) -> BatchRunner:
    """`runner` itself if it steps jobs, else it wrapped to run them one at a time."""
    if is_batch_runner(runner):
        return runner
    return OneAtATime(cast(JobRunner, runner))


def run_alone(runner: BatchRunner, job: p.Submit, on_progress: ProgressCallback,
              should_cancel: Callable[[], bool] = _never) -> p.Done:
    """Run one job alone through `runner`'s steps: its `Done`, or the exception that ended
    it raised. The runner must be idle: the steps would advance its other jobs too."""
    assert not runner.busy, "run_alone needs an idle runner"
    ended: list[p.Done | BaseException] = []
    runner.start(job, JobEvents(on_progress, ended.append, should_cancel))
    while not ended:
        if not runner.busy:
            raise RuntimeError(f"the runner dropped job {job.job!r} without ending it")
        runner.step()
    outcome = ended[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
