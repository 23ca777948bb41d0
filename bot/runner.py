"""The job runner: the one background task that feeds the engine from the queue and keeps
each job's channel message up to date.

Life of a job here: the runner waits until the queue holds a job, makes sure the engine
is running (starting it if needed, retrying with backoff while it cannot start), takes the
next job by the fair rule (`Scheduler.pop_nowait`), marks it running, submits it to the
engine and turns the engine's events into edits of the job's progress message:

- `Progress` -> the newest preview JPEG (attached, shown as the embed image), a progress
  bar and an ETA, at most once per PROGRESS_INTERVAL seconds. A Discord error while
  editing progress is logged and ignored: the picture matters more than the preview.
- `Done` -> the PNG saved as RESULTS_DIR/<job id>.png, the job marked done, and the
  progress message edited into the result (PNG, prompt, seed, time, Reroll/Edit buttons).
  If that message is gone, the result is posted as a new message.
- `Failed` -> marked failed (not charged) and the plain reason shown.
- `Cancelled` -> marked cancelled (not charged).

The job's message is written by `services.messages` (`bot.job_messages`); cancelling is
`bot.cancel`, which meets the runner in `services.running`.

Restarts: `restore()` (called from setup_hook, before any command can arrive) puts the
jobs a stopped bot left running back at the front of the queue, followed by the queued
ones; their progress message ids are in the store, so the same messages go on updating.
A job interrupted by shutdown stays `running` in the store for exactly that reason.

The engine is started at boot (`ImagineBot(warm_engine=True)`, which `vqgan-clip-bot`
uses: the first user does not wait for the model load, and a model problem shows in the log
at once), or when the first job waits (tests). Once started, the engine client supervises
(restarts) the worker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import discord

from bot.eta import estimate
from bot.jobs import JOB_QUEUED_EVENT, Job, JobStatus
from bot.requests import job_size
from bot.services import RunningJob, Services
from bot.store import JobStateError
from engine import protocol
from engine.prompts import parse_prompt

log = logging.getLogger(__name__)

#: Seconds between attempts to start an engine that fails to start; the last repeats.
ENGINE_RETRY_DELAYS: tuple[float, ...] = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Progress events per job asked of the engine; the edit throttle thins them further.
PROGRESS_EVENTS_PER_JOB = 25


class JobInputMissing(Exception):
    """An input image of the job is no longer on disk; `str(e)` is for the user."""


class JobRunner:
    """See the module docstring. One per bot; `start()` after `restore()`, `stop()` at close."""

    def __init__(self, bot: discord.Client, services: Services) -> None:
        self.bot = bot
        self.services = services
        self._task: asyncio.Task[None] | None = None
        self._engine_started = False

    # ------------------------------------------------------------------ lifecycle

    async def restore(self) -> list[Job]:
        """Queue the jobs a previous run left: interrupted (running) ones first."""
        store = self.services.store
        requeued = await store.requeue_running()
        seen = {job.id for job in requeued}
        queued = [job for job in await store.jobs_with_status(JobStatus.QUEUED) if job.id not in seen]
        jobs = requeued + queued
        self.services.scheduler.restore(jobs)
        if jobs:
            log.info("restored %d job(s) from the database (%d interrupted by the restart)",
                     len(jobs), len(requeued))
        return jobs

    def start(self, *, warm_engine: bool = False) -> None:
        """Start taking jobs; with `warm_engine`, start the engine now instead of when
        the first job arrives."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(warm_engine), name="vqgan-clip job runner")

    async def stop(self) -> None:
        """Stop taking jobs. A job in progress stays `running` in the store, so the next
        start resumes it; the engine itself is stopped by `Services.close`."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

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
        """Wait for a job, make sure the engine runs, run the next job by the fair rule."""
        scheduler = self.services.scheduler
        while len(scheduler) == 0:
            # A discord.py custom event (dispatched by whoever queues a job) rather than
            # the scheduler's own wait: anything can wake the runner without importing it.
            await self.bot.wait_for(JOB_QUEUED_EVENT)
        await self._ensure_engine()
        job = scheduler.pop_nowait()
        if job is None:  # cancelled while the engine was starting
            return
        # No await between taking the job and making it the running one: a Cancel click
        # always finds it either in the queue or in `services.running`.
        self.services.running = RunningJob(job.id, job.user_id, 0, job.iterations, time.time())
        try:
            await self._process(job)
        finally:
            self.services.running = None
            scheduler.finish(job.id)

    async def _ensure_engine(self) -> None:
        """Start the engine once; while it can't start, keep the jobs waiting and say so."""
        engine = self.services.engine
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
                await self._tell_waiting()
                await asyncio.sleep(delay)
                continue
            self._engine_started = True
            log.info("image engine ready: %s", ready)
            if attempt:
                await self._tell_queued()  # replace the "engine is down" notes
            return

    async def _tell_waiting(self) -> None:
        for job in self.services.scheduler.queued_jobs():
            await self.services.messages.engine_down(job)

    async def _tell_queued(self) -> None:
        for job in self.services.scheduler.queued_jobs():
            where = await estimate(self.services, job.id)
            await self.services.messages.queued(job, where.position, where.ready_in)

    # ------------------------------------------------------------------ one job

    async def _process(self, job: Job) -> None:
        """Run one job to its end. Never raises (but for cancellation of the runner):
        an unexpected error fails this job, with an apology naming its id, not the loop."""
        messages = self.services.messages
        running = self.services.running
        assert running is not None and running.job_id == job.id
        try:
            try:
                job = await self.services.store.mark_running(job.id)
            except JobStateError:  # cancelled between leaving the queue and now
                return
            if running.cancel_requested:
                await self._cancelled(job, running)
                return
            try:
                submit = self._build_submit(job)
            except JobInputMissing as error:
                await self._failed(job, str(error))
                return
            await messages.started(job)
            last_edit = time.monotonic()
            # No await between marking it submitted and handing it over: a cancel either
            # saw `submitted` false (and the check above or the engine's answer ends it)
            # or goes to the engine.
            running.submitted = True
            async for event in self.services.engine.submit(submit):
                if isinstance(event, protocol.Progress):
                    last_edit = await self._progress(job, running, event, last_edit)
                elif isinstance(event, protocol.Done):
                    await self._done(job, event)
                    return
                elif isinstance(event, protocol.Failed):
                    if event.reason == protocol.FAIL_SHUTDOWN:
                        # The bot is stopping: leave the job `running` so the next start
                        # resumes it (requeue_running), and say so.
                        await messages.interrupted(job)
                        return
                    await self._failed(job, event.message)
                    return
                elif isinstance(event, protocol.Cancelled):
                    await self._cancelled(job, running)
                    return
            raise RuntimeError("the engine's event stream ended without a result")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            with contextlib.suppress(Exception):
                await self.services.engine.cancel(job.id)
            try:
                job = await self.services.store.mark_failed(job.id, f"internal error (job {job.id})")
            except Exception:
                log.exception("job %s: could not mark it failed", job.id)
            await messages.apology(job)

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
            raise JobInputMissing(
                "the image this job starts from is no longer on the bot's disk; "
                "attach it again with /edit"
            ) from None

    async def _progress(self, job: Job, running: RunningJob, event: protocol.Progress,
                        last_edit: float) -> float:
        running.iteration = event.iteration
        running.total = event.total
        if event.iteration > 0 and event.elapsed > 0:
            running.seconds_per_iteration = event.elapsed / event.iteration
        now = time.monotonic()
        if now - last_edit < self.services.settings.progress_interval:
            return last_edit
        eta = None
        if running.seconds_per_iteration is not None:
            eta = max(0, event.total - event.iteration) * running.seconds_per_iteration
        await self.services.messages.progress(job, event.iteration, event.total, eta, event.preview)
        return now

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
            await self.services.store.update_job(job.id, result_message_id=message_id)
        log.info("job %s done in %.1f s (seed %s)", job.id, event.seconds, event.seed)

    async def _failed(self, job: Job, message: str) -> None:
        try:
            job = await self.services.store.mark_failed(job.id, message)
        except JobStateError as error:
            log.warning("job %s: %s", job.id, error)
        log.info("job %s failed: %s", job.id, message)
        await self.services.messages.failed(job, message)

    async def _cancelled(self, job: Job, running: RunningJob) -> None:
        try:
            job = await self.services.store.mark_cancelled(job.id)
        except JobStateError as error:
            log.warning("job %s: %s", job.id, error)
        await self.services.messages.cancelled(job, running.cancelled_by)
