"""`/edit`, the "Edit image" context menu, and the Reroll / Edit / Cancel buttons."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.jobs import JobKind, JobStatus
from tests.bot.fake_engine import FakeEngine, World, png_bytes, png_file, running_world, text_of


async def jobs(world: World):
    return await world.services.store.jobs_with_status()


async def imagine_one(world: World, prompt: str = "a vase of flowers") -> tuple:
    """Run one /imagine to completion; returns (job, its result message)."""
    await world.alice.slash(world.channel, "imagine", prompt=prompt)
    job = (await jobs(world))[-1]
    assert job.status is JobStatus.DONE
    message = next(m for m in world.bot_messages() if m.id == job.result_message_id)
    return job, message


# --- /edit ---------------------------------------------------------------------------------


async def test_edit_with_an_attachment_sends_that_image_to_the_engine() -> None:
    async with running_world() as world:
        name, data = png_file("garden.png", 96, 64)
        result = await world.alice.slash(world.channel, "edit", prompt="withered flowers", image=(name, data))
        assert "Queued job" in text_of(result)
        (submit,) = world.engine.submits
        assert submit.init_image == data
        assert [p.text for p in submit.prompts] == ["withered flowers"]
        (job,) = await jobs(world)
        assert job.kind == JobKind.EDIT and job.status is JobStatus.DONE
        assert (world.services.results_dir / job.input_path).read_bytes() == data


async def test_edit_keeps_the_images_aspect_ratio_within_the_default_size() -> None:
    async with running_world(default_size=(256, 256), max_size=(512, 512)) as world:
        await world.alice.slash(world.channel, "edit", prompt="snow", image=("wide.png", png_bytes(400, 200)))
        (submit,) = world.engine.submits
        assert submit.width > submit.height
        assert submit.width % 16 == 0 and submit.height % 16 == 0
        assert submit.width * submit.height <= 256 * 256


async def test_edit_replace_makes_a_masked_edit() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "edit", prompt="withered flowers", image=png_file(),
                                replace="flowers")
        (submit,) = world.engine.submits
        assert submit.replace == "flowers"
        (job,) = await jobs(world)
        assert job.params["replace"] == "flowers"


async def test_edit_without_an_image_edits_the_latest_result_in_the_channel() -> None:
    async with running_world() as world:
        first, _ = await imagine_one(world)
        result = await world.bob.slash(world.channel, "edit", prompt="withered flowers")
        assert "Queued job" in text_of(result)
        edit_submit = world.engine.submits[-1]
        assert edit_submit.init_image == (world.services.results_dir / first.result_path).read_bytes()
        edit_job = (await jobs(world))[-1]
        assert edit_job.parent_id == first.id and edit_job.user_id == world.bob.id


async def test_edit_without_an_image_takes_the_newest_of_several_results() -> None:
    async with running_world() as world:
        await imagine_one(world, "first")
        second, _ = await imagine_one(world, "second")
        await world.alice.slash(world.channel, "edit", prompt="snow")
        assert (await jobs(world))[-1].parent_id == second.id


async def test_edit_with_no_image_anywhere_says_how_to_give_one_and_queues_nothing() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "edit", prompt="withered flowers")
        assert result.ephemeral
        text = text_of(result)
        assert "no image to edit" in text and "image:" in text and "Edit image" in text
        assert await jobs(world) == [] and world.engine.submits == []


async def test_edit_sees_other_members_images_when_message_content_is_granted() -> None:
    async with running_world(env_options={"approved_intents": None}) as world:
        name, data = png_file()
        await world.bob.send(world.channel, "my photo", attachments=[(name, data)])
        await world.alice.slash(world.channel, "edit", prompt="withered flowers")
        assert world.engine.submits[-1].init_image == data


async def test_edit_with_a_non_image_attachment_is_refused() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "edit", prompt="x", image=("a.pdf", b"%PDF-1.4"))
        assert result.ephemeral and "not an image" in text_of(result)
        assert await jobs(world) == []


# --- the context menu ----------------------------------------------------------------------


def truncated_png(width: int = 48, height: int = 32) -> bytes:
    """A PNG whose header is sound and whose pixel data stops half way."""
    data = png_bytes(width, height)
    return data[: len(data) // 2]


def upright_photo_jpeg(stored: tuple[int, int], orientation: int) -> bytes:
    """A JPEG stored `stored` (w, h) with an EXIF orientation, as phone cameras write it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.new("RGB", stored, (90, 140, 200)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


async def test_edit_with_a_truncated_png_is_refused_privately_and_costs_nothing() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "edit", prompt="snow",
                                         image=("cut.png", truncated_png()))
        assert result.ephemeral and "could not be read as an image" in text_of(result)
        assert await jobs(world) == [] and world.engine.submits == [] and world.bot_messages() == []
        assert not (world.services.results_dir / "inputs").exists()
        status = await world.services.quotas.check(world.guild.id, world.alice.id)
        assert status.used == 0


