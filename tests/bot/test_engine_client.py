"""bot/engine_client.py: spawning, routing, cancelling, supervising the engine worker.

The main flows run the real worker on the tiny models (CPU). Supervision corner cases run
the same worker with `--fake` (no torch: solid-colour images after a short sleep), and
start-up failures run small scripts that misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from bot.engine_client import (
    EngineClient,
    EngineClosedError,
    EngineStartError,
    worker_command,
    worker_command_for,
)
from bot.engine_status import EngineState, EngineStatus
from bot.render import ENGINE_CRASHED, ENGINE_SHUT_DOWN
from engine import protocol as p
from tests.bot.conftest import make_settings

#: The async tests share the module's event loop, so they can share one real worker.
module_loop = pytest.mark.asyncio(loop_scope="module")

def real_command(tiny_models) -> list[str]:
    """What the bot runs (`python -m engine worker ...`), on the tiny models, on CPU."""
    return worker_command(vqgan=tiny_models.vqgan_name, clip=tiny_models.clip_name,
                          model_dir=tiny_models.directory, device="cpu", log_level="INFO")


FAKE = [sys.executable, "-m", "engine", "worker", "--fake"]


def fake_command(seconds_per_iteration: float = 0.005) -> list[str]:
    return [*FAKE, "--fake-seconds-per-iteration", str(seconds_per_iteration)]


def script(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def job(job_id: str, **options) -> p.Submit:
    options = {"width": 32, "height": 32, "iterations": 4, "progress_every": 2, "cutn": 2,
               **options}
    return p.Submit(job_id, (p.TextPromptSpec("a red square"),), **options)


async def collect(stream, timeout: float = 60.0) -> list:
    async def run():
        return [event async for event in stream]
    return await asyncio.wait_for(run(), timeout)


async def until(stream, kind, timeout: float = 60.0):
    """Events up to and including the first of type `kind` (the stream stays open)."""
    seen = []
    async def run():
        async for event in stream:
            seen.append(event)
            if isinstance(event, kind):
                return seen
        raise AssertionError(f"stream ended without {kind.__name__}: {seen}")
    return await asyncio.wait_for(run(), timeout)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_models):
    """One real worker on the tiny models, shared by the tests of the main flows."""
    client = EngineClient(real_command(tiny_models), ready_timeout=120, ping_interval=1.0,
                          ping_timeout=30, restart_delay=0.05)
    await client.start()
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="module")
async def fake_engine():
    client = EngineClient(fake_command(), ping_interval=0.5, ping_timeout=5, restart_delay=0.05)
    await client.start()
    yield client
    await client.close()


# -- the main flows, real engine on tiny models --------------------------------------------------


@module_loop
async def test_ready_info_names_the_device_the_models_and_the_version(engine, tiny_models):
    info = engine.ready_info
    assert info.device == "cpu" and info.version == p.PROTOCOL_VERSION
    assert (info.vqgan, info.clip) == (tiny_models.vqgan_name, tiny_models.clip_name)


@module_loop
async def test_job_streams_started_ordered_jpeg_progress_then_a_png_of_the_size(engine):
    events = await collect(engine.submit(job("main", width=48, height=32, iterations=4,
                                             progress_every=2, seed=5)))
    started, *progress, done = events
    assert started == p.Started("main")
    assert [(e.iteration, e.total) for e in progress] == [(2, 4), (4, 4)]
    for event in progress:
        assert Image.open(io.BytesIO(event.preview)).format == "JPEG"
        assert len(event.preview) < 20_000
    assert isinstance(done, p.Done) and done.seed == 5
    image = Image.open(io.BytesIO(done.png))
    assert (image.format, image.size) == ("PNG", (48, 32))


@module_loop
async def test_two_jobs_back_to_back_both_finish_in_order(engine):
    first = engine.submit(job("first", iterations=2))
    second = engine.submit(job("second", iterations=2))
    finished_at = {}

    async def run(stream):
        events = await collect(stream)
        finished_at[stream.job_id] = time.monotonic()
        return events[-1]

    results = await asyncio.gather(run(first), run(second))
    assert [type(r) for r in results] == [p.Done, p.Done]
    assert finished_at["first"] < finished_at["second"]


@module_loop
async def test_cancel_mid_run_ends_the_stream_with_cancelled(engine):
    stream = engine.submit(job("cancel-me", iterations=1000, progress_every=1))
    await until(stream, p.Progress)
    await engine.cancel("cancel-me")
    rest = await collect(stream)
    assert rest[-1] == p.Cancelled("cancel-me")
    assert all(isinstance(e, p.Progress) for e in rest[:-1])


@module_loop
async def test_ping_is_answered_while_a_job_is_running(engine):
    stream = engine.submit(job("busy", iterations=1000, progress_every=1))
    await until(stream, p.Progress)
    seconds = await engine.ping(timeout=10)
    assert seconds < 10
    # Cancelled (not Done) proves the job was still running after the pong came back.
    await engine.cancel("busy")
    assert (await collect(stream))[-1] == p.Cancelled("busy")


@module_loop
async def test_killed_worker_fails_the_running_job_as_a_crash_and_the_next_job_runs(engine):
    """Last of the real-engine tests: it leaves the shared client on a restarted worker."""
    restarts = engine.restarts
    stream = engine.submit(job("doomed", iterations=1000, progress_every=1))
    await until(stream, p.Progress)
    old_pid = engine.pid
    os.kill(old_pid, signal.SIGKILL)
    assert await collect(stream) == [p.Failed("doomed", ENGINE_CRASHED, p.FAIL_CRASH)]
    events = await collect(engine.submit(job("after", iterations=2)), timeout=120)
    assert isinstance(events[-1], p.Done)
    assert engine.restarts == restarts + 1 and engine.pid not in (None, old_pid)


# -- supervision, with the fake worker -----------------------------------------------------------


@module_loop
async def test_job_waiting_behind_a_crashed_one_is_resubmitted_and_finishes(fake_engine):
    running = fake_engine.submit(job("running", iterations=100_000, progress_every=1))
    waiting = fake_engine.submit(job("waiting", iterations=3))
    await until(running, p.Progress)
    os.kill(fake_engine.pid, signal.SIGKILL)
    assert (await collect(running))[-1].reason == p.FAIL_CRASH
    events = await collect(waiting)
    assert events[0] == p.Started("waiting") and isinstance(events[-1], p.Done)


@module_loop
async def test_hung_worker_that_misses_pongs_is_killed_and_restarted():
    client = EngineClient(fake_command(), ping_interval=0.1, ping_timeout=0.5,
                          restart_delay=0.05)
    await client.start()
    try:
        hung_pid = client.pid
        os.kill(hung_pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while client.restarts == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert client.restarts == 1 and client.pid != hung_pid
        with pytest.raises(ProcessLookupError):
            os.kill(hung_pid, 0)  # killed and reaped
        assert isinstance((await collect(client.submit(job("alive"))))[-1], p.Done)
    finally:
        await client.close()


@module_loop
async def test_cancel_of_a_job_queued_in_the_worker_ends_it_cancelled(fake_engine):
    running = fake_engine.submit(job("ahead", iterations=100_000, progress_every=1))
    queued = fake_engine.submit(job("behind", iterations=3))
    await until(running, p.Progress)
    await fake_engine.cancel("behind")
    assert await collect(queued) == [p.Cancelled("behind")]
    await fake_engine.cancel("ahead")
    assert (await collect(running))[-1] == p.Cancelled("ahead")


@module_loop
async def test_cancel_of_an_unknown_job_is_ignored(fake_engine):
    await fake_engine.cancel("never-submitted")
    assert await fake_engine.ping(5) < 5


@module_loop
async def test_duplicate_job_id_is_refused(fake_engine):
    fake_engine.submit(job("twice", iterations=100_000))
    with pytest.raises(ValueError, match="twice"):
        fake_engine.submit(job("twice"))
    await fake_engine.cancel("twice")


@module_loop
async def test_close_stops_the_worker_and_unfinished_jobs_fail_as_shutdown():
    client = EngineClient(fake_command())
    await client.start()
    process = client._worker.process
    stream = client.submit(job("interrupted", iterations=100_000, progress_every=1))
    await until(stream, p.Progress)
    await client.close()
    assert (await collect(stream))[-1] == p.Failed("interrupted", ENGINE_SHUT_DOWN,
                                                   p.FAIL_SHUTDOWN)
    assert process.returncode == 0
    with pytest.raises(EngineClosedError):
        client.submit(job("late"))


@module_loop
async def test_close_while_waiting_to_restart_returns_promptly():
    client = EngineClient(fake_command(), restart_delay=30)
    await client.start()
    waiting = client.submit(job("waiting", iterations=100_000))
    await until(waiting, p.Started)
    os.kill(client.pid, signal.SIGKILL)
    assert (await collect(waiting))[-1].reason == p.FAIL_CRASH
    started = time.monotonic()
    await client.close()
    assert time.monotonic() - started < 5


# -- the engine down: restarts that fail -------------------------------------------------------

#: What the breakable worker says when its model file is gone: with a server path, as the
#: real worker's message does.
MISSING_MODEL = "cannot start the engine: /srv/vqgan/models/tiny.ckpt is missing"


def breakable_command(broken: Path) -> list[str]:
    """The fake worker, except while the file `broken` exists: then it refuses to start
    the way the real worker does when a model file was removed."""
    return script(f"""
        import os, sys
        from engine import protocol as p
        if os.path.exists({str(broken)!r}):
            sys.stderr.write("loading models from /srv/vqgan/models\\n")
            sys.stdout.buffer.write(p.encode_message(p.Error({MISSING_MODEL!r}, fatal=True)))
            sys.stdout.flush()
            sys.exit(1)
        os.execv(sys.executable, [sys.executable, "-m", "engine", "worker", "--fake",
                                  "--fake-seconds-per-iteration", "0.005"])
    """)


async def until_state(client: EngineClient, state: EngineState, timeout: float = 30.0) -> EngineStatus:
    """The client's status once it is in `state` (awaited through `wait_status_change`)."""
    async def run() -> EngineStatus:
        status = client.status
        while status.state is not state:
            status = await client.wait_status_change(status.serial)
        return status
    return await asyncio.wait_for(run(), timeout)


