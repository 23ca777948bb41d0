"""How fast the bot edits messages in a channel: at most `EDITS_PER_WINDOW` edits in any
`EDIT_WINDOW` seconds per channel, of which at most `QUEUE_EDITS_PER_WINDOW` are edits of
waiting jobs' messages. Every edit the bot makes to a job's message goes through this one
pace (`ChannelPace`, held by `bot.job_messages.JobMessages`).

Why these numbers. Discord counts message creates and edits in one channel against one
per-channel limit (5 per 5 s, as bots observe it: Discord publishes the mechanism,
per-route buckets keyed by channel, not the numbers, and asks clients to read its rate
limit headers, which discord.py does: it waits, it does not fail). Relying on discord.py's
waits alone is not enough: many short jobs in one channel (the soak, bench/soak.py, saw 150
edits in one channel-minute) would spend the bot's time in 429s, which Discord counts
against the bot, and a job's result would queue behind previews nobody needs any more. So
the bot keeps its edits inside the limit itself, and decides what matters when it cannot
show it all:

- `Write.NEEDED` (a job cancelled or interrupted, a result shown in place when it could not
  be posted, the engine shown down to a job handed over to it): never dropped; it waits
  for room, and while it waits nothing skippable is edited in that channel.
- `Write.PROGRESS` (a job starting, its progress and preview): skipped when there is no
  room; the runner shows a later one instead (a preview is only worth showing fresh). It
  leaves `RESERVED_FOR_NEEDED` of the five free, so a needed edit seldom waits at all.
- `Write.QUEUE` (a waiting job's "#7", `bot.queue_notes`): like progress, and at most
  `QUEUE_EDITS_PER_WINDOW` in a window. Queue notes are chosen afresh from the queue at
  each edit, so moves faster than the pace are skipped, not queued up. A queue of 30 in
  one channel then takes about a minute to renumber after a move, less than one image
  takes on a GPU. Edits to messages older than an hour have a further limit of their own
  (error 30046); such an edit that Discord refuses is logged and tried again at the next
  move of the queue.

New messages (a job's message when it is asked for, its result or failure, a timelapse)
are not held back: each answers a member's action or ends a job, a member's queue is
capped, and they are the messages members wait for. They share Discord's limit, so when a
channel is that busy discord.py waits out a 429 for them. Deletes (the progress message,
once the result is posted) have a bucket of their own. Interaction responses (answers to
slash commands and buttons) go through the interaction's webhook, not the channel.

An edit holds its place in the window from the moment it is allowed until its request is
answered (`writing`), and counts from the answer: so however long a request takes, or
however long discord.py waits inside it, no window ever sees more than the limit arrive.

The limit holds across a restart too: a restarted bot does not know what the bot before it
edited in its last seconds, so the queue notes of a bot that ran before (`QueueNotes.restore`
finds jobs in the store) `hold()` the pace: every channel counts as full for one window
(the soak saw 4 queue edits in 5 s where a restart fell between two pairs). A first start
holds nothing.

A sliding window, not a token bucket: "no more than N in any W seconds" is the rule that
is written in the docs and checked by the tests and the soak, word for word.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from enum import Enum

#: At most this many message edits ...
EDITS_PER_WINDOW = 5
#: ... in any window of this many seconds, per channel.
EDIT_WINDOW = 5.0
#: Of those, at most this many queue edits (waiting jobs' messages) ...
QUEUE_EDITS_PER_WINDOW = 2
#: ... in the same window.
QUEUE_EDIT_WINDOW = EDIT_WINDOW
#: Places in a window that skippable edits (progress, queue) leave to needed ones.
RESERVED_FOR_NEEDED = 1


class Write(Enum):
    """What an edit is worth when the channel's pace has no room (module docstring)."""

    NEEDED = "needed"
    PROGRESS = "progress"
    QUEUE = "queue"


@dataclass
class _Written:
    queue: bool
    #: When its request was answered; None while it is in flight (it counts as now).
    at: float | None = None


class ChannelPace:
    """The sliding-window limit per key (a channel id): `delay(key, kind)` says how long
    until one more edit of that kind is allowed, `writing(key, kind)` holds a place while
    it is made. Reads `time.monotonic()` on every call (not a clock bound at import), so a
    simulated clock in tests is followed. Keeps only channels edited in the last window."""

    def __init__(self, limit: int = EDITS_PER_WINDOW, window: float = EDIT_WINDOW,
                 queue_limit: int = QUEUE_EDITS_PER_WINDOW, reserved: int = RESERVED_FOR_NEEDED) -> None:
        if limit < 1 or window <= 0 or not 1 <= queue_limit <= limit - reserved or reserved < 0:
            raise ValueError("a pace needs room for an edit of each kind in a window longer than 0 s")
        self.limit = limit
        self.window = window
        self.queue_limit = queue_limit
        self.reserved = reserved
        self._written: dict[Hashable, list[_Written]] = {}
        #: Needed edits waiting for room, per key: skippable ones give way to them.
        self._waiting: dict[Hashable, int] = {}
        #: Until then every channel counts as full (`hold`).
        self._held_until = float("-inf")

    def hold(self) -> None:
        """Count every channel as full for one window from now: edits made just before,
        by a bot this one replaces, are unknown (see the module docstring)."""
        self._held_until = time.monotonic() + self.window

    def delay(self, key: Hashable, kind: Write = Write.NEEDED) -> float:
        """Seconds until an edit of `kind` for `key` keeps within the limit; 0 = now. An
        edit in flight frees its place no sooner than one window from now."""
        now = time.monotonic()
        if now < self._held_until:
            return self._held_until - now
        written = self._current(key, now)
        if kind is not Write.NEEDED and self._waiting.get(key):
            return self.window  # a needed edit goes first; its own wait is at most this
        room = self.limit - (0 if kind is Write.NEEDED else self.reserved)
        delay = self._until_fewer_than(room, written, now)
        if kind is Write.QUEUE:
            queue = [w for w in written if w.queue]
            delay = max(delay, self._until_fewer_than(self.queue_limit, queue, now))
        return delay

    @contextlib.contextmanager
    def writing(self, key: Hashable, kind: Write) -> Iterator[None]:
        """Hold one place for `key` while an edit is made (take it only once `delay` is 0:
        nothing here refuses); it counts from when the block ends."""
        entry = _Written(kind is Write.QUEUE)
        self._written.setdefault(key, []).append(entry)
        try:
            yield
        finally:
            entry.at = time.monotonic()

    @contextlib.contextmanager
    def waiting(self, key: Hashable) -> Iterator[None]:
        """A needed edit for `key` is waiting for room: skippable ones hold back meanwhile."""
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._waiting[key] - 1
            if left:
                self._waiting[key] = left
            else:
                del self._waiting[key]

    def _current(self, key: Hashable, now: float) -> list[_Written]:
        """The edits for `key` that count now (in flight, or answered within the window);
        forgets the others, and the key once it has none."""
        written = self._written.get(key)
        if written is None:
            return []
        written[:] = [w for w in written if w.at is None or w.at > now - self.window]
        if not written:
            del self._written[key]  # channels come and go: keep only the busy ones
        return written

    def _until_fewer_than(self, room: int, written: list[_Written], now: float) -> float:
        """Seconds until fewer than `room` of `written` count (in flight: a window from now)."""
        excess = len(written) - room + 1
        if excess <= 0:
            return 0.0
        frees = sorted((w.at if w.at is not None else now) + self.window for w in written)
        return max(0.0, frees[excess - 1] - now)