async def test_edit_of_an_upright_phone_photo_gets_an_upright_size() -> None:
    # Stored 400x300 (landscape) with orientation 6: the picture is 300x400, portrait.
    async with running_world(default_size=(256, 256), max_size=(512, 512)) as world:
        await world.alice.slash(world.channel, "edit", prompt="snow",
                                image=("phone.jpg", upright_photo_jpeg((400, 300), 6)))
        (submit,) = world.engine.submits
        assert submit.height > submit.width
        assert abs(submit.width / submit.height - 300 / 400) < 0.1


async def test_context_menu_opens_a_modal_and_queues_an_edit_of_that_image() -> None:
    async with running_world() as world:
        name, data = png_file()
        target = await world.bob.send(world.channel, "my photo", attachments=[(name, data)])
        shown = await world.alice.context_menu(world.channel, "Edit image", target)
        assert shown.modal is not None and shown.modal["title"] == "Edit image"
        submitted = await world.alice.submit_modal(shown, {"prompt": "a red barn", "replace": "house"})
        assert "Queued job" in text_of(submitted)
        (submit,) = world.engine.submits
        assert submit.init_image == data and submit.replace == "house"
        assert [p.text for p in submit.prompts] == ["a red barn"]


async def test_context_menu_on_a_message_without_an_image_is_refused() -> None:
    async with running_world() as world:
        target = await world.bob.send(world.channel, "just words")
        result = await world.alice.context_menu(world.channel, "Edit image", target)
        assert result.modal is None and result.ephemeral
        assert "no image" in text_of(result)


async def test_context_menu_modal_with_a_bad_prompt_is_refused() -> None:
    async with running_world() as world:
        target = await world.bob.send(world.channel, "my photo", attachments=[png_file()])
        shown = await world.alice.context_menu(world.channel, "Edit image", target)
        submitted = await world.alice.submit_modal(shown, {"prompt": "+"})
        assert submitted.ephemeral and "prompt can't be used" in text_of(submitted)
        assert await jobs(world) == []


async def test_context_menu_on_a_result_edits_the_stored_png() -> None:
    async with running_world() as world:
        first, message = await imagine_one(world)
        shown = await world.bob.context_menu(world.channel, "Edit image", message)
        await world.bob.submit_modal(shown, {"prompt": "in winter"})
        edit_job = (await jobs(world))[-1]
        assert edit_job.parent_id == first.id and edit_job.input_path == first.result_path


# --- result buttons ------------------------------------------------------------------------


async def test_reroll_queues_the_same_prompt_and_size_with_a_new_seed() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a fox", seed=7, iterations=10)
        first = (await jobs(world))[-1]
        message = next(m for m in world.bot_messages() if m.id == first.result_message_id)
        result = await world.bob.click(message, label="Reroll")
        assert result.ephemeral and "Queued job" in text_of(result)
        original, reroll = world.engine.submits
        assert reroll.prompts == original.prompts
        assert (reroll.width, reroll.height, reroll.iterations) == (original.width, original.height, 10)
        assert original.seed == 7 and reroll.seed is None
        job = (await jobs(world))[-1]
        assert (job.kind, job.parent_id, job.user_id) == (JobKind.REROLL, first.id, world.bob.id)


