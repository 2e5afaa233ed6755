"""A ``Rollouts`` set keeps the rollouts it retired, restores them where
they stood, and records who did either in the rollout's own history."""

from __future__ import annotations

import pytest

from gate_middleware import ConfigError, Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.state import PromotionEvent
from gate_middleware.gate import Rollouts


def gate(name: str, *flags: str) -> PromotionGate:
    return PromotionGate(
        PromotionConfig(name=name, environment=Environment.canary(10), feature_flags=list(flags))
    )


def test_retire_keeps_the_gate_and_restore_serves_it_where_it_stood() -> None:
    checkout, search = gate("checkout", "new_checkout"), gate("search", "new_search")
    rollouts = Rollouts([checkout, search])
    search.set_traffic_percent(40)
    assert rollouts.retire("search") is search
    assert rollouts.names == ("checkout",) and dict(rollouts.retired) == {"search": search}
    assert "search" not in rollouts
    with pytest.raises(TypeError):
        rollouts.retired["x"] = search  # type: ignore[index]  # read-only
    assert rollouts.restore("search") is search
    assert rollouts.names == ("checkout", "search") and not rollouts.retired
    assert rollouts["search"].environment == Environment.canary(40)
    assert rollouts.owner("new_search") is search  # its flags are its own again


def test_restore_names_the_retired_rollouts_when_the_name_is_not_one() -> None:
    rollouts = Rollouts([gate("checkout"), gate("search")])
    rollouts.retire("search")
    with pytest.raises(ConfigError, match="'search'") as raised:
        rollouts.restore("checkout")  # served, not retired
    assert raised.value.field == "rollout"


def test_a_restore_that_add_refuses_leaves_the_rollout_retired() -> None:
    rollouts = Rollouts([gate("checkout", "new_checkout")])
    retired = rollouts.retire("checkout")
    rollouts.add(gate("cart", "new_checkout"))  # the flag is claimed meanwhile
    with pytest.raises(ConfigError, match="new_checkout"):
        rollouts.restore("checkout")
    assert rollouts.retired["checkout"] is retired and rollouts.names == ("cart",)


def test_adding_a_gate_of_a_retired_name_takes_it_off_the_retired_list() -> None:
    rollouts = Rollouts([gate("checkout")])
    rollouts.retire("checkout")
    again = gate("checkout")
    rollouts.add(again)
    assert not rollouts.retired and rollouts["checkout"] is again


def test_retire_and_restore_with_an_actor_are_recorded_in_the_rollouts_history() -> None:
    search = gate("search")
    rollouts = Rollouts([gate("checkout"), search])
    before = len(search.get_history())
    rollouts.retire("search", actor="ada")
    rollouts.restore("search", actor="bob")
    retired, restored = search.get_history()[before:]
    assert isinstance(retired, PromotionEvent) and isinstance(restored, PromotionEvent)
    assert (retired.action, retired.actor) == ("retire_rollout", "ada")
    assert (restored.action, restored.actor) == ("restore_rollout", "bob")
    assert retired.from_environment == retired.to_environment == Environment.canary(10)
    assert search.environment == Environment.canary(10)  # nothing else changed
    # Without an actor, nothing is recorded (the set's API as it was).
    rollouts.retire("search")
    rollouts.restore("search")
    assert len(search.get_history()) == before + 2
