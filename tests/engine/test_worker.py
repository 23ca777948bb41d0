"""engine/worker.py: the engine process loop.

Most tests run `Worker` in a thread over OS pipes with a scripted runner, which makes the
protocol behaviour (threads, cancel, ping mid-job, bad frames, failures) fast and
deterministic. The last tests run the real process: `--fake` for the stdio plumbing, and
the real generator on the tiny models.
"""

from __future__ import annotations

import io
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from PIL import Image

from engine import protocol as p
from engine.errors import Cancelled, ModelFileError, OutOfMemoryError, PromptError
from engine.limits import out_of_memory_advice
from engine.fake_runner import FakeJobRunner
from engine.worker import Worker, run_worker

TIMEOUT = 10.0


class ScriptedRunner:
    """A JobRunner whose behaviour per job is chosen by the prompt text:
    "gate": report iteration 1, then wait until `release` is set (or cancel);
    "spin": iterate until cancelled, counting iterations after cancel was asked;
    "oom" / "boom" / "badprompt": raise; anything else: `job.iterations` quick iterations.
    """

    device = "test-device"
    vqgan = "test-vqgan"
    clip = "test-clip"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.freed = 0
        self.ran: list[str] = []
        self.iterations_after_cancel: int | None = None

    def run(self, job, on_progress, should_cancel):
        self.ran.append(job.job)
        text = job.prompts[0].text
        if text == "oom":
            raise OutOfMemoryError(f"out of memory at {job.width}x{job.height}; try 32x32")
        if text == "boom":
            raise ValueError("boom")
        if text == "hostoom":
            raise MemoryError()
        if text == "badprompt":
            raise PromptError("the prompt is empty")
        if text == "gate":
            on_progress(p.Progress(job.job, 1, job.iterations, 1.0, 0.0, b"jpeg"))
            while not self.release.wait(0.01):
                if should_cancel():
                    raise Cancelled()
        elif text == "spin":
            after = None
            for iteration in range(1, 100_000):
                if should_cancel():
                    self.iterations_after_cancel = after
                    raise Cancelled()
                if iteration == 2:
                    on_progress(p.Progress(job.job, iteration, 0, 1.0, 0.0, b"jpeg"))
                    after = 0
                elif after is not None:
                    after += 1
                time.sleep(0.001)
        else:
            for iteration in range(1, job.iterations + 1):
                if job.progress_every and iteration % job.progress_every == 0:
                    on_progress(p.Progress(job.job, iteration, job.iterations, 1.0 / iteration,
                                           0.0, b"jpeg%d" % iteration))
        return p.Done(job.job, b"png", 7, 0.5, job.iterations, job.width, job.height)

    def free_memory(self) -> None:
        self.freed += 1
        # The failed job's traceback holds its tensors: freeing must come after it is gone.
        self.exception_alive_while_freeing = sys.exc_info()[0] is not None


class Harness:
    """A Worker in a thread, wired to the test through two OS pipes."""

    def __init__(self, runner, load: Callable | None = None) -> None:
        to_worker_r, self._to_worker_w = os.pipe()
        self._from_worker_r, from_worker_w = os.pipe()
        self.writer = os.fdopen(self._to_worker_w, "wb")
        self.reader = os.fdopen(self._from_worker_r, "rb")
        worker_in = os.fdopen(to_worker_r, "rb")
        worker_out = os.fdopen(from_worker_w, "wb")
        self.exit_code: int | None = None
        self.messages: queue.Queue = queue.Queue()

        def serve():
            try:
                self.exit_code = run_worker(load or (lambda: runner), worker_in, worker_out)
            finally:
                worker_out.close()

        def pump():
            while True:
                try:
                    message = p.read_message(self.reader)
                except p.ProtocolError as error:  # the test's own reader: should not happen
                    self.messages.put(error)
                    continue
                self.messages.put(message)
                if message is None:
                    return

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        threading.Thread(target=pump, daemon=True).start()

    def send(self, message: p.Message) -> None:
        p.write_message(self.writer, message)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        self.writer.flush()

    def recv(self, timeout: float = TIMEOUT):
        return self.messages.get(timeout=timeout)

    def recv_until(self, predicate) -> list:
        got = []
        while True:
            message = self.recv()
            got.append(message)
            if message is None or predicate(message):
                return got

    def close_input(self) -> None:
        self.writer.close()

    def join(self) -> int | None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "worker did not exit"
        return self.exit_code

    def assert_alive(self) -> None:
        self.send(p.Ping(99))
        assert self.recv() == p.Pong(99)


