"""The engine process: load the models once, then serve jobs over stdin/stdout frames.

Why two threads: jobs compute for seconds to minutes in the main thread, and during that
time the bot must still be able to ask "are you alive?" (`ping`) and "stop that job"
(`cancel`). So a reader thread owns stdin: it answers `ping` at once, queues `submit`s,
and flags cancellations, which a running job sees through `should_cancel` within one
iteration.

Why steps: the main thread serves up to `capacity` jobs at once (issue 13; `--batch`,
advertised in `ready.capacity`). It drives the runner (`engine.serving.BatchRunner`) one
step at a time; at each step boundary the jobs waiting at the front of the queue start
while the runner can take them (`Started` is sent then, when the job begins computing), in
the order they came: a job that cannot start yet holds back those behind it. A runner that
runs one job from start to end (`JobRunner`) serves one job at a time.

Why stdout is guarded: it carries only frames. Anything a library prints would corrupt the
stream, so `serve_stdio` moves the frame stream to a private copy of fd 1 and points fd 1
(and `sys.stdout`) at stderr; both threads write frames under one lock.

The runner is injected, so the protocol-level behaviour can be tested with a fake while the
real one (`engine.generator_runner.GeneratorJobRunner`, torch) does the work in
production; `engine.fake_runner.FakeJobRunner` stands in for it in the bot's tests.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from engine import protocol as p
from engine.errors import Cancelled, EngineError, InputImageError, OutOfMemoryError, PromptError
from engine.limits import out_of_memory_advice
from engine.serving import BatchRunner, JobEvents, JobRunner, as_batch_runner

log = logging.getLogger("engine.worker")

#: EngineError kinds -> `Failed.reason`, so the bot can tell them apart without parsing text.
_FAIL_REASONS = ((OutOfMemoryError, p.FAIL_OUT_OF_MEMORY), (PromptError, p.FAIL_PROMPT),
                 (InputImageError, p.FAIL_INPUT_IMAGE))


def outcome_message(job: p.Submit, outcome: p.Done | BaseException) -> p.Done | p.Failed | p.Cancelled:
    """The message that ends `job`: its result, or what the exception that ended it means
    to the bot. Bugs are logged with their traceback; the user reads the exception's type."""
    if isinstance(outcome, p.Done):
        return outcome
    if isinstance(outcome, Cancelled):
        return p.Cancelled(job.job)
    if isinstance(outcome, EngineError):
        reason = next((name for kind, name in _FAIL_REASONS if isinstance(outcome, kind)), p.FAIL_ENGINE)
        log.info("job %s failed: %s", job.job, outcome)
        return p.Failed(job.job, str(outcome), reason)
    trace = "".join(traceback.format_exception(outcome))
    if isinstance(outcome, MemoryError):  # host RAM rather than the device's
        log.error("job %s: out of host memory\n%s", job.job, trace)
        return p.Failed(job.job, out_of_memory_advice((job.width, job.height), memory="host"),
                        p.FAIL_OUT_OF_MEMORY)
    log.error("job %s: internal error\n%s", job.job, trace)
    return p.Failed(job.job, f"internal engine error: {type(outcome).__name__}: {outcome}"[:2000],
                    p.FAIL_INTERNAL)


