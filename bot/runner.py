"""The job runner: the one background task that feeds the engine from the queue, and a
task per job handed over that keeps that job's channel message up to date.

Life of a job here: the runner waits until the queue holds a job and the engine has room,
makes sure the engine is running (starting it if needed, retrying with backoff while it
cannot start), takes the next job by the fair rule (`Scheduler.pop_nowait`), marks it
running and submits it to the engine; then a task of its own turns the engine's events
into edits of the job's progress message:

- `Progress` -> every preview JPEG kept as a frame of the job's timelapse
  (`bot.timelapse`), and the newest one attached (shown as the embed image) with a progress
  bar and an ETA: the first preview at once, then at most once per PROGRESS_INTERVAL
  seconds (`ProgressThrottle`). A Discord error while editing progress is logged and
  ignored: the picture matters more than the preview.
- `Done` -> the PNG saved as RESULTS_DIR/<job id>.png, the job marked done, and the
  result (PNG, prompt, seed, time, its buttons) posted as a new message that notifies the
  requester, which replaces the progress message (`result_message_id` and
  `progress_message_id` both name it from then on).
- `Failed` -> marked failed (not charged) with its kind (`Job.failure`), the plain reason
  posted the same way, with Retry buttons if it was not the user's doing (`bot.retry`).
- `Cancelled` -> marked cancelled (not charged), shown in the same message.

Several at once: the engine says in `Ready.capacity` how many jobs it optimises at once
(ENGINE_BATCH; 1 for an engine that does not say; the sum over the live workers for remote
workers), and the runner hands over a job while `Engine.free_capacity()` (that capacity
minus the jobs the engine holds) is above 0 (`services.running` lists them, in the order
they were handed over), taking each next one by the same fair rule the moment one ends or
the engine's status changes (a worker came back, or joined: see `_engine_changed`). Jobs are handed over one at a time, by the loop
itself, so the engine receives them in the queue's order; the engine starts them in that
order too (a job of another size than those computing waits until they end, and nothing
overtakes it), so a waiting job is never passed over for ever. Every job keeps its own
message, throttle, cancel, result or failure, frames and `Scheduler.finish`; a job the
engine holds before its `Started` reads "Starting" and shows no iteration anywhere. While
the engine is not ready the runner hands over at most one job (the others keep their
place in the queue, where the queue notes tell them the engine is down), and it looks for
room again when the engine is back.

The job's message is written by `services.messages` (`bot.job_messages`); cancelling is
`bot.cancel`, which meets the runner in `services.running`. The messages of the jobs still
waiting are kept true by `bot.queue_notes` (`self.notes`): the runner writes only the jobs
it has taken.

Restarts: `restore()` (called from setup_hook, before any command can arrive) puts the
jobs a stopped bot left running back at the front of the queue, followed by the queued
ones; their progress message ids are in the store, so the same messages go on updating.
A job interrupted by shutdown stays `running` in the store for exactly that reason; jobs
asked more than a day before the restart are not resumed but offered Retry
(`bot.retry.fail_unresumed`).

The engine is started at boot (`ImagineBot(warm_engine=True)`, which `vqgan-clip-bot`
uses: the first user does not wait for the model load, and a model problem shows in the log
at once), or when the first job waits (tests). Once started, the engine client supervises
(restarts) the worker itself.

While the engine is down (a start or restart failed: a model file removed, say) nothing
fails: the jobs wait, the queued ones in the queue and those handed over in the engine
client. A second task follows the engine's state (`Engine.wait_status_change`) and, only
when it changes between down and ready, turns the messages of the jobs handed over and not
yet started into "the image engine is down; your image keeps its place" (never the reason:
it can name the server's files; that goes to the log and `/status`) or back into
"starting", and tells the queue notes, which do the same for every queued job.
`_notes_lock` keeps those edits and the runner's own edits of those jobs in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from discord.ext import commands

from bot import render
from bot.engine_status import EngineState, EngineStatus
from bot.jobs import FAIL_INPUT_MISSING, JOB_QUEUED_EVENT, Job, JobStatus, RunningJob
from bot.queue_notes import QueueNotes
from bot.requests import job_size
from bot.retry import fail_unresumed
from bot.services import Services
from bot.store import JobStateError
from bot.timelapse import discard_frames, keep_frame
from engine import protocol
from engine.prompts import parse_prompt

log = logging.getLogger(__name__)

#: Seconds between attempts to start an engine that fails to start; the last repeats.
ENGINE_RETRY_DELAYS: tuple[float, ...] = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Progress events per job asked of the engine; the edit throttle thins them further.
PROGRESS_EVENTS_PER_JOB = 25
#: The discord.py custom event that wakes the runner when the engine may have room: a job
#: ended, or the engine is ready again (with its capacity).
RUNNER_WAKE_EVENT = "vqc_runner_wake"


@dataclass
class ProgressThrottle:
    """When a job's progress is shown: the first preview at once, so that even a short job
    shows its image forming, then at most once per `interval` seconds; and only when its
    channel's pace has room (`bot.pacing`), else a later event is shown in its stead. A
    message that is `behind` (its "Starting" was skipped) shows the first event it can."""

    interval: float
    last: float = field(default_factory=lambda: time.monotonic())  # read now: tests move it
    preview_shown: bool = False

    def due(self, *, has_preview: bool, room: bool = True, behind: bool = False) -> bool:
        """Whether this progress event is shown; counts it if so."""
        now = time.monotonic()
        if not room:
            return False
        if behind or (has_preview and not self.preview_shown) or now - self.last >= self.interval:
            self.last = now
            self.preview_shown = self.preview_shown or has_preview
            return True
        return False


class JobInputMissing(Exception):
    """An input image of the job is no longer on disk; `str(e)` is for the user."""


class JobRunner:
    """See the module docstring. One per bot; `start()` after `restore()`, `stop()` at close."""

    def __init__(self, bot: commands.Bot, services: Services) -> None:
        self.bot = bot
        self.services = services
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._engine_started = False
        #: Whether waiting jobs' messages say the engine is down (changed under the lock).
        self._engine_down_shown = False
        #: Jobs handed to the engine, until the engine's first event for each: waiting like
        #: the queued ones, their messages follow the engine's state too.
        self._awaiting_engine: dict[str, Job] = {}
        #: The task following each job handed over, by job id.
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._notes_lock = asyncio.Lock()
        #: Keeps the queued jobs' messages true (places, times, engine down).
        self.notes = QueueNotes(bot, services)

    # ------------------------------------------------------------------ lifecycle

    async def restore(self) -> list[Job]:
        """Queue the jobs a previous run left: interrupted (running) ones first."""
        store = self.services.store
        await fail_unresumed(self.services)
        requeued = await store.requeue_running()
        seen = {job.id for job in requeued}
        queued = [job for job in await store.jobs_with_status(JobStatus.QUEUED) if job.id not in seen]
        jobs = requeued + queued
        self.services.scheduler.restore(jobs)
        await self.notes.restore(queued)
        if jobs:
            log.info("restored %d job(s) from the database (%d interrupted by the restart)",
                     len(jobs), len(requeued))
        return jobs

    def start(self, *, warm_engine: bool = False) -> None:
        """Start taking jobs; with `warm_engine`, start the engine now instead of when
        the first job arrives."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(warm_engine), name="vqgan-clip job runner")
        self.notes.start()

    async def stop(self) -> None:
        """Stop taking jobs. Jobs in progress stay `running` in the store, so the next
        start resumes them; the engine itself is stopped by `Services.close`."""
        await self.notes.stop()
        # The loop first, so that it hands over nothing more; then the jobs it handed over.
        for task in (self._task, *list(self._followers.values()), self._watcher):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._watcher = None

    # ------------------------------------------------------------------ the loop

    async def _run(self, warm_engine: bool = False) -> None:
        if warm_engine:
            await self._ensure_engine()
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not silently stop all image making: log it and go on.
                log.exception("the job runner hit an unexpected error; continuing")
                await asyncio.sleep(1.0)

    async def _run_once(self) -> None:
        """Wait for a job and room in the engine, make sure the engine runs, hand it the
        next job by the fair rule and follow that job in a task of its own."""
        scheduler = self.services.scheduler
        while len(scheduler) == 0 or not self._has_room():
            # discord.py custom events (dispatched by whoever queues a job, by a job that
            # ends, by the engine's watcher) rather than waits of our own: anything can wake
            # the runner without importing it. No await between the check and the wait.
            await self.bot.wait_for(JOB_QUEUED_EVENT if len(scheduler) == 0 else RUNNER_WAKE_EVENT)
        await self._ensure_engine()
        if not self._has_room():  # the engine came up with less room than it had
            return
        job = scheduler.pop_nowait()
        if job is None:  # cancelled while the engine was starting
            return
        # No await between taking the job and making it a running one: a Cancel click
        # always finds it either in the queue or in `services.running`.
        running = RunningJob(job.id, job.user_id, 0, job.iterations, time.time(),
                             size=job_size(self.services.settings, job))
        self.services.running[job.id] = running
        begun = None
        try:
            begun = await self._begin(job, running)
        finally:
            if begun is None:
                self._end(job.id, done=False)
        if begun is not None:
            job, stream = begun
            self._followers[job.id] = asyncio.create_task(
                self._follow(job, running, stream), name=f"vqgan-clip job {job.id}")

    def _has_room(self) -> bool:
        """While the engine is ready: whether it has a free place (`free_capacity`: its
        live capacity, all workers together, minus the jobs it holds). Else room for one
        job (the others wait in the queue, where their messages keep their place)."""
        engine = self.services.engine
        if engine.ready_info is None:
            return len(self.services.running) < 1
        return engine.free_capacity() > 0

    def _wake(self) -> None:
        self.bot.dispatch(RUNNER_WAKE_EVENT)

    def _end(self, job_id: str, done: bool) -> None:
        """A job taken from the queue has ended, however: free its place in the engine."""
        self._awaiting_engine.pop(job_id, None)
        if not done:  # failed, cancelled or interrupted: no result, no timelapse
            discard_frames(self.services.results_dir, job_id)
        self.services.running.pop(job_id, None)
        # Whatever became of it, its message no longer holds a place in the queue.
        self.services.messages.release(job_id)
        self.services.scheduler.finish(job_id)
        self._followers.pop(job_id, None)
        self._wake()

    async def _ensure_engine(self) -> None:
        """Start the engine once; while it can't start, keep the jobs waiting and retry.
        (Users hear of it from `_follow_engine`: a failed start leaves the engine `down`.)"""
        engine = self.services.engine
        self._follow_engine()
        if self._engine_started or engine.ready_info is not None:
            self._engine_started = True
            return
        attempt = 0
        while True:
            try:
                ready = await engine.start()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = ENGINE_RETRY_DELAYS[min(attempt, len(ENGINE_RETRY_DELAYS) - 1)]
                attempt += 1
                log.error("the image engine could not start (attempt %d): %s\n"
                          "jobs wait in the queue; retrying in %.0f s", attempt, error, delay)
                await asyncio.sleep(delay)
                continue
            self._engine_started = True
            log.info("image engine ready: %s", ready)
            return

    # ------------------------------------------------------------------ engine state

    def _follow_engine(self) -> None:
        """Start following the engine's state. Not before the engine is first started:
        until then it has no state worth telling anyone."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_engine(), name="vqgan-clip engine watch")

    async def _watch_engine(self) -> None:
        serial = 0
        while True:
            status = await self.services.engine.wait_status_change(serial)
            serial = status.serial
            try:
                await self._engine_changed(status)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not tell waiting jobs about the engine's state")

    async def _engine_changed(self, status: EngineStatus) -> None:
        """Down (a start or restart failed) and ready are what waiting users see;
        starting and restarting change nothing they see, so a quick restart, or a retry
        that fails again, edits no message. Ready again, or ready with other workers, the
        engine may have room again."""
        if status.state is EngineState.DOWN:
            down = True
        elif status.state is EngineState.READY:
            down = False
            self._wake()
        else:
            return
        async with self._notes_lock:
            if down == self._engine_down_shown:
                return
            self._engine_down_shown = down
            self._log_engine_change(status)
            await self._retell_waiting(down)

    def _log_engine_change(self, status: EngineStatus) -> None:
        waiting = len(self.services.scheduler) + len(self._awaiting_engine)
        if status.state is EngineState.DOWN:
            log.error("the image engine is down; %d waiting job(s) keep their place and are "
                      "told so (without the reason). Last error: %s", waiting, status.last_error)
        else:
            log.info("the image engine is back; %d waiting job(s) shown their place again", waiting)

    async def _retell_waiting(self, down: bool) -> None:
        """The messages of the jobs handed over and not started (engine down, or
        starting), and the queued jobs' through the queue notes. Under the notes lock."""
        messages = self.services.messages
        for job in list(self._awaiting_engine.values()):
            shown = await (messages.engine_down(job) if down else messages.started(job))
            if (running := self.services.running.get(job.id)) is not None:
                running.message_behind = not shown
        self.notes.set_engine_down(down)

    # ------------------------------------------------------------------ one job

    async def _begin(self, job: Job, running: RunningJob
                     ) -> tuple[Job, AsyncIterator[protocol.JobEvent]] | None:
        """Mark the job running and hand it to the engine: the job (as stored now) and its
        events, or None if it ended here (cancelled meanwhile, its input image gone, a bug:
        then it has been told). Run by the loop, one job at a time, so that the engine
        receives jobs in the queue's order. Never raises but for the runner's cancellation."""
        try:
            try:
                job = await self.services.store.mark_running(job.id)
            except JobStateError:  # cancelled between leaving the queue and now
                return None
            # A run starts with no frames (those of a run the bot was killed in would mix
            # with this one's), and keeps them only if it ends done (see `_end`).
            discard_frames(self.services.results_dir, job.id)
            if running.cancel_requested:
                await self._cancelled(job, running)
                return None
            try:
                submit = self._build_submit(job)
            except JobInputMissing as error:
                await self._failed(job, str(error), FAIL_INPUT_MISSING)
                return None
            stream = await self._hand_over(job, running, submit)
            if stream is None:
                await self._cancelled(job, running)
                return None
            return job, stream
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            await self._unexpected(job)
            return None

    async def _follow(self, job: Job, running: RunningJob,
                      stream: AsyncIterator[protocol.JobEvent]) -> None:
        """The task of one job handed over: its events to its end, then its place freed."""
        done = False
        try:
            done = await self._events(job, running, stream)
        finally:
            self._end(job.id, done)

    async def _events(self, job: Job, running: RunningJob,
                      stream: AsyncIterator[protocol.JobEvent]) -> bool:
        """Follow one job's events to its end; whether it ended done. Never raises (but
        for cancellation of the runner): an unexpected error fails this job, with an
        apology naming its id, not the others."""
        messages = self.services.messages
        try:
            throttle = ProgressThrottle(self.services.settings.progress_interval)
            async for event in stream:
                if job.id in self._awaiting_engine:
                    await self._engine_answered(job.id)
                if isinstance(event, protocol.Started):
                    running.started = True
                elif isinstance(event, protocol.Progress):
                    running.started = True
                    await self._progress(job, running, event, throttle)
                elif isinstance(event, protocol.Done):
                    await self._done(job, event)
                    return True
                elif isinstance(event, protocol.Failed):
                    if event.reason == protocol.FAIL_SHUTDOWN:
                        # The bot is stopping: leave the job `running` so the next start
                        # resumes it (requeue_running), and say so.
                        await messages.interrupted(job)
                        return False
                    await self._failed(job, event.message, event.reason)
                    return False
                elif isinstance(event, protocol.Cancelled):
                    await self._cancelled(job, running)
                    return False
            raise RuntimeError("the engine's event stream ended without a result")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            await self._unexpected(job)
            return False

    async def _unexpected(self, job: Job) -> None:
        """A bug met this job: stop it in the engine, fail it uncharged, apologise."""
        await self._engine_answered(job.id)
        with contextlib.suppress(Exception):
            await self.services.engine.cancel(job.id)
        try:
            job = await self.services.store.mark_failed(job.id, render.internal_error(job.id),
                                                        failure=protocol.FAIL_INTERNAL)
        except Exception:
            log.exception("job %s: could not mark it failed", job.id)
        await self._moved(job, await self.services.messages.apology(job))

    async def _hand_over(self, job: Job, running: RunningJob,
                         submit: protocol.Submit) -> AsyncIterator[protocol.JobEvent] | None:
        """Show the job as starting (or the engine as down) and submit it; None if it was
        cancelled meanwhile. "Starting" until the engine's first event: an engine that
        batches may hold the job until there is room for it.

        Under the notes lock, so the engine's state cannot change between the message and
        `_awaiting_engine`. No await between the last cancel check, marking it submitted
        and handing it over: a cancel either saw `submitted` false (and the check here
        ends it) or goes to the engine.
        """
        messages = self.services.messages
        async with self._notes_lock:
            shown = await (messages.engine_down(job) if self._engine_down_shown
                           else messages.started(job))
            running.message_behind = not shown
            if running.cancel_requested:
                return None
            running.submitted = True
            self._awaiting_engine[job.id] = job
            return self.services.engine.submit(submit)

    async def _engine_answered(self, job_id: str) -> None:
        """The engine's first event for a job: from now on its message is the runner's
        alone (progress, result, failure), never an engine-down note."""
        async with self._notes_lock:
            self._awaiting_engine.pop(job_id, None)

    def _build_submit(self, job: Job) -> protocol.Submit:
        params = job.params
        prompts = tuple(protocol.TextPromptSpec(p.text, p.weight) for p in parse_prompt(job.prompt))
        init_image = self._read_input(job.input_path) if job.input_path else None
        image_prompts: tuple[protocol.ImagePromptSpec, ...] = ()
        if params.get("image_prompt_path"):
            image_prompts = (protocol.ImagePromptSpec(self._read_input(params["image_prompt_path"])),)
        settings = self.services.settings
        width, height = job_size(settings, job)
        return protocol.Submit(
            job=job.id,
            prompts=prompts,
            width=width,
            height=height,
            iterations=job.iterations,
            seed=params.get("seed"),
            cutn=int(params.get("cutn") or settings.default_cutn),
            image_prompts=image_prompts,
            init_image=init_image,
            replace=params.get("replace"),
            progress_every=max(1, job.iterations // PROGRESS_EVENTS_PER_JOB),
        )

    def _read_input(self, relative: str) -> bytes:
        try:
            return (self.services.results_dir / relative).read_bytes()
        except OSError:
            raise JobInputMissing(render.INPUT_IMAGE_GONE) from None

    async def _progress(self, job: Job, running: RunningJob, event: protocol.Progress,
                        throttle: ProgressThrottle) -> None:
        keep_frame(self.services.results_dir, job.id, event.iteration, event.preview)
        running.iteration = event.iteration
        running.total = event.total
        if event.iteration > 0 and event.elapsed > 0:
            running.seconds_per_iteration = event.elapsed / event.iteration
        if not throttle.due(has_preview=bool(event.preview), behind=running.message_behind,
                            room=self.services.messages.has_room_for_progress(job)):
            return
        running.message_behind = False
        eta = None
        if running.seconds_per_iteration is not None:
            eta = max(0, event.total - event.iteration) * running.seconds_per_iteration
        await self.services.messages.progress(job, event.iteration, event.total, eta, event.preview)

    async def _done(self, job: Job, event: protocol.Done) -> None:
        name = f"{job.id}.png"
        path = self.services.results_dir / name
        temporary = path.with_name(name + ".part")
        temporary.write_bytes(event.png)
        temporary.replace(path)
        job = await self.services.store.mark_done(
            job.id, result_path=name, seed=event.seed, seconds=event.seconds,
            iterations=event.iterations or job.iterations,
        )
        width, height = job_size(self.services.settings, job)
        message_id = await self.services.messages.result(
            job, png=event.png, name=name, seed=event.seed, seconds=event.seconds,
            width=event.width or width, height=event.height or height,
        )
        if message_id is not None:
            # The result is the job's message from now on (posted anew: see bot.job_messages).
            await self.services.store.update_job(job.id, result_message_id=message_id,
                                                 progress_message_id=message_id)
        log.info("job %s done in %.1f s (seed %s)", job.id, event.seconds, event.seed)

    async def _failed(self, job: Job, message: str, failure: str) -> None:
        try:
            job = await self.services.store.mark_failed(job.id, message, failure=failure)
        except JobStateError as error:
            log.warning("job %s: %s", job.id, error)
        log.info("job %s failed: %s", job.id, message)
        await self._moved(job, await self.services.messages.failed(job, message))

    async def _moved(self, job: Job, message_id: int | None) -> None:
        await self.services.store.message_moved(job, message_id)

    async def _cancelled(self, job: Job, running: RunningJob) -> None:
        try:
            job = await self.services.store.mark_cancelled(job.id)
        except JobStateError as error:
            log.warning("job %s: %s", job.id, error)
        await self.services.messages.cancelled(job, running.cancelled_by)
