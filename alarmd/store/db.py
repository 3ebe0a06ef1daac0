"""The SQLite connection, its pragmas, migrations, and the one writer that commits in groups.

Theory of operation
-------------------
Every write in alarmd goes through ``Writer.submit(job)`` (DESIGN.md invariant 7). A job is
a plain function of a ``sqlite3.Connection``; the writer runs jobs on one connection, many
jobs to a transaction:

* the writer task wakes when the first job is queued, takes every job queued by then (up to
  ``max_batch``: all the frames of one pass of the event loop) and runs them in a single
  ``BEGIN IMMEDIATE ... COMMIT``;
* while that runs, devices keep sending; their frames wait in the socket buffers and form
  the next batch.

So a lone event is committed at once (no timer makes it wait for company), and under load
one fsync serves hundreds of events: group commit.

The commit runs on the event loop's own thread, fsync included, as Redis does with
``appendfsync always``. We measured the alternative, a writer thread: with the GIL, every
hand-over to the thread and back waited behind the busy loop, and throughput was 35 % lower
than committing inline (bench/dc09_ingest.py). Handing only the ``COMMIT`` to a thread (its
WAL writes and fsync run without the GIL) did no better: 4,480 events/s against 5,940 inline
at 100 connections, 5,540 with a 0.5 ms GIL switch interval (bench/RESULTS.md). Every
acknowledgement waits for the fsync anyway; what the loop's other work (API, metrics) loses
is at most one commit's time. A disk that stalls stalls the loop, and the watchdog pings
stop with it, so systemd restarts a daemon whose disk has hung rather than leave devices
unanswered without a trace.

A job that raises fails alone (the batch is re-run with a savepoint per job); a failed
COMMIT (disk full, read-only, I/O error) fails every job of the batch, and nobody is told
"stored" for data that is not.

``journal_mode=WAL`` with ``synchronous=FULL``: a commit has reached the disk when
``COMMIT`` returns, which is what lets a transport acknowledge after it.

Reads do not go through the writer: ``Store.reader()`` gives an aiosqlite connection
(WAL lets readers run beside the writer).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite
import structlog

from alarmd import metrics
from alarmd.store.recent import RecentKeys

log = structlog.get_logger(__name__)

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]


class StoreError(Exception):
    """The store could not commit; whatever was submitted is not durable."""


class StoreClosed(StoreError):
    """The writer has been stopped; nothing more is accepted."""


def iso(dt: datetime) -> str:
    """Our one text form of a timestamp: UTC, microseconds, 'Z'. Sorts as text.

    On the hot path (every event), so it uses the C ``isoformat`` rather than ``strftime``.
    """
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_iso(text: str) -> datetime:
    """Inverse of ``iso``; strict about the shape (``fromisoformat`` alone would accept any
    ISO form), and 30 times faster than ``strptime``, which showed in the engine's profile."""
    if len(text) != 27 or text[-1] != "Z" or text[10] != "T":
        raise ValueError(f"not an alarmd timestamp: {text!r}")
    return datetime.fromisoformat(text)


