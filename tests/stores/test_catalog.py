"""The catalog of rollouts added at run time: one conformance suite that
every catalog runs, and its faults, done for real.

Each backend appears once in ``CATALOGS`` (a function that opens the catalog
of one fresh store, again at each call: another process's opening of it);
every contract test below runs against each: the in-memory catalog (one
process's), SQLite (a file), and Redis on a real ``redis-server``, single,
as a Cluster of three and behind three Sentinels. A new backend adds one
entry here and must pass all of them.

The faults: Redis stopped and started again (empty) under two ``Rollouts``
sets, a reply lost after an add was sent (``tests/faults.py``), a Redis
user refused a command or the key (an ACL), the catalog's key holding a
string, another process holding SQLite's write lock, and garbage written
straight into the SQLite table or the Redis hash. Each reports its figures
(seconds to fail, to agree) in its assertion messages.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from gate_middleware import (
    ConfigError,
    Environment,
    OutcomeUnknownError,
    PromotionConfig,
    PromotionError,
    Rollouts,
    StorePermissionError,
)
from gate_middleware.stores import RolloutCatalog, missing_members
from gate_middleware.stores import registry as store_registry
from gate_middleware.stores.memory import InMemoryCatalog
from gate_middleware.stores.redis import ACL_COMMANDS, RedisCatalog
from gate_middleware.stores.sqlite import BUSY_TIMEOUT_SECONDS
from tests.faults import RedisProxy
from tests.servers import RedisClusterServers, RedisSentinelSet, RedisServer, eventually

PASSWORD = "pw-catalog-SECRET"
#: The README's ACL for the default key prefix (``tests/stores/test_redis_acl.py``).
DOCUMENTED_ACL = ("~gate_middleware:*", "&gate_middleware:*", *ACL_COMMANDS.split())
#: How often the sets of these tests read their catalog (seconds).
REFRESH_SECONDS = 0.1
#: The bounded wait for a set to take up what its catalog holds (seconds).
AGREE_LIMIT_SECONDS = 5.0


@dataclass
class Catalogs:
    """Opens the catalog of one store, again at each call (another process's
    opening); ``shared``: an opening sees what another added."""

    open: Callable[[], RolloutCatalog]
    shared: bool
    name: str = ""
    opened: list[RolloutCatalog] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None

    def __call__(self) -> RolloutCatalog:
        catalog = self.open()
        self.opened.append(catalog)
        return catalog

    def close(self) -> None:
        for catalog in self.opened:
            catalog.close()
        if self.cleanup is not None:
            self.cleanup()


def prefix() -> str:
    """A key prefix of the test's own: the Cluster and the Sentinels serve a whole module."""
    return f"catalog-{uuid.uuid4().hex[:8]}:"


def memory_catalogs(request: pytest.FixtureRequest) -> Catalogs:
    return Catalogs(InMemoryCatalog, shared=False)


def sqlite_catalogs(request: pytest.FixtureRequest) -> Catalogs:
    directory = tempfile.TemporaryDirectory(prefix="gate-catalog-")
    url = f"sqlite://{directory.name}/gate.db"
    catalogs = Catalogs(lambda: store_registry.open_catalog(url), shared=True)
    catalogs.cleanup = directory.cleanup
    return catalogs


def redis_catalogs(request: pytest.FixtureRequest) -> Catalogs:
    server: RedisServer = request.getfixturevalue("redis_server")
    key_prefix = prefix()
    return Catalogs(lambda: store_registry.open_catalog(server.url, key_prefix=key_prefix), True)


def cluster_catalogs(request: pytest.FixtureRequest) -> Catalogs:
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    key_prefix = prefix()
    # Each opening starts from another node: each is told the slots anew.
    urls = [f"redis+cluster://127.0.0.1:{node.port}" for node in cluster.nodes]
    openings = iter(range(1_000))

    def open_one() -> RolloutCatalog:
        url = urls[next(openings) % len(urls)]
        return store_registry.open_catalog(url, key_prefix=key_prefix)

    return Catalogs(open_one, shared=True)


def sentinel_catalogs(request: pytest.FixtureRequest) -> Catalogs:
    sentinels: RedisSentinelSet = request.getfixturevalue("redis_sentinels")
    key_prefix = prefix()
    return Catalogs(
        lambda: store_registry.open_catalog(sentinels.url, key_prefix=key_prefix), shared=True
    )


