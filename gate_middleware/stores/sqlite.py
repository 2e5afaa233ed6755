"""One rollout across every process on a host: the gate's state and windows in a SQLite file.

::

    gate = PromotionGate.from_url("sqlite:///var/lib/shop/gate.db", PromotionConfig(name="checkout"))

Every process that opens the same file and rollout name (gunicorn or
uvicorn workers, a recycled worker, the app after a restart, ``manage.py
gate`` or the CLI on the same host) shares one environment, traffic share,
flag set, plan position and history (``SqliteStateStore``) and one merged
pair of windows with each step's evidence (``SqliteWindowStore``). It needs
nothing but the standard library's ``sqlite3``; several rollouts may share
one file. ``sqlite:///abs/path.db`` names an absolute path,
``sqlite:relative/path.db`` one relative to the working directory; the
directory must exist. SQLite's locking needs a local filesystem: a file on
a network filesystem (NFS, SMB) is not supported. To share a rollout across
hosts, use Redis.

How it stays fast
    Routing never reads the file: each process keeps the last state it saw
    and a background thread checks the state's identity every
    ``refresh_seconds`` (0.25 s), reading the whole state only when it
    changed. Outcomes are counted into a small local buffer (counts and
    sketch buckets per time slice) and written in one transaction every
    ``flush_seconds`` (0.25 s) by the same thread, which reads the merged
    windows back: no request waits on the database, and evaluating health
    costs no query.

How it stays correct
    The file is in WAL mode (readers never wait for the writer) with a busy
    timeout. A state is identified by its version and a random transition
    id, kept in their own columns; a change is a compare-and-set on that
    identity inside an ``IMMEDIATE`` transaction, so two processes that
    detect the same failure at the same moment make exactly one rollback
    event, reported (callbacks, metrics, webhooks) by the process that made
    it. The first process writes the configured state only into an empty
    row. Window slices are numbered by the host's clock, which every
    process shares; a clear (a new step) moves every process to a new
    epoch, and rows of old epochs and expired slices are deleted at each
    flush, so the file stays small however long the rollout runs.

When the file cannot be used
    Requests never fail and never wait on it. When the database is locked
    for longer than the busy timeout, read-only, full or unreadable, each
    process keeps serving its last known state; outcomes stay in the bounded
    local buffer and are written when the file is usable again (slices that
    leave the window first are dropped and counted in ``dropped_outcomes``);
    the trouble is logged once and shown in the gate's status. State changes
    are refused with ``PromotionError`` while it lasts, since they could not
    be shared. A state that does not decode is reported as ``corrupt``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from opentelemetry.metrics import MeterProvider

from gate_middleware.background import BackgroundThread
from gate_middleware.domain.codec import CorruptData, decode_state, encode_state, new_transition_id
from gate_middleware.domain.config import PromotionConfig
from gate_middleware.domain.routing import CANARY, STABLE
from gate_middleware.domain.state import GateState
from gate_middleware.errors import ConfigError, PromotionError
from gate_middleware.judge.evidence import Evidence
from gate_middleware.judge.sample import STORE_LIMIT
from gate_middleware.judge.sketch import BUCKET_COUNT
from gate_middleware.stores.buffer import (
    BufferedWindowStore,
    Merged,
    Slice,
    digest,
    evidence_fields,
    evidence_from_fields,
    sample_fields,
    sample_from_fields,
)
from gate_middleware.stores.outbox import Delivery
from gate_middleware.stores.port import (
    TRANSITION_TIMEOUT_SECONDS,
    StateStoreBase,
    StoreCondition,
)
from gate_middleware.stores.windows import SLICES

logger = logging.getLogger("gate_middleware")

BUSY_TIMEOUT_SECONDS = 2.0  # how long a statement waits for another process's write
FULL_READ_EVERY = 4  # follower steps (1 s): the whole state row is decoded and checked

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gate_state (
    rollout TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    id TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gate_epoch (
    rollout TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gate_window (
    rollout TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    variant TEXT NOT NULL,
    slice INTEGER NOT NULL,
    field TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (rollout, epoch, variant, slice, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gate_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout TEXT NOT NULL,
    receiver TEXT NOT NULL,
    delivery TEXT NOT NULL,
    action TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    due REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS gate_outbox_order ON gate_outbox (rollout, receiver, seq);
CREATE TABLE IF NOT EXISTS gate_catalog (
    name TEXT PRIMARY KEY,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gate_evidence (
    rollout TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    variant TEXT NOT NULL,
    field TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (rollout, epoch, variant, field)
) WITHOUT ROWID;
"""


