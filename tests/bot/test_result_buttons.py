"""The buttons on a result (issue 11 items 7 and 8): Reroll, Vary, Edit, Info, Timelapse.

On the fake engine; `test_e2e_results.py` runs Info's command and Timelapse against the
real engine process.
"""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from bot.app import ImagineBot
from bot.jobs import Job, JobKind, JobStatus
from bot.timelapse import frames_dir
from bot.views import TimelapseButton
from engine.cli import build_parser
from tests.bot.fake_engine import FakeEngine, World, png_file, running_world, text_of

CODE_BLOCK = re.compile(r"```sh\n(.*)\n```", re.DOTALL)


async def jobs(world: World) -> list[Job]:
    return await world.services.store.jobs_with_status()


def message_of(world: World, message_id: int | None) -> Any:
    return next(m for m in world.bot_messages() if m.id == message_id)


async def imagine_one(world: World, prompt: str = "a vase of flowers", **options: Any) -> tuple[Job, Any]:
    """Run one /imagine to completion; returns (job, its result message)."""
    await world.alice.slash(world.channel, "imagine", prompt=prompt, **options)
    job = (await jobs(world))[-1]
    assert job.status is JobStatus.DONE
    return job, message_of(world, job.result_message_id)


def shown_embed(result: Any) -> Any:
    assert result.response is not None and result.response.ephemeral, "not answered privately"
    (embed,) = result.response.embeds
    return embed


def command_of(embed: Any) -> list[str]:
    match = CODE_BLOCK.search(embed.description or "")
    assert match is not None, embed.description
    assert "```" not in match.group(1)
    return shlex.split(match.group(1))


def fields(embed: Any) -> dict[str, str]:
    return {field.name: field.value for field in embed.fields}


# --- the row ---------------------------------------------------------------------------------


async def test_a_result_has_reroll_vary_edit_info_and_timelapse_in_one_row() -> None:
    async with running_world() as world:
        _, message = await imagine_one(world)
        assert [[c.label for c in row.children] for row in message.components] == [
            ["Reroll", "Vary", "Edit", "Info", "Timelapse"]]


async def test_help_explains_the_buttons_on_a_result() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "help")
        assert result.response is not None
        (embed,) = result.response.embeds
        (buttons,) = [f.value for f in embed.fields if f.name == "Buttons on a finished image"]
        assert all(f"**{label}**" in buttons for label in ("Reroll", "Vary", "Edit", "Info", "Timelapse"))


# --- Vary ------------------------------------------------------------------------------------


async def test_vary_starts_from_this_result_with_the_same_prompt_a_new_seed_and_a_quarter_of_the_iterations() -> None:
    async with running_world() as world:
        first, message = await imagine_one(world, "a fox", seed=7, iterations=40, size="landscape")
        result = await world.bob.click(message, label="Vary")
        assert result.ephemeral and "Queued job" in text_of(result)
        original, vary = world.engine.submits
        assert vary.init_image == (world.services.results_dir / first.result_path).read_bytes()
        assert vary.prompts == original.prompts and vary.seed is None
        assert (vary.width, vary.height, vary.iterations) == (original.width, original.height, 10)
        job = (await jobs(world))[-1]
        assert (job.kind, job.parent_id, job.user_id) == (JobKind.VARY, first.id, world.bob.id)
        assert job.status is JobStatus.DONE
        assert message_of(world, job.result_message_id).embeds[0].description.startswith("Varied")


async def test_a_vary_of_a_vary_is_as_long_as_the_first() -> None:
    async with running_world() as world:
        _, message = await imagine_one(world, iterations=40)
        await world.alice.click(message, label="Vary")
        vary = (await jobs(world))[-1]
        await world.alice.click(message_of(world, vary.result_message_id), label="Vary")
        assert [s.iterations for s in world.engine.submits] == [40, 10, 10]


async def test_vary_of_a_masked_edit_keeps_its_replace_phrase() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "edit", prompt="withered flowers", image=png_file(),
                                replace="flowers")
        edit = (await jobs(world))[-1]
        await world.alice.click(message_of(world, edit.result_message_id), label="Vary")
        assert world.engine.submits[-1].replace == "flowers"


async def test_vary_counts_against_the_clickers_quota() -> None:
    async with running_world(default_daily_quota=1) as world:
        _, message = await imagine_one(world)
        result = await world.alice.click(message, label="Vary")
        assert result.ephemeral and "You have used 1 of 1" in text_of(result)
        assert len(world.engine.submits) == 1


async def test_vary_of_a_result_no_longer_on_disk_is_refused() -> None:
    async with running_world() as world:
        job, message = await imagine_one(world)
        (world.services.results_dir / job.result_path).unlink()
        result = await world.alice.click(message, label="Vary")
        assert result.ephemeral and "no longer on the bot's disk" in text_of(result)
        assert len(await jobs(world)) == 1


# --- Info ------------------------------------------------------------------------------------


