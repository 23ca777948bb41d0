"""The engine process: load the models once, then serve jobs over stdin/stdout frames.

Why two threads: a job computes for seconds to minutes in the main thread, and during that
time the bot must still be able to ask "are you alive?" (`ping`) and "stop that job"
(`cancel`). So a reader thread owns stdin: it answers `ping` at once, queues `submit`s,
and flags cancellations, which the running job sees through `should_cancel` within one
iteration. The main thread runs one job at a time (the GPU can't usefully do two).

Why stdout is guarded: it carries only frames. Anything a library prints would corrupt the
stream, so `serve_stdio` moves the frame stream to a private copy of fd 1 and points fd 1
(and `sys.stdout`) at stderr; both threads write frames under one lock.

The job runner is injected (`JobRunner`), so the protocol-level behaviour can be tested
with a fake while the real one (`GeneratorJobRunner`, torch) does the work in production.
Torch is imported only inside `GeneratorJobRunner` and `load_generator_runner`.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Protocol

from engine import protocol as p
from engine.errors import Cancelled, EngineError, InputImageError, OutOfMemoryError, PromptError
from engine.limits import DEFAULT_MAX_IMAGE_BYTES, out_of_memory_advice

if TYPE_CHECKING:
    from engine.models import ModelSpec, Models

log = logging.getLogger("engine.worker")

ProgressCallback = Callable[[p.Progress], None]

#: EngineError kinds -> `Failed.reason`, so the bot can tell them apart without parsing text.
_FAIL_REASONS = ((OutOfMemoryError, p.FAIL_OUT_OF_MEMORY), (PromptError, p.FAIL_PROMPT),
                 (InputImageError, p.FAIL_INPUT_IMAGE))


class JobRunner(Protocol):
    """What the worker needs from the thing that computes images."""

    device: str
    vqgan: str
    clip: str

    def run(self, job: p.Submit, on_progress: ProgressCallback,
            should_cancel: Callable[[], bool]) -> p.Done:
        """Run one job. Raises engine.errors.Cancelled, an EngineError, or anything (a bug)."""

    def free_memory(self) -> None:
        """Give back cached device memory after a failure (out of memory in particular)."""


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


class Worker:
    """Serves one runner over one pair of frame streams until EOF, `shutdown`, or a stream
    that can't be resynced. `serve()` returns the process exit code."""

    def __init__(self, runner: JobRunner, frames_in: BinaryIO, frames_out: BinaryIO) -> None:
        self.runner = runner
        self._in = frames_in
        self._out = _Output(frames_out)
        self._cond = threading.Condition()
        self._queue: deque[p.Submit] = deque()
        self._running: p.Submit | None = None
        self._cancel_running = threading.Event()
        self._stopping = False
        self._exit_code = 0

    # ---- main thread -------------------------------------------------------------------

    def serve(self) -> int:
        self._out.send(p.Ready(p.PROTOCOL_VERSION, self.runner.device, self.runner.vqgan,
                               self.runner.clip, os.getpid()))
        reader = threading.Thread(target=self._read_loop, name="frame-reader", daemon=True)
        reader.start()
        while (job := self._next_job()) is not None:
            self._run(job)
        with self._cond:
            leftover, self._queue = list(self._queue), deque()
        for job in leftover:  # shutting down: the bot requeues what it still wants
            self._out.send(p.Cancelled(job.job))
        return self._exit_code

    def _next_job(self) -> p.Submit | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            job = self._queue.popleft()
            self._running = job
            self._cancel_running.clear()
            return job

    def _run(self, job: p.Submit) -> None:
        self._out.send(p.Started(job.job))
        outcome: p.Message
        try:
            outcome = self.runner.run(job, self._out.send, self._cancel_running.is_set)
        except Cancelled:
            outcome = p.Cancelled(job.job)
        except EngineError as error:
            reason = next((name for kind, name in _FAIL_REASONS if isinstance(error, kind)),
                          p.FAIL_ENGINE)
            log.info("job %s failed: %s", job.job, error)
            outcome = p.Failed(job.job, str(error), reason)
        except MemoryError:  # host RAM rather than the device's
            log.error("job %s: out of host memory\n%s", job.job, traceback.format_exc())
            outcome = p.Failed(job.job, out_of_memory_advice((job.width, job.height),
                                                             memory="host"),
                               p.FAIL_OUT_OF_MEMORY)
        except Exception as error:  # a bug: fail this job only, keep serving
            log.error("job %s: internal error\n%s", job.job, traceback.format_exc())
            outcome = p.Failed(job.job, f"internal engine error: {type(error).__name__}: "
                               f"{error}"[:2000], p.FAIL_INTERNAL)
        # Outside the except blocks: the exception and its traceback (whose frames hold the
        # job's tensors) are gone now, so freeing memory can actually free it.
        if isinstance(outcome, p.Failed):
            self._free_memory()
        self._out.send(outcome)
        with self._cond:
            self._running = None

    def _free_memory(self) -> None:
        try:
            self.runner.free_memory()
        except Exception:
            log.exception("freeing memory failed")

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
                known = (self._running is not None and self._running.job == message.job) or any(
                    job.job == message.job for job in self._queue)
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
            if self._running is not None and self._running.job == job_id:
                self._cancel_running.set()  # the job loop answers `cancelled`
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
            self._cancel_running.set()
            self._cond.notify_all()


