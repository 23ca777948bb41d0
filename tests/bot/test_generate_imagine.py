"""`/imagine` through SimCord with the fake engine: validation, the answer, the progress
message, the result, quotas and the queue."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

import bot.attachments
from bot import render
from bot.jobs import JobStatus
from engine import protocol
from tests.bot.fake_engine import FakeEngine, World, png_bytes, png_file, running_world, text_of


async def only_job(world: World):
    (job,) = await world.services.store.jobs_with_status()
    return job


def preview_edits(world: World, job_id: str) -> list[dict]:
    """Edits of the job's message that attached a preview JPEG shown as the embed image."""
    found = []
    for body in world.job_edits(job_id):
        files = [a.get("filename", "") for a in body.get("attachments") or []]
        embeds = body.get("embeds") or []
        if any(f.endswith(".jpg") for f in files) and embeds and "image" in embeds[0]:
            found.append(body)
    return found


# --- the happy path ----------------------------------------------------------------------


async def test_imagine_answers_ephemerally_with_queue_position_and_job_id() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="a forest rendered in low poly")
        assert result.ephemeral
        text = text_of(result)
        assert "Queued job" in text and "position 1" in text
        job = await only_job(world)
        assert f"`{job.id}`" in text


async def test_imagine_posts_one_message_that_ends_as_the_png_with_buttons() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        (message,) = world.bot_messages()
        job = await only_job(world)
        assert job.status is JobStatus.DONE
        assert job.progress_message_id == message.id == job.result_message_id
        (attachment,) = message.attachments
        assert attachment.filename == f"{job.id}.png"
        image = Image.open(io.BytesIO(await attachment.read()))
        assert image.format == "PNG" and image.size == (64, 64)
        labels = [c.label for row in message.components for c in row.children]
        assert labels == ["Reroll", "Vary", "Edit", "Info", "Timelapse"]
        (embed,) = message.embeds
        assert embed.title == "a lighthouse"
        assert embed.image.url.endswith(f"{job.id}.png")
        assert "`1234`" in [f.value for f in embed.fields]  # the seed


async def test_result_png_is_saved_under_results_dir_and_recorded_in_the_store() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        job = await only_job(world)
        assert job.result_path == f"{job.id}.png"
        saved = world.services.results_dir / job.result_path
        assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert job.seed == 1234 and job.seconds == pytest.approx(4.0)