async def test_info_answers_privately_with_the_recipe_of_the_image() -> None:
    async with running_world() as world:
        job, message = await imagine_one(world, "a lighthouse", seed=42, iterations=12)
        embed = shown_embed(await world.bob.click(message, label="Info"))
        shown = fields(embed)
        assert embed.title == "a lighthouse"
        assert shown["Seed"] == "`42`" and shown["Size"] == "64×64" and shown["Iterations"] == "12"
        assert shown["Cutouts (cutn)"] == "32"
        assert shown["Models"] == "VQGAN `fake_vqgan`, CLIP `fake_clip`"
        assert shown["Time"].startswith("6 s")  # the fake engine takes 0.5 s an iteration
        assert "byte for byte" in embed.description
        assert command_of(embed) == [
            "vqgan-clip", "imagine", "--seed", "42", "--size", "64x64", "--iterations", "12",
            "--cutn", "32", "--lr", "0.15", "--l2", "0.75", "--l2-decay", "linear",
            "--vqgan", "fake_vqgan", "--clip", "fake_clip", "--device", "cpu", "--threads", "1",
            "-o", f"remade-{job.id}.png", "a lighthouse"]


@pytest.mark.parametrize("prompt", [
    "a castle's \"keep\" at $HOME `date` + fog:2",
    "-1 ```$(rm -rf ~)``` + @everyone",
])
async def test_info_command_gives_the_cli_exactly_the_prompt_and_settings(prompt: str) -> None:
    async with running_world() as world:
        job, message = await imagine_one(world, prompt, seed=5, iterations=9)
        argv = command_of(shown_embed(await world.alice.click(message, label="Info")))
        args = build_parser().parse_args(argv[1:])
        assert (args.command, args.prompt, args.seed, args.size, args.iterations, args.cutn) == (
            "imagine", prompt, 5, (64, 64), 9, 32)
        assert (args.vqgan, args.clip, args.device, args.threads) == ("fake_vqgan", "fake_clip", "cpu", 1)


async def test_info_of_the_longest_prompt_of_quotes_still_fits_in_its_answer() -> None:
    async with running_world() as world:
        prompt = "'" * 500  # each becomes five characters in the shell
        _, message = await imagine_one(world, prompt)
        argv = command_of(shown_embed(await world.alice.click(message, label="Info")))
        assert argv[-1] == prompt


async def test_info_of_an_edit_names_its_source_file_and_the_message_it_came_from() -> None:
    async with running_world() as world:
        first, message = await imagine_one(world)
        await world.bob.click(message, label="Vary")
        vary = (await jobs(world))[-1]
        embed = shown_embed(await world.bob.click(message_of(world, vary.result_message_id), label="Info"))
        args = build_parser().parse_args(command_of(embed)[1:])
        assert (args.command, str(args.image), args.prompt) == ("edit", first.result_path, "a vase of flowers")
        assert args.keep_structure == 0
        assert f"`{first.result_path}` is the image this edit started from" in embed.description
        assert f"/{first.channel_id}/{first.result_message_id})" in embed.description


async def test_info_of_a_masked_edit_of_an_upload_has_its_replace_phrase_and_stored_file() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "edit", prompt="withered flowers", image=png_file(),
                                replace="-flowers")
        edit = (await jobs(world))[-1]
        embed = shown_embed(await world.alice.click(message_of(world, edit.result_message_id), label="Info"))
        args = build_parser().parse_args(command_of(embed)[1:])
        assert (str(args.image), args.replace, args.original_weight) == (edit.input_path, "-flowers", 0.5)
        assert edit.input_path.startswith("inputs/")
        assert (world.services.results_dir / edit.input_path).is_file()


async def test_info_of_an_image_made_on_a_gpu_says_the_cpu_makes_a_close_image() -> None:
    async with running_world() as world:
        job, message = await imagine_one(world)
        path = world.services.results_dir / job.result_path
        with Image.open(path) as image:
            image.load()
            text = {**image.text, "device": "cuda"}
        text.pop("threads")
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        Image.new("RGB", (64, 64)).save(path, pnginfo=info)
        embed = shown_embed(await world.alice.click(message, label="Info"))
        assert "close image" in embed.description and "byte for byte" not in embed.description
        assert "--threads" not in command_of(embed)


async def test_info_of_a_result_no_longer_on_disk_says_so() -> None:
    async with running_world() as world:
        job, message = await imagine_one(world)
        (world.services.results_dir / job.result_path).unlink()
        result = await world.alice.click(message, label="Info")
        assert result.ephemeral and "no longer on the bot's disk" in text_of(result)


# --- Timelapse: the frames -------------------------------------------------------------------


async def test_a_done_job_keeps_one_frame_per_progress_event() -> None:
    async with running_world() as world:
        job, _ = await imagine_one(world)
        frames = sorted(p.name for p in frames_dir(world.services.results_dir, job.id).iterdir())
        assert frames == ["000002.jpg", "000004.jpg", "000006.jpg", "000008.jpg"]