@dataclass
class Breakable:
    """A client on the breakable worker, and the switch that breaks and repairs it."""

    client: EngineClient
    broken: Path

    async def kill_and_break(self) -> EngineStatus:
        """Remove the "model file" and kill the worker: every restart fails from now on."""
        self.broken.touch()
        os.kill(self.client.pid, signal.SIGKILL)
        return await until_state(self.client, EngineState.DOWN)

    def repair(self) -> None:
        self.broken.unlink()


@pytest_asyncio.fixture(loop_scope="module")
async def breakable(tmp_path: Path):
    client = EngineClient(breakable_command(tmp_path / "model-removed"), ping_interval=0.5,
                          ping_timeout=5, restart_delay=0.05, max_restart_delay=0.2)
    await client.start()
    yield Breakable(client, tmp_path / "model-removed")
    await client.close()


@module_loop
async def test_job_waiting_when_restarts_fail_is_not_failed_and_runs_once_the_engine_is_back(breakable):
    running = breakable.client.submit(job("running", iterations=100_000, progress_every=1))
    waiting = breakable.client.submit(job("waiting", iterations=3))
    await until(running, p.Progress)
    await breakable.kill_and_break()
    breakable.repair()
    events = await collect(waiting)
    assert events[0] == p.Started("waiting") and isinstance(events[-1], p.Done)


