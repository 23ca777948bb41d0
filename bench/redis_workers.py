#!/usr/bin/env python
"""Throughput of remote workers through Redis: the same jobs on 1 worker, then on 2.

Starts a throwaway redis-server on 127.0.0.1 (tests/redis_server.py: the test extra's,
logged in as the documented ACL user), worker processes (`vqgan-clip worker --redis`,
the fake runner by default: it sleeps per iteration, so what is measured is the transport
and the dispatch, not a GPU), and the bot's `RedisBackend`; submits `--jobs` jobs at once
and times them until the last one is done.

    python bench/redis_workers.py                        # 24 jobs of 50 x 10 ms
    python bench/redis_workers.py --jobs 40 --iterations 20 --seconds-per-iteration 0.005

Not a test: it prints numbers and asserts nothing. Each line: workers, wall seconds,
jobs per second, and the mean seconds a job took beyond its iterations' own time (the
overhead of dispatch, claim, events and result through Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.redis_backend import RedisBackend  # noqa: E402
from engine import protocol as p  # noqa: E402
from engine.redis_layout import Expectation  # noqa: E402
from engine.redis_url import parse_redis_url  # noqa: E402
from tests.redis_server import LocalRedis, redis_server_binary  # noqa: E402


def start_worker(url: str, name: str, seconds: float, directory: Path) -> subprocess.Popen[bytes]:
    log = open(directory / f"{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "worker", "--fake", "--fake-seconds-per-iteration",
         str(seconds), "--redis", "--name", name, "--heartbeat", "1"],
        cwd=ROOT, env={**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


async def run_jobs(url: str, workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(wall seconds for all jobs, seconds each worker spent per job beyond the job's own
    iterations: the time from one job's end to the next one's start, and the events')."""
    backend = RedisBackend(parse_redis_url(url), check_interval=0.2, read_block=0.2,
                           expect=Expectation(p.PROTOCOL_VERSION, "fake", "fake"))
    try:
        await backend.start()
        while backend.free_capacity() < workers:
            await asyncio.sleep(0.05)

        async def one(index: int) -> None:
            stream = backend.submit(p.Submit(f"b{workers}-{index}", (p.TextPromptSpec("x"),),
                                             64, 64, iterations=args.iterations,
                                             progress_every=max(1, args.iterations // 5)))
            async for event in stream:
                if isinstance(event, p.TERMINAL_EVENTS):
                    assert isinstance(event, p.Done), event

        began = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(args.jobs)))
        wall = time.monotonic() - began
        own = args.iterations * args.seconds_per_iteration
        return wall, wall * workers / args.jobs - own
    finally:
        await backend.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--seconds-per-iteration", type=float, default=0.01)
    args = parser.parse_args()
    binary = redis_server_binary()
    if binary is None:
        sys.exit("no redis-server: install the test extra (./test.sh does) or set REDIS_SERVER")
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        server = LocalRedis(binary, directory / "redis")
        server.start()
        processes = []
        try:
            results = {}
            for count in (1, 2):
                while len(processes) < count:
                    processes.append(start_worker(server.url, f"bench-{len(processes) + 1}",
                                                  args.seconds_per_iteration, directory))
                results[count] = await run_jobs(server.url, count, args)
                wall, overhead = results[count]
                print(f"{count} worker{'s' if count > 1 else ' '}: {args.jobs} jobs of "
                      f"{args.iterations} x {args.seconds_per_iteration * 1000:g} ms in "
                      f"{wall:.2f} s = {args.jobs / wall:.2f} jobs/s; overhead per job "
                      f"{overhead * 1000:.0f} ms", flush=True)
            print(f"throughput 2 workers / 1 worker: {results[1][0] / results[2][0]:.2f}x "
                  f"(ideal 2.00x)")
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(15)
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
