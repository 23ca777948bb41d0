"""The job runner: restarts, engine start-up failures, unexpected errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import bot.runner
from bot.jobs import JobStatus
from bot.pacing import EDIT_WINDOW
from engine import protocol
from tests.bot.fake_engine import FakeEngine, World, png_bytes, running_world, text_of


async def jobs(world: World):
    return await world.services.store.jobs_with_status()


async def test_a_restart_finishes_the_running_and_queued_jobs_in_their_messages() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="interrupted")
        await world.alice.slash(world.channel, "imagine", prompt="waiting")
        before = await jobs(world)
        assert [j.status for j in before] == [JobStatus.RUNNING, JobStatus.QUEUED]

        new_engine = await world.restart()
        await world.env.settle()

        assert [s.prompts[0].text for s in new_engine.submits] == ["interrupted", "waiting"]
        after = await jobs(world)
        assert [j.status for j in after] == [JobStatus.DONE, JobStatus.DONE]
        # Each job's message went on updating, and its result replaced it: still one
        # message per job, the result.
        assert all(world.job_edits(j.id) for j in before)
        assert sorted(m.id for m in world.bot_messages()) == [j.result_message_id for j in after]
        assert not {j.progress_message_id for j in before} & {m.id for m in world.bot_messages()}


async def test_restore_puts_interrupted_jobs_before_older_queued_ones() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="A1")  # running
        await world.bob.slash(world.channel, "imagine", prompt="B1")
        await world.alice.slash(world.channel, "imagine", prompt="A2")
        await world.bot.close()
        restored = await bot_runner_restore(world)
        assert [j.prompt for j in restored] == ["A1", "B1", "A2"]


async def bot_runner_restore(world: World):
    """Open the same database with a fresh store and run the runner's restore logic."""
    from bot.job_messages import JobMessages
    from bot.services import Services
    from bot.views import progress_view, result_view

    messages = JobMessages(world.bot, progress_view=progress_view, result_view=result_view)
    services = await Services.open(world.settings, messages=messages, engine=FakeEngine())
    try:
        runner = bot.runner.JobRunner(world.bot, services)
        await runner.restore()
        return services.scheduler.queued_jobs()
    finally:
        await services.close()


async def test_engine_that_fails_to_start_is_retried_and_waiting_users_are_told(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bot.runner, "ENGINE_RETRY_DELAYS", (0.01,))
    engine = FakeEngine(start_failures=2)
    async with running_world(engine) as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="patience")
        assert "Queued job" in text_of(result)
        await world.env.settle()
        assert engine.start_calls == 3
        (job,) = await jobs(world)
        assert job.status is JobStatus.DONE
        told = [body["embeds"][0]["description"] for body in world.job_edits(job.id)
                if "engine is down" in str(body.get("embeds"))]
        assert told and "keeps its place" in told[0]
        # The reason is for the operator: it can hold the server's paths.
        assert not any("tiny.ckpt" in text for text in told)
    assert any("could not start" in r.getMessage() for r in caplog.records)


async def test_engine_is_started_once_for_many_jobs() -> None:
    engine = FakeEngine()
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="one")
        await world.alice.slash(world.channel, "imagine", prompt="two")
        assert engine.start_calls == 1 and len(engine.submits) == 2


async def test_an_idle_bot_does_not_start_the_engine() -> None:
    engine = FakeEngine()
    async with running_world(engine):
        pass
    assert engine.start_calls == 0


async def test_a_warm_bot_starts_the_engine_at_boot_before_any_job() -> None:
    engine = FakeEngine()
    async with running_world(engine, warm_engine=True) as world:
        await world.env.settle()
        assert engine.start_calls == 1 and engine.submits == []


class ExplodingEngine(FakeEngine):
    """Raises out of the event stream for the first job: a bug, not an engine failure."""

    def submit(self, job: protocol.Submit) -> AsyncIterator[protocol.JobEvent]:
        self.submits.append(job)
        if len(self.submits) == 1:
            return self._explode()
        return self._events(job)

    async def _explode(self) -> AsyncIterator[protocol.JobEvent]:
        raise RuntimeError("a bug in the bot")
        yield  # pragma: no cover - makes this an async generator


async def test_unexpected_error_apologises_with_the_job_id_and_the_next_job_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_world(ExplodingEngine()) as world:
        await world.alice.slash(world.channel, "imagine", prompt="unlucky")
        await world.alice.slash(world.channel, "imagine", prompt="lucky")
        first, second = await jobs(world)
        assert first.status is JobStatus.FAILED and second.status is JobStatus.DONE
        message = next(m for m in world.bot_messages() if m.id == first.progress_message_id)
        assert f"`{first.id}`" in message.embeds[0].description
        assert "Sorry" in message.embeds[0].description
        assert any(first.id in r.getMessage() and r.exc_info for r in caplog.records)
        status = await world.services.quotas.check(world.guild.id, world.alice.id)
        assert status.used == 1  # only the done job


async def test_engine_shutdown_mid_job_leaves_it_for_the_next_start() -> None:
    engine = FakeEngine(fail_with="the engine was shut down", fail_reason=protocol.FAIL_SHUTDOWN)
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="interrupted")
        (job,) = await jobs(world)
        assert job.status is JobStatus.RUNNING  # requeued by the next start
        assert "restarting" in world.bot_messages()[0].embeds[0].description
        new_engine = await world.restart()
        await world.env.settle()
        assert [s.job for s in new_engine.submits] == [job.id]
        assert (await world.services.store.get_job(job.id)).status is JobStatus.DONE


async def test_missing_input_image_fails_the_job_with_advice() -> None:
    engine = FakeEngine(blocked=True)
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="first")  # held
        await world.alice.slash(world.channel, "edit", prompt="second",
                                image=("p.png", png_bytes(64, 64)))
        waiting = (await jobs(world))[-1]
        (world.services.results_dir / waiting.input_path).unlink()
        engine.release()
        await world.env.settle()
        waiting = await world.services.store.get_job(waiting.id)
        assert waiting.status is JobStatus.FAILED and "attach it again" in waiting.error
        assert len(engine.submits) == 1


async def test_cancel_button_works_after_a_restart() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="held")
        await world.alice.slash(world.channel, "imagine", prompt="waiting")
        waiting = (await jobs(world))[-1]
        await world.restart(FakeEngine(blocked=True))
        # A restarted bot counts every channel's edit pace full for one window (it cannot
        # know what the bot before it edited): the cancel's edit, and so the answer, waits.
        await world.env.advance_time(EDIT_WINDOW)
        message = next(m for m in world.bot_messages() if m.id == waiting.progress_message_id)
        result = await world.alice.click(message, label="Cancel")
        assert "before it started" in text_of(result)
        assert (await world.services.store.get_job(waiting.id)).status is JobStatus.CANCELLED