class _Output:
    """The frame stream to the bot: one writer at a time; a dead pipe is remembered, not
    raised, because the reader side will see EOF and stop the worker anyway."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.broken = False

    def send(self, message: p.Message) -> None:
        try:
            data = p.encode_message(message)
        except p.ProtocolError as error:
            # Our own message is over the limits (a huge PNG): say so instead of sending it.
            # Only a result is worth a `failed`; a preview that can't go is just dropped.
            log.error("cannot send %s: %s", message.TYPE, error)
            job = getattr(message, "job", None)
            if not isinstance(message, p.Done) or job is None:
                return
            data = p.encode_message(p.Failed(job, f"the result could not be sent: {error}",
                                             p.FAIL_INTERNAL))
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.write(data)
                self._stream.flush()
            except (BrokenPipeError, ConnectionError, ValueError, OSError) as error:
                self.broken = True
                log.warning("frame stream to the bot is gone (%s)", error)


@dataclass(eq=False)
class _Live:
    """A job that started and has not ended."""

    submit: p.Submit
    cancel: threading.Event = field(default_factory=threading.Event)
    ended: bool = False
    events: JobEvents | None = None


class Worker:
    """Serves one runner over one pair of frame streams until EOF, `shutdown`, or a stream
    that can't be resynced. `serve()` returns the process exit code."""

    def __init__(self, runner: JobRunner | BatchRunner, frames_in: BinaryIO, frames_out: BinaryIO) -> None:
        self.runner = as_batch_runner(runner)
        self.capacity = max(1, min(int(self.runner.capacity), p.MAX_CAPACITY))
        self._in = frames_in
        self._out = _Output(frames_out)
        self._cond = threading.Condition()
        self._queue: deque[p.Submit] = deque()
        self._live: dict[str, _Live] = {}  # started, not ended; in the order they started
        self._stopping = False
        self._exit_code = 0
        self._failed = False  # a job failed since memory was last given back
        # Jobs ended in this serve step, and the messages that end them (main thread only).
        self._ended: list[tuple[_Live, p.Done | p.Failed | p.Cancelled]] = []

    # ---- main thread -------------------------------------------------------------------

    def serve(self) -> int:
        self._out.send(p.Ready(p.PROTOCOL_VERSION, self.runner.device, self.runner.vqgan,
                               self.runner.clip, os.getpid(), self.capacity))
        reader = threading.Thread(target=self._read_loop, name="frame-reader", daemon=True)
        reader.start()
        while self._serve_step():
            pass
        with self._cond:
            leftover, self._queue = list(self._queue), deque()
        for job in leftover:  # shutting down: the bot requeues what it still wants
            self._out.send(p.Cancelled(job.job))
        return self._exit_code

    def _serve_step(self) -> bool:
        """Wait for work, start what may start, advance the runner one step. False: stop.

        Stopping lets the running jobs end first: they were all flagged cancelled, so the
        next step ends them (a job that finishes in that step still sends its result)."""
        with self._cond:
            while not self._queue and not self._stopping and not self.runner.busy:
                self._cond.wait()
            if self._stopping and not self.runner.busy:
                return False
        while (live := self._next_to_start()) is not None:
            self._out.send(p.Started(live.submit.job))
            live.events = self._events_of(live)
            try:
                self.runner.start(live.submit, live.events)
            except Exception as error:  # the runner's bug: this job only
                live.events.end(error)
        if self.runner.busy:
            self._step()
        # Memory first, then the failures: a bot that sends its next job as soon as it reads
        # `failed` must find the memory of the job that failed given back.
        self._give_back_memory()
        self._send_ended()
        return True

    def _next_to_start(self) -> _Live | None:
        """The job at the front of the queue, if it may start now. One at a time: whether the
        next may start depends on the runner having started this one (its size, memory)."""
        with self._cond:
            if (self._stopping or not self._queue or len(self._live) >= self.capacity
                    or not self.runner.can_start(self._queue[0])):
                return None
            live = _Live(self._queue.popleft())
            self._live[live.submit.job] = live
            return live

    def _step(self) -> None:
        with self._cond:
            live = [job for job in self._live.values() if job.events is not None]
        try:
            self.runner.step()
            return
        except Exception as error:
            failure = error
        # A job's failure never gets here: this is the runner's own bug, and what its jobs'
        # state is now nobody knows. They fail; their cancel flags make the runner drop
        # them. A runner that fails again with no job of ours left cannot be trusted.
        log.error("the runner's step failed\n%s", "".join(traceback.format_exception(failure)))
        if not live:
            self._out.send(p.Error(f"the engine broke: {type(failure).__name__}: {failure}"[:2000],
                                   fatal=True))
            self._exit_code = 1
            self._stop()
            return
        for job in live:
            job.cancel.set()
            assert job.events is not None
            job.events.end(failure)

    def _events_of(self, live: _Live) -> JobEvents:
        def progress(message: p.Progress) -> None:
            if not live.ended:
                self._out.send(message)

        def end(outcome: p.Done | BaseException) -> None:
            if live.ended:
                return
            live.ended = True
            message = outcome_message(live.submit, outcome)
            if isinstance(outcome, BaseException):
                outcome.__traceback__ = None  # its frames may hold the job's tensors
            del outcome
            if isinstance(message, p.Failed):
                self._failed = True
            # Sent by `_send_ended` at the end of this serve step, after memory was given
            # back: the bot may send its next job as soon as it reads the failure.
            self._ended.append((live, message))

        return JobEvents(progress, end, live.cancel.is_set)

    def _give_back_memory(self) -> None:
        """After a failure, outside any except block: the exception and its traceback (whose
        frames hold the job's tensors) are gone now, so freeing memory can free it."""
        if not self._failed:
            return
        self._failed = False
        try:
            self.runner.free_memory()
        except Exception:
            log.exception("freeing memory failed")

    def _send_ended(self) -> None:
        """The messages that end the jobs that ended in this serve step, in the order they
        ended. Only now does a job leave `_live`: until its end is sent, a `submit` of the
        same id is refused and a `cancel` finds it running (its own end answers it)."""
        ended, self._ended = self._ended, []
        for live, message in ended:
            self._out.send(message)
            with self._cond:
                self._live.pop(live.submit.job, None)

    # ---- reader thread -----------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while not self._out.broken:
                try:
                    message = p.read_message(self._in)
                except p.ProtocolError as error:
                    log.warning("bad frame: %s", error)
                    self._out.send(p.Error(str(error), error.job, fatal=not error.recoverable))
                    if not error.recoverable:
                        self._exit_code = 1
                        break
                    continue
                if message is None:
                    log.info("end of input: shutting down")
                    break
                if isinstance(message, p.Shutdown):
                    log.info("shutdown requested")
                    break
                self._handle(message)
        except Exception:  # never let the reader die silently: the worker would go deaf
            log.error("frame reader crashed\n%s", traceback.format_exc())
            self._exit_code = 1
        self._stop()

    def _handle(self, message: p.Message) -> None:
        if isinstance(message, p.Ping):
            self._out.send(p.Pong(message.nonce))
        elif isinstance(message, p.Submit):
            with self._cond:
                known = message.job in self._live or any(job.job == message.job for job in self._queue)
                if not known:
                    self._queue.append(message)
                    self._cond.notify()
            if known:
                self._out.send(p.Error(f"job {message.job!r} is already queued or running",
                                       message.job))
        elif isinstance(message, p.Cancel):
            self._cancel(message.job)
        else:
            self._out.send(p.Error(f"`{message.TYPE}` is not a message the engine accepts",
                                   getattr(message, "job", None)))

    def _cancel(self, job_id: str) -> None:
        answer: p.Cancelled | None = None
        with self._cond:
            live = self._live.get(job_id)
            if live is not None:
                live.cancel.set()  # the runner ends it at the next step: `cancelled`
            else:
                for job in self._queue:
                    if job.job == job_id:
                        self._queue.remove(job)
                        answer = p.Cancelled(job_id)
                        break
                else:
                    answer = p.Cancelled(job_id, unknown=True)
        if answer is not None:
            self._out.send(answer)

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
            for live in self._live.values():
                live.cancel.set()
            self._cond.notify_all()


def run_worker(load_runner: Callable[[], JobRunner | BatchRunner], frames_in: BinaryIO,
               frames_out: BinaryIO) -> int:
    """Load (models), then serve. A load failure is reported as a fatal `error` frame (the
    bot shows it) and on stderr, exit code 1."""
    try:
        runner = load_runner()
    except EngineError as error:
        log.error("cannot start the engine: %s", error)
        print(f"error: {error}", file=sys.stderr, flush=True)
        _Output(frames_out).send(p.Error(f"cannot start the engine: {error}", fatal=True))
        return 1
    return Worker(runner, frames_in, frames_out).serve()


def serve_stdio(load_runner: Callable[[], JobRunner | BatchRunner]) -> int:
    """Run the worker on this process's stdin/stdout, keeping stdout for frames only."""
    sys.stdout.flush()
    frames_out = os.fdopen(os.dup(1), "wb")
    frames_in = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)  # C libraries and print() now write to stderr
    sys.stdout = sys.stderr
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # nothing else may eat our frames
    os.close(devnull)
    sys.stdin = io.TextIOWrapper(io.BytesIO())
    try:
        return run_worker(load_runner, frames_in, frames_out)
    finally:
        try:
            frames_out.close()
        except OSError:
            pass