# Checkpoint the WAL into the database every 10,000 pages (40 MB at 4 KB pages) rather than
# SQLite's 1,000. Each event dirties a leaf page in the index keyed by account (events_source;
# events_dedup, the other one, is gone: store/recent.py), and a group commit writes every dirty
# page whole; consecutive commits dirty mostly the same leaves, so a longer WAL copies each
# of them to the database once per checkpoint instead of once every few commits. Measured on
# the events table at 100-150k rows, 100 events per commit: 45 -> 30-36 us of CPU and 61-100
# -> 37-43 us of wall time per event; 5,000 and 20,000 were no better; none (the WAL left to
# grow) was worse, 36 -> 48 us (its index grows with it). Recovery after a crash reads at
# most this WAL.
WAL_AUTOCHECKPOINT_PAGES = 10_000


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the database with the pragmas every alarmd connection needs."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    if not readonly:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: could not switch to WAL journal mode (got {mode!r})")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        # savepoints' sub-journals (the writer's batch, intake's, the case hook's) and the
        # multi-row insert's VALUES table stay in memory rather than spilling to temp files:
        # half the bytes written and write syscalls per event (bench/dc09_ingest.py)
        conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _migration_files() -> list[tuple[int, str, str]]:
    """Numbered SQL files shipped in ``alarmd/store/migrations``, in order."""
    found = []
    for entry in resources.files("alarmd.store").joinpath("migrations").iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        number = int(name.split("_", 1)[0])
        found.append((number, name, entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [n for n, _, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise StoreError(f"migrations must be numbered 1..n without gaps, found {numbers}")
    return found


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the migrations this database has not seen; returns the names applied.

    Each migration runs in its own transaction with its bookkeeping row, so a crash
    half-way leaves the database at a clean version.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    done = []
    for number, name, sql in _migration_files():
        if number in applied:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (number, name, iso(datetime.now(UTC))),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        done.append(name)
    return done


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (our migrations hold no triggers or ';' in strings)."""
    statements = []
    buffer: list[str] = []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped:
            continue
        buffer.append(stripped)
        if stripped.endswith(";"):
            statements.append("\n".join(buffer))
            buffer = []
    if buffer:
        statements.append("\n".join(buffer))
    return statements


class _Pending(Generic[T]):
    __slots__ = ("future", "job")

    def __init__(self, job: Job[T], future: asyncio.Future[T]) -> None:
        self.job = job
        self.future = future


class Writer:
    """The single writer: runs submitted jobs on one thread, many to a commit."""

    def __init__(self, conn: sqlite3.Connection, *, max_batch: int = 2000) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending[Any] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.failed = False  # the last commit failed: the store is unhealthy until one succeeds

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="store-writer")

    async def submit(self, job: Job[T]) -> T:
        """Run ``job`` in the next transaction; return its result once committed.

        Raises ``StoreError`` if the transaction could not be committed.
        """
        return await self.enqueue(job)

    def enqueue(self, job: Job[T]) -> asyncio.Future[T]:
        """``submit`` without a coroutine: a future resolved after the commit.

        Hot paths (a transport answering thousands of frames a second) add a done-callback
        to it instead of creating a task per frame.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(StoreClosed("the store is closed"))
        else:
            self._queue.put_nowait(_Pending(job, future))
        return future

    def read_now(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """A tiny synchronous read on the writer's connection, for a caller on the event loop
        that cannot await (a transport answering a re-sent request). Safe because jobs run
        inline on the loop: no transaction is ever open while other code runs."""
        return [tuple(r) for r in self._conn.execute(sql, params).fetchall()]

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        """Commit what is queued, then stop. Jobs submitted after this fail."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task
        self._conn.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch: list[_Pending[Any]] = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            started = loop.time()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                outcomes = self._execute(batch)
                self._conn.execute("COMMIT")
            except Exception as exc:  # the commit failed: nothing of this batch is durable
                self._rollback()
                metrics.STORE_COMMIT_FAILURES.inc()
                self.failed = True
                log.error("store_commit_failed", error=str(exc), jobs=len(batch))
                error = StoreError(f"commit failed: {exc}")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            self.failed = False
            metrics.STORE_COMMIT_SECONDS.observe(loop.time() - started)
            metrics.STORE_BATCH_JOBS.observe(len(batch))
            for pending, (ok, value) in zip(batch, outcomes, strict=True):
                if pending.future.done():  # the submitter was cancelled
                    continue
                if ok:
                    pending.future.set_result(value)
                else:
                    pending.future.set_exception(value)

    def _rollback(self) -> None:
        # after some errors (SQLITE_FULL during COMMIT) SQLite has already rolled back
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _execute(self, batch: list[_Pending[Any]]) -> list[tuple[bool, Any]]:
        """Run the batch's jobs inside the open transaction.

        Optimistic: all jobs under one savepoint. Only if a job fails on its own account is
        the batch undone and run again with a savepoint per job, so that the failing job
        fails alone. Two statements fewer per job on the path taken almost always.
        """
        conn = self._conn
        conn.execute("SAVEPOINT batch")
        try:
            outcomes = [(True, pending.job(conn)) for pending in batch]
        except sqlite3.OperationalError:
            raise  # disk full, I/O error, locked: the whole transaction is suspect
        except Exception:
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
            return self._execute_one_by_one(batch)
        conn.execute("RELEASE batch")
        return outcomes

    def _execute_one_by_one(self, batch: list[_Pending[Any]]) -> list[tuple[bool, Any]]:
        conn = self._conn
        outcomes: list[tuple[bool, Any]] = []
        for pending in batch:
            conn.execute("SAVEPOINT job")
            try:
                value = pending.job(conn)
            except sqlite3.OperationalError:
                raise
            except Exception as exc:  # this job's own fault: undo it alone
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                outcomes.append((False, exc))
            else:
                conn.execute("RELEASE job")
                outcomes.append((True, value))
        return outcomes


class Store:
    """The database: one writer for every change, aiosqlite readers for queries."""

    def __init__(self, path: Path, writer: Writer, reader: aiosqlite.Connection) -> None:
        self.path = path
        self.writer = writer
        self._reader = reader
        # intake's de-duplication window, one per database (see store/recent.py)
        self.recent_keys = RecentKeys()

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating if needed) and migrate the database, then start the writer."""
        path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(None, connect, path)
        applied = await loop.run_in_executor(None, migrate, conn)
        if applied:
            log.info("store_migrated", path=str(path), applied=applied)
        writer = Writer(conn)
        writer.start()
        reader = await aiosqlite.connect(str(path), isolation_level=None)
        reader.row_factory = aiosqlite.Row
        await reader.execute("PRAGMA busy_timeout = 5000")
        await reader.execute("PRAGMA query_only = ON")
        return cls(path, writer, reader)

    @property
    def reader(self) -> aiosqlite.Connection:
        """A connection for queries; never writes (``query_only``)."""
        return self._reader

    async def close(self) -> None:
        """Commit what is queued and close every connection."""
        await self.writer.close()
        await self._reader.close()
