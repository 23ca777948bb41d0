"""`/status` through SimCord: what an admin learns about the engine and the queue, and
that nobody else can ask."""

from __future__ import annotations

from typing import Any

from bot import render
from bot.engine_status import EngineState, EngineStatus
from bot.jobs import JobStatus
from bot.render import HELP_ADMIN_FIELD
from bot.worker_status import WorkerState, WorkerStatus
from engine.protocol import PROTOCOL_VERSION
from tests.bot.conftest import reply
from tests.bot.fake_engine import START_ERROR, FakeEngine, World, running_world


async def status(world: World) -> dict[str, str]:
    """The mod's `/status` answer as {field name: value}; it must be private."""
    result = await world.mod.slash(world.channel, "status")
    assert result.response is not None and result.response.ephemeral
    (embed,) = result.response.embeds
    return {field.name: field.value for field in embed.fields}


def status_command(world: World) -> Any:
    return next(c for c in world.bot.synced_commands if c.name == "status")


async def test_status_shows_a_ready_engine_its_device_and_models() -> None:
    async with running_world(FakeEngine(), warm_engine=True) as world:
        await world.env.settle()

        fields = await status(world)

        assert "**ready**" in fields["Engine"] and "no restarts" in fields["Engine"]
        assert "`cpu`" in fields["Device"] and "pid 1" in fields["Device"]
        assert "fake_vqgan" in fields["Models"] and "fake_clip" in fields["Models"]
        assert "Last error" not in fields


async def test_status_shows_the_queue_and_the_running_job() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="computing")
        await world.bob.slash(world.channel, "imagine", prompt="waiting")
        computing = (await world.services.store.jobs_with_status(JobStatus.RUNNING))[0]

        fields = await status(world)

        assert fields["Queue"].startswith("1 waiting")
        assert f"job `{computing.id}`, iteration 0/{computing.iterations}" in fields["Queue"]


async def test_status_counts_the_jobs_done_and_failed_today() -> None:
    async with running_world(FakeEngine()) as world:
        await world.alice.slash(world.channel, "imagine", prompt="one")
        await world.alice.slash(world.channel, "imagine", prompt="two")
        world.engine.fail_with = "out of memory"
        await world.bob.slash(world.channel, "imagine", prompt="three")
        await world.env.settle()

        fields = await status(world)

        assert fields["Today (since 00:00 UTC)"] == "2 done · 1 failed · 0 cancelled"


async def test_status_shows_a_down_engine_with_its_last_error_to_an_admin() -> None:
    async with running_world(FakeEngine(), warm_engine=True) as world:
        await world.env.settle()
        world.engine.go_down()
        await world.env.settle()

        fields = await status(world)

        assert "**down**" in fields["Engine"]
        assert START_ERROR in fields["Last error"] and "```" in fields["Last error"]
        # The models the engine last ran, marked as such (nothing runs now).
        assert "fake_vqgan" in fields["Models"] and "when it last ran" in fields["Models"]
        assert "pid" not in fields["Device"]


async def test_status_of_an_engine_never_started_names_the_configured_models() -> None:
    async with running_world(FakeEngine()) as world:
        fields = await status(world)

        assert "**not started**" in fields["Engine"]
        settings = world.settings
        assert settings.vqgan_model in fields["Models"] and "configured" in fields["Models"]


async def test_status_is_hidden_from_and_refused_to_a_plain_member() -> None:
    async with running_world(FakeEngine()) as world:
        assert "status" in world.mod.available_commands(world.channel)
        assert "status" not in world.alice.available_commands(world.channel)
        # A server owner can let anyone run it; the bot still refuses.
        world.guild.set_command_permissions(status_command(world), {world.alice: True})

        text = reply(await world.alice.slash(world.channel, "status"))

        assert "Manage Server" in text


async def test_help_tells_admins_about_status() -> None:
    async with running_world(FakeEngine()) as world:
        result = await world.mod.slash(world.channel, "help")
        assert result.response is not None
        (embed,) = result.response.embeds

        assert any(f.name == HELP_ADMIN_FIELD[0] and "/status" in f.value for f in embed.fields)



async def test_status_shows_how_many_jobs_the_engine_runs_at_once() -> None:
    async with running_world(FakeEngine(capacity=3), warm_engine=True) as world:
        await world.env.settle()

        fields = await status(world)

        assert fields["Capacity"] == "3 images at once"


async def test_status_of_an_engine_that_runs_one_job_at_a_time_says_so() -> None:
    async with running_world(FakeEngine(), warm_engine=True) as world:
        await world.env.settle()

        assert (await status(world))["Capacity"] == "1 image at a time"


async def test_status_lists_every_running_job() -> None:
    async with running_world(FakeEngine(capacity=3, blocked=True)) as world:
        for member in (world.alice, world.bob, world.mod):
            await member.slash(world.channel, "imagine", prompt=f"by {member.name}")
        running = await world.services.store.jobs_with_status(JobStatus.RUNNING)

        fields = await status(world)

        assert fields["Queue"].startswith("0 waiting · 3 running:")
        for job in running:
            assert f"job `{job.id}`, iteration 0/{job.iterations}" in fields["Queue"]


def worker(name: str, **overrides: Any) -> WorkerStatus:
    values: dict[str, Any] = dict(name=name, state=WorkerState.LIVE, device="cuda:0",
                                  vqgan="vq", clip="cl", version=PROTOCOL_VERSION, capacity=2,
                                  busy=0, jobs_done=0, last_seen=1_700_000_000.0)
    return WorkerStatus(**{**values, **overrides})


def workers_field(*workers: WorkerStatus) -> str:
    engine = EngineStatus(state=EngineState.READY, since=0.0, serial=1, ready=None, last_ready=None,
                          last_error=None, last_error_at=None, restarts=0)
    embed = render.status_embed(engine, queued=0, running=[], finished_today={},
                                configured_models=("vq", "cl"), workers=workers)
    return next(f.value for f in embed.fields if (f.name or "").startswith("Workers"))


def test_status_lists_each_worker_with_its_device_models_load_jobs_done_and_last_seen() -> None:
    text = workers_field(worker("gpu-a", busy=1, jobs_done=7),
                         worker("gpu-b", device="cuda:1", last_seen=1_700_000_100.0))

    first, second = text.splitlines()
    assert first.startswith("`gpu-a`") and "`cuda:0`" in first and "VQGAN `vq`, CLIP `cl`" in first
    assert "busy 1/2" in first and "7 done" in first and "last seen <t:1700000000:R>" in first
    assert second.startswith("`gpu-b`") and "`cuda:1`" in second and "idle" in second
    assert "0 done" in second and "<t:1700000100:R>" in second


def test_status_says_why_a_worker_is_not_used() -> None:
    text = workers_field(worker("old", state=WorkerState.REFUSED, note="it speaks protocol version 2"))

    assert "`old` **refused**" in text and "not used" in text
    assert "it speaks protocol version 2" in text


async def test_status_lists_the_engines_worker() -> None:
    async with running_world(FakeEngine(), warm_engine=True) as world:
        await world.env.settle()

        fields = await status(world)

        assert fields["Workers (1)"].startswith("`fake` · `cpu` · VQGAN `fake_vqgan`")