async def test_a_failed_job_keeps_no_frames() -> None:
    async with running_world(FakeEngine(fail_with="the engine broke")) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a fox")
        (job,) = await jobs(world)
        assert job.status is JobStatus.FAILED
        assert not frames_dir(world.services.results_dir, job.id).exists()


async def test_a_cancelled_job_keeps_no_frames() -> None:
    async with running_world(FakeEngine(blocked=True, hold_at_step=2)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a fox")
        (job,) = await jobs(world)
        assert len(list(frames_dir(world.services.results_dir, job.id).iterdir())) == 2
        await world.alice.click(message_of(world, job.progress_message_id), label="Cancel")
        await world.env.settle()
        assert (await world.services.store.get_job(job.id)).status is JobStatus.CANCELLED
        assert not frames_dir(world.services.results_dir, job.id).exists()


async def test_a_job_resumed_after_the_bot_was_killed_starts_with_no_frames_of_the_old_run() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a fox")
        (job,) = await jobs(world)
        await world.bot.close()
        # What a bot killed mid-run leaves behind: frames the next run must not show.
        stale = frames_dir(Path(world.settings.results_dir), job.id)
        stale.mkdir(parents=True, exist_ok=True)
        (stale / "000007.jpg").write_bytes(b"old run")
        world.engine = FakeEngine().attach(world.env)
        await world.env.restart_bot(ImagineBot(world.settings, engine=world.engine))
        await world.env.settle()
        assert (await world.services.store.get_job(job.id)).status is JobStatus.DONE
        assert sorted(p.name for p in stale.iterdir()) == [
            "000002.jpg", "000004.jpg", "000006.jpg", "000008.jpg"]


# --- Timelapse: the button -------------------------------------------------------------------


async def test_timelapse_posts_an_animated_webp_replying_to_the_result() -> None:
    async with running_world() as world:
        job, message = await imagine_one(world)
        result = await world.bob.click(message, label="Timelapse")
        (posted,) = [m for m in world.bot_messages() if m.id != message.id]
        assert result.ephemeral and posted.jump_url in text_of(result)
        assert posted.reference is not None and posted.reference.message_id == message.id
        (attachment,) = posted.attachments
        assert attachment.filename == f"timelapse-{job.id}.webp"
        with Image.open(io.BytesIO(await attachment.read())) as animation:
            assert (animation.format, animation.n_frames) == ("WEBP", 5)  # 4 steps + the result
        assert (await world.services.store.get_job(job.id)).timelapse_message_id == posted.id


async def test_timelapse_post_pings_no_one() -> None:
    async with running_world() as world:
        _, message = await imagine_one(world, "@everyone look")
        await world.bob.click(message, label="Timelapse")
        (post,) = [r.json for r in world.env.http_requests
                   if r.method == "POST" and r.path.endswith("/messages") and "message_reference" in (r.json or {})]
        assert post["allowed_mentions"] == {"parse": [], "replied_user": False}


async def test_a_second_timelapse_click_links_to_the_first_post() -> None:
    async with running_world() as world:
        _, message = await imagine_one(world)
        await world.bob.click(message, label="Timelapse")
        again = await world.alice.click(message, label="Timelapse")
        (posted,) = [m for m in world.bot_messages() if m.id != message.id]
        assert again.ephemeral and "already in the channel" in text_of(again)
        assert posted.jump_url in text_of(again)


async def test_timelapse_is_posted_again_when_its_message_was_deleted() -> None:
    async with running_world() as world:
        _, message = await imagine_one(world)
        await world.bob.click(message, label="Timelapse")
        (first,) = [m for m in world.bot_messages() if m.id != message.id]
        await world.bot.get_partial_messageable(world.channel.id).get_partial_message(first.id).delete()
        again = await world.bob.click(message, label="Timelapse")
        (second,) = [m for m in world.bot_messages() if m.id != message.id]
        assert second.id != first.id and "Posted the timelapse" in text_of(again)


async def test_timelapse_without_kept_frames_says_why_and_posts_nothing() -> None:
    async with running_world() as world:
        job, message = await imagine_one(world)
        for frame in frames_dir(world.services.results_dir, job.id).iterdir():
            frame.unlink()
        result = await world.bob.click(message, label="Timelapse")
        assert result.ephemeral and "has no timelapse" in text_of(result)
        assert [m.id for m in world.bot_messages()] == [message.id]


async def test_a_timelapse_click_while_it_is_being_posted_waits_for_that_post() -> None:
    # SimCord runs one click at a time, so the first click's post is stood in for by its claim.
    async with running_world() as world:
        job, message = await imagine_one(world)
        TimelapseButton.posting.add(job.id)
        try:
            result = await world.alice.click(message, label="Timelapse")
        finally:
            TimelapseButton.posting.discard(job.id)
        assert result.ephemeral and "being posted right now" in text_of(result)
        assert [m.id for m in world.bot_messages()] == [message.id]
