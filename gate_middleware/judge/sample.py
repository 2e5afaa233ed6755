"""The sessions a step's business metrics are judged on: a uniform sample, in fixed memory.

A business metric (``track("checkout_completed")``, ``track("order_value",
42.5)``) is judged per *session*, the unit routing randomises: a session
that converts three times is one converted session, and a heavy user is one
unit, not thousands. That needs each session's own total, which a counter
per session group cannot give, and a table of every session would grow with
the traffic. So each side keeps a *bottom-k sample*: of all the sessions
seen in the step, the ``SAMPLE_SESSIONS`` whose sample key (64 bits of the
session's routing digest, independent of its bucket) is smallest, each
with its exact totals.

Why the totals are exact: the k-th smallest key seen only falls as sessions
arrive, so a session in the sample now has been below it since its first
outcome, and every amount it reported was kept. A session once above it
never comes back. The same holds when several processes each keep their
own sample and the store adds them up: a session in the merged sample is in
every process's sample that saw it, with that process's complete share.
Keys are uniform, so the sample is a uniform random sample of the step's
sessions on that side: the tests treat its sessions as independent units.

A metric's total is kept in millionths (``SCALE``), so every store adds
integers. A session in the sample with no amount for a metric has total 0
(it was exposed and did not convert).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gate_middleware.types import mypyc_attr

SAMPLE_SESSIONS = 20_000  # sessions kept per side and step (k)
SCALE = 1_000_000  # a metric's amounts are counted in millionths
MAX_AMOUNT = 1e7  # the largest |amount| one track() may report
# A session's total is held within ±STORE_LIMIT millionths (about 9·10^9
# units) in a process and in every store: exact in a double (Redis's Lua
# adds in doubles) and far from int64's end (SQLite adds integers), however
# many processes add to it.
STORE_LIMIT = 2**53
TOTAL_LIMIT = STORE_LIMIT
NO_LIMIT = 1 << 64  # above every key: the sample is not full


@mypyc_attr(allow_interpreted_subclasses=True)
class SessionSample:
    """One side's sample of sessions: each session's requests and its
    total per metric, for the ``limit`` smallest keys seen.

    Grows to twice ``limit`` between trims, so that adding a session is a
    dict update; ``threshold`` is the largest key kept by the last trim
    (``NO_LIMIT`` while fewer than ``limit`` sessions were seen), and a key
    above it is never taken again. Not locked: its store serialises access.
    """

    __slots__ = ("limit", "threshold", "sessions", "totals")

    def __init__(self, limit: int = SAMPLE_SESSIONS) -> None:
        self.limit = limit
        self.threshold = NO_LIMIT
        self.sessions: dict[int, int] = {}  # key -> requests in the step
        self.totals: dict[str, dict[int, int]] = {}  # metric -> key -> total (millionths)

    def __len__(self) -> int:
        return min(len(self.sessions), self.limit)

    def expose(self, key: int, requests: int = 1) -> None:
        """Count ``requests`` of the session ``key``."""
        if key > self.threshold:
            return
        sessions = self.sessions
        sessions[key] = sessions.get(key, 0) + requests
        if len(sessions) >= 2 * self.limit:
            self.trim()

    def track(self, key: int, metric: str, amount: int) -> None:
        """Add ``amount`` (millionths) to the session ``key``'s total of ``metric``."""
        if key > self.threshold:
            return
        if key not in self.sessions:
            self.expose(key, 0)
            if key > self.threshold:  # the trim it caused left it out
                return
        totals = self.totals.get(metric)
        if totals is None:
            totals = self.totals[metric] = {}
        totals[key] = _held(totals.get(key, 0) + amount)

    def trim(self) -> None:
        """Keep the ``limit`` smallest keys, and remember the largest kept."""
        if len(self.sessions) <= self.limit:
            return
        kept = sorted(self.sessions)[: self.limit]
        self.threshold = kept[-1]
        self.sessions = {key: self.sessions[key] for key in kept}
        for metric, totals in self.totals.items():
            self.totals[metric] = {
                key: total for key, total in totals.items() if key <= self.threshold
            }

    def lower_threshold(self, threshold: int) -> None:
        """Take no key above ``threshold`` from now on (another process's, or
        the store's, sample is full up to it), and forget those held."""
        if threshold >= self.threshold:
            return
        self.threshold = threshold
        self.sessions = {key: n for key, n in self.sessions.items() if key <= threshold}
        for metric, totals in self.totals.items():
            self.totals[metric] = {key: t for key, t in totals.items() if key <= threshold}

    def merge(self, other: SessionSample) -> None:
        """Add ``other``'s sessions and totals (another process's, or unwritten ones)."""
        self.lower_threshold(other.threshold)
        for key, requests in other.sessions.items():
            if key <= self.threshold:
                self.sessions[key] = self.sessions.get(key, 0) + requests
        for metric, totals in other.totals.items():
            mine = self.totals.get(metric)
            if mine is None:
                mine = self.totals[metric] = {}
            for key, total in totals.items():
                if key <= self.threshold:
                    mine[key] = _held(mine.get(key, 0) + total)
        if len(self.sessions) >= 2 * self.limit:
            self.trim()

    def copy(self) -> SessionSample:
        """A copy (as untrimmed as this one: ``trim`` it outside a lock)."""
        sample = SessionSample(self.limit)
        sample.threshold = self.threshold
        sample.sessions = dict(self.sessions)
        sample.totals = {metric: dict(totals) for metric, totals in self.totals.items()}
        return sample

    def clear(self) -> None:
        self.threshold = NO_LIMIT
        self.sessions = {}
        self.totals = {}

    def summary(self, metric: str, conversion: bool) -> SessionSummary:
        """The sessions' mean and variance of ``metric``: of the indicator
        "reported it at least once" (``conversion``), else of the totals."""
        self.trim()
        totals = self.totals.get(metric, {})
        n = len(self.sessions)
        if conversion:
            converted = sum(
                1 for key, total in totals.items() if total > 0 and key in self.sessions
            )
            return SessionSummary.of_counts(n, converted)
        values = [totals.get(key, 0) / SCALE for key in self.sessions]
        return SessionSummary.of_values(values)

    def __repr__(self) -> str:
        return f"<SessionSample {len(self)} sessions, metrics {sorted(self.totals)}>"