def submit(job: str, text: str = "a forest", **options) -> p.Submit:
    options = {"width": 32, "height": 32, "iterations": 4, "progress_every": 2, **options}
    return p.Submit(job, (p.TextPromptSpec(text),), **options)


@pytest.fixture
def runner():
    return ScriptedRunner()


@pytest.fixture
def worker(runner):
    harness = Harness(runner)
    ready = harness.recv()
    assert isinstance(ready, p.Ready)
    yield harness
    runner.release.set()
    try:
        harness.close_input()
    except OSError:
        pass
    harness.thread.join(TIMEOUT)


# -- in-process: the protocol behaviour -------------------------------------------------------


def test_ready_comes_first_with_the_protocol_version_and_runner_description(runner):
    harness = Harness(runner)
    assert harness.recv() == p.Ready(p.PROTOCOL_VERSION, "test-device", "test-vqgan",
                                     "test-clip", os.getpid())
    harness.close_input()
    harness.join()


def test_job_streams_started_progress_in_order_then_done(worker):
    worker.send(submit("j1", iterations=6, progress_every=2))
    events = worker.recv_until(lambda m: isinstance(m, p.Done))
    assert events[0] == p.Started("j1")
    assert [e.iteration for e in events[1:-1]] == [2, 4, 6]
    assert events[-1] == p.Done("j1", b"png", 7, 0.5, 6, 32, 32)


def test_jobs_run_one_at_a_time_in_submission_order(worker):
    worker.send(submit("a", progress_every=0))
    worker.send(submit("b", progress_every=0))
    events = worker.recv_until(lambda m: isinstance(m, p.Done) and m.job == "b")
    assert [(type(e).__name__, e.job) for e in events] == [
        ("Started", "a"), ("Done", "a"), ("Started", "b"), ("Done", "b")]


def test_ping_is_answered_while_a_job_is_running(worker, runner):
    worker.send(submit("slow", "gate"))
    assert worker.recv() == p.Started("slow")
    assert isinstance(worker.recv(), p.Progress)
    worker.send(p.Ping(5))
    assert worker.recv() == p.Pong(5)  # the job is still held by the gate
    runner.release.set()
    assert isinstance(worker.recv(), p.Done)


def test_cancel_stops_the_running_job_within_one_iteration(worker, runner):
    worker.send(submit("spin", "spin"))
    assert worker.recv() == p.Started("spin")
    assert isinstance(worker.recv(), p.Progress)
    worker.send(p.Cancel("spin"))
    assert worker.recv() == p.Cancelled("spin")
    # should_cancel is checked every iteration: the loop saw it at its next check.
    assert runner.iterations_after_cancel is not None
    worker.assert_alive()


def test_cancel_of_a_queued_job_removes_it_and_the_running_one_goes_on(worker, runner):
    worker.send(submit("first", "gate"))
    worker.send(submit("queued"))
    assert worker.recv() == p.Started("first")
    assert isinstance(worker.recv(), p.Progress)
    worker.send(p.Cancel("queued"))
    assert worker.recv() == p.Cancelled("queued")
    runner.release.set()
    assert isinstance(worker.recv(), p.Done)
    worker.assert_alive()
    assert runner.ran == ["first"]


def test_cancel_of_an_unknown_job_is_answered_and_not_fatal(worker):
    worker.send(p.Cancel("nobody"))
    assert worker.recv() == p.Cancelled("nobody", unknown=True)
    worker.assert_alive()


def test_out_of_memory_fails_the_job_with_the_size_frees_memory_and_keeps_serving(worker, runner):
    worker.send(submit("big", "oom", width=1024, height=1024))
    assert worker.recv() == p.Started("big")
    failed = worker.recv()
    assert failed == p.Failed("big", "out of memory at 1024x1024; try 32x32", p.FAIL_OUT_OF_MEMORY)
    assert runner.freed == 1 and not runner.exception_alive_while_freeing
    worker.send(submit("next", progress_every=0))
    assert worker.recv_until(lambda m: isinstance(m, p.Done))[-1].job == "next"


