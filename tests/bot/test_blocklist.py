"""The blocklist (issue 11 item 9): how a term matches (whole words, any case, Unicode),
what the store keeps, and through SimCord that `/blocklist` is for admins and that every
way of asking is refused, privately and free, when it holds a blocked term."""

from __future__ import annotations

from typing import Any

import pytest

from bot.blocklist import MAX_TERM_CHARS, MAX_TERMS, find_blocked, parse_terms, term_key
from bot.errors import UserError
from bot.store import AddOutcome, Store
from tests.bot.conftest import reply
from tests.bot.fake_engine import World, png_file, running_world, text_of

GUILD = 1001


def blocked(text: str, *terms: str) -> str | None:
    return find_blocked(text, {term_key(term): term for term in terms})


# --- matching --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["ass", "an ASS!", "(Ass)", "Ass."])
def test_a_word_blocks_itself_in_any_case_next_to_punctuation(text: str) -> None:
    assert blocked(text, "ass") == "ass"


@pytest.mark.parametrize("text", ["class", "assassin", "a passage", "bass guitar", "glass"])
def test_a_word_never_blocks_a_longer_word_that_contains_it(text: str) -> None:
    assert blocked(text, "ass") is None


@pytest.mark.parametrize("text", ["ass_hat", "a castle:2 + ass:-1", "castle|ass"])
def test_underscores_and_the_prompt_grammar_separate_words(text: str) -> None:
    assert blocked(text, "ass") == "ass"


@pytest.mark.parametrize("text", ["a bad word", "Bad-Word", "bad,  word", "bad\nword", "BAD_WORD"])
def test_a_phrase_matches_its_words_with_any_spacing_or_punctuation_between(text: str) -> None:
    assert blocked(text, "bad word") == "bad word"


@pytest.mark.parametrize("text", ["badword", "bad and word", "word bad", "bad words"])
def test_a_phrase_does_not_match_its_words_glued_apart_reordered_or_longer(text: str) -> None:
    assert blocked(text, "bad word") is None


@pytest.mark.parametrize(("term", "text"), [
    ("straße", "STRASSE"),                # full case folding: ß is ss
    ("STRASSE", "eine straße"),
    ("bad word", "ｂａｄ　ｗｏｒｄ"),        # fullwidth letters and space (NFKC)
    ("ΣΟΦΙΑ", "σοφια"),                    # Greek capitals and a final sigma fold alike
    ("cafe\u0301", "café"),                # decomposed and composed accents are one letter
])
def test_unicode_case_folding_and_normalisation_match(term: str, text: str) -> None:
    assert blocked(text, term) == term


@pytest.mark.parametrize("text", ["st\u200brasse", "stras\u00adse", "\u2060strasse"])
def test_zero_width_characters_and_soft_hyphens_do_not_hide_a_word(text: str) -> None:
    assert blocked(text, "strasse") == "strasse"


def test_accents_are_kept_so_a_different_word_is_not_blocked() -> None:
    assert blocked("pâte", "pate") is None


def test_combining_marks_belong_to_their_word() -> None:
    # नमस्ते: its virama and vowel sign are marks. Were they taken for spaces, the start
    # "नमस" would count as a whole word of it and be blocked.
    assert blocked("नमस्ते", "नमस") is None
    assert blocked("नमस्ते दुनिया", "नमस्ते") == "नमस्ते"


def test_the_longest_matching_entry_is_named() -> None:
    assert blocked("a bad word", "bad", "bad word") == "bad word"


def test_regex_characters_in_a_term_are_only_separators() -> None:
    assert blocked("c.+ stuff", "c.+") == "c.+"
    assert blocked("cxx stuff", "c.+") is None


def test_nothing_is_blocked_by_an_empty_list() -> None:
    assert find_blocked("anything at all", {}) is None


# --- what admins type --------------------------------------------------------------------


def test_several_terms_are_separated_by_commas_and_duplicates_by_key_dropped() -> None:
    assert parse_terms(" gore ,Blood  Bath, blood-bath,, GORE") == {
        "gore": "gore", "blood bath": "Blood Bath"}


@pytest.mark.parametrize(("text", "says"), [
    ("!!!", "no letters or digits"),
    ("x" * (MAX_TERM_CHARS + 1), f"at most {MAX_TERM_CHARS}"),
    (" , ,", "Name a word or phrase"),
])
def test_a_term_that_could_never_match_or_is_too_long_is_refused(text: str, says: str) -> None:
    with pytest.raises(UserError, match=says):
        parse_terms(text)


# --- the store ---------------------------------------------------------------------------


async def test_the_store_keeps_one_entry_per_key_and_the_term_as_typed(store: Store) -> None:
    assert await store.add_blocked_term(GUILD, "bad word", "Bad-Word", added_by=1, max_terms=5) is AddOutcome.ADDED
    assert await store.add_blocked_term(GUILD, "bad word", "bad word", added_by=1, max_terms=5) is AddOutcome.ALREADY
    assert await store.list_blocked_terms(GUILD) == {"bad word": "Bad-Word"}
    assert await store.list_blocked_terms(GUILD + 1) == {}


