"""Sticky routing: which sessions take the canary path.

The formula is a published contract, so that any process, machine or
language puts a session in the same bucket::

    digest = sha256(f"{name}:{session_id}".encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100000
    on the canary path  <=>  bucket < round(traffic_percent * 1000)

``name`` is the rollout name (``PromotionConfig.name``), or
``PromotionConfig.salt`` when set; with ``cohort="release"`` it is
``f"{salt}#{release}"``, a fresh cohort for each release. The resolution is
0.001 %. Raising the percentage only adds buckets, so it never moves a
canary session back to stable. Python's ``hash()`` is never used: it is
salted per process.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from hashlib import sha256
from typing import Any

from gate_middleware.domain.environment import Environment

BUCKETS = 100_000
CANARY = "canary"
STABLE = "stable"
VARIANTS = (CANARY, STABLE)

logger = logging.getLogger("gate_middleware")


def _small_input_sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 (``_sha2``; ``_sha256`` before 3.12) when built
    in, else hashlib's. Same digest; for a prefix and a session id, CPython's
    needs no OpenSSL context, lock or provider lookup per copy."""
    for name in ("_sha2", "_sha256"):
        try:
            constructor: Callable[[bytes], Any] = importlib.import_module(name).sha256
        except (ImportError, AttributeError):
            continue
        return constructor
    return sha256


_sha256 = _small_input_sha256()

#: One path's answer: (is_canary, target environment, flags, flag set, reason).
Path = tuple[bool, Environment, tuple[str, ...], frozenset[str], str]


def compute_bucket(name: str, session_id: str) -> int:
    """The session's bucket in ``0 .. 99_999`` for the rollout ``name``."""
    # surrogatepass: a string with a lone surrogate still hashes (it cannot
    # come from valid UTF-8, so it never collides with a real session id).
    data = f"{name}:{session_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(sha256(data).digest()[:8], "big") % BUCKETS


def canary_threshold(traffic_percent: float) -> int:
    """Buckets below this number take the canary path."""
    return round(traffic_percent * 1000)


