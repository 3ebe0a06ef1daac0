"""The de-duplication window, in memory: which ``dedup_key`` was stored as which event row.

Why not an index: a transmission's key is its own (account, seq, payload), so an index on it
takes every event to a B-tree leaf of its own, and a group commit writes each dirty leaf
whole to the WAL. At 34 events per commit that index was 40 % of the store's cost per event
(bench/RESULTS.md). A dict costs a few hundred nanoseconds and no page.

Why it cannot lose or double an event:

* **Nothing is missed.** Every row is entered here by the job that inserts it, inside the
  writer's transaction, before the commit, so the next job (or the next row of the same job)
  sees it; no callback stands between a commit and the next batch. At start (the first job
  after ``Store.open``) the rows of the last window are read back from the database.
* **Nothing is invented.** The map is a hint and the row is the truth: a hit is called a copy
  only after the row with that id is read back and has this very key and a ``received_at``
  inside the window. A transaction that was rolled back leaves entries pointing at ids that
  no longer exist or now hold another event; that check turns them into misses.

One map per database (it belongs to ``Store``), so two intakes on one store agree. Memory:
about 170 bytes per event in the window (the key string, the dict slot, the id), so a
day's window of 100,000 events is ~17 MB. ``alarmd_store_dedup_keys`` shows the count.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from alarmd import metrics

# An entry is dropped only once its whole minute lies this far outside every window in use:
# ids follow arrival order only roughly (transports submit a few microseconds apart).
_SLACK = timedelta(minutes=1)

_ROW = "SELECT dedup_key, received_at FROM events WHERE id = ?"


class RecentKeys:
    """``dedup_key -> event id`` for the events stored within the de-dup window."""

    __slots__ = ("_appended", "_ids", "_keys", "_marks", "_order", "_popped", "_window", "loaded")

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        # every (key, id) entered, oldest first, as two deques sharing the dict's objects
        # (8 bytes a slot instead of a tuple), so that forgetting costs O(1) an entry
        self._keys: deque[str] = deque()
        self._order: deque[int] = deque()
        self._appended = 0  # entries appended to the deques so far
        self._popped = 0  # ... and taken off their front
        # (minute "YYYY-MM-DDTHH:MM" of received_at, self._appended after its last entry)
        self._marks: deque[tuple[str, int]] = deque()
        self._window = timedelta(0)  # the longest window any caller asked for
        self.loaded = False

    def __len__(self) -> int:
        return len(self._ids)

    def load(self, conn: sqlite3.Connection, newest: str, window: timedelta) -> None:
        """Read back the rows of the last ``window`` before ``newest`` (an iso time): once,
        in the first writer job that needs the map, so it sees every committed row."""
        self._window = max(self._window, window)
        since = _before(newest, self._window + _SLACK)
        for event_id, key, received in conn.execute(
            "SELECT id, dedup_key, received_at FROM events WHERE received_at >= ?"
            " ORDER BY received_at, id",
            (since,),
        ):
            self.add(key, event_id, received)
        self.loaded = True

    def find(
        self,
        conn: sqlite3.Connection,
        key: str,
        received: str,
        window: timedelta,
        pending: Mapping[int, tuple[Any, ...]],
    ) -> int | None:
        """The id of the row stored under ``key`` within ``window`` before ``received``
        (iso: the new event's own time), or None.

        ``pending``: rows this job has given ids but not inserted yet (id -> events row,
        ``received_at`` first and the key at ``KEY``), checked like stored ones.
        """
        event_id = self._ids.get(key)
        if event_id is None:
            return None
        row = pending.get(event_id)
        if row is not None:
            stored_key, stored_at = row[KEY], row[0]
        else:
            found = conn.execute(_ROW, (event_id,)).fetchone()
            if found is None:  # left by a transaction that was rolled back
                return None
            stored_key, stored_at = found
        # the horizon only on a hit (rare): formatting it for every event cost 2 us each
        if stored_key != key or stored_at < _before(received, window):
            return None
        return event_id

    def add(self, key: str, event_id: int, received: str) -> None:
        """Enter a row as its job inserts it (before the commit: see the module's notes).

        ``received`` is the row's ``received_at``: the entry is forgotten by that time.
        """
        ids = self._ids
        if ids.get(key) == event_id:  # the same row again (a job re-run after a rollback)
            return
        ids[key] = event_id
        self._keys.append(key)
        self._order.append(event_id)
        self._appended += 1
        minute = received[:16]
        marks = self._marks
        if marks and marks[-1][0] >= minute:  # out of order: kept as long as the newest
            marks[-1] = (marks[-1][0], self._appended)
        else:
            marks.append((minute, self._appended))

    def prune(self, newest: str, window: timedelta) -> None:
        """Forget the rows whose minute lies wholly outside the window before ``newest``."""
        self._window = max(self._window, window)
        marks = self._marks
        if marks:
            cutoff = _before(newest, self._window + _SLACK)[:16]
            ids, keys, order = self._ids, self._keys, self._order
            while marks and marks[0][0] < cutoff:
                _, upto = marks.popleft()
                while self._popped < upto:
                    key = keys.popleft()
                    event_id = order.popleft()
                    self._popped += 1
                    if ids.get(key) == event_id:  # not entered again since, for a newer row
                        del ids[key]
        metrics.STORE_DEDUP_KEYS.set(len(self._ids))


def _before(stamp: str, span: timedelta) -> str:
    """``stamp`` (alarmd's iso text, store.db.iso) moved back by ``span``, in the same form."""
    at = datetime.fromisoformat(stamp) - span
    return at.isoformat(timespec="microseconds")[:-6] + "Z"


KEY = 15  # dedup_key's place in an events row (alarmd.store.events.Row)