class _RecordingOutput(io.BytesIO):
    """The worker's frame stream, kept in memory so a test can see what was sent when."""

    def sent(self) -> list[p.Message]:
        stream = io.BytesIO(self.getvalue())
        messages = []
        while (message := p.read_message(stream)) is not None:
            messages.append(message)
        return messages


def test_memory_is_given_back_before_the_failure_is_sent():
    """The bot sends its next job as soon as it reads `failed`: by then the memory of the job
    that ran out of it must be free. What had been sent when `free_memory` ran is recorded
    in the worker's own thread, so no scheduling of the test's threads can hide the order."""
    out = _RecordingOutput()
    sent_when_freed: list[list[p.Message]] = []
    freed = threading.Event()

    class Runner(ScriptedRunner):
        def free_memory(self) -> None:
            super().free_memory()
            sent_when_freed.append(out.sent())
            freed.set()

    to_worker_r, to_worker_w = os.pipe()
    with os.fdopen(to_worker_r, "rb") as frames_in, os.fdopen(to_worker_w, "wb") as writer:
        worker = Worker(Runner(), frames_in, out)
        thread = threading.Thread(target=worker.serve, daemon=True)
        thread.start()
        p.write_message(writer, submit("big", "oom"))
        assert freed.wait(TIMEOUT), "memory was never given back"
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "worker did not exit"
    (before,) = sent_when_freed
    assert [type(m) for m in before] == [p.Ready, p.Started]
    assert [type(m) for m in out.sent()] == [p.Ready, p.Started, p.Failed]


def test_an_unexpected_exception_fails_only_that_job(worker):
    worker.send(submit("bug", "boom"))
    worker.send(submit("fine", progress_every=0))
    events = worker.recv_until(lambda m: isinstance(m, p.Done))
    failed = events[1]
    assert failed == p.Failed("bug", "internal engine error: ValueError: boom", p.FAIL_INTERNAL)
    assert events[-1].job == "fine"


def test_running_out_of_host_memory_fails_the_job_with_the_size_and_a_smaller_one(worker):
    worker.send(submit("ram", "hostoom", width=2048, height=1024))
    failed = worker.recv_until(lambda m: isinstance(m, p.Failed))[-1]
    assert failed == p.Failed("ram", out_of_memory_advice((2048, 1024), memory="host"),
                              p.FAIL_OUT_OF_MEMORY)
    worker.assert_alive()


@pytest.fixture(scope="module")
def tiny_loaded(tiny_models):
    """The tiny models loaded once, for tests of the real runner inside this process."""
    from engine.models import ModelSpec, load_models

    return load_models(ModelSpec(vqgan=tiny_models.vqgan_name, clip=tiny_models.clip_name,
                                 model_dir=tiny_models.directory, device="cpu"))


def test_the_runner_turns_running_out_of_gpu_memory_into_the_generator_s_advice(tiny_loaded,
                                                                               monkeypatch):
    """Running out of GPU memory in a step alone fails the job with the advice the generator
    gives (the size tried and a smaller one), never a bug report."""
    import torch

    from engine.generator_runner import GeneratorJobRunner

    runner = GeneratorJobRunner(tiny_loaded)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(runner.generator, "step", out_of_memory)
    with pytest.raises(OutOfMemoryError) as error:
        runner.run(submit("big", width=1024, height=1024), lambda progress: None, lambda: False)
    factor = int(runner.models.vqgan.factor)
    assert str(error.value) == out_of_memory_advice((1024, 1024), factor)
    assert not runner.busy


def test_an_engine_error_keeps_its_message_and_kind(worker):
    worker.send(submit("p", "badprompt"))
    events = worker.recv_until(lambda m: isinstance(m, p.Failed))
    assert events[-1] == p.Failed("p", "the prompt is empty", p.FAIL_PROMPT)


def test_invalid_json_header_gets_an_error_and_the_worker_stays_up(worker):
    worker.send_raw(len(b"{oops").to_bytes(4, "big") + b"{oops")
    error = worker.recv()
    assert isinstance(error, p.Error) and not error.fatal and "JSON" in error.message
    worker.assert_alive()


