"""Rollouts added while the app runs (``Rollouts.create``): kept in the
store's catalog, served by every set opened on the store (here two sets on
one real SQLite file, as two worker processes hold them), refused with a
``ConfigError`` that changes nothing, and said out loud when the set keeps
no store."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from gate_middleware import (
    ConfigError,
    Environment,
    PromotionConfig,
    PromotionGate,
    Rollouts,
    compute_bucket,
)
from gate_middleware.domain.metrics import MetricDefinition
from gate_middleware.domain.plan import RolloutPlan

CHECKOUT = PromotionConfig(name="checkout", feature_flags=["new_checkout"])
REVIEWS = {
    "name": "reviews",
    "feature_flags": ["new_reviews"],
    "promotion_environment": "canary",
    "promotion_traffic_percent": 50,
}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gate.db'}"


@pytest.fixture
def opened(url: str) -> Iterator[list[Rollouts]]:
    sets: list[Rollouts] = []
    yield sets
    for rollouts in sets:
        rollouts.close()


def open_set(opened: list[Rollouts], url: str, refresh: float = 0.05) -> Rollouts:
    rollouts = Rollouts.from_url(url, [CHECKOUT], refresh_seconds=refresh)
    opened.append(rollouts)
    return rollouts


@contextmanager
def connected(url: str) -> Iterator[sqlite3.Connection]:
    """A connection of the test's own to the file, committed and closed after."""
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
        yield db


def entries(url: str) -> dict[str, str]:
    with connected(url) as db:
        return dict(db.execute("SELECT name, entry FROM gate_catalog").fetchall())


def test_a_rollout_created_in_one_process_is_served_by_every_set_on_the_store(
    url: str, opened: list[Rollouts]
) -> None:
    first, second = open_set(opened, url), open_set(opened, url)
    gate = first.create(REVIEWS, actor="ada")
    assert first.names == ("checkout", "reviews") and gate.environment == Environment.canary(50)
    deadline = time.monotonic() + 5.0
    while "reviews" not in second:
        assert time.monotonic() < deadline, "the second set never read the catalog"
        time.sleep(0.01)
    for session in (f"s-{i}" for i in range(200)):
        decision = second.route_request(session)
        on = compute_bucket("reviews", session) < 50_000
        assert decision.for_rollout("reviews").variant == ("canary" if on else "stable")
        assert decision.is_enabled("new_reviews") == on
    assert [(e.action, e.actor) for e in second["reviews"].get_history()] == [("create", "ada")]
    assert second.created["reviews"].actor == "ada"
    assert second.created["reviews"].config == PromotionConfig.from_table(REVIEWS)
    # a set opened later (a restarted worker) serves it from the start
    assert "reviews" in open_set(opened, url, refresh=3600)
    # and a change of the new rollout reaches the other set as any rollout's does
    first["reviews"].rollback("reviews regressed", actor="bob")
    deadline = time.monotonic() + 5.0
    while second["reviews"].environment != Environment.PRODUCTION:
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({**REVIEWS, "promotion_traffic_percent": 101}, "rollout.promotion_traffic_percent"),
        ({**REVIEWS, "colour": "blue"}, "rollout"),
        ({**REVIEWS, "store": "sqlite:///elsewhere.db"}, "store"),
        ({**REVIEWS, "name": "checkout"}, "name"),
        ({**REVIEWS, "feature_flags": ["new_checkout"]}, "feature_flags"),
        ({**REVIEWS, "salt": "checkout"}, "salt"),
        ({**REVIEWS, "name": "a b"}, "name"),
    ],
)
def test_a_config_that_cannot_join_is_refused_and_nothing_changes(
    url: str, opened: list[Rollouts], table: dict[str, object], field: str
) -> None:
    rollouts = open_set(opened, url)
    with pytest.raises(ConfigError) as refused:
        rollouts.create(table, actor="ada")
    assert refused.value.field == field, refused.value
    assert rollouts.names == ("checkout",)
    assert entries(url) == {}


def test_a_name_another_process_took_first_is_refused_before_this_one_reads_it(
    url: str, opened: list[Rollouts]
) -> None:
    first, late = open_set(opened, url), open_set(opened, url, refresh=3600)
    first.create(REVIEWS, actor="ada")
    assert "reviews" not in late  # it has not read the catalog since
    with pytest.raises(ConfigError, match="catalog holds one of that name"):
        late.create({**REVIEWS, "feature_flags": ["other_flag"]}, actor="bob")
    assert json.loads(entries(url)["reviews"])["actor"] == "ada"


