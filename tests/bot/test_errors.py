"""The one error path: what a user reads when a command, a button or a modal fails.

A refusal (`UserError`) is answered privately with its own text, also after the command
deferred; anything else is a bug: the user gets a short apology with a reference id, and
the log has the traceback under the same id. Nobody is left looking at "thinking…".
"""

from __future__ import annotations

import re

import pytest

from bot.interactions import unwrap
from bot.store import Store
from tests.bot.fake_engine import World, png_file, running_world, text_of


def reference_in(text: str) -> str:
    match = re.search(r"reference `([0-9a-f]+)`", text)
    assert match, text
    return match.group(1)


def acknowledge(world: World, kind: type[BaseException]) -> list[BaseException]:
    """The errors the bot raised (SimCord records them), which must all be of `kind`."""
    errors = [unwrap(error) for error in world.env.errors_since(world.errors_seen)]
    world.errors_seen = world.env.error_cursor
    assert errors and all(isinstance(error, kind) for error in errors), errors
    return errors


class Boom(RuntimeError):
    """A bug, planted by a test."""


async def test_a_bug_after_deferring_ends_in_an_apology_with_a_reference_not_thinking(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_add_job(self: Store, **kwargs: object) -> None:
        raise Boom("the disk caught fire")

    monkeypatch.setattr(Store, "add_job", broken_add_job)
    async with running_world() as world:
        # An attachment makes /imagine defer before it reaches the store.
        result = await world.alice.slash(world.channel, "imagine", prompt="a cat", init_image=png_file())
        text = text_of(result)
        assert result.ephemeral and "Sorry, something went wrong" in text
        assert "the disk caught fire" not in text
        ref = reference_in(text)
        logged = [r for r in caplog.records if ref in r.getMessage()]
        assert logged and logged[0].exc_info is not None and isinstance(logged[0].exc_info[1], Boom)
        acknowledge(world, Boom)
        assert world.bot_messages() == []


async def test_a_bug_before_answering_gets_the_same_apology(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken_check(*args: object, **kwargs: object) -> None:
        raise Boom("no quota today")

    async with running_world() as world:
        monkeypatch.setattr(world.services.quotas, "check", broken_check)
        result = await world.alice.slash(world.channel, "usage")
        assert result.ephemeral and reference_in(text_of(result))
        acknowledge(world, Boom)


async def test_a_bug_in_a_button_gets_the_same_apology(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a vase")
        (message,) = world.bot_messages()

        async def broken_get_job(job_id: str) -> None:
            raise Boom("the store is gone")

        monkeypatch.setattr(world.services.store, "get_job", broken_get_job)
        result = await world.bob.click(message, label="Reroll")
        text = text_of(result)
        assert result.ephemeral and "Sorry, something went wrong" in text
        ref = reference_in(text)
        logged = [r for r in caplog.records if ref in r.getMessage()]
        assert logged and "vqc:reroll:" in logged[0].getMessage()
        assert logged[0].exc_info is not None and isinstance(logged[0].exc_info[1], Boom)


async def test_a_refusal_after_deferring_is_answered_privately_with_its_own_text() -> None:
    async with running_world(default_daily_quota=1) as world:
        await world.alice.slash(world.channel, "imagine", prompt="one")
        result = await world.alice.slash(world.channel, "edit", prompt="two", image=png_file())
        assert result.ephemeral and "You have used 1 of 1 image" in text_of(result)
        assert "reference" not in text_of(result)


async def test_a_refusal_in_a_button_is_answered_privately() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a vase")
        (message,) = world.bot_messages()
        result = await world.bob.click(message, label="Edit")  # opens the modal: not a refusal
        assert result.modal is not None
        job = (await world.services.store.jobs_with_status())[0]
        (world.services.results_dir / (job.result_path or "")).unlink()
        result = await world.bob.click(message, label="Edit")
        assert result.ephemeral and "no longer on the bot's disk" in text_of(result)