def test_garbage_bytes_in_a_frame_get_an_error_and_the_worker_stays_up(worker):
    garbage = bytes(range(256))
    worker.send_raw(len(garbage).to_bytes(4, "big") + garbage)
    assert isinstance(worker.recv(), p.Error)
    worker.assert_alive()


def test_oversized_header_gets_an_error_naming_the_job_and_the_worker_stays_up(worker):
    header = b'{"type":"submit","job":"huge","pad":"' + b"x" * p.MAX_HEADER_SIZE + b'"}'
    worker.send_raw(len(header).to_bytes(4, "big") + header)
    error = worker.recv()
    assert isinstance(error, p.Error) and error.job == "huge" and "exceeds" in error.message
    worker.assert_alive()


def test_submit_with_a_bad_field_gets_an_error_naming_the_job(worker):
    header, _ = submit("bad").to_frame()
    worker.send_raw(p.encode_frame({**header, "width": -5}))
    error = worker.recv()
    assert isinstance(error, p.Error) and error.job == "bad" and "width" in error.message
    worker.assert_alive()


def test_duplicate_job_id_is_refused(worker, runner):
    worker.send(submit("same", "gate"))
    assert worker.recv() == p.Started("same")
    assert isinstance(worker.recv(), p.Progress)
    worker.send(submit("same"))
    error = worker.recv()
    assert isinstance(error, p.Error) and error.job == "same"
    runner.release.set()


def test_a_bot_bound_message_sent_to_the_engine_is_an_error(worker):
    worker.send(p.Done("x", b"png", 1, 1.0))
    error = worker.recv()
    assert isinstance(error, p.Error) and "not a message the engine accepts" in error.message


def test_unframed_garbage_is_a_fatal_error_and_exit_code_1(worker):
    worker.send_raw(b"this is not a frame at all")
    error = worker.recv()
    assert isinstance(error, p.Error) and error.fatal
    assert worker.join() == 1


def test_end_of_input_exits_0(worker):
    worker.close_input()
    assert worker.join() == 0


def test_end_of_input_mid_job_cancels_it_and_exits_0(worker):
    worker.send(submit("spin", "spin"))
    assert worker.recv() == p.Started("spin")
    worker.close_input()
    assert worker.recv_until(lambda m: isinstance(m, p.Cancelled))[-1] == p.Cancelled("spin")
    assert worker.join() == 0


def test_shutdown_cancels_queued_jobs_and_exits_0(worker):
    worker.send(submit("running", "gate"))
    worker.send(submit("queued"))
    assert worker.recv() == p.Started("running")
    worker.send(p.Shutdown())
    events = worker.recv_until(lambda m: m is None)
    assert p.Cancelled("running") in events and p.Cancelled("queued") in events
    assert worker.join() == 0


def test_models_that_fail_to_load_give_a_fatal_error_and_exit_code_1():
    def load():
        raise ModelFileError("tiny_vqgan.ckpt is missing; run `vqgan-clip download`")

    harness = Harness(None, load=load)
    error = harness.recv()
    assert isinstance(error, p.Error) and error.fatal and "tiny_vqgan.ckpt" in error.message
    assert harness.join() == 1


def test_fake_runner_returns_a_png_of_the_requested_size():
    progress: list[p.Progress] = []
    done = FakeJobRunner(0).run(submit("f", width=48, height=32), progress.append, lambda: False)
    assert Image.open(io.BytesIO(done.png)).size == (48, 32)
    assert [x.iteration for x in progress] == [2, 4]



# -- several jobs at once (issue 13: capacity, --batch) ---------------------------------------


def served(runner) -> Harness:
    harness = Harness(runner)
    ready = harness.recv()
    assert isinstance(ready, p.Ready) and ready.capacity == runner.capacity
    return harness


def ends(events: list) -> dict:
    return {e.job: e for e in events if isinstance(e, (p.Done, p.Failed, p.Cancelled))}