def run_worker(load_runner: Callable[[], JobRunner], frames_in: BinaryIO,
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


def serve_stdio(load_runner: Callable[[], JobRunner]) -> int:
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


# ---- the real runner -------------------------------------------------------------------


class GeneratorJobRunner:
    """Runs jobs with `engine.generate.Generator` on loaded models. Input images (init
    image, image prompts, mask) larger than `max_image_bytes` fail the job."""

    def __init__(self, models: Models, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> None:
        from engine.generate import Generator

        self.models = models
        self.max_image_bytes = max_image_bytes
        self.generator = Generator(models)
        self.device = str(models.device)
        self.vqgan = models.vqgan_name
        self.clip = models.clip_name

    def run(self, job: p.Submit, on_progress: ProgressCallback,
            should_cancel: Callable[[], bool]) -> p.Done:
        import torch

        from engine.generate import GenerationRequest
        from engine.images import jpeg_thumbnail, load_image
        from engine.prompts import ImagePrompt, TextPrompt

        limit = self.max_image_bytes
        request = GenerationRequest(
            prompts=[TextPrompt(text=x.text, weight=x.weight) for x in job.prompts],
            image_prompts=[ImagePrompt(image=load_image(x.data, what=f"image prompt {i + 1}",
                                                        max_bytes=limit),
                                       weight=x.weight)
                           for i, x in enumerate(job.image_prompts)],
            init_image=(load_image(job.init_image, what="image to edit", max_bytes=limit)
                        if job.init_image is not None else None),
            size=(job.width, job.height), iterations=job.iterations, seed=job.seed,
            cutn=job.cutn, replace=job.replace,
            mask_image=(load_image(job.mask_image, what="mask image", keep_alpha=True,
                                   max_bytes=limit)
                        if job.mask_image is not None else None),
            # 0 = no progress events; the generator reports at least at the end.
            progress_every=job.progress_every or job.iterations,
        )

        def report(progress) -> None:
            on_progress(p.Progress(job.job, progress.iteration, progress.total,
                                   float(progress.loss), float(progress.elapsed),
                                   jpeg_thumbnail(progress.preview, job.preview_size)))

        try:
            result = self.generator.run(request, on_progress=report if job.progress_every else None,
                                        should_cancel=should_cancel)
        except torch.OutOfMemoryError:
            # The generator normally converts this itself; this is the safety net.
            raise OutOfMemoryError(out_of_memory_advice(
                (job.width, job.height), int(self.models.vqgan.factor))) from None
        return p.Done(job.job, result.png, int(result.seed), float(result.seconds),
                      int(result.iterations), result.image.width, result.image.height)

    def free_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_generator_runner(spec: ModelSpec,
                          max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> GeneratorJobRunner:
    """Load the models named by `spec` (seconds to minutes) and wrap them in a runner."""
    from engine.models import load_models

    started = time.monotonic()
    models = load_models(spec)
    log.info("models loaded on %s in %.1f s", models.device, time.monotonic() - started)
    return GeneratorJobRunner(models, max_image_bytes)


# ---- a fake runner for tests of the bot (no torch, no models) ---------------------------


class FakeJobRunner:
    """Pretends to generate: sleeps `seconds_per_iteration` per iteration, honours
    cancellation and progress like the real one, and returns a solid-colour PNG of the
    requested size. For fast bot tests (`vqgan-clip worker --fake`), never for users."""

    def __init__(self, seconds_per_iteration: float = 0.01) -> None:
        self.seconds_per_iteration = seconds_per_iteration
        self.device = "fake"
        self.vqgan = "fake"
        self.clip = "fake"

    def run(self, job: p.Submit, on_progress: ProgressCallback,
            should_cancel: Callable[[], bool]) -> p.Done:
        from PIL import Image

        if not job.prompts and not job.image_prompts:
            raise PromptError("give at least one prompt")
        seed = job.seed if job.seed is not None else int.from_bytes(os.urandom(4), "big")
        colour = (seed % 256, (seed // 256) % 256, (seed // 65536) % 256)
        started = time.monotonic()
        for iteration in range(1, job.iterations + 1):
            if should_cancel():
                raise Cancelled()
            time.sleep(self.seconds_per_iteration)
            if job.progress_every and (iteration % job.progress_every == 0
                                       or iteration == job.iterations):
                side = max(1, min(job.preview_size, 64))
                buffer = io.BytesIO()
                Image.new("RGB", (side, side), colour).save(buffer, "JPEG", quality=70)
                on_progress(p.Progress(job.job, iteration, job.iterations, 1.0 / iteration,
                                       time.monotonic() - started, buffer.getvalue()))
        buffer = io.BytesIO()
        Image.new("RGB", (job.width, job.height), colour).save(buffer, "PNG")
        return p.Done(job.job, buffer.getvalue(), seed, time.monotonic() - started,
                      job.iterations, job.width, job.height)

    def free_memory(self) -> None:
        pass