def database_path(url: str) -> Path:
    """The file a ``sqlite:`` URL names; ``ConfigError`` for anything else."""
    parts = urlsplit(url)
    valid = "sqlite:///absolute/path.db or sqlite:relative/path.db (a file on this host)"
    if parts.scheme != "sqlite" or parts.netloc not in ("", "localhost"):
        raise ConfigError("url", f"{parts.scheme}://{parts.netloc}…", valid)
    path = unquote(parts.path)
    if not path or path in (":memory:", "/:memory:") or path.endswith("/"):
        raise ConfigError(
            "url", url, f"{valid}; an in-memory database is not shared between processes"
        )
    file = Path(path)
    if not file.parent.is_dir():
        raise ConfigError("url", url, f"{valid} in an existing directory ({file.parent} is none)")
    return file


class _Database:
    """One connection per process to the file, guarded by a lock, opened
    again in a forked child (a connection must not cross a fork): the
    stores need no ``after_fork`` of their own for it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pid = -1
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._identity = (-1, -1)  # (device, inode) of the file this process opened
        with self.locked():
            pass  # opened (and the schema made) now: a bad path fails at start

    def file_changed(self) -> bool:
        """Whether the file was deleted or replaced since this process opened it
        (its connection would go on with the old one): then the next use opens
        the file at the path again, and it is made anew if it is gone."""
        try:
            found = os.stat(self.path)
            identity = (found.st_dev, found.st_ino)
        except OSError:
            identity = (-2, -2)
        # Both numbers: a file system mounted anew hands out the same low inodes.
        if self._connection is None or identity == self._identity:
            return False
        logger.warning("%s was deleted or replaced: opening the file at that path again", self.path)
        with self._lock:
            if self._pid == os.getpid() and self._connection is not None:
                self._connection.close()
            self._connection = None
        return True

    def locked(self) -> _Locked:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._connection = None
        return _Locked(self)

    def connection(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # transactions are explicit
                check_same_thread=False,  # shared by the threads, under the lock
            )
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.executescript(_SCHEMA)
                opened = os.stat(self.path)
                self._identity = (opened.st_dev, opened.st_ino)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``), committed when the block
        ends and rolled back if it raises."""
        with self.locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None


class _Locked:
    def __init__(self, database: _Database) -> None:
        self._database = database

    def __enter__(self) -> sqlite3.Connection:
        self._database._lock.acquire()
        try:
            return self._database.connection()
        except BaseException:
            self._database._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        self._database._lock.release()


