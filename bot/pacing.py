"""How fast the bot edits waiting jobs' messages: at most `QUEUE_EDITS_PER_WINDOW` edits in
any `QUEUE_EDIT_WINDOW` seconds per channel.

Why these numbers. Discord counts message creates and edits in one channel against one
per-channel limit (5 per 5 s, as bots observe it: Discord publishes the mechanism,
per-route buckets keyed by channel, not the numbers, and asks clients to read its rate
limit headers, which discord.py does: it waits, it does not fail). The running job's
progress edits (one per PROGRESS_INTERVAL, 5 s by default), its result, and the messages
of newly queued jobs share that limit, and they matter more than a waiting job's "#7":
queue edits take at most two of the five, so they never make a result wait. A queue of
30 in one channel then takes about a minute to renumber after a move, less than one
image takes on a GPU. Edits to messages older than an hour have a further limit of their
own (error 30046); such an edit that Discord refuses is logged and tried again at the
next move of the queue.

The limit holds across a restart too: a restarted bot does not know what the bot before it
edited in its last seconds, so the queue notes of a bot that ran before (`QueueNotes.restore`
finds jobs in the store) `hold()` their pace: every channel counts as full for one window
and the first queue edit waits it out (the soak, bench/soak.py, saw 4 queue edits in 5 s
where a restart fell between two pairs). A first start holds nothing.

A sliding window, not a token bucket: "no more than N in any W seconds" is the rule that
is written in the docs and checked by the tests, word for word.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable

#: At most this many queue edits ...
QUEUE_EDITS_PER_WINDOW = 2
#: ... in any window of this many seconds, per channel.
QUEUE_EDIT_WINDOW = 5.0


class EditPacer:
    """A sliding-window limit per key (a channel id): `delay(key)` says how long until one
    more edit is allowed, `record(key)` counts one. Reads `time.monotonic()` on every call
    (not a clock bound at import), so a simulated clock in tests is followed."""

    def __init__(self, limit: int = QUEUE_EDITS_PER_WINDOW, window: float = QUEUE_EDIT_WINDOW) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a pace needs at least one edit in a window longer than 0 s")
        self.limit = limit
        self.window = window
        self._sent: dict[Hashable, deque[float]] = {}
        #: Until then every channel counts as full (`hold`).
        self._held_until = float("-inf")

    def hold(self) -> None:
        """Count every channel as full for one window from now: edits made just before,
        by a bot this one replaces, are unknown (see the module docstring)."""
        self._held_until = time.monotonic() + self.window

    def delay(self, key: Hashable) -> float:
        """Seconds until an edit for `key` keeps within the limit; 0 = now."""
        now = time.monotonic()
        if now < self._held_until:
            return self._held_until - now
        sent = self._sent.get(key)
        if sent is None:
            return 0.0
        self._forget_before(sent, now - self.window)
        if not sent:
            del self._sent[key]  # channels come and go: keep only the busy ones
        if len(sent) < self.limit:
            return 0.0
        return max(0.0, sent[0] + self.window - now)

    def record(self, key: Hashable) -> None:
        """One edit for `key`, now."""
        now = time.monotonic()
        sent = self._sent.setdefault(key, deque())
        self._forget_before(sent, now - self.window)
        sent.append(now)

    @staticmethod
    def _forget_before(sent: deque[float], start: float) -> None:
        """Drop the edits outside the window (start, now]."""
        while sent and sent[0] <= start:
            sent.popleft()