async def test_the_store_never_holds_more_than_max_terms(store: Store) -> None:
    for word in ("one", "two"):
        await store.add_blocked_term(GUILD, word, word, added_by=1, max_terms=2)

    assert await store.add_blocked_term(GUILD, "three", "three", added_by=1, max_terms=2) is AddOutcome.FULL
    assert sorted(await store.list_blocked_terms(GUILD)) == ["one", "two"]
    # Another server has its own room.
    assert await store.add_blocked_term(GUILD + 1, "three", "three", added_by=1, max_terms=2) is AddOutcome.ADDED


async def test_the_store_removes_by_key_and_returns_the_term_as_typed(store: Store) -> None:
    await store.add_blocked_term(GUILD, "bad word", "Bad-Word", added_by=1, max_terms=5)

    assert await store.remove_blocked_term(GUILD, "bad word") == "Bad-Word"
    assert await store.remove_blocked_term(GUILD, "bad word") is None


# --- /blocklist ----------------------------------------------------------------------------


async def block(world: World, terms: str) -> str:
    return reply(await world.mod.slash(world.channel, "blocklist add", terms=terms))


async def test_blocklist_commands_are_offered_to_admins_only() -> None:
    async with running_world() as world:
        assert "blocklist add" in world.mod.available_commands(world.channel)
        assert not any(c.startswith("blocklist") for c in world.alice.available_commands(world.channel))


@pytest.mark.parametrize(("command", "options"), [
    ("blocklist add", {"terms": "gore"}), ("blocklist remove", {"terms": "gore"}),
    ("blocklist list", {}),
])
async def test_a_member_granted_blocklist_by_the_owner_is_still_refused(
    command: str, options: dict[str, Any]
) -> None:
    async with running_world() as world:
        await world.services.store.add_blocked_term(world.guild.id, "gore", "gore", added_by=1, max_terms=9)
        group = next(c for c in world.bot.synced_commands if c.name == "blocklist")
        world.guild.set_command_permissions(group, {world.alice: True})

        text = reply(await world.alice.slash(world.channel, command, **options))

        assert "Manage Server" in text and "gore" not in text
        assert await world.services.store.list_blocked_terms(world.guild.id) == {"gore": "gore"}


async def test_blocklist_add_stores_the_terms_and_says_what_changed() -> None:
    async with running_world() as world:
        text = await block(world, "gore, Blood Bath")

        assert await world.services.store.list_blocked_terms(world.guild.id) == {
            "blood bath": "Blood Bath", "gore": "gore"}
        assert "“gore”" in text and "“Blood Bath”" in text
        assert f"2 of at most {MAX_TERMS}" in text


async def test_blocklist_add_of_an_entry_already_there_says_nothing_changed() -> None:
    async with running_world() as world:
        await block(world, "blood bath")

        text = await block(world, "Blood-Bath")

        assert "Already blocked" in text and "“blood bath”" in text
        assert len(await world.services.store.list_blocked_terms(world.guild.id)) == 1


async def test_blocklist_add_beyond_the_limit_adds_nothing_and_says_why() -> None:
    async with running_world() as world:
        store = world.services.store
        for i in range(MAX_TERMS - 1):
            await store.add_blocked_term(world.guild.id, f"w{i}", f"w{i}", added_by=1, max_terms=MAX_TERMS)

        text = await block(world, "two, three, w1")

        assert "nothing was added" in text and f"{MAX_TERMS - 1} of at most {MAX_TERMS}" in text
        assert "2 more do not fit" in text
        assert len(await store.list_blocked_terms(world.guild.id)) == MAX_TERMS - 1


async def test_blocklist_add_of_a_bad_term_is_refused_with_the_fix() -> None:
    async with running_world() as world:
        text = await block(world, "gore, ***")

        assert "no letters or digits" in text
        assert await world.services.store.list_blocked_terms(world.guild.id) == {}


async def test_blocklist_remove_unblocks_and_names_what_was_not_there() -> None:
    async with running_world() as world:
        await block(world, "gore, blood bath")

        text = reply(await world.mod.slash(world.channel, "blocklist remove", terms="BLOOD-BATH, tar"))

        assert await world.services.store.list_blocked_terms(world.guild.id) == {"gore": "gore"}
        assert "No longer blocked: “blood bath”" in text and "Not on the blocklist" in text and "“tar”" in text
        result = await world.alice.slash(world.channel, "imagine", prompt="a blood bath")
        assert "Queued job" in text_of(result)


async def test_blocklist_remove_autocompletes_the_entries_for_admins_only() -> None:
    async with running_world() as world:
        await block(world, "gore, blood bath, bloom")

        offered = await world.mod.autocomplete(world.channel, "blocklist remove", "terms", "gore, BLO")

        assert [c["name"] for c in offered] == ["blood bath", "bloom"]
        assert offered[0]["value"] == "gore, blood bath"
        # Even a member the owner let see the command is offered nothing.
        group = next(c for c in world.bot.synced_commands if c.name == "blocklist")
        world.guild.set_command_permissions(group, {world.alice: True})
        assert await world.alice.autocomplete(world.channel, "blocklist remove", "terms", "") == []