async def test_edit_button_opens_a_modal_that_edits_this_result() -> None:
    async with running_world() as world:
        first, message = await imagine_one(world)
        shown = await world.alice.click(message, label="Edit")
        assert shown.modal is not None
        await world.alice.submit_modal(shown, {"prompt": "at night"})
        edit_submit = world.engine.submits[-1]
        assert edit_submit.init_image == (world.services.results_dir / first.result_path).read_bytes()
        assert (await jobs(world))[-1].parent_id == first.id


async def test_reroll_and_edit_buttons_work_after_a_restart() -> None:
    async with running_world() as world:
        first, message = await imagine_one(world)
        new_engine = await world.restart()
        result = await world.alice.click(message, label="Reroll")
        assert "Queued job" in text_of(result)
        shown = await world.alice.click(message, label="Edit")
        await world.alice.submit_modal(shown, {"prompt": "at night"})
        assert [s.prompts[0].text for s in new_engine.submits] == ["a vase of flowers", "at night"]
        assert all(j.status is JobStatus.DONE for j in await jobs(world))


async def test_reroll_counts_against_the_clickers_quota() -> None:
    async with running_world(default_daily_quota=1) as world:
        _, message = await imagine_one(world)
        result = await world.alice.click(message, label="Reroll")
        assert result.ephemeral and "You have used 1 of 1" in text_of(result)
        assert len(world.engine.submits) == 1


# --- cancel --------------------------------------------------------------------------------


@pytest.fixture
def held() -> FakeEngine:
    return FakeEngine(blocked=True)


async def test_requester_cancels_a_running_job_and_is_not_charged(held: FakeEngine) -> None:
    async with running_world(held) as world:
        await world.alice.slash(world.channel, "imagine", prompt="running")
        (message,) = world.bot_messages()
        result = await world.alice.click(message, label="Cancel")
        assert result.ephemeral and "Stopping" in text_of(result)
        await world.env.settle()
        (job,) = await jobs(world)
        assert job.status is JobStatus.CANCELLED
        (message,) = world.bot_messages()
        assert "Cancelled" in message.embeds[0].description and message.components == []
        assert (await world.services.quotas.check(world.guild.id, world.alice.id)).used == 0


async def test_requester_cancels_a_queued_job_before_it_reaches_the_engine(held: FakeEngine) -> None:
    async with running_world(held) as world:
        await world.alice.slash(world.channel, "imagine", prompt="running")
        await world.alice.slash(world.channel, "imagine", prompt="waiting")
        waiting = (await jobs(world))[-1]
        message = next(m for m in world.bot_messages() if m.id == waiting.progress_message_id)
        result = await world.alice.click(message, label="Cancel")
        assert "before it started" in text_of(result)
        held.release()
        await world.env.settle()
        assert [s.prompts[0].text for s in held.submits] == ["running"]
        assert (await world.services.store.get_job(waiting.id)).status is JobStatus.CANCELLED


async def test_another_member_cannot_cancel(held: FakeEngine) -> None:
    async with running_world(held) as world:
        await world.alice.slash(world.channel, "imagine", prompt="mine")
        (message,) = world.bot_messages()
        result = await world.bob.click(message, label="Cancel")
        assert result.ephemeral and "Only" in text_of(result) and "Manage Server" in text_of(result)
        (job,) = await jobs(world)
        assert job.status is JobStatus.RUNNING


async def test_a_member_with_manage_server_can_cancel(held: FakeEngine) -> None:
    async with running_world(held) as world:
        await world.alice.slash(world.channel, "imagine", prompt="mine")
        (message,) = world.bot_messages()
        await world.mod.click(message, label="Cancel")
        await world.env.settle()
        (job,) = await jobs(world)
        assert job.status is JobStatus.CANCELLED
        assert f"<@{world.mod.id}>" in world.bot_messages()[0].embeds[0].description