@module_loop
async def test_started_job_whose_worker_dies_fails_uncharged_even_when_restarts_fail(breakable):
    running = breakable.client.submit(job("running", iterations=100_000, progress_every=1))
    await until(running, p.Progress)
    await breakable.kill_and_break()
    assert await collect(running) == [p.Failed("running", ENGINE_CRASHED, p.FAIL_CRASH)]
    assert "not charged" in ENGINE_CRASHED


@module_loop
async def test_job_submitted_while_the_engine_is_down_waits_for_it(breakable):
    await breakable.kill_and_break()
    stream = breakable.client.submit(job("patient", iterations=3))
    breakable.repair()
    events = await collect(stream)
    assert events[0] == p.Started("patient") and isinstance(events[-1], p.Done)


@module_loop
async def test_job_cancelled_while_the_engine_is_down_ends_cancelled(breakable):
    await breakable.kill_and_break()
    stream = breakable.client.submit(job("changed-my-mind", iterations=3))
    await breakable.client.cancel("changed-my-mind")
    assert await collect(stream) == [p.Cancelled("changed-my-mind")]


@module_loop
async def test_engine_that_cannot_restart_is_down_with_the_full_error_and_the_last_ready(breakable):
    status = await breakable.kill_and_break()
    assert status.ready is None and breakable.client.ready_info is None
    assert status.last_error is not None and MISSING_MODEL in status.last_error
    assert status.last_ready is not None and status.last_ready.device == "fake"


