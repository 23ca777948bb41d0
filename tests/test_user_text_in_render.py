"""Issue 11's rule "every user-visible string goes through one rendering module", read from
the source: outside `bot/render/`, no module of `bot/` or `cogs/` hands Discord a text of
its own.

Every module is parsed (`ast`) and each place where a text reaches a user is looked at;
a string literal there (an f-string, a `+` or `%` of one, one branch of an `a if c else
b`, `a or "…"`) fails the test, named file:line. The places:

- the content of a message or an answer: the first argument or `content=` of `send`,
  `send_message`, `edit`, `edit_message`, `edit_original_response`, `reply`
  (`followup.send` is a `send`), and of `bot.interactions.answer`;
- embeds: `Embed(title=, description=)`, `add_field`/`insert_field_at`/`set_field_at`
  (`name=`, `value=`), `set_footer(text=)`, `set_author(name=)`, and `embed.title = …`,
  `embed.description = …`;
- refusals: a `UserError`, `NotAllowed` or any subclass of them in `bot/` or `cogs/`
  (found here, through their bases) made with a literal first argument or `message=`;
- components: `Button(label=, emoji=)` and `@discord.ui.button(label=, emoji=)`,
  `Select`/`SelectOption` (`label=`, `placeholder=`, `description=`), `TextInput(label=,
  placeholder=, default=)`, a `Modal`'s `title=` (given to its class statement or its
  constructor), and `LABEL`/`EMOJI` class attributes (how the job buttons say theirs);
- what else users read: a channel's `topic=`; the bot's presence (`Game`, `Streaming`,
  `Activity(name=)`, `CustomActivity`); the failure text a job keeps (`Job.error`, "fit
  to show the user": `mark_failed`'s second argument or `error=`) and the engine's
  `Failed` message made up by the bot (its second argument or `message=`);
- words handed to a render function (`render.foo(job, "edit")`): those are part of its
  text too.

Not checked, because they are not the bot's texts to users: log messages; what the
operator's terminal shows (the CLI's output, `argparse` help, configuration errors);
exceptions that are not `UserError`s (their text reaches the log, and the user reads
`render.apology`); file names and custom ids. And the one exemption: the *command
metadata* registered with Discord (command and group names and descriptions,
`app_commands.describe`, choices of options, the context menu's name) stays in the
decorators and cogs that define the commands: Discord holds it as the command's
definition, and `tests/test_command_docs.py` reads it there.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from bot import render
from bot.engine_status import EngineState
from bot.jobs import JobStatus

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "cogs")
RENDER = ROOT / "bot" / "render"

#: Calls whose first argument or `content=` is a message's text.
SENDS = frozenset({"send", "send_message", "edit", "edit_message", "edit_original_response",
                   "reply", "answer"})
#: Call name -> the keywords that are text users read.
TEXT_KEYWORDS: dict[str, frozenset[str]] = {
    "Embed": frozenset({"title", "description"}),
    "add_field": frozenset({"name", "value"}),
    "insert_field_at": frozenset({"name", "value"}),
    "set_field_at": frozenset({"name", "value"}),
    "set_footer": frozenset({"text"}),
    "set_author": frozenset({"name"}),
    "Button": frozenset({"label", "emoji"}),
    "button": frozenset({"label", "emoji"}),
    "Select": frozenset({"placeholder"}),
    "select": frozenset({"placeholder"}),
    "SelectOption": frozenset({"label", "description"}),
    "TextInput": frozenset({"label", "placeholder", "default"}),
    "Modal": frozenset({"title"}),
    "Activity": frozenset({"name", "state"}),
    "CustomActivity": frozenset({"name", "state"}),
    "Game": frozenset({"name"}),
    "Streaming": frozenset({"name"}),
    "create_text_channel": frozenset({"topic"}),
    "mark_failed": frozenset({"error"}),
    "Failed": frozenset({"message"}),
}
#: Call name -> the position (0-based) of a positional argument that is text users read.
TEXT_POSITIONS: dict[str, int] = {"Game": 0, "CustomActivity": 0, "Streaming": 0,
                                  "mark_failed": 1, "Failed": 1}
#: Attributes of an embed that are text.
EMBED_ATTRIBUTES = frozenset({"title", "description"})
#: Class attributes that are a component's text.
CLASS_TEXT = frozenset({"LABEL", "EMOJI"})
#: The bases of every error a user reads.
USER_ERROR_ROOTS = frozenset({"UserError", "NotAllowed"})


def source_files() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            if RENDER not in path.parents]


def has_text(node: ast.AST | None) -> bool:
    """Whether `node` is, or is built from, a string literal with something besides
    whitespace in it (separators such as `"\\n".join(…)` are layout, not words)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value.strip() != ""
    if isinstance(node, ast.JoinedStr):
        return any(has_text(part) for part in node.values)
    if isinstance(node, ast.BinOp):
        return has_text(node.left) or has_text(node.right)
    if isinstance(node, ast.IfExp):
        return has_text(node.body) or has_text(node.orelse)
    if isinstance(node, ast.BoolOp):
        return any(has_text(value) for value in node.values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return has_text(node.func.value)
    return False


def name_of(node: ast.AST) -> str | None:
    """`send` for `x.y.send`, `Embed` for `Embed`."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def user_error_classes(trees: dict[Path, ast.Module]) -> set[str]:
    """`UserError`, `NotAllowed` and every class of `bot/` and `cogs/` that derives from
    them, by name (project class names are unique enough for this)."""
    bases: dict[str, set[str]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(
                    name for base in node.bases if (name := name_of(base)) is not None)
    found = set(USER_ERROR_ROOTS)
    while True:
        more = {name for name, parents in bases.items() if parents & found} - found
        if not more:
            return found
        found |= more


def is_render_call(node: ast.Call) -> bool:
    """`render.foo(...)`."""
    func = node.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "render"


def findings(tree: ast.Module, errors: set[str]) -> Iterator[tuple[int, str]]:
    """(line, what) of every user-visible literal in `tree` (see the module docstring)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = name_of(node.func)
            keywords = {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}
            if name in SENDS:
                if node.args and has_text(node.args[0]):
                    yield node.lineno, f"a literal text given to {name}()"
                if has_text(keywords.get("content")):
                    yield node.lineno, f"a literal content= given to {name}()"
            if name in errors:
                if (node.args and has_text(node.args[0])) or has_text(keywords.get("message")):
                    yield node.lineno, f"{name} made with a literal text"
            if name in TEXT_KEYWORDS:
                for key in sorted(TEXT_KEYWORDS[name] & keywords.keys()):
                    if has_text(keywords[key]):
                        yield node.lineno, f"a literal {key}= given to {name}()"
            if name in TEXT_POSITIONS:
                position = TEXT_POSITIONS[name]
                if len(node.args) > position and has_text(node.args[position]):
                    yield node.lineno, f"a literal text given to {name}() (argument {position + 1})"
            if is_render_call(node):
                arguments = [*node.args, *keywords.values()]
                if any(has_text(argument) for argument in arguments):
                    yield node.lineno, f"a literal word given to render.{name}()"
        elif isinstance(node, ast.ClassDef):
            for keyword in node.keywords:
                if keyword.arg == "title" and has_text(keyword.value):
                    yield node.lineno, f"class {node.name}: a literal title="
            for statement in node.body:
                if isinstance(statement, ast.Assign | ast.AnnAssign):
                    targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                    for target in targets:
                        if (isinstance(target, ast.Name) and target.id in CLASS_TEXT
                                and has_text(statement.value)):
                            yield statement.lineno, f"class {node.name}: a literal {target.id}"
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Attribute) and target.attr in EMBED_ATTRIBUTES
                        and has_text(node.value)):
                    yield node.lineno, f"a literal .{target.attr}"