class _Trouble:
    """The file's trouble (locked, read-only, full, unreadable), logged once
    when it starts and once when it ends."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.problem = ""
        self.recovered_at = -math.inf  # time.monotonic() of the last success

    def failed(self, exc: BaseException, started: float = math.inf) -> None:
        """An attempt begun at ``started`` (monotonic) failed: the trouble,
        unless a later attempt has succeeded meanwhile (a write that waited
        out the busy timeout must not undo the success that followed it)."""
        if started < self.recovered_at:
            return
        if not self.problem:
            logger.error(
                "%s: the SQLite store failed (%s); serving the last known state", self.what, exc
            )
        self.problem = f"{type(exc).__name__}: {exc}"[:200]

    def recovered(self) -> None:
        self.recovered_at = time.monotonic()
        if self.problem:
            self.problem = ""
            logger.warning("%s: the SQLite store works again; resynchronised", self.what)


class SqliteStateStore(StateStoreBase):
    """The gate's state, shared through a SQLite file (see the module's documentation)."""

    remote = True  # the gate keeps its writes off the request path

    def __init__(
        self,
        database: _Database,
        rollout: str,
        initial: GateState,
        *,
        refresh_seconds: float = 0.25,
        transition_timeout: float = TRANSITION_TIMEOUT_SECONDS,
    ) -> None:
        self._database = database
        self._rollout = rollout
        self.transition_timeout = transition_timeout
        if not initial.transition:  # the same config gives the same identity in every process
            initial = replace(initial, transition="config-" + digest(encode_state(initial)))
        self._state = initial
        # Guards the held state's check-and-replace: the follower's read and a
        # compare-and-set on a request thread can finish in either order.
        self._hold_lock = threading.Lock()
        self._listeners: list[Callable[[GateState], None]] = []
        self._trouble = _Trouble(f"rollout {rollout!r} state")
        # A write can fail while reads work (another process holds the write
        # lock): kept until a write, or the follower's probe, goes through.
        self._write_trouble = _Trouble(f"rollout {rollout!r} state changes")
        self._corrupt = ""
        self._steps = 0
        self._follower = BackgroundThread(f"gate-state-{rollout}", self._follow, refresh_seconds)
        self._outbox = SqliteOutbox(database, rollout)
        try:
            with database.locked() as db:
                db.execute(
                    "INSERT OR IGNORE INTO gate_state (rollout, version, id, state) "
                    "VALUES (?, ?, ?, ?)",
                    (rollout, initial.version, initial.transition, encode_state(initial)),
                )
            self._follow()
        except sqlite3.Error as exc:
            self._trouble.failed(exc)
            logger.warning(
                "rollout %r could not read %s; starting from the configured environment (%s)",
                rollout,
                database.path,
                initial.environment,
            )

    def subscribe(self, listener: Callable[[GateState], None]) -> None:
        """Call ``listener(state)`` whenever another process changes the state."""
        self._listeners.append(listener)
        self._follower.ensure()

    def load(self) -> GateState:
        self._follower.ensure()
        return self._state

    def status(self) -> tuple[StoreCondition, str]:
        if self._corrupt:
            return "corrupt", f"{self._database.path} rollout {self._rollout!r}: {self._corrupt}"
        problem = self._trouble.problem or self._write_trouble.problem
        if problem:
            return "unreachable", f"{self._database.path}: {problem}"
        return "ok", ""

    def _probe_writes(self) -> None:
        """Whether the file takes a write again: the state's row rewritten with
        its own values and committed. Taking the write lock alone proves
        nothing: on a read-only file system SQLite still takes it (the lock
        lives in shared memory)."""
        with self._database.transaction() as db:
            db.execute(
                "UPDATE gate_state SET version = version WHERE rollout = ?", (self._rollout,)
            )
        self._write_trouble.recovered()

    def _read(self) -> GateState | None:
        """The stored state if it is newer than the one held, else ``None``;
        raises ``sqlite3.Error`` or ``CorruptData``.

        Never goes back: a missing row (the file was deleted, replaced or
        emptied) or an older one gets this process's state written back, as
        the Redis store does; the whole row is decoded every
        ``FULL_READ_EVERY`` steps even when its identity is unchanged, so a
        foreign write to it is found.
        """
        self._database.file_changed()
        self._steps += 1
        with self._database.locked() as db:
            row = db.execute(
                "SELECT version, id FROM gate_state WHERE rollout = ?", (self._rollout,)
            ).fetchone()
            held = self._state
            if row is None or row[0] < held.version:
                self._write_back(db, held, None if row is None else (row[0], row[1]))
                return None
            same = (row[0], row[1]) == (held.version, held.transition)
            if same and self._steps % FULL_READ_EVERY and not self._corrupt:
                return None  # (while corrupt, every step reads it whole until repaired)
            full = db.execute(
                "SELECT version, id, state FROM gate_state WHERE rollout = ?", (self._rollout,)
            ).fetchone()
        if full is None:
            return None
        version, transition, text = full
        state = decode_state(text, str(version), str(transition))
        return None if same else state

    def _write_back(
        self, db: sqlite3.Connection, state: GateState, found: tuple[int, str] | None
    ) -> None:
        """Put ``state`` where the stored row is missing or older than it."""
        text = encode_state(state)
        if found is None:
            written = db.execute(
                "INSERT OR IGNORE INTO gate_state (rollout, version, id, state) VALUES (?, ?, ?, ?)",
                (self._rollout, state.version, state.transition, text),
            ).rowcount
        else:
            written = db.execute(
                "UPDATE gate_state SET version = ?, id = ?, state = ? "
                "WHERE rollout = ? AND version = ? AND id = ?",
                (state.version, state.transition, text, self._rollout, *found),
            ).rowcount
        if written:
            logger.warning(
                "rollout %r: %s held %s; wrote back the newer state this process holds "
                "(version %d, %s)",
                self._rollout,
                self._database.path,
                "no state" if found is None else f"an older state (version {found[0]})",
                state.version,
                state.environment,
            )

    def _follow(self) -> None:
        try:
            state = self._read()
        except sqlite3.Error as exc:
            self._trouble.failed(exc)
            return
        except CorruptData as exc:
            if not self._corrupt:
                logger.error(
                    "rollout %r: the state in %s is corrupt (%s): serving the last good state; "
                    "state changes are refused until it is repaired",
                    self._rollout,
                    self._database.path,
                    exc,
                )
            self._corrupt = str(exc)
            return
        self._trouble.recovered()
        self._corrupt = ""
        if self._write_trouble.problem:
            started = time.monotonic()
            try:
                self._probe_writes()
            except sqlite3.Error as exc:
                self._write_trouble.failed(exc, started)
        if state is None or not self._hold(state):
            return
        for listener in list(self._listeners):
            listener(state)

    def _hold(self, state: GateState) -> bool:
        """Hold ``state`` unless the one held is newer or the same: a follower
        read made before this process's own compare-and-set can finish after
        it, and must not put the older state back (``GateState.supersedes``;
        the Redis store's ``_set`` too)."""
        with self._hold_lock:
            if not state.supersedes(self._state):
                return False
            self._state = state
            return True

    def compare_and_set(
        self, expected_version: int, new_state: GateState, *, expected_transition: str | None = None
    ) -> bool:
        """Store ``new_state`` if the stored state is still the expected one.

        Raises ``PromotionError`` when the file cannot be written (locked
        beyond the busy timeout, read-only, full) or holds a corrupt state.
        """
        self._follower.ensure()
        if self._corrupt:
            raise PromotionError(
                f"nothing changed: the state in {self._database.path} is corrupt "
                f"({self._corrupt}); repair or delete the row of rollout {self._rollout!r}"
            )
        if not new_state.transition:
            new_state = replace(new_state, transition=new_transition_id())
        text = encode_state(new_state)
        if self._database.file_changed():
            self._follow()  # the file at the path now: our state written back first
        try:
            with self._database.locked() as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute(
                        "SELECT version, id FROM gate_state WHERE rollout = ?", (self._rollout,)
                    ).fetchone()
                    matches = row is not None and row[0] == expected_version
                    if matches and expected_transition is not None:
                        matches = row[1] == expected_transition
                    if not matches:
                        db.execute("ROLLBACK")
                        lost = True
                    else:
                        lost = False
                        db.execute(
                            "UPDATE gate_state SET version = ?, id = ?, state = ? "
                            "WHERE rollout = ?",
                            (new_state.version, new_state.transition, text, self._rollout),
                        )
                        db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            self._write_trouble.failed(exc)
            raise PromotionError(
                f"nothing changed: the SQLite store {self._database.path} refused the change "
                f"({type(exc).__name__}: {exc}); try again"
            ) from exc
        self._write_trouble.recovered()
        if lost:
            # Another process changed the state since this one read it: read
            # it now, so that the next attempt is decided on it (not after the
            # follower's next look, up to refresh_seconds later).
            self._follow()
            return False
        self._hold(new_state)  # the follower sees its own identity: no second report
        return True

    def outbox(self) -> SqliteOutbox:
        """The rollout's webhook deliveries, in the file."""
        return self._outbox

    def after_fork(self) -> None:
        """In a forked child (gunicorn ``--preload``): follow the file again,
        from a first read at once on the follower's thread (threads do not
        survive a fork, and a worker that only routes never reads the state
        itself). Nothing is read here, inside the fork."""
        self._hold_lock = threading.Lock()  # the parent's follower may have held it
        self._follower.ensure()

    def close(self) -> None:
        self._follower.close()


class SqliteOutbox:
    """A rollout's webhook deliveries in the file (``gate_outbox``): shared by
    every process on the host, kept across restarts (see
    ``gate_middleware.stores.outbox``). A failing file raises
    ``sqlite3.Error``: the webhook keeps the delivery and tries again."""

    durable = True

    def __init__(self, database: _Database, rollout: str) -> None:
        self._database = database
        self._rollout = rollout

    def put(self, receiver: str, delivery: Delivery, max_pending: int) -> int:
        with self._database.transaction() as db:
            db.execute(
                "INSERT INTO gate_outbox (rollout, receiver, delivery, action, body, attempts, due)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self._rollout,
                    receiver,
                    delivery.delivery,
                    delivery.action,
                    delivery.body,
                    delivery.attempts,
                    delivery.due,
                ),
            )
            (count,) = db.execute(
                "SELECT count(*) FROM gate_outbox WHERE rollout = ? AND receiver = ?",
                (self._rollout, receiver),
            ).fetchone()
            dropped = max(0, int(count) - max_pending)
            if dropped:
                db.execute(
                    "DELETE FROM gate_outbox WHERE seq IN (SELECT seq FROM gate_outbox"
                    " WHERE rollout = ? AND receiver = ? ORDER BY seq LIMIT ?)",
                    (self._rollout, receiver, dropped),
                )
            return dropped

    def take(self, receiver: str, owner: str, lease_seconds: float) -> Delivery | None:
        now = time.time()
        with self._database.locked() as db:  # a read first: most polls find nothing
            row = db.execute(
                "SELECT seq FROM gate_outbox WHERE rollout = ? AND receiver = ? AND due <= ?"
                " AND (owner = ? OR lease_until <= ?) AND seq = (SELECT min(seq) FROM gate_outbox"
                " WHERE rollout = ? AND receiver = ?)",
                (self._rollout, receiver, now, owner, now, self._rollout, receiver),
            ).fetchone()
        if row is None:
            return None
        with self._database.transaction() as db:  # then leased, if still free
            taken = db.execute(
                "UPDATE gate_outbox SET owner = ?, lease_until = ? WHERE seq = ?"
                " AND (owner = ? OR lease_until <= ?)",
                (owner, now + lease_seconds, row[0], owner, now),
            ).rowcount
            leased = db.execute(
                "SELECT delivery, action, body, attempts, due FROM gate_outbox WHERE seq = ?",
                (row[0],),
            ).fetchone()
        if not taken or leased is None:
            return None
        return Delivery(str(leased[0]), str(leased[1]), bytes(leased[2]), int(leased[3]), leased[4])

    def done(self, receiver: str, delivery: str) -> None:
        with self._database.transaction() as db:
            db.execute(
                "DELETE FROM gate_outbox WHERE rollout = ? AND receiver = ? AND delivery = ?",
                (self._rollout, receiver, delivery),
            )

    def retry(self, receiver: str, delivery: str, attempts: int, due: float) -> None:
        with self._database.transaction() as db:
            db.execute(
                "UPDATE gate_outbox SET attempts = ?, due = ?, owner = '', lease_until = 0"
                " WHERE rollout = ? AND receiver = ? AND delivery = ?",
                (attempts, due, self._rollout, receiver, delivery),
            )

    def pending(self, receiver: str) -> int:
        with self._database.locked() as db:
            (count,) = db.execute(
                "SELECT count(*) FROM gate_outbox WHERE rollout = ? AND receiver = ?",
                (self._rollout, receiver),
            ).fetchone()
        return int(count)


