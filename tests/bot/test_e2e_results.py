"""End to end, the result buttons on the real engine process and tiny models (see
`tests/bot/test_e2e.py`): Info's command run by the real CLI remakes the very PNG the
engine made for the bot, and Timelapse animates the frames the real engine streamed.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from bot.jobs import Job, JobStatus
from bot.timelapse import FRAME_MS, LAST_FRAME_MS
from tests.bot.fake_engine import World, running_world, text_of
from tests.bot.test_e2e import E2E_SETTINGS, JOB_TIMEOUT, RealEngine, real_engine  # noqa: F401 (fixture)

CODE_BLOCK = re.compile(r"```sh\n(.*)\n```", re.DOTALL)


async def all_finished(world: World, count: int) -> list[Job]:
    """Wait (in real time) until `count` jobs exist and all have ended; oldest first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOB_TIMEOUT
    while True:
        jobs = await world.services.store.jobs_with_status()
        if len(jobs) == count and all(job.status.is_finished for job in jobs):
            # A job is marked done before its message becomes the result: read it again
            # once the bot has settled.
            await world.env.settle()
            return await world.services.store.jobs_with_status()
        assert loop.time() < deadline, f"jobs still {[j.status for j in jobs]} after {JOB_TIMEOUT} s"
        await asyncio.sleep(0.1)


def result_message(world: World, job: Job) -> Any:
    return next(m for m in world.bot_messages() if m.id == job.result_message_id)


async def info_command(world: World, job: Job) -> list[str]:
    """Click Info on `job`'s result; the command it shows, split as a shell would."""
    shown = await world.bob.click(result_message(world, job), label="Info")
    assert shown.response is not None and shown.response.ephemeral
    (embed,) = shown.response.embeds
    match = CODE_BLOCK.search(embed.description or "")
    assert match is not None, embed.description
    return shlex.split(match.group(1))


def run_cli(argv: list[str], tiny_models: Any, cwd: Path) -> None:
    """`vqgan-clip ...` as a user runs it: a new process, models found through MODEL_DIR."""
    assert argv[0] == "vqgan-clip"
    environment = {**os.environ, "MODEL_DIR": str(tiny_models.directory)}
    completed = subprocess.run([sys.executable, "-m", "engine", *argv[1:], "--no-progress"],
                               cwd=cwd, env=environment, capture_output=True, text=True,
                               timeout=JOB_TIMEOUT)
    assert completed.returncode == 0, completed.stderr


async def test_info_command_remakes_an_imagined_png_byte_for_byte(real_engine: RealEngine,
                                                                 tiny_models: Any) -> None:
    async with running_world(real_engine, **E2E_SETTINGS) as world:  # type: ignore[arg-type]
        await world.alice.slash(world.channel, "imagine", prompt="a red apple + a blue sky:0.5")
        (job,) = await all_finished(world, 1)
        assert job.status is JobStatus.DONE, job.error
        argv = await info_command(world, job)
        results = world.services.results_dir
        await asyncio.to_thread(run_cli, argv, tiny_models, results)
        assert (results / f"remade-{job.id}.png").read_bytes() == (results / job.result_path).read_bytes()


async def test_info_command_remakes_a_vary_an_edit_of_the_result_byte_for_byte(
        real_engine: RealEngine, tiny_models: Any) -> None:
    async with running_world(real_engine, **E2E_SETTINGS) as world:  # type: ignore[arg-type]
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse in fog")
        (first,) = await all_finished(world, 1)
        await world.alice.click(result_message(world, first), label="Vary")
        _, vary = await all_finished(world, 2)
        assert vary.status is JobStatus.DONE, vary.error
        argv = await info_command(world, vary)
        assert argv[1] == "edit" and argv[-2:] == [first.result_path, "a lighthouse in fog"]
        results = world.services.results_dir
        await asyncio.to_thread(run_cli, argv, tiny_models, results)
        assert (results / f"remade-{vary.id}.png").read_bytes() == (results / vary.result_path).read_bytes()


async def test_timelapse_animates_the_frames_the_real_engine_streamed(real_engine: RealEngine) -> None:
    async with running_world(real_engine, **E2E_SETTINGS) as world:  # type: ignore[arg-type]
        await world.alice.slash(world.channel, "imagine", prompt="a red apple")
        (job,) = await all_finished(world, 1)
        shown = await world.bob.click(result_message(world, job), label="Timelapse")
        assert shown.ephemeral and "Posted the timelapse" in text_of(shown)
        (posted,) = [m for m in world.bot_messages() if m.id != job.result_message_id]
        assert posted.reference is not None and posted.reference.message_id == job.result_message_id
        (attachment,) = posted.attachments
        with Image.open(io.BytesIO(await attachment.read())) as animation:
            assert (animation.format, animation.size) == ("WEBP", (64, 64))
            # One frame per progress event (10 iterations: every one reports), then the
            # result. Counted by display time, not by frames: libwebp merges two identical
            # consecutive previews into one longer frame (an iteration that changed no
            # code), which a viewer cannot tell apart, while a lost frame shortens it.
            shown_ms = 0
            for index in range(animation.n_frames):
                animation.seek(index)
                animation.load()  # a frame's duration is known once it is read
                shown_ms += animation.info["duration"]
            assert shown_ms == 10 * FRAME_MS + LAST_FRAME_MS