CATALOGS: dict[str, Callable[[pytest.FixtureRequest], Catalogs]] = {
    "memory": memory_catalogs,
    "sqlite": sqlite_catalogs,
    "redis": redis_catalogs,
    "redis+cluster": cluster_catalogs,
    "redis+sentinel": sentinel_catalogs,
}


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers()
    try:
        servers.start()
        yield servers
    finally:
        servers.cleanup()


@pytest.fixture(scope="module")
def redis_sentinels() -> Iterator[RedisSentinelSet]:
    servers = RedisSentinelSet()
    try:
        servers.start()
        yield servers
    finally:
        servers.cleanup()


@pytest.fixture(params=list(CATALOGS))
def catalogs(request: pytest.FixtureRequest) -> Iterator[Catalogs]:
    opened = CATALOGS[request.param](request)
    opened.name = request.param
    try:
        yield opened
    finally:
        opened.close()


# -- the contract --------------------------------------------------------------------------


def test_a_catalog_has_every_member_of_its_port(catalogs: Catalogs) -> None:
    catalog = catalogs()
    assert isinstance(catalog, RolloutCatalog)
    assert missing_members(catalog, RolloutCatalog) == []
    assert catalog.shared is catalogs.shared


def test_an_entry_is_kept_under_a_name_not_yet_taken(catalogs: Catalogs) -> None:
    catalog = catalogs()
    assert catalog.entries() == {}
    assert catalog.add("checkout", '{"config": 1}') is True
    assert catalog.add("checkout", '{"config": 2}') is False  # taken: nothing changed
    assert catalog.add("search", "") is True  # an empty text is a text
    entries = catalog.entries()
    assert entries == {"checkout": '{"config": 1}', "search": ""}
    entries["checkout"] = "changed by the caller"  # a copy: the catalog is not changed
    assert catalog.entries()["checkout"] == '{"config": 1}'


def test_unicode_text_survives(catalogs: Catalogs) -> None:
    """Names and entries beyond ASCII (accents, CJK, emoji, quotes and line
    breaks, 64 KiB of them) come back as they were written."""
    texts = {
        "café": '{"reason": "crème brûlée ✓"}',
        "検索": "日本語の設定\nline two\ttab",
        "rocket-🚀": "\"quoted\" 'single' \\ backslash 🚀🚀",
        "long": "é" * 32_768,
    }
    catalog = catalogs()
    for name, text in texts.items():
        assert catalog.add(name, text), name
    assert catalog.entries() == texts
    if catalogs.shared:
        assert catalogs().entries() == texts  # and as another process reads them


def test_two_openings_of_one_store_see_each_others_entries(catalogs: Catalogs) -> None:
    one, two = catalogs(), catalogs()
    assert one.add("checkout", "from one")
    started = time.monotonic()
    if not catalogs.shared:  # one process's memory: another's is another catalog
        assert two.entries() == {} and two.add("checkout", "from two")
        assert one.entries() == {"checkout": "from one"}
        return
    assert eventually(lambda: two.entries() == {"checkout": "from one"}, AGREE_LIMIT_SECONDS), (
        f"{catalogs.name}: the second opening did not read the first's entry within "
        f"{AGREE_LIMIT_SECONDS} s"
    )
    seen = time.monotonic() - started
    assert two.add("checkout", "from two") is False  # the first's name is taken for it too
    assert two.add("search", "from two")
    assert one.entries() == {"checkout": "from one", "search": "from two"}, f"seen in {seen:.3f} s"


def test_racing_adds_of_one_name_leave_exactly_one(catalogs: Catalogs) -> None:
    """Eight processes (threads, each with its own opening of a shared store;
    one catalog for memory) add the same name at the same moment: one wins,
    and every opening reads the winner's entry."""
    racers = 8
    shared_one = catalogs()
    openings = [catalogs() if catalogs.shared else shared_one for _ in range(racers)]
    for opening in openings:
        opening.entries()  # connected (SQLite's file opened) before the race
    barrier = threading.Barrier(racers)
    won: list[int] = []
    failed: list[BaseException] = []

    def race(number: int) -> None:
        barrier.wait()
        try:
            if openings[number].add("checkout", f"entry {number}"):
                won.append(number)
        except BaseException as exc:  # reported below
            failed.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=race, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    assert failed == [], failed
    assert len(won) == 1, f"{catalogs.name}: {len(won)} of {racers} adds won (in {took:.3f} s)"
    assert {opening.entries()["checkout"] for opening in openings} == {f"entry {won[0]}"}