class SqliteWindowStore(BufferedWindowStore):
    """Both windows and each step's evidence, merged across every process of the rollout.

    Slices are numbered by ``clock`` (the host's wall clock, which every
    process on the host shares)."""

    unreachable_errors = (sqlite3.Error,)

    def __init__(
        self,
        database: _Database,
        rollout: str,
        window_seconds: float,
        *,
        flush_seconds: float = 0.25,
        clock: Callable[[], float] = time.time,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__(
            rollout, window_seconds, flush_seconds=flush_seconds, meter_provider=meter_provider
        )
        self._database = database
        self._clock = clock
        self.transactions = 0  # write transactions committed by this process
        self._trouble = _Trouble(f"rollout {rollout!r} windows")
        self._write_started = math.inf  # when the flush under way began (monotonic)

    def _now(self) -> float:
        return self._clock()

    def _unreachable(self, exc: BaseException) -> None:
        self._trouble.failed(exc, self._write_started)

    def status(self) -> tuple[StoreCondition, str]:
        if self._trouble.problem:
            return "unreachable", f"{self._database.path}: {self._trouble.problem}"
        return "ok", ""

    def _clear_shared(self) -> None:
        try:
            with self._database.locked() as db:
                db.execute(
                    "INSERT INTO gate_epoch (rollout, epoch) VALUES (?, 1) "
                    "ON CONFLICT (rollout) DO UPDATE SET epoch = epoch + 1",
                    (self._rollout,),
                )
        except sqlite3.Error as exc:
            self._trouble.failed(exc)
        else:  # a committed write: the file works again (not only at the next flush)
            self._trouble.recovered()

    def _write(self, pending: dict[tuple[str, int], Slice], evidence: dict[str, Evidence]) -> None:
        self._write_started = time.monotonic()
        oldest = self._slice_now() - SLICES + 1
        self._buffer.drop_expired(pending, oldest)
        window_rows: list[tuple[Any, ...]] = []
        for (variant, number), entry in pending.items():
            fields = {"r": entry.requests, "f": entry.failures, "g": entry.good}
            fields.update({f"b{index}": count for index, count in entry.buckets.items()})
            window_rows += [(variant, number, name, n) for name, n in fields.items() if n]
        evidence_rows = [
            (variant, name, n)
            for variant in (CANARY, STABLE)
            for name, n in (
                *evidence_fields(evidence[variant]),
                *sample_fields(evidence[variant].sample),
            )
        ]
        read_sample = self._buffer.sample_due()
        with self._database.locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT epoch FROM gate_epoch WHERE rollout = ?", (self._rollout,)
                ).fetchone()
                epoch = 0 if row is None else int(row[0])
                evicted = self._buffer.evictions(epoch)
                read_sample = read_sample or self._buffer.sample_due()
                db.executemany(
                    "INSERT INTO gate_window (rollout, epoch, variant, slice, field, count) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rollout, epoch, variant, slice, field) "
                    "DO UPDATE SET count = count + excluded.count",
                    [(self._rollout, epoch, *r) for r in window_rows],
                )
                # Held within ±STORE_LIMIT: a metric's total never leaves int64.
                db.executemany(
                    "INSERT INTO gate_evidence (rollout, epoch, variant, field, count) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (rollout, epoch, variant, field) "
                    "DO UPDATE SET count = MAX(?, MIN(?, count + excluded.count))",
                    [(self._rollout, epoch, *r, -STORE_LIMIT, STORE_LIMIT) for r in evidence_rows],
                )
                # Expired slices and earlier steps: the file stays the window's size.
                db.execute(
                    "DELETE FROM gate_window WHERE rollout = ? AND (epoch <> ? OR slice < ?)",
                    (self._rollout, epoch, oldest),
                )
                db.execute(
                    "DELETE FROM gate_evidence WHERE rollout = ? AND epoch <> ?",
                    (self._rollout, epoch),
                )
                # Sessions the sample left out: never taken again (the file
                # keeps the sample's size).
                db.executemany(
                    "DELETE FROM gate_evidence "
                    "WHERE rollout = ? AND epoch = ? AND variant = ? AND field = ?",
                    [
                        (self._rollout, epoch, variant, name)
                        for variant, names in evicted.items()
                        for name in names
                    ],
                )
                db.execute("COMMIT")
                self.transactions += 1
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            pending.clear()  # in the file now: nothing below may lose or repeat them
            evidence.clear()
            slices = db.execute(
                "SELECT variant, slice, field, count FROM gate_window "
                "WHERE rollout = ? AND epoch = ? AND slice >= ?",
                (self._rollout, epoch, oldest),
            ).fetchall()
            steps = db.execute(
                "SELECT variant, field, count FROM gate_evidence WHERE rollout = ? AND epoch = ? "
                "AND NOT (field >= 's' AND field < 't') AND NOT (field >= 'v' AND field < 'w')",
                (self._rollout, epoch),
            ).fetchall()
            sample_rows = None
            if read_sample:
                sample_rows = db.execute(
                    "SELECT variant, field, count FROM gate_evidence WHERE rollout = ? "
                    "AND epoch = ? AND ((field >= 's' AND field < 't') "
                    "OR (field >= 'v' AND field < 'w'))",
                    (self._rollout, epoch),
                ).fetchall()
        samples = None
        if sample_rows is not None:  # parsed outside the file's lock
            samples = {
                variant: sample_from_fields((f, n) for v, f, n in sample_rows if v == variant)
                for variant in (CANARY, STABLE)
            }
        self._trouble.recovered()
        merged = {CANARY: Merged(), STABLE: Merged()}
        for variant, _, field, count in slices:
            target = merged.get(variant)
            if target is None or not isinstance(count, int) or count < 0:
                continue
            if field == "r":
                target.add(count, 0, 0, {})
            elif field == "f":
                target.add(0, count, 0, {})
            elif field == "g":
                target.add(0, 0, count, {})
            elif field[:1] == "b" and field[1:].isdigit() and int(field[1:]) < BUCKET_COUNT:
                target.add(0, 0, 0, {int(field[1:]): count})
        merged_evidence = {
            variant: evidence_from_fields((f, n) for v, f, n in steps if v == variant)
            for variant in (CANARY, STABLE)
        }
        self._buffer.publish(merged, merged_evidence, samples, epoch)

    def close(self) -> None:
        super().close()
        self.flush()  # what this process counted is not lost with it