def test_catalog_entries_that_cannot_be_served_here_are_listed_and_the_rest_served(
    url: str, opened: list[Rollouts]
) -> None:
    """One entry names a rollout the app's code declares, one is not JSON,
    one claims a flag of another rollout: each is listed in ``refused``
    with why; the good entry is served."""
    first = open_set(opened, url)
    first.create(REVIEWS, actor="ada")
    with connected(url) as db:
        db.execute("INSERT INTO gate_catalog VALUES ('broken', '{not json')")
        clash = {
            "config": {**REVIEWS, "name": "clash", "salt": "clash"},
            "actor": "eve",
            "added_at": 0,
        }
        db.execute("INSERT INTO gate_catalog VALUES ('clash', ?)", (json.dumps(clash),))
        code = {"config": {"name": "checkout"}, "actor": "eve", "added_at": 0}
        db.execute("INSERT INTO gate_catalog VALUES ('checkout', ?)", (json.dumps(code),))
    later = open_set(opened, url)
    assert later.names == ("checkout", "reviews")
    refused = later.refused
    assert set(refused) == {"broken", "clash", "checkout"}
    assert "JSON" in refused["broken"]
    assert "'new_reviews' belongs to rollout 'reviews'" in refused["clash"]
    assert "code does not declare" in refused["checkout"]
    later.route_request("s-1")  # serving goes on


def test_a_created_rollout_removed_from_one_process_stays_out_of_it(
    url: str, opened: list[Rollouts]
) -> None:
    rollouts = open_set(opened, url)
    rollouts.create(REVIEWS, actor="ada")
    rollouts.remove("reviews").close()
    time.sleep(0.3)  # six reads of the catalog
    assert rollouts.names == ("checkout",)
    assert "removed" in rollouts.refused["reviews"]


def test_a_set_without_a_store_creates_for_this_process_only_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rollouts = Rollouts([PromotionGate(CHECKOUT)])
    assert not rollouts.catalog_shared
    with caplog.at_level(logging.WARNING, logger="gate_middleware"):
        gate = rollouts.create(REVIEWS, actor="ada")
    assert rollouts.names == ("checkout", "reviews") and gate.get_history()[-1].actor == "ada"
    assert "added to this process only" in caplog.text
    rollouts.close()


@pytest.mark.parametrize(
    "config",
    [
        PromotionConfig(name="a"),
        PromotionConfig(name="b", environment=Environment.canary(0)),
        PromotionConfig(name="c", environment=Environment.STAGING, holdback_percent=5),
        PromotionConfig(
            name="d",
            environment=Environment.canary(2.5),
            feature_flags=["x", "y"],
            auto_rollback_enabled=False,
            slo_threshold=0.99,
            rollback_window_seconds=120,
            min_requests=50,
            evaluation_interval_seconds=2,
            initial_delay_seconds=30,
            salt="d-2",
            cohort="release",
            plan=RolloutPlan(
                steps=(1, {"traffic_percent": 10, "manual": True, "min_requests": 30}),
                max_step_ratio=math.inf,
                approval_deadline_seconds=600,
                on_deadline="rollback",
                staging_manual=True,
            ),
            metrics=[MetricDefinition("checkout_completed", kind="conversion", guardrail=True)],
        ),
    ],
)
def test_a_config_survives_its_table_and_json(config: PromotionConfig) -> None:
    table = json.loads(json.dumps(config.to_table()))
    assert PromotionConfig.from_table(table) == config
    assert "store" not in table


def test_a_rollout_the_catalog_lost_is_written_back_by_a_process_that_serves_it(
    url: str, opened: list[Rollouts]
) -> None:
    """The catalog's row deleted behind the app's back (as a Redis restarted
    without persistence loses its hash): a set that serves the rollout
    writes the entry back within a refresh, who and when unchanged, so a
    worker started later serves it too."""
    first = open_set(opened, url)
    first.create(REVIEWS, actor="ada")
    kept = entries(url)["reviews"]
    with connected(url) as db:
        db.execute("DELETE FROM gate_catalog")
    deadline = time.monotonic() + 5.0
    while "reviews" not in entries(url):
        assert time.monotonic() < deadline, "the lost entry was never written back"
        time.sleep(0.01)
    assert entries(url)["reviews"] == kept
    assert "reviews" in open_set(opened, url, refresh=3600)