def test_closing_an_opening_leaves_the_entries(catalogs: Catalogs) -> None:
    catalog = catalogs()
    assert catalog.add("checkout", "kept")
    catalog.close()
    catalog.close()  # twice is fine
    if catalogs.shared:
        assert catalogs().entries() == {"checkout": "kept"}


# -- Redis: the key, the options, the ACL -------------------------------------------------


def test_the_redis_catalog_is_one_hash_under_the_key_prefix(redis_server: RedisServer) -> None:
    """One hash named after the prefix (no hash tag, no rollout name): the
    pattern ``~{prefix}*`` that users grant covers it, and on a Redis
    Cluster one key lives in one slot."""
    catalog = store_registry.open_catalog(redis_server.url)
    assert isinstance(catalog, RedisCatalog) and catalog.key == "gate_middleware:catalog"
    assert catalog.add("checkout", "entry")
    assert redis_server.cli("KEYS", "*") == "gate_middleware:catalog"
    assert redis_server.cli("TYPE", "gate_middleware:catalog") == "hash"
    assert redis_server.cli("HGET", "gate_middleware:catalog", "checkout") == "entry"
    own = store_registry.open_catalog(redis_server.url, key_prefix="app1:")
    assert isinstance(own, RedisCatalog) and own.key == "app1:catalog"
    assert own.entries() == {}  # another app's catalog
    catalog.close()
    own.close()


def test_open_catalog_names_what_it_does_not_take(redis_server: RedisServer) -> None:
    url = f"redis://gate:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    with pytest.raises(ConfigError, match="wait_replicas") as raised:
        store_registry.open_catalog(url, wait_replicas=1)
    with pytest.raises(ConfigError, match="password") as hidden:
        store_registry.open_catalog(url, password=PASSWORD)
    with pytest.raises(ConfigError, match="key_prefix"):
        store_registry.open_catalog(url, key_prefix="{app}:")
    with pytest.raises(ConfigError, match="db must be an integer") as malformed:
        store_registry.open_catalog(f"redis://gate:{PASSWORD}@127.0.0.1:{redis_server.port}/x")
    with pytest.raises(ConfigError, match="no such option for a sqlite"):
        store_registry.open_catalog("sqlite:///tmp/never-opened.db", key_prefix="app1:")
    for error in (raised, hidden, malformed):
        assert PASSWORD not in str(error.value)