def _held(total: int) -> int:
    """``total`` within ±``TOTAL_LIMIT``."""
    return max(-TOTAL_LIMIT, min(TOTAL_LIMIT, total))


@dataclass(frozen=True)
class SessionSummary:
    """``sessions`` units, their mean and their (unbiased) variance, and how
    many of them reported the metric at all (a total other than 0)."""

    sessions: int = 0
    mean: float = 0.0
    variance: float = 0.0
    reporting: int = 0

    @classmethod
    def of_counts(cls, sessions: int, converted: int) -> SessionSummary:
        """The share of ``sessions`` that ``converted``, and the variance of
        the 0/1 values."""
        if sessions == 0:
            return cls()
        rate = converted / sessions
        variance = rate * (1.0 - rate) * sessions / (sessions - 1) if sessions > 1 else 0.0
        return cls(sessions, rate, variance, converted)

    @classmethod
    def of_values(cls, values: Iterable[float]) -> SessionSummary:
        """Welford's mean and variance (stable for heavy-tailed values)."""
        n = 0
        reporting = 0
        mean = 0.0
        square = 0.0
        for value in values:
            n += 1
            if value:
                reporting += 1
            delta = value - mean
            mean += delta / n
            square += delta * (value - mean)
        if n == 0:
            return cls()
        return cls(n, mean, square / (n - 1) if n > 1 else 0.0, reporting)


__all__ = [
    "MAX_AMOUNT",
    "STORE_LIMIT",
    "TOTAL_LIMIT",
    "NO_LIMIT",
    "SAMPLE_SESSIONS",
    "SCALE",
    "SessionSample",
    "SessionSummary",
]
