"""Issue 11 item 4: `/edit` uses the right image and says which.

The queued answer names the image it edits (a link to its message and a small picture);
messages the bot cannot see (no Message Content intent) are said to be hidden rather than
skipped; the "Edit image" menu never edits a running job's preview.
"""

from __future__ import annotations

from typing import Any

from bot.jobs import JobStatus
from tests.bot.fake_engine import FakeEngine, World, png_file, running_world, text_of


async def jobs(world: World):
    return await world.services.store.jobs_with_status()


def answer_embed(result: Any) -> Any:
    """The one embed under the ephemeral queued answer."""
    assert result.ephemeral
    (embed,) = result.response.embeds
    return embed


async def imagine_one(world: World, prompt: str = "a vase of flowers") -> tuple[Any, Any]:
    await world.alice.slash(world.channel, "imagine", prompt=prompt)
    job = (await jobs(world))[-1]
    assert job.status is JobStatus.DONE
    message = next(m for m in world.bot_messages() if m.id == job.result_message_id)
    return job, message


# --- the answer names the source --------------------------------------------------------


async def test_edit_of_an_attachment_names_it_with_a_small_picture() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "edit", prompt="snow",
                                         image=png_file("garden.png"))
        assert "Queued job" in text_of(result)
        embed = answer_embed(result)
        assert "your attachment" in embed.description and "garden.png" in embed.description
        assert embed.thumbnail.url and "garden.png" in embed.thumbnail.url
        assert embed.image.url is None  # a thumbnail, not a full-size picture


async def test_edit_of_the_latest_result_links_to_its_message_and_shows_it_small() -> None:
    async with running_world() as world:
        first, message = await imagine_one(world)
        result = await world.bob.slash(world.channel, "edit", prompt="withered flowers")
        embed = answer_embed(result)
        assert f"the result of job `{first.id}`" in embed.description
        assert message.jump_url in embed.description
        assert embed.thumbnail.url == message.attachments[0].url


async def test_edit_of_a_members_visible_image_names_their_message() -> None:
    async with running_world(env_options={"approved_intents": None}) as world:
        photo = await world.bob.send(world.channel, "my photo", attachments=[png_file("cat.png")])
        result = await world.alice.slash(world.channel, "edit", prompt="a tiger")
        embed = answer_embed(result)
        assert f"<@{world.bob.id}>'s message" in embed.description
        assert photo.jump_url in embed.description
        assert embed.thumbnail.url == photo.attachments[0].url


async def test_context_menu_answer_names_the_message_it_edits() -> None:
    async with running_world() as world:
        photo = await world.bob.send(world.channel, "my photo", attachments=[png_file()])
        shown = await world.alice.context_menu(world.channel, "Edit image", photo)
        submitted = await world.alice.submit_modal(shown, {"prompt": "a red barn"})
        embed = answer_embed(submitted)
        assert photo.jump_url in embed.description and f"<@{world.bob.id}>" in embed.description


async def test_edit_button_answer_names_the_result_it_edits() -> None:
    async with running_world() as world:
        first, message = await imagine_one(world)
        shown = await world.bob.click(message, label="Edit")
        embed = answer_embed(await world.bob.submit_modal(shown, {"prompt": "at night"}))
        assert f"job `{first.id}`" in embed.description and message.jump_url in embed.description


# --- hidden messages ---------------------------------------------------------------------


async def test_edit_says_it_cannot_see_a_members_newest_image_and_queues_nothing() -> None:
    async with running_world() as world:  # no Message Content intent, as the real bot
        await world.bob.send(world.channel, "my photo", attachments=[png_file()])
        result = await world.alice.slash(world.channel, "edit", prompt="withered flowers")
        text = text_of(result)
        assert result.ephemeral
        assert "I can't see other members' images here" in text
        assert "image:" in text and "Edit image" in text
        assert await jobs(world) == [] and world.engine.submits == []


async def test_edit_does_not_silently_take_an_older_result_behind_a_hidden_message() -> None:
    async with running_world() as world:
        _, result_message = await imagine_one(world)
        await world.bob.send(world.channel, "my photo", attachments=[png_file()])
        result = await world.alice.slash(world.channel, "edit", prompt="withered flowers")
        text = text_of(result)
        assert "I can't see other members' images here" in text
        # ... and it points at the newest image it can see, with how to edit that one.
        assert result_message.jump_url in text and "**Edit** button" in text
        assert len(await jobs(world)) == 1 and len(world.engine.submits) == 1


async def test_a_hidden_message_older_than_the_latest_result_does_not_matter() -> None:
    async with running_world() as world:
        await world.bob.send(world.channel, "my photo", attachments=[png_file()])
        first, _ = await imagine_one(world)
        result = await world.alice.slash(world.channel, "edit", prompt="withered flowers")
        assert "Queued job" in text_of(result)
        assert (await jobs(world))[-1].parent_id == first.id


async def test_a_message_that_mentions_the_bot_is_visible_and_its_image_is_edited() -> None:
    async with running_world() as world:
        name, data = png_file()
        await world.bob.send(world.channel, f"{world.bot.user.mention} edit this",
                             attachments=[(name, data)])
        result = await world.alice.slash(world.channel, "edit", prompt="withered flowers")
        assert "Queued job" in text_of(result)
        assert world.engine.submits[-1].init_image == data


async def test_with_message_content_granted_nothing_is_hidden_and_the_newest_image_wins() -> None:
    async with running_world(env_options={"approved_intents": None}) as world:
        await imagine_one(world)
        name, data = png_file()
        await world.bob.send(world.channel, "my photo", attachments=[(name, data)])
        await world.bob.send(world.channel, "nice, isn't it")
        await world.alice.slash(world.channel, "edit", prompt="withered flowers")
        assert world.engine.submits[-1].init_image == data


# --- the context menu on a job being made ------------------------------------------------


async def test_context_menu_on_a_running_jobs_preview_is_refused_until_it_is_done() -> None:
    engine = FakeEngine(blocked=True, hold_at_step=1)  # one preview shown, then held
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="forming")
        (message,) = world.bot_messages()
        assert message.attachments[0].filename.endswith(".jpg")  # the preview is showing
        result = await world.bob.context_menu(world.channel, "Edit image", message)
        assert result.modal is None and result.ephemeral
        assert "not finished" in text_of(result) and "preview" in text_of(result)
        assert len(await jobs(world)) == 1

        engine.release()
        await world.env.settle()
        (job,) = await jobs(world)
        shown = await world.bob.context_menu(world.channel, "Edit image", world.bot_messages()[0])
        await world.bob.submit_modal(shown, {"prompt": "in winter"})
        edit = (await jobs(world))[-1]
        # The result PNG on disk, never the preview JPEG.
        assert edit.parent_id == job.id and edit.input_path == job.result_path
        assert world.engine.submits[-1].init_image == (
            world.services.results_dir / job.result_path).read_bytes()
