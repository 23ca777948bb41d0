"""The jobs the engine has now (several at once when it batches, issue 13), as `/queue`,
`/status` and `/jobs` name them.

A job handed to the engine and not started yet (it waits there for room in the batch, or
for the engine to come back) is "starting": it has no iteration to show, and no count is
made up for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.jobs import RunningJob
from bot.render.text import format_duration

#: A job handed to the engine that has not started computing yet.
STARTING = "starting"


def queue_running_line(whose: str, running: RunningJob, left: float | None) -> str:
    """One job the engine has, in `/queue`: whose it is, then its progress and the time
    left (`left` seconds, if known), or that it is starting."""
    if not running.started:
        return f"{whose}: {STARTING}"
    left_text = f", about {format_duration(left)} left" if left else ""
    return f"{whose}: {running.iteration}/{running.total} iterations{left_text}"


def queue_running_now(lines: Sequence[str]) -> str:
    """`/queue`'s "Running now": nothing, one job, or each of the jobs computing together."""
    if not lines:
        return "**Running now:** nothing."
    if len(lines) == 1:
        return f"**Running now:** {lines[0]}."
    return (f"**Running now:** {len(lines)} images at once:\n"
            + "\n".join(f"• {line}." for line in lines))