def test_a_worker_of_capacity_3_runs_3_jobs_at_once_each_with_its_own_events():
    harness = served(FakeJobRunner(0.005, capacity=3))
    for job, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        harness.send(submit(job, iterations=6, progress_every=3, seed=seed))
    events = harness.recv_until(lambda m: isinstance(m, p.Done) and m.job == "d")
    kinds = [(type(e).__name__, e.job) for e in events]
    first_end = next(i for i, e in enumerate(events) if isinstance(e, p.Done))
    # Three start before any ends; the fourth only once one has left.
    assert kinds[:3] == [("Started", "a"), ("Started", "b"), ("Started", "c")]
    assert kinds.index(("Started", "d")) > first_end
    for job, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        progress = [e.iteration for e in events if isinstance(e, p.Progress) and e.job == job]
        assert progress == [3, 6]
        done = ends(events)[job]
        assert isinstance(done, p.Done) and done.seed == seed
        assert Image.open(io.BytesIO(done.png)).getpixel((0, 0)) == (seed, 0, 0)
    harness.close_input()
    assert harness.join() == 0


def test_cancelling_one_of_a_batch_leaves_the_others_running_to_their_end():
    harness = served(FakeJobRunner(0.005, capacity=3))
    for job in ("a", "b", "c"):
        harness.send(submit(job, iterations=40, progress_every=1))
    harness.recv_until(lambda m: isinstance(m, p.Progress) and m.job == "c")
    harness.send(p.Cancel("b"))
    got: list = []
    while len(ends(got)) < 3:
        got.append(harness.recv())
    finished = ends(got)
    assert finished["b"] == p.Cancelled("b")
    assert isinstance(finished["a"], p.Done) and isinstance(finished["c"], p.Done)
    cancelled_at = got.index(p.Cancelled("b"))
    # The others went on after b left: their progress continues past that point.
    assert any(isinstance(e, p.Progress) and e.job == "a" for e in got[cancelled_at:])
    assert not any(isinstance(e, p.Progress) and e.job == "b" for e in got[cancelled_at:])
    harness.close_input()
    assert harness.join() == 0


def test_shutdown_cancels_every_running_and_queued_job():
    harness = served(FakeJobRunner(0.01, capacity=2))
    for job in ("a", "b", "c"):
        harness.send(submit(job, iterations=10_000, progress_every=0))
    assert [harness.recv(), harness.recv()] == [p.Started("a"), p.Started("b")]
    harness.send(p.Shutdown())
    events = harness.recv_until(lambda m: m is None)
    assert {e.job for e in events if isinstance(e, p.Cancelled)} == {"a", "b", "c"}
    assert p.Started("c") not in events
    assert harness.join() == 0


def test_a_job_that_cannot_start_fails_and_the_running_ones_go_on():
    harness = served(FakeJobRunner(0.005, capacity=2))
    harness.send(submit("fine", iterations=20, progress_every=10))
    harness.send(p.Submit("empty", (), width=32, height=32, iterations=4))
    got = harness.recv_until(lambda m: isinstance(m, p.Done))
    assert p.Failed("empty", "give at least one prompt", p.FAIL_PROMPT) in got
    assert got[-1].job == "fine"
    harness.close_input()
    harness.join()



class OneSizeRunner(FakeJobRunner):
    """Takes a job only beside running jobs of its size, as the real batch does."""

    def can_start(self, job: p.Submit) -> bool:
        return super().can_start(job) and all(
            (running.submit.width, running.submit.height) == (job.width, job.height)
            for running in self._jobs)


def test_jobs_waiting_together_start_one_by_one_as_the_runner_can_take_them():
    """All three wait before the worker looks: each is offered only once the one before it
    has started, so the wide one waits (and holds back the one behind it)."""
    to_worker_r, to_worker_w = os.pipe()
    from_worker_r, from_worker_w = os.pipe()
    worker_out = os.fdopen(from_worker_w, "wb")
    worker = Worker(OneSizeRunner(0.002, capacity=3), os.fdopen(to_worker_r, "rb"), worker_out)
    for job in (submit("a", iterations=5), submit("wide", width=48, iterations=5), submit("b", iterations=5)):
        worker._queue.append(job)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    reader = os.fdopen(from_worker_r, "rb")
    writer = os.fdopen(to_worker_w, "wb")
    messages = []
    while not (messages and isinstance(messages[-1], p.Done) and messages[-1].job == "b"):
        messages.append(p.read_message(reader))
    writer.close()
    thread.join(TIMEOUT)
    worker_out.close()
    kinds = [(type(m).__name__, m.job) for m in messages if isinstance(m, (p.Started, p.Done))]
    assert kinds == [("Started", "a"), ("Done", "a"), ("Started", "wide"), ("Done", "wide"),
                     ("Started", "b"), ("Done", "b")]

