"""The engine's `Worker` (engine/worker.py) in a thread of an asyncio program, fed through a
pair of OS pipes exactly as the bot feeds the worker process through stdin/stdout.

Why: a program that gets its jobs some other way (`engine.redis_worker`, from Redis) then
runs them with everything the Worker does (the job loop, failure kinds, cancellation
within an iteration, pongs while a job computes, its capacity) without a copy of it, and
without changing it. The frames it writes come out as an asyncio queue; one reader thread
turns them into messages, a `None` after its output ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import BinaryIO

from engine import protocol as p
from engine.serving import BatchRunner, JobRunner
from engine.worker import run_worker

log = logging.getLogger("engine.worker_thread")


class WorkerThread:
    """The engine's `Worker` in a thread, behind two OS pipes; its frames come out as an
    asyncio queue (None after its output ends). Build it inside the running loop."""

    def __init__(self, load_runner: Callable[[], JobRunner | BatchRunner]) -> None:
        to_engine_r, to_engine_w = os.pipe()
        from_engine_r, from_engine_w = os.pipe()
        self._input = os.fdopen(to_engine_w, "wb")
        self._output = os.fdopen(from_engine_r, "rb")
        engine_in = os.fdopen(to_engine_r, "rb")
        engine_out = os.fdopen(from_engine_w, "wb")
        self._write_lock = threading.Lock()
        self.exit_code: int | None = None
        self.messages: asyncio.Queue[p.Message | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._serve_thread = threading.Thread(
            target=self._serve, args=(load_runner, engine_in, engine_out),
            name="engine-worker", daemon=True)
        self._read_thread = threading.Thread(target=self._read, name="engine-frames",
                                             daemon=True)

    def start(self) -> None:
        self._serve_thread.start()
        self._read_thread.start()

    def _serve(self, load_runner: Callable[[], JobRunner | BatchRunner], engine_in: BinaryIO,
               engine_out: BinaryIO) -> None:
        try:
            self.exit_code = run_worker(load_runner, engine_in, engine_out)
        except BaseException:
            log.exception("the engine stopped by a bug")
            self.exit_code = 1
        finally:
            for stream in (engine_out, engine_in):
                with contextlib.suppress(OSError):
                    stream.close()

    def _read(self) -> None:
        while True:
            try:
                message = p.read_message(self._output)
            except p.ProtocolError as error:
                log.error("the engine sent a bad frame: %s", error)
                if error.recoverable:
                    continue
                message = None
            except (OSError, ValueError):
                message = None
            try:
                self._loop.call_soon_threadsafe(self.messages.put_nowait, message)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return
            if message is None:
                return

    def _write(self, message: p.Message) -> bool:
        data = p.encode_message(message)
        with self._write_lock:
            try:
                self._input.write(data)
                self._input.flush()
            except (OSError, ValueError):
                return False
        return True

    async def send(self, message: p.Message) -> bool:
        """Hand the engine one message; False if its input is closed (it is stopping)."""
        return await asyncio.to_thread(self._write, message)

    def close_input(self) -> None:
        """End the engine's input: it cancels what it runs and exits."""
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            self._input.close()

    async def join(self, timeout: float) -> bool:
        """Wait for the engine thread to end; False if it did not in `timeout`."""
        await asyncio.to_thread(self._serve_thread.join, timeout)
        return not self._serve_thread.is_alive()