class RoutingDecision:
    """The answer for one session: which path, and which flags are on.

    ``variant`` is ``"canary"`` or ``"stable"``; ``target_environment`` is
    the environment that serves the session (the canary environment, staging,
    or production for the stable path); ``enabled_features`` is the tuple of
    flag names on for this session. ``step`` is the gate's step when the
    session was routed (``PromotionGate.record_request_outcome(...,
    decision=...)`` drops an outcome routed under an earlier step or
    release). ``sample`` is the session's sample key when the rollout judges
    business metrics (-1 otherwise), and ``track`` reports one for the
    session. Treat it as read-only.
    """

    __slots__ = (
        "is_canary",
        "variant",
        "target_environment",
        "enabled_features",
        "bucket",
        "reason",
        "step",
        "sample",
        "rollout",
        "parts",
        "_feature_set",
        "_tracker",
    )

    def __init__(
        self,
        is_canary: bool,
        target_environment: Environment,
        enabled_features: tuple[str, ...],
        bucket: int,
        reason: str,
        feature_set: frozenset[str] | None = None,
        step: int = -1,
        sample: int = -1,
        tracker: Tracker | None = None,
        rollout: str = "",
        parts: tuple[RoutingDecision, ...] = (),
    ) -> None:
        self.is_canary = is_canary
        self.variant = CANARY if is_canary else STABLE
        self.target_environment = target_environment
        self.enabled_features = enabled_features
        self.bucket = bucket
        self.reason = reason
        self.step = step
        self.sample = sample
        self._feature_set = frozenset(enabled_features) if feature_set is None else feature_set
        self._tracker = tracker
        self.rollout = rollout
        #: One decision per rollout when several rollouts decided (else empty).
        self.parts = parts

    @property
    def rollouts(self) -> dict[str, RoutingDecision]:
        """Each rollout's own decision, by rollout name."""
        if self.parts:
            return {part.rollout: part for part in self.parts}
        return {self.rollout: self} if self.rollout else {}

    def for_rollout(self, name: str) -> RoutingDecision:
        """The rollout ``name``'s own decision for this session; a ``KeyError``
        naming the rollouts that decided when ``name`` is not one of them."""
        for part in self.parts or (self,):
            if part.rollout == name:
                return part
        decided = ", ".join(repr(n) for n in self.rollouts) or "none"
        raise KeyError(f"rollout {name!r} did not decide this request; the rollouts: {decided}")

    def is_enabled(self, name: str) -> bool:
        """Whether the flag ``name`` is on for this session."""
        return name in self._feature_set

    def track(self, metric: str, value: float = 1.0) -> None:
        """Report the business metric ``metric`` for this session (``value``:
        its amount, 1 by default: one conversion, one event). Counted for
        the session's variant in the step it was routed in; a decision not
        routed by a gate (a fail-open one) reports nothing."""
        if self._tracker is not None:
            self._tracker(self, metric, value)

    def to_dict(self) -> dict[str, object]:
        result: dict[str, object] = {
            "is_canary": self.is_canary,
            "variant": self.variant,
            "target_environment": self.target_environment.to_dict(),
            "enabled_features": list(self.enabled_features),
            "bucket": self.bucket,
            "reason": self.reason,
        }
        if self.parts:
            result["rollouts"] = {part.rollout: part.to_dict() for part in self.parts}
        return result

    def __repr__(self) -> str:
        return (
            f"RoutingDecision(variant={self.variant!r}, target_environment={self.target_environment}, "
            f"enabled_features={self.enabled_features!r}, bucket={self.bucket}, reason={self.reason!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoutingDecision):
            return NotImplemented
        return (
            self.is_canary == other.is_canary
            and self.target_environment == other.target_environment
            and self.enabled_features == other.enabled_features
            and self.bucket == other.bucket
            and self.reason == other.reason
        )

    __hash__ = None  # type: ignore[assignment]


#: What ``RoutingDecision.track`` hands a report to (the gate's).
Tracker = Callable[[RoutingDecision, str, float], None]


def _track_each(decision: RoutingDecision, metric: str, value: float) -> None:
    """A combined decision's ``track``: each rollout's own decision reports it."""
    for part in decision.parts:
        part.track(metric, value)


def combine_decisions(
    parts: tuple[RoutingDecision, ...], reason: str = "", tracker: Tracker | None = None
) -> RoutingDecision:
    """One request's decision from each rollout's own (``parts``, in the
    rollouts' order): the flags of all, on the canary path when any part is;
    ``tracker`` takes its ``track`` reports (default: each part reports).
    A single part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    features: list[str] = []
    canary: RoutingDecision | None = None
    for part in parts:
        features.extend(part.enabled_features)
        if canary is None and part.is_canary:
            canary = part
    if not reason:
        reason = "; ".join([f"{part.rollout}: {part.variant}" for part in parts]) or "no rollout"
    # The flag set from the list once, rather than a set updated per part:
    # this runs on every request, once per rollout of a set.
    return RoutingDecision(
        canary is not None,
        Environment.PRODUCTION if canary is None else canary.target_environment,
        tuple(features),
        -1,
        reason,
        frozenset(features),
        tracker=_track_each if tracker is None else tracker,
        parts=parts,
    )


class RoutingTable:
    """What routing needs from one gate state, made once per state change
    (the gate builds it) and read by every request without a lock.
    ``tracker`` receives the decisions' ``track`` reports; ``sampling``
    gives each decision its session's sample key (business metrics);
    ``name`` is the routing formula's salt, ``rollout`` the rollout's name."""

    __slots__ = (
        "rollout",
        "threshold",
        "canary",
        "stable",
        "step",
        "hasher",
        "tracker",
        "sampling",
    )

    def __init__(
        self,
        name: str,
        threshold: int,
        canary: Path,
        stable: Path,
        step: int,
        tracker: Tracker | None = None,
        sampling: bool = False,
        rollout: str = "",
    ) -> None:
        self.rollout = rollout
        self.threshold = threshold
        self.canary = canary
        self.stable = stable
        self.step = step
        self.tracker = tracker
        self.sampling = sampling
        # SHA-256 with ``f"{name}:"`` already fed: route() copies it rather
        # than hashing the prefix again for every session.
        self.hasher = _sha256(f"{name}:".encode())

    def route(self, session_id: str) -> RoutingDecision:
        """``compute_bucket`` and the path it selects: the hottest code of the package."""
        hasher = self.hasher.copy()
        try:
            hasher.update(session_id.encode())
        except UnicodeEncodeError:
            hasher.update(session_id.encode("utf-8", "surrogatepass"))
        digest = hasher.digest()
        bucket = int.from_bytes(digest[:8], "big") % BUCKETS
        is_canary, environment, flags, flag_set, reason = (
            self.canary if bucket < self.threshold else self.stable
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "Session routed to %s (bucket %d)", CANARY if is_canary else STABLE, bucket
            )
        # The sample key: bytes 8-15 of the same digest, independent of the bucket.
        sample = int.from_bytes(digest[8:16], "big") if self.sampling else -1
        return RoutingDecision(
            is_canary,
            environment,
            flags,
            bucket,
            reason,
            flag_set,
            self.step,
            sample,
            self.tracker,
            self.rollout,
        )

    def decision(self, variant: str, reason: str, bucket: int) -> RoutingDecision:
        """The decision for ``variant`` ("canary" or "stable"), without hashing."""
        is_canary, environment, flags, flag_set, _ = (
            self.canary if variant == CANARY else self.stable
        )
        return RoutingDecision(
            is_canary,
            environment,
            flags,
            bucket,
            reason,
            flag_set,
            self.step,
            -1,
            self.tracker,
            self.rollout,
        )