class BrokenStepRunner(FakeJobRunner):
    """A runner with a bug in its step once `broken` is set."""

    broken = False

    def step(self) -> None:
        if self.broken:
            self.broken = False
            raise RuntimeError("a bug in the runner")
        super().step()


def test_a_runner_whose_step_breaks_fails_its_jobs_and_the_worker_keeps_serving():
    runner = BrokenStepRunner(0.005, capacity=2)
    harness = served(runner)
    harness.send(submit("a", iterations=10_000, progress_every=1))
    harness.recv_until(lambda m: isinstance(m, p.Progress))
    runner.broken = True
    failed = harness.recv_until(lambda m: isinstance(m, p.Failed))[-1]
    assert failed == p.Failed("a", "internal engine error: RuntimeError: a bug in the runner",
                              p.FAIL_INTERNAL)
    harness.send(submit("b", iterations=2, progress_every=0))
    assert harness.recv_until(lambda m: isinstance(m, p.Done))[-1].job == "b"
    harness.close_input()
    assert harness.join() == 0

# -- the real process -------------------------------------------------------------------------

WORKER = [sys.executable, "-m", "engine", "worker"]  # `vqgan-clip worker`


class Process:
    """A worker subprocess: frames in through stdin, decoded messages out through a queue
    (a reader thread, so a test can wait with a timeout), stderr kept for messages."""

    def __init__(self, command: list[str]) -> None:
        self.popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self.messages: queue.Queue = queue.Queue()
        self.stderr = b""

        def pump_out():
            while (message := p.read_message(self.popen.stdout)) is not None:
                self.messages.put(message)
            self.messages.put(None)

        def pump_err():
            self.stderr = self.popen.stderr.read()

        threading.Thread(target=pump_out, daemon=True).start()
        self._err = threading.Thread(target=pump_err, daemon=True)
        self._err.start()

    def send(self, data: bytes) -> None:
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def recv_until(self, predicate, timeout: float) -> list:
        got = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            got.append(message)
            if message is None or predicate(message):
                return got

    def finish(self, timeout: float = TIMEOUT) -> int:
        """Close stdin (EOF = shut down) and wait for the exit code."""
        self.popen.stdin.close()
        code = self.popen.wait(timeout)
        self._err.join(timeout)
        return code


def test_process_stdout_carries_only_frames_even_when_libraries_print():
    code = (
        "import sys\n"
        "from engine.fake_runner import FakeJobRunner\n"
        "from engine.worker import serve_stdio\n"
        "def load():\n"
        "    print('noise from a library'); sys.stdout.flush()\n"
        "    import os; os.write(1, b'noise from C\\n')\n"
        "    return FakeJobRunner(0)\n"
        "sys.exit(serve_stdio(load))\n"
    )
    process = Process([sys.executable, "-c", code])
    process.send(p.encode_message(submit("j", progress_every=0)))
    messages = process.recv_until(lambda m: isinstance(m, p.Done), TIMEOUT)
    assert [type(m).__name__ for m in messages] == ["Ready", "Started", "Done"]
    assert process.finish() == 0
    assert b"noise from a library" in process.stderr and b"noise from C" in process.stderr


def test_process_answers_garbage_with_an_error_then_pings_then_exits_0_at_eof():
    process = Process([*WORKER, "--fake"])
    process.send(b"\x00\x00\x00\x05{oops" + p.encode_message(p.Ping(1)))
    messages = process.recv_until(lambda m: isinstance(m, p.Pong), TIMEOUT)
    assert [type(m).__name__ for m in messages] == ["Ready", "Error", "Pong"]
    assert process.finish() == 0


def test_process_with_missing_model_files_exits_1_and_says_which(tmp_path):
    process = Process([*WORKER, "--vqgan", "nonexistent", "--clip", "nonexistent",
                       "--model-dir", str(tmp_path), "--device", "cpu"])
    error = process.recv_until(lambda m: True, 60)[0]
    assert isinstance(error, p.Error) and error.fatal and "nonexistent" in error.message
    assert process.finish(60) == 1 and b"nonexistent" in process.stderr