class SqliteCatalog:
    """The rollouts added at run time, in the file's ``gate_catalog`` table:
    every process that opens the file reads them."""

    shared = True

    def __init__(self, database: _Database) -> None:
        self._database = database

    def entries(self) -> dict[str, str]:
        self._database.file_changed()  # replaced: the next statement opens the new file
        try:
            with self._database.locked() as db:
                rows = db.execute("SELECT name, entry FROM gate_catalog").fetchall()
        except sqlite3.Error as exc:
            raise PromotionError(
                f"the catalog of rollouts in {self._database.path} could not be read "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return {str(name): str(entry) for name, entry in rows}

    def add(self, name: str, entry: str) -> bool:
        try:
            with self._database.transaction() as db:
                added = db.execute(
                    "INSERT OR IGNORE INTO gate_catalog (name, entry) VALUES (?, ?)",
                    (name, entry),
                ).rowcount
        except sqlite3.Error as exc:
            raise PromotionError(
                f"nothing changed: the SQLite store {self._database.path} refused the new "
                f"rollout ({type(exc).__name__}: {exc}); try again"
            ) from exc
        return bool(added)

    def close(self) -> None:
        self._database.close()


def open_catalog(url: str, **options: Any) -> SqliteCatalog:
    """The catalog of rollouts added at run time in the SQLite file ``url`` names."""
    for name, value in options.items():
        raise ConfigError(name, value, "no such option for a sqlite: catalog")
    path = database_path(url)
    try:
        return SqliteCatalog(_Database(path))
    except sqlite3.Error as exc:
        raise ConfigError(
            "url", url, f"a SQLite database file this process can open ({exc})"
        ) from exc


def open_stores(
    url: str,
    config: PromotionConfig,
    initial: GateState,
    meter_provider: MeterProvider | None = None,
    *,
    transition_timeout: float = TRANSITION_TIMEOUT_SECONDS,
    **options: Any,
) -> tuple[SqliteStateStore, SqliteWindowStore]:
    """Both stores of ``config.name``'s rollout in the SQLite file ``url`` names."""
    for name, value in options.items():
        raise ConfigError(name, value, "no such option for a sqlite: store (transition_timeout)")
    path = database_path(url)
    try:
        database = _Database(path)
    except sqlite3.Error as exc:
        raise ConfigError(
            "url", url, f"a SQLite database file this process can open ({exc})"
        ) from exc
    return (
        SqliteStateStore(database, config.name, initial, transition_timeout=transition_timeout),
        SqliteWindowStore(
            database, config.name, config.rollback_window_seconds, meter_provider=meter_provider
        ),
    )


__all__ = [
    "SqliteCatalog",
    "SqliteStateStore",
    "SqliteWindowStore",
    "database_path",
    "open_catalog",
    "open_stores",
]