async def test_progress_edits_show_a_fresh_preview_each_time() -> None:
    # Three previews and "Starting": four edits, within the channel's pace for progress.
    async with running_world(FakeEngine(progress_steps=3)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        job = await only_job(world)
        edits = preview_edits(world, job.id)
        assert len(edits) == 3
        names = [body["attachments"][0]["filename"] for body in edits]
        assert len(set(names)) == 3  # a new file per edit: clients never show a stale preview
        assert all(body["embeds"][0]["image"]["url"] == f"attachment://{name}"
                   for body, name in zip(edits, names))
        assert "iteration 8/8" in edits[-1]["embeds"][0]["description"]


async def test_progress_message_mid_job_shows_a_jpeg_bar_eta_and_cancel_button() -> None:
    engine = FakeEngine(blocked=True, hold_at_step=2)
    async with running_world(engine, default_iterations=8) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        (message,) = world.bot_messages()
        (attachment,) = message.attachments
        assert Image.open(io.BytesIO(await attachment.read())).format == "JPEG"
        description = message.embeds[0].description
        assert "iteration 4/8" in description and "50%" in description
        assert "left" in description  # the ETA
        labels = [c.label for row in message.components for c in row.children]
        assert labels == ["Cancel"]


async def test_progress_edits_after_the_first_preview_are_throttled_to_progress_interval() -> None:
    async with running_world(FakeEngine(progress_steps=4), progress_interval=1000.0) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        job = await only_job(world)
        # All events arrive within the interval: the first preview only, then the result.
        (first,) = preview_edits(world, job.id)
        assert "iteration 2/8" in first["embeds"][0]["description"]
        assert job.status is JobStatus.DONE


async def test_the_first_preview_shows_at_once_and_later_ones_keep_the_interval() -> None:
    # One progress event every 30 s (simulated), 60 s between edits: shown at once at 30 s
    # (iteration 2), then at 90 s (iteration 6), never at 60 s or 120 s.
    engine = FakeEngine(progress_steps=4, step_delay=30.0)
    async with running_world(engine, progress_interval=60.0) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        await world.env.advance_time(30.0)
        job = await only_job(world)
        assert ["iteration 2/8" in e["embeds"][0]["description"] for e in preview_edits(world, job.id)] == [True]
        await world.env.advance_time(100.0)
        shown = [e["embeds"][0]["description"].split("iteration ")[1].split("/")[0]
                 for e in preview_edits(world, job.id)]
        assert shown == ["2", "6"]
        assert (await only_job(world)).status is JobStatus.DONE


async def test_a_discord_error_while_editing_progress_does_not_fail_the_job() -> None:
    async with running_world() as world:
        world.env.inject_error("PATCH", f"/channels/{world.channel.id}/messages/*", times=3)
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        job = await only_job(world)
        assert job.status is JobStatus.DONE
        (message,) = world.bot_messages()
        assert message.attachments[0].filename == f"{job.id}.png"


async def test_a_job_message_refused_by_a_discord_500_asks_to_try_again_not_for_permissions() -> None:
    async with running_world() as world:
        world.env.inject_error("POST", f"/channels/{world.channel.id}/messages", status=500, times=1)
        answer = text_of(await world.alice.slash(world.channel, "imagine", prompt="a lighthouse"))
        assert render.DISCORD_FAILED_TO_POST_JOB in answer
        assert "Send Messages" not in answer


async def test_a_job_message_refused_for_missing_permission_asks_an_admin_for_it() -> None:
    async with running_world() as world:
        world.env.inject_error("POST", f"/channels/{world.channel.id}/messages", status=403,
                               message="Missing Permissions", times=1)
        answer = text_of(await world.alice.slash(world.channel, "imagine", prompt="a lighthouse"))
        assert render.CANNOT_POST_JOB in answer


# --- what reaches the engine ---------------------------------------------------------------


async def test_plus_separated_prompt_reaches_the_engine_as_two_prompts() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a watercolor painting + a baseball game")
        assert world.engine.prompts_received == [[("a watercolor painting", 1.0), ("a baseball game", 1.0)]]


async def test_weights_reach_the_engine() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse:2 + fog:-0.5")
        assert world.engine.prompts_received == [[("a lighthouse", 2.0), ("fog", -0.5)]]


async def test_seed_iterations_size_and_cutn_reach_the_engine() -> None:
    async with running_world(default_cutn=16) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse", seed=42, iterations=12)
        (submit,) = world.engine.submits
        assert (submit.seed, submit.iterations, submit.width, submit.height, submit.cutn) == (42, 12, 64, 64, 16)


@pytest.mark.parametrize(("shape", "size"), [("square", (512, 512)), ("landscape", (512, 384)),
                                               ("portrait", (384, 512)), ("wide", (512, 288))])
async def test_size_shapes_stay_within_max_size_in_multiples_of_16(shape: str, size: tuple[int, int]) -> None:
    async with running_world(default_size=(512, 512), max_size=(512, 512)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse", size=shape)
        (submit,) = world.engine.submits
        assert (submit.width, submit.height) == size


async def test_init_image_is_stored_on_disk_and_sent_to_the_engine() -> None:
    async with running_world() as world:
        name, data = png_file("start.png")
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse", init_image=(name, data))
        (submit,) = world.engine.submits
        assert submit.init_image == data
        job = await only_job(world)
        assert job.input_path == f"inputs/{job.id}.png"
        assert (world.services.results_dir / job.input_path).read_bytes() == data


async def test_image_prompt_reaches_the_engine() -> None:
    async with running_world() as world:
        name, data = png_file("style.png")
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse", image_prompt=(name, data))
        (submit,) = world.engine.submits
        assert [p.data for p in submit.image_prompts] == [data]
        assert submit.init_image is None


# --- refusals: ephemeral, with the fix, nothing queued ----------------------------------------


async def assert_nothing_queued(world: World) -> None:
    assert await world.services.store.jobs_with_status() == []
    assert world.engine.submits == []
    assert world.bot_messages() == []


async def test_bad_prompt_is_refused_with_the_fix_and_nothing_queued() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="a cat + ")
        assert result.ephemeral
        assert "part 2 of the prompt is empty" in text_of(result)
        await assert_nothing_queued(world)


async def test_zero_total_weight_is_refused() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="a cat:1 + a dog:-1")
        assert "add up to 0" in text_of(result)
        await assert_nothing_queued(world)


async def test_too_many_iterations_are_refused_with_the_limit() -> None:
    async with running_world(max_iterations=50) as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="a cat", iterations=51)
        assert result.ephemeral and "between 1 and 50" in text_of(result)
        await assert_nothing_queued(world)


async def test_non_image_attachment_is_refused() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="a cat",
                                         init_image=("notes.txt", b"just some text"))
        assert result.ephemeral
        assert "not an image" in text_of(result) and "PNG" in text_of(result)
        await assert_nothing_queued(world)


