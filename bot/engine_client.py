"""Spawns the engine worker, supervises it, and routes its events to the jobs that asked.

Why a child process: torch, CUDA and a few GiB of models live there, never in the bot
(the bot stays responsive, and a CUDA crash or leak takes down only the engine). The bot
talks to it with `engine.protocol` frames over the child's stdin/stdout.

Usage:

    client = EngineClient(worker_command(vqgan=..., clip=..., model_dir=..., device=...))
    ready = await client.start()          # EngineStartError if it never gets ready
    async for event in client.submit(protocol.Submit(job="k3q7", prompts=(...,), ...)):
        ...                               # Started, Progress*, then Done | Failed | Cancelled
    await client.cancel("k3q7")           # from anywhere; the stream then ends in Cancelled
    await client.close()

Supervision: the worker is watched for EOF on its stdout, its exit, and missed pongs (a
hung worker is killed). When it dies:
- a job that had `started` ends with `Failed(reason="crash")` and `render.ENGINE_CRASHED`;
- a job that was submitted but had not started is *resubmitted* to the restarted worker
  (friendlier than failing it: it never ran, so nothing about it caused the crash);
- a job whose cancel was asked ends with `Cancelled`;
then the worker is restarted after a backoff (restart_delay, doubling up to
max_restart_delay; back to restart_delay once a worker has stayed up a minute). If a
restart fails (a model file was removed, say), restarting goes on with the same backoff
and the jobs that have not started keep waiting for it: nothing about them is wrong, and
they run when an operator has fixed the cause.

State: `status` is what an operator (`/status`) and the job runner need to know: the
`EngineState` (not started, starting, ready, restarting, down, closed) and since when,
the live worker's `Ready`, restarts, and the last error in full (paths and the worker's
stderr included: it is for the log and admins, never for users). `wait_status_change`
wakes whoever follows it (the runner tells waiting jobs that the engine is down, then that
it is back). The state changes only on real transitions: a restart that keeps failing
stays `down`, without flapping through `restarting` at every attempt.

All pipe I/O is asyncio; nothing here blocks the event loop, and nothing imports torch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot import render
from bot.config import Settings
from bot.engine_status import EngineLife, EngineState, EngineStatus
from bot.worker_status import WorkerState, WorkerStatus
from engine import protocol as p

log = logging.getLogger(__name__)
worker_log = logging.getLogger("bot.engine_worker")

#: After its stdout ends, a worker gets this long to exit by itself before it is killed.
EXIT_GRACE_SECONDS = 5.0
#: A worker that stayed up this long resets the restart backoff.
STABLE_SECONDS = 60.0


class EngineStartError(Exception):
    """The worker did not become ready: it exited, timed out, failed to load its models, or
    speaks another protocol version. The message says which, with its stderr's last lines."""


class EngineClosedError(RuntimeError):
    """`submit` after `close()`."""


