"""Text users type is shown, never obeyed: a prompt, a `replace` phrase or a file name that
holds mentions or Markdown pings nobody and cannot change the layout, wherever the bot
shows it (job messages, answers, /queue, refusals)."""

from __future__ import annotations

import discord

from bot import render
from tests.bot.fake_engine import FakeEngine, World, png_bytes, running_world, text_of

ZWSP = "\u200b"


def hostile_prompt(world: World, role_id: int) -> str:
    return (f"@everyone @here <@{world.bob.id}> <@&{role_id}> **loud** __under__ "
            f"`code` ~~strike~~ # heading [link](https://example.com) a castle")


def assert_defused(text: str, world: World, role_id: int) -> None:
    """No live mention and no Markdown of the hostile prompt survives in `text`."""
    assert "@everyone" not in text and "@here" not in text
    assert f"@{ZWSP}everyone" in text
    assert f"<@{world.bob.id}>" not in text and f"<@&{role_id}>" not in text
    assert "**loud**" not in text and r"\*\*loud\*\*" in text
    assert "~~strike~~" not in text and "`code`" not in text


def embed_texts(message: discord.Message) -> list[str]:
    texts: list[str] = []
    for embed in message.embeds:
        texts += [embed.title or "", embed.description or ""]
        texts += [field.value or "" for field in embed.fields]
    return texts


def bodies_with_content(world: World) -> list[dict]:
    """Every message, edit and interaction answer the bot sent with text content: the only
    place a mention can ping (Discord never pings from an embed)."""
    found = []
    for request in world.env.http_requests:
        body = request.json if isinstance(request.json, dict) else {}
        body = body.get("data", body) if request.path.endswith("/callback") else body
        if request.method in ("POST", "PATCH") and isinstance(body, dict) and body.get("content"):
            found.append(body)
    return found


async def test_a_hostile_prompt_is_shown_defused_in_the_result() -> None:
    async with running_world() as world:
        role = world.guild.create_role("artists", mentionable=True)
        prompt = hostile_prompt(world, role.id)
        await world.alice.slash(world.channel, "imagine", prompt=prompt)
        (message,) = world.bot_messages()
        title = message.embeds[0].title or ""
        assert_defused(title, world, role.id)
        assert "a castle" in title


async def test_no_message_of_the_bot_allows_a_ping_of_anyone_but_the_requester() -> None:
    async with running_world() as world:
        role = world.guild.create_role("artists", mentionable=True)
        prompt = hostile_prompt(world, role.id)
        await world.alice.slash(world.channel, "imagine", prompt=prompt)
        await world.alice.slash(world.channel, "imagine", prompt=prompt + ":9999")  # refused
        await world.alice.slash(world.channel, "queue")
        bodies = bodies_with_content(world)
        assert len(bodies) >= 3
        for body in bodies:
            # Never @everyone, @here or a role; at most the one member who asked.
            allowed = body.get("allowed_mentions")
            assert allowed is not None and allowed.get("parse") == [], body
            assert not allowed.get("roles") and not allowed.get("replied_user"), body
            assert set(allowed.get("users") or []) <= {world.alice.id, str(world.alice.id)}, body
        (message,) = world.bot_messages()
        assert not message.mention_everyone and message.role_mentions == []
        pinged = world.env.backend.get_message(world.channel.id, message.id).ping_user_ids
        assert pinged == [world.alice.id]  # bob is in the prompt, and not pinged


async def test_a_long_hostile_prompt_is_shown_whole_in_a_field_defused() -> None:
    async with running_world() as world:
        role = world.guild.create_role("artists", mentionable=True)
        prompt = hostile_prompt(world, role.id) + " in fog" * 40
        await world.alice.slash(world.channel, "imagine", prompt=prompt)
        (message,) = world.bot_messages()
        (embed,) = message.embeds
        assert len(embed.title or "") <= render.TITLE_LIMIT and (embed.title or "").endswith("…")
        (field,) = [f for f in embed.fields if f.name == "Prompt"]
        assert_defused(field.value or "", world, role.id)
        assert (field.value or "").endswith("in fog")


async def test_a_hostile_prompt_is_defused_in_queue_and_progress_messages() -> None:
    engine = FakeEngine(blocked=True)
    async with running_world(engine) as world:
        role = world.guild.create_role("artists", mentionable=True)
        prompt = hostile_prompt(world, role.id)
        await world.alice.slash(world.channel, "imagine", prompt="first, holding the engine")
        await world.alice.slash(world.channel, "imagine", prompt=prompt)
        (waiting,) = [m for m in world.bot_messages() if "castle" in (m.embeds[0].title or "")]
        assert_defused(embed_texts(waiting)[0], world, role.id)
        queue = text_of(await world.alice.slash(world.channel, "queue"))
        assert "a castle" not in queue or f"@{ZWSP}everyone" in queue
        assert "@everyone" not in queue and "**loud**" not in queue


async def test_a_hostile_replace_phrase_is_defused_in_the_edit_message() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "edit", prompt="withered flowers",
                                image=("photo.png", png_bytes(48, 32)), replace="@everyone **all**")
        (message,) = world.bot_messages()
        description = message.embeds[0].description or ""
        assert f"@{ZWSP}everyone" in description and "@everyone" not in description
        assert r"\*\*all\*\*" in description


async def test_a_refused_prompt_quotes_it_defused() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="@everyone **x**:99999")
        text = text_of(result)
        assert "weights must be between" in text
        assert "@everyone" not in text and f"@{ZWSP}everyone" in text and "**x**" not in text


async def test_a_refused_file_name_is_quoted_defused() -> None:
    async with running_world() as world:
        result = await world.alice.slash(world.channel, "imagine", prompt="a cat",
                                         init_image=("@everyone `x`.txt", b"just some text"))
        text = text_of(result)
        assert "not an image" in text
        assert "@everyone" not in text and "`x`" not in text


async def test_an_engine_failure_quoting_the_prompt_is_shown_defused() -> None:
    engine = FakeEngine(fail_with="the part '@everyone **x**' could not be encoded")
    async with running_world(engine) as world:
        await world.alice.slash(world.channel, "imagine", prompt="a cat")
        (message,) = world.bot_messages()
        description = message.embeds[0].description or ""
        assert "could not be encoded" in description and "not charged" in description
        assert "@everyone" not in description and "**x**" not in description