async def test_file_named_png_that_is_not_an_image_is_refused() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="a cat",
                                         init_image=("fake.png", b"\x89PNG but not really"))
        assert "could not be read as an image" in text_of(result)
        await assert_nothing_queued(world)


def noise_png(width: int, height: int) -> bytes:
    """A PNG of random pixels: incompressible, so about 3 bytes per pixel on disk."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_attachment_over_max_image_mb_is_refused_before_downloading() -> None:
    big = noise_png(700, 600)
    assert len(big) > 1024 * 1024
    async with running_world(max_image_mb=1) as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="a cat", init_image=("big.png", big))
        text = text_of(result)
        assert result.ephemeral and "the limit is 1.0 MB" in text and "smaller" in text
        await assert_nothing_queued(world)


async def test_too_many_pixels_read_from_the_header_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.attachments, "MAX_PIXELS", 48 * 32 - 1)
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="a cat",
                                         init_image=("big.png", png_bytes(48, 32)))
        assert "48×32 pixels" in text_of(result) and "Scale it down" in text_of(result)
        await assert_nothing_queued(world)


async def test_exhausted_quota_is_refused_and_nothing_is_queued() -> None:
    async with running_world(default_daily_quota=1) as world:
        await world.alice.slash(world.channel, "imagine", prompt="one")
        result = await world.alice.slash(world.channel, "imagine", prompt="two")
        assert result.ephemeral
        assert "You have used 1 of 1 image" in text_of(result)
        assert [j.prompt for j in await world.services.store.jobs_with_status()] == ["one"]
        assert [s.prompts[0].text for s in world.engine.submits] == ["one"]


async def test_full_queue_is_refused_and_costs_no_quota() -> None:
    engine = FakeEngine(blocked=True)
    async with running_world(engine, max_queued_per_user=2) as world:
        await world.alice.slash(world.channel, "imagine", prompt="running")  # held by the engine
        await world.alice.slash(world.channel, "imagine", prompt="waiting")
        result = await world.alice.slash(world.channel, "imagine", prompt="one too many")
        assert result.ephemeral and "waiting or running" in text_of(result)
        prompts = [j.prompt for j in await world.services.store.jobs_with_status()]
        assert prompts == ["running", "waiting"]
        status = await world.services.quotas.check(world.guild.id, world.alice.id)
        assert status.used == 2


# --- failures ----------------------------------------------------------------------------------


async def test_failed_job_shows_the_plain_reason_and_is_not_charged() -> None:
    engine = FakeEngine(fail_with="out of GPU memory at 64x64; try 48x48",
                        fail_reason=protocol.FAIL_OUT_OF_MEMORY)
    async with running_world(engine, default_daily_quota=1) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse")
        job = await only_job(world)
        assert job.status is JobStatus.FAILED and "out of GPU memory" in job.error
        (message,) = world.bot_messages()
        description = message.embeds[0].description
        assert "out of GPU memory at 64x64; try 48x48" in description
        assert "not charged" in description
        assert message.attachments == []
        # Out of memory is not the user's doing: Retry (the smallest size has no smaller).
        assert [c.label for row in message.components for c in row.children] == ["Retry"]
        status = await world.services.quotas.check(world.guild.id, world.alice.id)
        assert status.used == 0 and status.remaining == 1


async def test_after_a_failed_job_the_quota_still_allows_the_next_one() -> None:
    engine = FakeEngine(fail_with="boom")
    async with running_world(engine, default_daily_quota=1) as world:
        await world.alice.slash(world.channel, "imagine", prompt="fails")
        engine.fail_with = None
        result = await world.alice.slash(world.channel, "imagine", prompt="works")
        assert "Queued job" in text_of(result)
        statuses = [j.status for j in await world.services.store.jobs_with_status()]
        assert statuses == [JobStatus.FAILED, JobStatus.DONE]


# --- fairness ----------------------------------------------------------------------------------


async def test_two_users_jobs_interleave_fairly() -> None:
    engine = FakeEngine(blocked=True)
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="A1")  # starts, held
        await world.alice.slash(world.channel, "imagine", prompt="A2")
        await world.bob.slash(world.channel, "imagine", prompt="B1")
        engine.release()
        await world.env.settle()
        assert [s.prompts[0].text for s in engine.submits] == ["A1", "B1", "A2"]
        assert {j.status for j in await world.services.store.jobs_with_status()} == {JobStatus.DONE}


async def test_init_image_without_a_size_keeps_the_pictures_shape() -> None:
    async with running_world(default_size=(256, 256), max_size=(512, 512)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a lighthouse",
                                init_image=("tall.png", png_bytes(200, 400)))
        (submit,) = world.engine.submits
        assert submit.height > submit.width