async def test_blocklist_remove_autocomplete_values_stay_within_discords_100_characters() -> None:
    async with running_world() as world:
        long_term = "a" * 40 + " " + "b" * 39
        await block(world, f"gore, {long_term}")

        typed = f"{long_term}, {long_term}, go"
        offered = await world.mod.autocomplete(world.channel, "blocklist remove", "terms", typed)

        assert [(c["name"], c["value"]) for c in offered] == [("gore", "gore")]


async def test_blocklist_list_is_private_and_escapes_the_terms() -> None:
    async with running_world() as world:
        await block(world, "bad_word, @everyone party")

        text = reply(await world.mod.slash(world.channel, "blocklist list"))

        assert "(2 of at most" in text
        assert "bad\\_word" in text
        assert "@everyone" not in text  # shown defused, never as a mention


async def test_blocklist_list_of_a_full_list_fits_one_message() -> None:
    async with running_world() as world:
        store = world.services.store
        for i in range(MAX_TERMS):
            term = f"{i:03d} " + "x" * (MAX_TERM_CHARS - 4)
            await store.add_blocked_term(world.guild.id, term_key(term), term, added_by=1, max_terms=MAX_TERMS)

        text = reply(await world.mod.slash(world.channel, "blocklist list"))

        assert len(text) <= 2000
        assert f"({MAX_TERMS} of at most {MAX_TERMS})" in text and "more." in text


async def test_blocklist_list_of_an_empty_list_says_how_to_add() -> None:
    async with running_world() as world:
        text = reply(await world.mod.slash(world.channel, "blocklist list"))

        assert "Nothing is blocked" in text and "/blocklist add" in text


# --- every way of asking is checked ---------------------------------------------------------


async def assert_refused_and_free(world: World, result: Any, jobs_before: int = 0) -> None:
    """Refused privately, with no job stored, no message posted, nothing charged."""
    assert result.ephemeral
    text = text_of(result)
    assert "blocked" in text and "not charged" in text
    assert len(await world.services.store.jobs_with_status()) == jobs_before
    status = await world.services.quotas.check(world.guild.id, world.alice.id)
    assert status.used == jobs_before


async def test_imagine_with_a_blocked_word_is_refused_privately_and_not_charged() -> None:
    async with running_world() as world:
        await block(world, "gore")

        result = await world.alice.slash(world.channel, "imagine", prompt="a castle + GORE:2")

        await assert_refused_and_free(world, result)
        assert world.bot_messages() == [] and world.engine.submits == []


async def test_imagine_with_a_word_that_only_contains_a_blocked_one_is_queued() -> None:
    async with running_world() as world:
        await block(world, "ass")

        result = await world.alice.slash(world.channel, "imagine", prompt="a glass of water in class")

        assert "Queued job" in text_of(result)


async def test_the_refusal_names_the_entry_escaped() -> None:
    async with running_world() as world:
        await block(world, "bad_word")

        result = await world.alice.slash(world.channel, "imagine", prompt="a bad_word here")

        assert "“bad\\_word”" in text_of(result)


async def test_the_blocklist_is_per_server() -> None:
    async with running_world() as world:
        await block(world, "gore")
        other = world.env.create_guild("elsewhere")
        channel = other.create_text_channel("art")
        alice_there = other.add_member(world.alice.user)

        result = await alice_there.slash(channel, "imagine", prompt="gore")

        assert "Queued job" in text_of(result)


async def test_edit_with_a_blocked_prompt_or_replace_phrase_is_refused() -> None:
    async with running_world() as world:
        await block(world, "gore")

        by_prompt = await world.alice.slash(world.channel, "edit", prompt="gore", image=png_file())
        await assert_refused_and_free(world, by_prompt)
        by_replace = await world.alice.slash(world.channel, "edit", prompt="flowers", image=png_file(),
                                             replace="the gore")
        await assert_refused_and_free(world, by_replace)


async def test_the_edit_image_menu_modal_with_a_blocked_prompt_is_refused() -> None:
    async with running_world() as world:
        await block(world, "gore")
        target = await world.bob.send(world.channel, "my photo", attachments=[png_file()])
        shown = await world.alice.context_menu(world.channel, "Edit image", target)

        submitted = await world.alice.submit_modal(shown, {"prompt": "more gore"})

        await assert_refused_and_free(world, submitted)


async def test_reroll_of_an_image_whose_prompt_was_blocked_since_is_refused() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a gore fest")
        (first,) = await world.services.store.jobs_with_status()
        (message,) = world.bot_messages()
        await block(world, "gore")

        result = await world.alice.click(message, label="Reroll")

        await assert_refused_and_free(world, result, jobs_before=1)


async def test_the_edit_button_modal_with_a_blocked_prompt_is_refused() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="a vase")
        (message,) = world.bot_messages()
        await block(world, "gore")
        shown = await world.alice.click(message, label="Edit")

        submitted = await world.alice.submit_modal(shown, {"prompt": "gore"})

        await assert_refused_and_free(world, submitted, jobs_before=1)