def user_visible_literals(sources: dict[Path, str]) -> list[str]:
    """`file:line: what` for every user-visible literal in `sources`."""
    trees = {path: ast.parse(text, str(path)) for path, text in sources.items()}
    errors = user_error_classes(trees)
    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: {what}"
            for path, tree in trees.items() for line, what in sorted(set(findings(tree, errors)))]


def test_no_module_outside_bot_render_hands_users_a_text_of_its_own() -> None:
    sources = {path: path.read_text(encoding="utf-8") for path in source_files()}
    found = user_visible_literals(sources)
    assert found == [], "texts users read belong in bot/render/:\n" + "\n".join(found)


PLANTED = '''
import discord
from bot import render
from bot.errors import UserError

class Refused(UserError):
    pass

class TooLate(Refused):
    pass

class Ask(discord.ui.Modal, title="Ask"):
    pass

class Go(discord.ui.DynamicItem[discord.ui.Button], template="x"):
    LABEL = "Go"

async def command(interaction, job):
    await interaction.response.send_message(f"Job {job.id} is done", ephemeral=True)
    await interaction.followup.send(content="Done.")
    await interaction.edit_original_response(content="fine" if job else None)
    embed = discord.Embed(title="Your jobs", description=render.jobs(job))
    embed.add_field(name="Seed", value=str(job.seed))
    embed.description = "none"
    view = discord.ui.Button(label="Stop", emoji="✖️")
    raise TooLate("Too late: job %s ended" % job.id)

async def fine(interaction, job, lines):
    await interaction.response.send_message("\\n".join(lines), ephemeral=True)
    await interaction.response.send_message(render.done(job), embed=render.embed(job))
    raise UserError(render.too_late(job))

def words(job):
    return render.no_result_text(job, "edit")
'''


def test_the_check_finds_what_it_looks_for() -> None:
    """Proof that the test above can fail: a planted module with one literal per kind of
    place, and the same places with render's texts, which pass."""
    found = user_visible_literals({Path("planted.py"): PLANTED})
    lines = [int(entry.split(":")[1]) for entry in found]
    text = PLANTED.splitlines()
    flagged = {text[line - 1].strip() for line in lines}
    assert flagged == {
        'class Ask(discord.ui.Modal, title="Ask"):',
        'LABEL = "Go"',
        'await interaction.response.send_message(f"Job {job.id} is done", ephemeral=True)',
        'await interaction.followup.send(content="Done.")',
        'await interaction.edit_original_response(content="fine" if job else None)',
        'embed = discord.Embed(title="Your jobs", description=render.jobs(job))',
        'embed.add_field(name="Seed", value=str(job.seed))',
        'embed.description = "none"',
        'view = discord.ui.Button(label="Stop", emoji="✖️")',
        'raise TooLate("Too late: job %s ended" % job.id)',
        'return render.no_result_text(job, "edit")',
    }


def test_render_has_words_for_every_state() -> None:
    """The states' words are render's, not the enums' values: one for each state."""
    assert set(render.JOB_STATUS_WORDS) == set(JobStatus)
    assert set(render.ENGINE_STATE_WORDS) == set(EngineState)