def worker_command(
    *,
    vqgan: str | None = None,
    clip: str | None = None,
    model_dir: Path | str | None = None,
    device: str | None = None,
    vqgan_config: Path | str | None = None,
    vqgan_checkpoint: Path | str | None = None,
    log_level: str | None = None,
    max_image_bytes: int | None = None,
    batch: int | None = None,
    compile_mode: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The command line that runs the worker with this Python: `python -m engine worker ...`.

    Options left None are left to the worker's defaults (`batch` None: ENGINE_BATCH=auto,
    the engine picks how many jobs it optimises at once).
    """
    command = [python, "-m", "engine"]
    if log_level:
        command += ["--log-level", log_level]
    command.append("worker")
    for flag, value in (("--vqgan", vqgan), ("--clip", clip), ("--model-dir", model_dir),
                        ("--device", device), ("--vqgan-config", vqgan_config),
                        ("--vqgan-checkpoint", vqgan_checkpoint),
                        ("--max-image-bytes", max_image_bytes), ("--batch", batch),
                        ("--compile", compile_mode)):
        if value is not None:
            command += [flag, str(value)]
    return command


def worker_command_for(settings: Settings, device: str | None = None) -> list[str]:
    """`worker_command` from the bot's `Settings`; `device` (one of ENGINE_DEVICES) in place
    of DEVICE."""
    return worker_command(
        vqgan=settings.vqgan_model, clip=settings.clip_model, model_dir=settings.model_dir,
        device=device or settings.device, vqgan_config=settings.vqgan_config,
        vqgan_checkpoint=settings.vqgan_checkpoint, log_level=settings.log_level,
        # The bot checked uploads against the same limit: the engine refuses nothing it queued.
        max_image_bytes=settings.max_image_bytes,
        batch=settings.engine_batch, compile_mode=settings.engine_compile,
    )


_END = object()  # queued after a job's terminal event: the stream stops there


@dataclass(eq=False)
class _Job:
    submit: p.Submit
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    sent_to: int = 0          # the worker generation it was sent to; 0 = not sent
    started: bool = False
    cancel_requested: bool = False
    finished: bool = False


class JobStream:
    """The events of one job, as an async iterator: `Started`, `Progress`..., then exactly
    one of `Done`, `Failed`, `Cancelled`, after which iteration stops."""

    def __init__(self, client: EngineClient, job: _Job) -> None:
        self._client = client
        self._job = job
        self.job_id = job.submit.job

    def __aiter__(self) -> JobStream:
        return self

    async def __anext__(self) -> p.JobEvent:
        event = await self._job.events.get()
        if event is _END:
            self._job.events.put_nowait(_END)  # iterating again stops again
            raise StopAsyncIteration
        return event

    async def cancel(self) -> None:
        """Same as `client.cancel(stream.job_id)`."""
        await self._client.cancel(self.job_id)


class _Worker:
    """One spawned worker process and its tasks. A restart makes a new one."""

    def __init__(self, process: asyncio.subprocess.Process, generation: int,
                 tail: collections.deque[str]) -> None:
        self.process = process
        self.generation = generation
        self.stderr_tail = tail
        self.stderr_task: asyncio.Task | None = None
        self.ready: p.Ready | None = None
        self.ready_at = 0.0
        self.write_lock = asyncio.Lock()
        self.alive = True
        self.ping_failed = False

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def tail_text(self) -> str:
        lines = [line for line in self.stderr_tail if line.strip()]
        if not lines:
            return ""
        return "\n--- last lines of the engine's log ---\n" + "\n".join(lines)


class EngineClient:
    """Owns the engine worker process: see the module docstring."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 300.0,
        ping_interval: float = 15.0,
        ping_timeout: float = 60.0,
        restart_delay: float = 1.0,
        max_restart_delay: float = 30.0,
        close_timeout: float = 15.0,
        stderr_tail_lines: int = 40,
        clock: Callable[[], float] = time.time,
        name: str = "local",
    ) -> None:
        self.command = list(command) if command is not None else worker_command()
        #: What `/status` calls this engine among the others (one per device).
        self.name = name
        self.env = dict(env) if env is not None else None
        self.ready_timeout = ready_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.close_timeout = close_timeout
        self.stderr_tail_lines = stderr_tail_lines
        #: Wall-clock time for `status` (when a state began, when an error happened).
        self.clock = clock
        #: How many times the worker was restarted after dying.
        self.restarts = 0
        #: The last start or crash error in full, for the log and admins (see `status`).
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._life = EngineLife(clock)
        self._last_ready: p.Ready | None = None
        self._jobs: dict[str, _Job] = {}   # insertion order = submission order
        self._worker: _Worker | None = None
        self._generation = 0
        self._closing = False
        self._supervisor: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        #: For `/status`: jobs the engine finished done, and when it last said anything.
        self.jobs_done = 0
        self._last_seen: float | None = None
        self._pongs: dict[int, asyncio.Future] = {}
        self._nonces = itertools.count(1)

    # ---- public API --------------------------------------------------------------------

    @property
    def ready_info(self) -> p.Ready | None:
        """The live worker's `ready` (device, vqgan, clip, version, pid); None while down."""
        worker = self._worker
        return worker.ready if worker is not None and worker.alive else None

    def free_capacity(self) -> int:
        """Jobs the runner may still hand over: the live worker's capacity minus the jobs
        this client holds (computing or waiting here); 0 while no worker is live."""
        ready = self.ready_info
        return 0 if ready is None else max(0, ready.capacity - self._waiting_count())

    @property
    def workers(self) -> tuple[WorkerStatus, ...]:
        """The local worker as `/status` lists remote ones: nothing before it first ran."""
        ready = self.ready_info
        shown = ready or self._last_ready
        if shown is None:
            return ()
        busy = sum(1 for state in self._jobs.values() if state.started and not state.finished)
        return (WorkerStatus(
            name=self.name, state=WorkerState.LIVE if ready is not None else WorkerState.DEAD,
            device=shown.device, vqgan=shown.vqgan, clip=shown.clip, version=shown.version,
            capacity=shown.capacity, busy=busy, jobs_done=self.jobs_done,
            last_seen=self._last_seen if self._last_seen is not None else self._life.since,
            note=None if ready is not None else self.last_error),)

    @property
    def pid(self) -> int | None:
        """The live worker's process id (tests kill it to check supervision)."""
        worker = self._worker
        return worker.process.pid if worker is not None and worker.alive else None

    @property
    def state(self) -> EngineState:
        return self._life.state

    @property
    def status(self) -> EngineStatus:
        """A snapshot of the state, the live and last `ready`, restarts and the last error."""
        return EngineStatus(
            state=self._life.state, since=self._life.since, serial=self._life.changes.serial,
            ready=self.ready_info, last_ready=self._last_ready,
            last_error=self.last_error, last_error_at=self.last_error_at,
            restarts=self.restarts,
        )

    async def wait_status_change(self, after: int) -> EngineStatus:
        """The status once its `serial` is past `after` (at once if it already is).

        Passing the serial last seen loses no change that happened in between; several
        changes while nobody looked come back as one (the newest) status.
        """
        await self._life.changes.wait_past(after)
        return self.status

    async def start(self) -> p.Ready:
        """Spawn the worker and wait for `ready`; then supervise it in the background.

        Raises EngineStartError (with the worker's last stderr lines) if it exits, says it
        can't load its models, speaks another protocol version, or isn't ready in
        `ready_timeout` seconds.
        """
        if self._supervisor is not None:
            raise RuntimeError("EngineClient.start() was already called")
        if self._closing:
            raise EngineClosedError("the engine client is closed")
        if self._life.state is not EngineState.DOWN:  # a retry stays down until it works
            self._set_state(EngineState.STARTING)
        try:
            worker = await self._launch()
        except Exception as error:
            self._record_error(str(error))
            self._set_state(EngineState.DOWN)
            raise
        self._set_state(EngineState.READY)
        self._supervisor = asyncio.create_task(self._supervise(worker), name="engine-supervisor")
        self._supervisor.add_done_callback(self._supervisor_ended)
        assert worker.ready is not None
        return worker.ready

    def submit(self, job: p.Submit) -> JobStream:
        """Queue `job` on the engine; returns the stream of its events.

        Sent at once if the worker is up, else when it is (re)started. The job id must be
        unique among the client's unfinished jobs (ValueError otherwise).
        """
        if self._closing:
            raise EngineClosedError("the engine client is closed")
        if job.job in self._jobs:
            raise ValueError(f"job {job.job!r} is already submitted")
        state = _Job(job)
        self._jobs[job.job] = state
        worker = self._worker
        if worker is not None and worker.alive and worker.ready is not None:
            self._spawn_task(self._send_submit(worker, state))
        return JobStream(self, state)

    async def cancel(self, job_id: str) -> None:
        """Cancel a job: it stops within one iteration (or leaves the queue) and its stream
        ends with `Cancelled`. Unknown or finished jobs are ignored."""
        state = self._jobs.get(job_id)
        if state is None or state.finished:
            return
        state.cancel_requested = True
        worker = self._worker
        if worker is not None and worker.alive and state.sent_to == worker.generation:
            if await self._send(worker, p.Cancel(job_id)):
                return  # the worker answers `cancelled`
        if state.sent_to == 0 or worker is None or not worker.alive:
            self._finish(state, p.Cancelled(job_id))
        # else: the send failed because the worker is dying; supervision ends it Cancelled.

    async def ping(self, timeout: float | None = None) -> float:
        """Round trip to the worker in seconds. TimeoutError if no pong in `timeout`
        (default ping_timeout); RuntimeError if no worker is up."""
        worker = self._worker
        if worker is None or not worker.alive or worker.ready is None:
            raise RuntimeError("the engine is not running")
        nonce = next(self._nonces)
        future = asyncio.get_running_loop().create_future()
        self._pongs[nonce] = future
        started = time.monotonic()
        try:
            if not await self._send(worker, p.Ping(nonce)):
                raise RuntimeError("the engine is not running")
            await asyncio.wait_for(future, timeout if timeout is not None else self.ping_timeout)
        finally:
            self._pongs.pop(nonce, None)
        return time.monotonic() - started

    async def close(self) -> None:
        """Ask the worker to shut down (it cancels its jobs), wait up to close_timeout,
        then kill it. Unfinished jobs end with `Failed(reason="shutdown")`."""
        if self._closing:
            return
        self._closing = True
        self._set_state(EngineState.CLOSED)
        worker = self._worker
        supervisor = self._supervisor
        if worker is not None and worker.alive:
            await self._send(worker, p.Shutdown())
            with contextlib.suppress(ProcessLookupError, BrokenPipeError, ConnectionError):
                if worker.process.stdin is not None:
                    worker.process.stdin.close()
            try:
                await asyncio.wait_for(worker.process.wait(), self.close_timeout)
            except TimeoutError:
                log.warning("the engine did not exit in %.0f s; killing it", self.close_timeout)
                worker.kill()
                await worker.process.wait()
            if supervisor is not None:  # it settles the jobs and returns promptly now
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(supervisor), EXIT_GRACE_SECONDS)
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()  # sleeping before a restart, or starting one
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor
        if worker is not None:
            worker.kill()
            await worker.process.wait()
            await self._drain_stderr(worker)
        for task in list(self._tasks):
            task.cancel()
        for state in list(self._jobs.values()):
            self._finish(state, p.Failed(state.submit.job, render.ENGINE_SHUT_DOWN, p.FAIL_SHUTDOWN))

    # ---- launching ---------------------------------------------------------------------

    async def _launch(self) -> _Worker:
        """Spawn a worker and wait for its `ready`. Then send it the jobs that wait."""
        self._generation += 1
        tail: collections.deque[str] = collections.deque(maxlen=self.stderr_tail_lines)
        extra: dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {}
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self.env, **extra)
        except OSError as error:
            raise EngineStartError(f"cannot run the engine ({self.command[0]}): {error}") from None
        worker = _Worker(process, self._generation, tail)
        worker.stderr_task = asyncio.create_task(self._pump_stderr(worker), name="engine-stderr")
        try:
            ready = await asyncio.wait_for(self._await_ready(worker), self.ready_timeout)
        except TimeoutError:
            worker.kill()
            await process.wait()
            await self._drain_stderr(worker)
            raise EngineStartError(f"the engine was not ready after {self.ready_timeout:.0f} s"
                                   + worker.tail_text()) from None
        except EngineStartError as error:
            worker.kill()
            await process.wait()
            await self._drain_stderr(worker)
            raise EngineStartError(str(error) + worker.tail_text()) from None
        except BaseException:
            worker.kill()
            raise
        worker.ready = ready
        worker.ready_at = time.monotonic()
        self._worker = worker
        self._last_ready = ready
        log.info("engine ready: pid %s, %s, vqgan %s, clip %s", ready.pid, ready.device,
                 ready.vqgan, ready.clip)
        for state in list(self._jobs.values()):
            if not state.finished and state.sent_to != worker.generation:
                await self._send_submit(worker, state)
        return worker

    async def _await_ready(self, worker: _Worker) -> p.Ready:
        assert worker.process.stdout is not None
        while True:
            try:
                frame = await p.read_frame_async(worker.process.stdout)
            except p.ProtocolError as error:
                if error.recoverable:
                    log.warning("engine sent a bad frame before ready: %s", error)
                    continue
                raise EngineStartError(f"the engine's output is not protocol frames: {error}")
            if frame is None:
                code = await worker.process.wait()
                raise EngineStartError(f"the engine exited with code {code} before it was ready")
            if frame.type == "ready":
                version = frame.header.get("version")
                if version != p.PROTOCOL_VERSION:
                    raise EngineStartError(
                        f"the engine speaks protocol version {version}, this bot speaks "
                        f"{p.PROTOCOL_VERSION}: the bot and the engine come from different "
                        "versions of vqgan-clip-bot; install the same version for both")
                try:
                    ready = p.decode_message(frame)
                except p.ProtocolError as error:
                    raise EngineStartError(f"the engine's `ready` is malformed: {error}") from None
                assert isinstance(ready, p.Ready)  # decoded by its type, "ready"
                return ready
            if frame.type == "error":
                message = frame.header.get("message") or "unknown error"
                raise EngineStartError(str(message))
            log.warning("engine sent %r before ready; ignored", frame.type)

    async def _pump_stderr(self, worker: _Worker) -> None:
        """Log the worker's stderr line by line and keep the tail for error messages."""
        stream = worker.process.stderr
        assert stream is not None
        pending = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            pending += chunk.replace(b"\r", b"\n")
            *lines, pending = pending.split(b"\n")
            if len(pending) > 65536:  # a line that never ends: log it in pieces
                lines.append(pending)
                pending = b""
            for raw in lines:
                self._log_stderr(worker, raw)
        if pending:
            self._log_stderr(worker, pending)

    def _log_stderr(self, worker: _Worker, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            worker.stderr_tail.append(line[:2000])
            worker_log.info("[engine %s] %s", worker.process.pid, line)

    async def _drain_stderr(self, worker: _Worker) -> None:
        if worker.stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(worker.stderr_task), 2.0)

    # ---- supervision -------------------------------------------------------------------

    async def _supervise(self, worker: _Worker) -> None:
        delay = self.restart_delay
        while True:
            reason = await self._serve(worker)
            lived = time.monotonic() - worker.ready_at
            self._worker_lost(worker, reason)
            if self._closing:
                return
            self._record_error(f"the engine (pid {worker.process.pid}) died: {reason}"
                               + worker.tail_text())
            self._set_state(EngineState.RESTARTING)
            if lived >= STABLE_SECONDS:
                delay = self.restart_delay
            while True:
                log.warning("engine stopped (%s); restarting in %.1f s", reason, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_restart_delay)
                if self._closing:
                    return
                restarted = await self._try_restart(delay)
                if restarted is not None:
                    worker = restarted
                    break
                reason = "its restart failed"

    async def _try_restart(self, next_delay: float) -> _Worker | None:
        """One restart attempt: the new worker, or None after a failure.

        While restarts fail the engine is `down` and the jobs that have not started stay
        here, waiting (they run once a restart works): each failure is logged in full for
        the operator; their users are told by the runner, without the details, which can
        name the server's files.
        """
        try:
            worker = await self._launch()
        except Exception as error:  # EngineStartError, or a bug: keep trying
            log.error("engine restart failed; %d job(s) keep waiting, next try in %.0f s: %s",
                      self._waiting_count(), next_delay, error)
            self._record_error(str(error))
            self._set_state(EngineState.DOWN)
            return None
        self.restarts += 1
        self._set_state(EngineState.READY)
        return worker

    def _supervisor_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("engine supervision stopped by a bug", exc_info=task.exception())

    async def _serve(self, worker: _Worker) -> str:
        """Route the worker's events until it dies; returns why it did."""
        pinger = asyncio.create_task(self._ping_loop(worker), name="engine-pinger")
        assert worker.process.stdout is not None
        reason = "its output ended"
        grace = EXIT_GRACE_SECONDS  # after EOF a worker that is exiting by itself may finish
        try:
            while True:
                try:
                    message = await p.read_message_async(worker.process.stdout)
                except p.ProtocolError as error:
                    if error.recoverable:
                        log.error("engine sent a bad frame (ignored): %s", error)
                        continue
                    reason = f"its output is out of sync: {error}"
                    grace = 0.0
                    break
                if message is None:
                    break
                try:
                    self._route(message)
                except Exception:  # a bug here must not stop supervision
                    log.exception("cannot route the engine's %s", message.TYPE)
        finally:
            pinger.cancel()
            worker.alive = False
        try:
            code = await asyncio.wait_for(worker.process.wait(), grace)
        except TimeoutError:
            worker.kill()
            code = await worker.process.wait()
        await self._drain_stderr(worker)
        if worker.ping_failed:
            reason = "it stopped answering pings and was killed"
        if self._closing and code == 0:
            return "shut down"
        return f"{reason}; exit code {code}"

    async def _ping_loop(self, worker: _Worker) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self.ping(self.ping_timeout)
            except TimeoutError:
                log.error("the engine did not answer a ping in %.0f s; killing it",
                          self.ping_timeout)
                worker.ping_failed = True
                worker.kill()
                return
            except RuntimeError:
                return

    def _route(self, message: p.Message) -> None:
        self._last_seen = self.clock()
        if isinstance(message, p.Done):
            self.jobs_done += 1
        if isinstance(message, p.Pong):
            future = self._pongs.get(message.nonce)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if isinstance(message, p.Error):
            state = self._jobs.get(message.job) if message.job else None
            log.error("engine error%s: %s", f" (job {message.job})" if message.job else "",
                      message.message)
            if state is not None and not state.started:
                self._finish(state, p.Failed(state.submit.job, render.engine_refused(message.message),
                                             p.FAIL_REJECTED))
            return
        job = getattr(message, "job", None)
        state = self._jobs.get(job) if job is not None else None
        if state is None:
            if not (isinstance(message, p.Cancelled) and message.unknown):
                log.debug("event %s for a job not (or no longer) tracked: %s", message.TYPE, job)
            return
        if isinstance(message, p.Cancelled) and message.unknown and state.started:
            return  # raced with the job's end: its own done/failed/cancelled decides
        if isinstance(message, p.Started):
            state.started = True
        if isinstance(message, p.Cancelled) and self._closing and not state.cancel_requested:
            # The worker cancels everything at shutdown; to the bot that is not a user's
            # cancel but an interruption (requeue it on the next start).
            message = p.Failed(state.submit.job, render.ENGINE_SHUT_DOWN, p.FAIL_SHUTDOWN)
        if isinstance(message, p.TERMINAL_EVENTS):
            self._finish(state, message)
        else:
            state.events.put_nowait(message)

    def _worker_lost(self, worker: _Worker, reason: str) -> None:
        """Settle every job the dead worker held: see the module docstring."""
        if self._worker is worker:
            self._worker = None
        for future in self._pongs.values():
            if not future.done():
                future.set_exception(RuntimeError("the engine is not running"))
        if self._closing:
            for state in list(self._jobs.values()):
                self._finish(state, p.Failed(state.submit.job, render.ENGINE_SHUT_DOWN, p.FAIL_SHUTDOWN))
            return
        log.error("engine (pid %s) lost: %s", worker.process.pid, reason)
        for state in list(self._jobs.values()):
            if state.cancel_requested:
                self._finish(state, p.Cancelled(state.submit.job))
            elif state.started:
                self._finish(state, p.Failed(state.submit.job, render.ENGINE_CRASHED, p.FAIL_CRASH))
            else:
                state.sent_to = 0  # resubmitted to the next worker

    def _waiting_count(self) -> int:
        return sum(1 for state in self._jobs.values() if not state.finished)

    # ---- state -------------------------------------------------------------------------

    def _set_state(self, state: EngineState) -> None:
        """Enter `state` (see `EngineLife.enter`), which wakes `wait_status_change`."""
        previous = self._life.state
        if self._life.enter(state):
            log.info("engine state: %s -> %s", previous.value, state.value)

    def _record_error(self, text: str) -> None:
        self.last_error = text
        self.last_error_at = self.clock()

    def _finish(self, state: _Job, event: p.JobEvent) -> None:
        if state.finished:
            return
        state.finished = True
        self._jobs.pop(state.submit.job, None)
        state.events.put_nowait(event)
        state.events.put_nowait(_END)

    # ---- writing -----------------------------------------------------------------------

    async def _send(self, worker: _Worker, message: p.Message) -> bool:
        """Write one frame; False if the worker's stdin is gone (supervision handles it)."""
        stdin = worker.process.stdin
        if stdin is None or not worker.alive:
            return False
        async with worker.write_lock:
            try:
                await p.write_message_async(stdin, message)
            except (BrokenPipeError, ConnectionError, RuntimeError) as error:
                log.warning("cannot write to the engine: %s", error)
                return False
        return True

    async def _send_submit(self, worker: _Worker, state: _Job) -> None:
        if state.finished or state.sent_to == worker.generation:
            return
        state.sent_to = worker.generation  # before awaiting: no duplicate from a racing send
        try:
            ok = await self._send(worker, state.submit)
        except p.ProtocolError as error:  # over the limits: a bug or an absurd upload
            self._finish(state, p.Failed(state.submit.job, render.job_not_sent(str(error)),
                                         p.FAIL_REJECTED))
            return
        if not ok and worker.alive:
            state.sent_to = 0

    def _spawn_task(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