def test_real_engine_on_tiny_models_streams_jpeg_progress_and_a_png_of_the_size(tiny_models):
    process = Process([*WORKER, "--vqgan", tiny_models.vqgan_name, "--clip",
                       tiny_models.clip_name, "--model-dir", str(tiny_models.directory),
                       "--device", "cpu"])
    job = submit("real", width=48, height=32, iterations=4, progress_every=2, cutn=2, seed=3)
    process.send(p.encode_message(job))
    messages = process.recv_until(lambda m: isinstance(m, (p.Done, p.Failed, p.Error)), 120)
    assert process.finish() == 0
    ready, started, *progress, done = messages
    assert isinstance(ready, p.Ready) and ready.device == "cpu"
    assert ready.vqgan == tiny_models.vqgan_name and ready.clip == tiny_models.clip_name
    assert started == p.Started("real")
    assert [x.iteration for x in progress] == [2, 4]
    for x in progress:
        assert x.total == 4 and x.loss == x.loss  # not NaN
        assert Image.open(io.BytesIO(x.preview)).format == "JPEG"
    assert isinstance(done, p.Done), (done, process.stderr[-2000:])
    assert done.seed == 3 and done.iterations == 4
    image = Image.open(io.BytesIO(done.png))
    assert image.format == "PNG" and image.size == (48, 32)



def test_process_with_fake_and_batch_3_says_capacity_3_and_runs_3_jobs_at_once():
    process = Process([*WORKER, "--fake", "--batch", "3", "--fake-seconds-per-iteration", "0.005"])
    for job in ("a", "b", "c"):
        process.send(p.encode_message(submit(job, iterations=20, progress_every=0)))
    messages = process.recv_until(lambda m: isinstance(m, p.Done), TIMEOUT)
    assert isinstance(messages[0], p.Ready) and messages[0].capacity == 3
    assert messages[1:4] == [p.Started("a"), p.Started("b"), p.Started("c")]
    assert process.finish() == 0


def test_real_engine_batches_jobs_of_one_size_and_a_job_of_another_size_waits(tiny_loaded):
    from engine.generator_runner import GeneratorJobRunner

    harness = served(GeneratorJobRunner(tiny_loaded, capacity=2))
    harness.send(submit("a", width=32, height=32, iterations=3, cutn=2, seed=1, progress_every=1))
    harness.send(submit("b", width=32, height=32, iterations=2, cutn=2, seed=2, progress_every=1))
    harness.send(submit("wide", width=48, height=32, iterations=1, cutn=2, seed=3, progress_every=0))
    events = harness.recv_until(lambda m: isinstance(m, (p.Done, p.Failed)) and m.job == "wide")
    kinds = [(type(e).__name__, e.job) for e in events]
    assert kinds[:2] == [("Started", "a"), ("Started", "b")]
    # b leaves after its 2 iterations, a goes on alone; the other size waits for both.
    assert kinds.index(("Done", "b")) < kinds.index(("Done", "a")) < kinds.index(("Started", "wide"))
    assert [e.iteration for e in events if isinstance(e, p.Progress) and e.job == "a"] == [1, 2, 3]
    done = ends(events)
    assert all(isinstance(done[job], p.Done) for job in ("a", "b", "wide"))
    assert Image.open(io.BytesIO(done["wide"].png)).size == (48, 32)
    harness.close_input()
    assert harness.join() == 0



def test_a_runner_whose_loop_cannot_compile_runs_it_eager_and_makes_the_eager_png(tiny_loaded,
                                                                                 monkeypatch, caplog):
    import logging

    import torch

    from engine.generator_runner import GeneratorJobRunner

    job = submit("c", width=32, height=32, iterations=2, cutn=2, seed=5, progress_every=0)
    eager = GeneratorJobRunner(tiny_loaded, compile="auto")  # auto: eager on the CPU
    assert eager.generator.compiler.mode == "eager"
    expected = eager.run(job, lambda progress: None, lambda: False)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("torch.compile is not available here")

    monkeypatch.setattr(torch, "compile", no_compiler)
    runner = GeneratorJobRunner(tiny_loaded, compile="on")
    assert runner.generator.compiler.mode == "compiled"
    with caplog.at_level(logging.WARNING, logger="engine.compiling"):
        done = runner.run(job, lambda progress: None, lambda: False)
    assert done.png == expected.png
    assert runner.generator.compiler.mode == "eager"
    assert "the compiled loop failed, running eager from now on: RuntimeError: torch.compile is not " \
           "available here" in caplog.text