def acl_user(server: RedisServer, name: str, *rules: str) -> str:
    """The URL of a new user ``name`` with exactly ``rules``."""
    server.cli("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules)
    return f"redis://{name}:{PASSWORD}@127.0.0.1:{server.port}/0"


def test_a_user_granted_the_documented_acl_keeps_a_catalog(redis_server: RedisServer) -> None:
    """The README's ACL is enough: the key is under ``~gate_middleware:*`` and
    an add sends only commands of ``ACL_COMMANDS`` (no HSETNX); a user of
    another prefix is granted that prefix's pattern instead."""
    least = store_registry.open_catalog(acl_user(redis_server, "least", *DOCUMENTED_ACL))
    assert least.add("checkout", "entry") and not least.add("checkout", "again")
    assert least.entries() == {"checkout": "entry"}
    app1_acl = [rule.replace("gate_middleware:", "app1:") for rule in DOCUMENTED_ACL]
    app1 = store_registry.open_catalog(
        acl_user(redis_server, "app1", *app1_acl), key_prefix="app1:"
    )
    assert app1.add("search", "entry") and app1.entries() == {"search": "entry"}
    least.close()
    app1.close()


@pytest.mark.parametrize(
    ("taken_away", "operation", "named"),
    [
        ("-hgetall", "read", ["HGETALL", "+hgetall"]),
        ("-evalsha", "add", ["EVALSHA", "+evalsha"]),
        ("-hset", "add", ["+hset"]),  # refused inside the script (7.0 does not name it)
        ("~other:*", "read", ["gate_middleware:*", "~gate_middleware:*"]),
        ("~other:*", "add", ["gate_middleware:*", "~gate_middleware:*"]),
    ],
)
def test_a_refusal_names_the_rule_to_grant_and_changes_nothing(
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    taken_away: str,
    operation: str,
    named: list[str],
) -> None:
    """A ``NOPERM`` is neither an outage nor garbage: ``StorePermissionError``
    (a ``PromotionError``) naming the command or key pattern and the rule
    ``ACL SETUSER <user> ...`` to grant, never the password; logged once."""
    keys = "~other:*" if taken_away == "~other:*" else "~gate_middleware:*"
    rules = ["&*", "+@all", keys] + ([taken_away] if taken_away.startswith("-") else [])
    catalog = store_registry.open_catalog(acl_user(redis_server, "refused", *rules))
    admin = store_registry.open_catalog(redis_server.url)
    assert admin.add("checkout", "entry")
    with caplog.at_level(logging.ERROR, logger="gate_middleware"):
        for _ in range(3):
            with pytest.raises(StorePermissionError) as raised:
                catalog.entries() if operation == "read" else catalog.add("search", "new")
    message = str(raised.value)
    assert "ACL SETUSER refused" in message and PASSWORD not in message, message
    for text in named:
        assert text in message, (text, message)
    assert isinstance(raised.value, PromotionError)
    assert admin.entries() == {"checkout": "entry"}  # nothing changed
    logged = [r.getMessage() for r in caplog.records if "refuses" in r.getMessage()]
    assert len(logged) == 1, f"{len(logged)} log lines for 3 refusals: {logged}"
    catalog.close()
    admin.close()


# -- Redis under faults --------------------------------------------------------------------


def config(name: str) -> PromotionConfig:
    return PromotionConfig(
        name=name,
        environment=Environment.canary(50),
        feature_flags=[f"{name}_flag"],
        min_requests=100_000,  # nothing but the test moves these rollouts
    )


@pytest.fixture
def sets() -> Iterator[list[Rollouts]]:
    """The ``Rollouts`` sets a test opens, closed when it ends."""
    opened: list[Rollouts] = []
    yield opened
    for rollouts in opened:
        rollouts.close()


def open_set(sets: list[Rollouts], url: str, *names: str) -> Rollouts:
    rollouts = Rollouts.from_url(
        url, [config(name) for name in names], refresh_seconds=REFRESH_SECONDS
    )
    sets.append(rollouts)
    return rollouts


def serves(rollouts: Rollouts, name: str) -> bool:
    """Whether a request's decision has a part of rollout ``name``."""
    return name in rollouts.route_request("a-session-id-0123456789").rollouts


def seconds_until(check: Callable[[], object], limit: float = AGREE_LIMIT_SECONDS) -> float:
    """Seconds until ``check()`` holds (polled every 20 ms), or inf past ``limit``."""
    started = time.monotonic()
    return time.monotonic() - started if eventually(check, limit) else float("inf")


@pytest.fixture
def redis_with_a_user() -> Iterator[RedisServer]:
    """A redis-server whose user ``gate`` (a password, every right) comes back with each start."""
    server = RedisServer("--user", "gate", "on", f">{PASSWORD}", "~*", "&*", "+@all")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def test_redis_stopped_then_back_the_sets_serve_on_and_follow_again(
    redis_with_a_user: RedisServer, sets: list[Rollouts], caplog: pytest.LogCaptureFixture
) -> None:
    """Two sets (two processes) on one Redis. Stopped: reading and adding
    raise ``PromotionError`` at once, without the password; ``create`` adds
    nothing; every request is still served with every rollout the set had.
    Started again (empty): a rollout created then reaches the other set."""
    redis_server = redis_with_a_user
    url = f"redis://gate:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    a, b = open_set(sets, url, "checkout"), open_set(sets, url, "checkout")
    b.create(config("search"))
    first = seconds_until(lambda: serves(a, "search"))
    assert first < float("inf"), "set a never served the rollout set b created"
    catalog = store_registry.open_catalog(url)
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        raised_after: list[float] = []
        for failing in (catalog.entries, lambda: catalog.add("late", "entry")):
            started = time.monotonic()
            with pytest.raises(PromotionError, match="does not answer") as raised:
                failing()
            raised_after.append(time.monotonic() - started)
            assert raised_after[-1] < 1.0, f"{raised_after[-1]:.3f} s to say Redis is stopped"
            assert PASSWORD not in str(raised.value) and "***" in str(raised.value)
        with pytest.raises(PromotionError):
            b.create(config("late"))
        assert "late" not in b
        failed, served, outage_started = 0, 0, time.monotonic()
        while time.monotonic() - outage_started < 1.0:  # ten of the sets' refreshes
            for rollouts in (a, b):
                try:
                    decision = rollouts.route_request(f"session-{served:06d}-0123456789")
                    assert set(decision.rollouts) == {"checkout", "search"}
                    served += 1
                except Exception:
                    failed += 1
    warnings = [r for r in caplog.records if "serving the rollouts it has" in r.getMessage()]
    assert (failed, served > 100) == (0, True), f"{failed} failed, {served} served while stopped"
    redis_server.start()  # empty: what the catalog held is gone
    started = time.monotonic()
    assert eventually(lambda: _created(b, "late"), AGREE_LIMIT_SECONDS), "create never worked again"
    created = time.monotonic() - started
    agreed = seconds_until(lambda: serves(a, "late"))
    assert agreed < float("inf"), f"set a did not serve 'late' within {AGREE_LIMIT_SECONDS} s"
    assert serves(a, "search") and serves(a, "checkout")  # and still the others
    assert not a.refused and not b.refused
    print(
        f"stopped: entries raised in {raised_after[0]:.3f} s, add in {raised_after[1]:.3f} s; "
        f"first create reached the other set in {first:.3f} s; {served} requests served, "
        f"{failed} failed, {len(warnings)} outage warnings over 1 s of outage; create worked "
        f"{created:.3f} s after the restart and reached the other set {agreed:.3f} s later; "
        f"the catalog holds {sorted(catalog.entries())} after the restart"
    )
    catalog.close()


def _created(rollouts: Rollouts, name: str) -> bool:
    try:
        rollouts.create(config(name))
    except PromotionError:
        return False
    return True


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[RedisProxy]:
    faulty = RedisProxy(redis_server.port)
    try:
        yield faulty
    finally:
        faulty.close()


def test_a_lost_reply_to_an_add_is_looked_up(redis_server: RedisServer, proxy: RedisProxy) -> None:
    """The script ran but its reply was cut: the add looks the entry up and
    answers True (never False, which would call this process's own rollout
    another's); when Redis stays out of reach, ``OutcomeUnknownError``, and
    the entry turns up once it answers."""
    catalog = store_registry.open_catalog(proxy.url)
    assert catalog.add("warm-up", "loads the script")  # the faults hit the script's own run
    proxy.cut_reply_to(b"EVALSHA")
    assert catalog.add("checkout", "entry") is True
    assert proxy.faults_applied == 1
    proxy.cut_reply_to(b"EVALSHA", refuse_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(OutcomeUnknownError, match="unknown"):
        catalog.add("search", "entry")
    took = time.monotonic() - started
    turned_up = seconds_until(lambda: _entries(catalog).get("search") == "entry")
    assert turned_up < float("inf"), f"raised after {took:.3f} s; never read back"
    assert store_registry.open_catalog(redis_server.url).entries() == {
        "warm-up": "loads the script",
        "checkout": "entry",
        "search": "entry",
    }, f"raised after {took:.3f} s, read back {turned_up:.3f} s later"
    print(f"lost reply: OutcomeUnknownError after {took:.3f} s, read back {turned_up:.3f} s later")
    catalog.close()


def _entries(catalog: RolloutCatalog) -> dict[str, str]:
    try:
        return catalog.entries()
    except PromotionError:
        return {}


def test_a_catalog_key_of_another_type_is_named_and_the_set_serves_on(
    redis_server: RedisServer, sets: list[Rollouts], caplog: pytest.LogCaptureFixture
) -> None:
    rollouts = open_set(sets, redis_server.url, "checkout")
    redis_server.cli("SET", "gate_middleware:catalog", "a foreign write")
    catalog = store_registry.open_catalog(redis_server.url)
    with caplog.at_level(logging.CRITICAL, logger="gate_middleware"):
        for failing in (catalog.entries, lambda: catalog.add("search", "entry")):
            with pytest.raises(PromotionError, match="gate_middleware:catalog.*WRONGTYPE"):
                failing()
        with pytest.raises(PromotionError, match="gate_middleware:catalog"):
            rollouts.create(config("search"))
        assert serves(rollouts, "checkout") and "search" not in rollouts
        assert redis_server.cli("GET", "gate_middleware:catalog") == "a foreign write"
    redis_server.cli("DEL", "gate_middleware:catalog")  # the operator repairs it
    rollouts.create(config("search"))
    assert serves(rollouts, "search")
    catalog.close()


# -- SQLite under faults -------------------------------------------------------------------

# Another process: holds SQLite's write lock with a catalog row written and
# not committed, until told (a line on stdin) to roll back.
HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO gate_catalog (name, entry) VALUES ('held', 'uncommitted')")
print("holding", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def test_sqlite_locked_by_another_process_refuses_the_add_and_nothing_changes(
    tmp_path: Path, sets: list[Rollouts], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite://{tmp_path}/gate.db"
    catalog = store_registry.open_catalog(url)
    rollouts = open_set(sets, url, "checkout")
    assert catalog.add("before", "entry")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "gate.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        with pytest.raises(PromotionError, match="nothing changed.*locked"):
            catalog.add("during", "entry")
        refused = time.monotonic() - started
        assert refused < BUSY_TIMEOUT_SECONDS + 1.0, f"refused after {refused:.3f} s"
        started = time.monotonic()
        assert catalog.entries() == {"before": "entry"}  # readers do not wait for the writer
        read = time.monotonic() - started
        assert read < 0.5, f"a read waited {read:.3f} s for the writer"
        quiet = caplog.at_level(logging.CRITICAL, logger="gate_middleware")
        with quiet, pytest.raises(PromotionError, match="nothing changed"):
            rollouts.create(config("search"))
        assert "search" not in rollouts and serves(rollouts, "checkout")
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
    assert catalog.entries() == {"before": "entry"}, (
        f"refused after {refused:.3f} s; something changed"
    )
    print(f"sqlite locked: add refused after {refused:.3f} s, a read took {read:.3f} s")
    assert catalog.add("during", "entry")  # the lock is gone: the add goes through
    rollouts.create(config("search"))
    assert serves(rollouts, "search")
    catalog.close()


# -- garbage in the catalog ----------------------------------------------------------------


def write_garbage(url: str, server: RedisServer | None, name: str, entry: bytes) -> None:
    """``entry`` under ``name``, written straight into the store (a foreign write)."""
    if server is not None:
        client = redis.Redis(port=server.port)
        client.hset("gate_middleware:catalog", name, entry)
        client.close()
        return
    with sqlite3.connect(url.removeprefix("sqlite://")) as db:
        db.execute("INSERT INTO gate_catalog (name, entry) VALUES (?, ?)", (name, entry.decode()))
    db.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_garbage_in_the_catalog_is_refused_by_name_and_the_rest_served(
    kind: str,
    tmp_path: Path,
    sets: list[Rollouts],
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A foreign write (text that is no JSON, JSON that is no entry, bytes
    that are no UTF-8): a set opened afterwards, and one already running,
    name each in ``refused`` and serve every other rollout."""
    server: RedisServer | None = (
        request.getfixturevalue("redis_server") if kind == "redis" else None
    )
    url = server.url if server is not None else f"sqlite://{tmp_path}/gate.db"
    running = open_set(sets, url, "checkout")
    running.create(config("search"))
    garbage = {"broken": b"not json {", "listed": b"[1, 2, 3]"}
    if server is not None:
        garbage["binary"] = b"\xff\xfe\x00 not utf-8"
    for name, entry in garbage.items():
        write_garbage(url, server, name, entry)
    with caplog.at_level(logging.CRITICAL, logger="gate_middleware"):
        opened = open_set(sets, url, "checkout")
        assert set(opened.refused) == set(garbage), opened.refused
        for name, why in opened.refused.items():
            assert f"catalog[{name!r}]" in why, why
        assert serves(opened, "checkout") and serves(opened, "search")
        refused = seconds_until(lambda: set(running.refused) == set(garbage))
        assert refused < float("inf"), f"the running set refused {running.refused}"
        assert serves(running, "checkout") and serves(running, "search")
        running.create(config("late"))  # the catalog still takes new rollouts
        agreed = seconds_until(lambda: serves(opened, "late"))
    assert agreed < float("inf"), (
        f"the running set refused the garbage in {refused:.3f} s; 'late' never reached the other"
    )
    print(
        f"{kind}: garbage refused by the running set in {refused:.3f} s; 'late' in {agreed:.3f} s"
    )
