"""`/settings` (issue 11 item 10) through SimCord: a member's own default shape and
iterations, within the server's limits, applied where an option is left out, shown by
`/settings` and `/usage`; and what the store keeps."""

from __future__ import annotations

from typing import Any

import pytest

from bot.requests import shape_size
from bot.store import MemberSettings, Store
from tests.bot.conftest import reply
from tests.bot.fake_engine import World, png_file, running_world, text_of

GUILD = 1001
ALICE = 3003

#: The server's limits in these tests: default 64×64 and 8 iterations, at most 128×128 and 50.
SIZES: dict[str, Any] = dict(default_size=(64, 64), max_size=(128, 128))


async def settings(world: World, member: Any = None, **options: Any) -> str:
    return reply(await (member or world.alice).slash(world.channel, "settings", **options))


async def last_submit_size(world: World) -> tuple[int, int]:
    submit = world.engine.submits[-1]
    return submit.width, submit.height


# --- the store -----------------------------------------------------------------------------


async def test_the_store_keeps_each_field_apart_and_forgets_an_empty_row(store: Store) -> None:
    assert await store.get_member_settings(GUILD, ALICE) == MemberSettings()

    await store.update_member_settings(GUILD, ALICE, shape="wide")
    assert await store.update_member_settings(GUILD, ALICE, iterations=30) == MemberSettings("wide", 30)
    assert await store.update_member_settings(GUILD, ALICE, shape=None) == MemberSettings(None, 30)
    await store.update_member_settings(GUILD, ALICE, iterations=None)

    assert await store.get_member_settings(GUILD, ALICE) == MemberSettings()
    assert await store.get_member_settings(GUILD + 1, ALICE) == MemberSettings()


async def test_the_store_refuses_a_field_it_does_not_know_and_iterations_below_one(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.update_member_settings(GUILD, ALICE, seed=3)
    with pytest.raises(ValueError):
        await store.update_member_settings(GUILD, ALICE, iterations=0)


# --- /settings -----------------------------------------------------------------------------


async def test_settings_without_options_shows_the_server_defaults_and_how_to_change() -> None:
    async with running_world(**SIZES) as world:
        text = await settings(world)

        assert "Shape: **the server's default**, 64×64" in text
        assert "Iterations: **the server's default**, 8" in text
        assert "/settings shape:" in text and "reset:" in text
        assert "Saved" not in text


async def test_settings_shape_applies_to_imagine_without_size() -> None:
    async with running_world(**SIZES) as world:
        text = await settings(world, shape="wide")
        await world.alice.slash(world.channel, "imagine", prompt="a harbour")

        wide = shape_size(world.settings, "wide")
        assert await last_submit_size(world) == wide
        assert "Saved" in text and f"**wide (16:9)**, {wide[0]}×{wide[1]}, your own" in text


async def test_an_explicit_size_wins_over_the_members_shape() -> None:
    async with running_world(**SIZES) as world:
        await settings(world, shape="wide")

        await world.alice.slash(world.channel, "imagine", prompt="a harbour", size="tall")

        assert await last_submit_size(world) == shape_size(world.settings, "tall")


async def test_a_starting_image_keeps_its_own_shape_over_the_members_shape() -> None:
    async with running_world(**SIZES) as world:
        await settings(world, shape="tall")

        await world.alice.slash(world.channel, "imagine", prompt="a harbour",
                                init_image=png_file(width=64, height=32))

        width, height = await last_submit_size(world)
        assert width > height


async def test_settings_iterations_apply_to_imagine_and_edit_without_iterations() -> None:
    async with running_world(**SIZES) as world:
        await settings(world, iterations=30)

        await world.alice.slash(world.channel, "imagine", prompt="a harbour")
        await world.alice.slash(world.channel, "edit", prompt="at night", image=png_file())

        assert [s.iterations for s in world.engine.submits] == [30, 30]


async def test_settings_iterations_apply_to_an_edit_from_the_edit_button() -> None:
    async with running_world(**SIZES) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a harbour")
        await settings(world, iterations=30)
        (message,) = world.bot_messages()

        shown = await world.alice.click(message, label="Edit")
        await world.alice.submit_modal(shown, {"prompt": "at night"})

        assert [s.iterations for s in world.engine.submits] == [8, 30]


async def test_explicit_iterations_win_over_the_members_default() -> None:
    async with running_world(**SIZES) as world:
        await settings(world, iterations=30)

        await world.alice.slash(world.channel, "imagine", prompt="a harbour", iterations=5)
        await world.alice.slash(world.channel, "edit", prompt="at night", image=png_file(), iterations=6)

        assert [s.iterations for s in world.engine.submits] == [5, 6]


async def test_settings_are_per_member_and_per_server() -> None:
    async with running_world(**SIZES) as world:
        await settings(world, shape="wide", iterations=30)
        other = world.env.create_guild("elsewhere")
        channel = other.create_text_channel("art")

        await world.bob.slash(world.channel, "imagine", prompt="bob's")
        await other.add_member(world.alice.user).slash(channel, "imagine", prompt="alice elsewhere")

        for submit in world.engine.submits:
            assert (submit.width, submit.height, submit.iterations) == (64, 64, 8)


async def test_settings_iterations_above_the_servers_maximum_are_refused() -> None:
    async with running_world(**SIZES) as world:
        text = await settings(world, iterations=51)

        assert "between 1 and 50" in text and "51" in text
        assert await world.services.store.get_member_settings(world.guild.id, world.alice.id) == MemberSettings()


async def test_a_default_above_a_maximum_lowered_since_is_capped_not_refused() -> None:
    async with running_world(**SIZES) as world:
        await world.services.store.update_member_settings(world.guild.id, world.alice.id, iterations=500)

        result = await world.alice.slash(world.channel, "imagine", prompt="a harbour")
        text = await settings(world)

        assert "Queued job" in text_of(result)
        assert world.engine.submits[-1].iterations == 50
        assert "Iterations: **50**" in text and "you set 500" in text and "at most 50" in text


async def test_settings_reset_puts_the_servers_default_back() -> None:
    async with running_world(**SIZES) as world:
        await settings(world, shape="wide", iterations=30)

        await settings(world, reset="iterations")
        kept_shape = await world.services.store.get_member_settings(world.guild.id, world.alice.id)
        text = await settings(world, reset="both")

        assert kept_shape == MemberSettings("wide", None)
        assert await world.services.store.get_member_settings(world.guild.id, world.alice.id) == MemberSettings()
        assert "Shape: **the server's default**" in text and "Iterations: **the server's default**" in text


async def test_settings_reset_and_set_of_one_field_at_once_is_refused() -> None:
    async with running_world(**SIZES) as world:
        text = await settings(world, shape="wide", reset="both")

        assert "both set and reset `shape`" in text
        assert await world.services.store.get_member_settings(world.guild.id, world.alice.id) == MemberSettings()


async def test_settings_reset_of_one_field_may_go_with_setting_the_other() -> None:
    async with running_world(**SIZES) as world:
        await settings(world, shape="wide")

        await settings(world, reset="shape", iterations=12)

        assert await world.services.store.get_member_settings(world.guild.id, world.alice.id) == MemberSettings(None, 12)


# --- /usage --------------------------------------------------------------------------------


async def test_usage_shows_the_members_defaults() -> None:
    async with running_world(**SIZES) as world:
        await settings(world, shape="landscape")

        text = reply(await world.alice.slash(world.channel, "usage"))

        assert "Your defaults" in text
        assert "**landscape (4:3)**" in text and "Iterations: **the server's default**, 8" in text