def test_the_worker_s_batch_and_compile_default_to_auto():
    from engine.cli import build_parser

    args = build_parser().parse_args(["worker"])
    assert (args.batch, args.compile) == ("auto", "auto")
    args = build_parser().parse_args(["worker", "--batch", "8", "--compile", "off"])
    assert (args.batch, args.compile) == (8, "off")


@pytest.mark.parametrize("value", ["0", "65", "many"])
def test_a_bad_batch_is_a_usage_error(value, capsys):
    from engine.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["worker", "--batch", value])
    assert exit_info.value.code == 2
    assert "--batch: the batch must be auto or a whole number from 1 to 64" in capsys.readouterr().err

def noise_png(width: int, height: int) -> bytes:
    """An uncompressed PNG of noise: its file size is about width * height * 3 bytes."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(
        buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def test_a_worker_started_with_a_smaller_image_limit_fails_a_job_with_a_bigger_image(tiny_models):
    process = Process([*WORKER, "--vqgan", tiny_models.vqgan_name, "--clip",
                       tiny_models.clip_name, "--model-dir", str(tiny_models.directory),
                       "--device", "cpu", "--max-image-bytes", "1000"])
    image = noise_png(32, 32)
    process.send(p.encode_message(submit("edit", width=32, height=32, iterations=1,
                                         init_image=image)))
    failed = process.recv_until(lambda m: isinstance(m, (p.Done, p.Failed, p.Error)), 120)[-1]
    assert process.finish() == 0
    assert failed == p.Failed("edit", f"the image to edit is {len(image) / 1024:.1f} KB; the limit "
                              "is 1000 bytes", p.FAIL_INPUT_IMAGE)


def test_a_runner_with_a_larger_image_limit_runs_an_image_over_the_default(tiny_loaded):
    from engine.limits import DEFAULT_MAX_IMAGE_BYTES
    from engine.generator_runner import GeneratorJobRunner

    image = noise_png(1700, 1700)
    assert len(image) > DEFAULT_MAX_IMAGE_BYTES
    job = submit("big", width=32, height=32, iterations=1, cutn=2,
                 image_prompts=(p.ImagePromptSpec(image),))
    runner = GeneratorJobRunner(tiny_loaded, max_image_bytes=2 * DEFAULT_MAX_IMAGE_BYTES)
    done = runner.run(job, lambda progress: None, lambda: False)
    assert (done.job, done.width, done.height) == ("big", 32, 32)


def test_a_runner_refuses_an_image_over_its_limit_naming_it(tiny_loaded):
    from engine.errors import InputImageError
    from engine.generator_runner import GeneratorJobRunner

    job = submit("masked", width=32, height=32, init_image=noise_png(8, 8),
                 mask_image=noise_png(32, 32))
    runner = GeneratorJobRunner(tiny_loaded, max_image_bytes=2048)
    with pytest.raises(InputImageError, match=r"^the mask image is 3\.\d KB; the limit is 2 KB$"):
        runner.run(job, lambda progress: None, lambda: False)


def test_the_worker_s_image_limit_defaults_to_the_shared_one():
    from engine.cli import build_parser
    from engine.limits import DEFAULT_MAX_IMAGE_BYTES

    assert build_parser().parse_args(["worker"]).max_image_bytes == DEFAULT_MAX_IMAGE_BYTES


@pytest.mark.parametrize("value", ["0", "lots", str(p.MAX_BLOB_SIZE + 1)])
def test_a_bad_image_limit_is_a_usage_error(value, capsys):
    from engine.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["worker", "--max-image-bytes", value])
    assert exit_info.value.code == 2
    assert "--max-image-bytes: expected a whole number of bytes from 1 to" in capsys.readouterr().err


def test_a_job_asking_for_no_progress_runs_and_reports_none(tiny_loaded):
    """`progress_every` 0 means no progress events (protocol); the generator wants at least 1."""
    from engine.generator_runner import GeneratorJobRunner

    reported = []
    job = submit("quiet", width=32, height=32, iterations=2, cutn=2, progress_every=0)
    done = GeneratorJobRunner(tiny_loaded).run(job, reported.append, lambda: False)
    assert done.iterations == 2 and reported == []