@module_loop
async def test_engine_back_after_failed_restarts_is_ready_with_one_restart_counted(breakable):
    await breakable.kill_and_break()
    breakable.repair()
    status = await until_state(breakable.client, EngineState.READY)
    assert status.restarts == 1
    assert status.ready is not None and status.ready.pid == breakable.client.pid


@module_loop
async def test_failed_restarts_are_logged_with_the_full_error(breakable, caplog):
    caplog.set_level(logging.ERROR, logger="bot.engine_client")
    await breakable.kill_and_break()
    failures = [r.getMessage() for r in caplog.records if "restart failed" in r.getMessage()]
    assert failures and MISSING_MODEL in failures[0]


@module_loop
async def test_state_goes_from_not_started_to_starting_to_ready():
    client = EngineClient(fake_command())
    assert client.status.state is EngineState.NOT_STARTED
    seen = asyncio.create_task(client.wait_status_change(0))
    await client.start()
    try:
        assert (await seen).state in (EngineState.STARTING, EngineState.READY)
        assert client.status.state is EngineState.READY and client.status.serial == 2
    finally:
        await client.close()
    assert client.status.state is EngineState.CLOSED


@module_loop
async def test_first_start_that_fails_leaves_the_engine_down_and_a_retry_that_fails_stays_down():
    client = EngineClient(script("import sys; sys.stderr.write('no GPU here\\n'); sys.exit(3)"))
    with pytest.raises(EngineStartError):
        await client.start()
    down = client.status
    assert down.state is EngineState.DOWN and "no GPU here" in (down.last_error or "")
    with pytest.raises(EngineStartError):
        await client.start()
    assert client.status.state is EngineState.DOWN and client.status.serial == down.serial
    await client.close()


# -- start-up failures ---------------------------------------------------------------------------


@module_loop
async def test_worker_that_exits_before_ready_raises_with_its_exit_code_and_stderr():
    client = EngineClient(script("""
        import sys
        sys.stderr.write("loading...\\nCUDA driver is too old\\n")
        sys.exit(3)
    """))
    with pytest.raises(EngineStartError) as error:
        await client.start()
    assert "code 3" in str(error.value) and "CUDA driver is too old" in str(error.value)


@module_loop
async def test_worker_that_never_gets_ready_times_out_and_is_killed():
    client = EngineClient(script("import time; time.sleep(60)"), ready_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(EngineStartError, match="not ready after"):
        await client.start()
    assert time.monotonic() - started < 10


@module_loop
async def test_worker_of_another_protocol_version_is_refused_with_a_clear_message():
    client = EngineClient(script("""
        import sys, time
        from engine import protocol as p
        sys.stdout.buffer.write(p.encode_frame({"type": "ready", "version": 999}))
        sys.stdout.flush()
        time.sleep(60)
    """))
    with pytest.raises(EngineStartError) as error:
        await client.start()
    message = str(error.value)
    assert "version 999" in message and f"speaks {p.PROTOCOL_VERSION}" in message
    assert "same version" in message


@module_loop
async def test_worker_that_cannot_load_its_models_raises_with_the_engine_message():
    """What `vqgan-clip worker` does then (tests/engine/test_worker.py checks that side)."""
    client = EngineClient(script("""
        import sys
        from engine import protocol as p
        message = "cannot start the engine: tiny_vqgan.ckpt is missing from ./models"
        sys.stdout.buffer.write(p.encode_message(p.Error(message, fatal=True)))
        sys.stdout.flush()
        sys.exit(1)
    """))
    with pytest.raises(EngineStartError, match="tiny_vqgan.ckpt is missing from ./models"):
        await client.start()


# -- command line and import hygiene -------------------------------------------------------------


def test_worker_command_runs_this_python_with_the_settings_models_and_image_limit():
    settings = make_settings(model_dir=Path("/models"), device="cuda", max_image_mb=2)
    assert worker_command_for(settings) == [
        sys.executable, "-m", "engine", "--log-level", "INFO", "worker",
        "--vqgan", "vqgan_imagenet_f16_16384", "--clip", "ViT-B/32", "--model-dir", "/models",
        "--device", "cuda", "--max-image-bytes", str(2 * 1024 * 1024)]


def test_importing_the_client_does_not_import_torch():
    code = "import sys, bot.engine_client; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
