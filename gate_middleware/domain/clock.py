"""The gate's one clock: monotonic seconds for windows and evaluations, Unix
seconds for bakes, deadlines and event times.

A gate reads time through one ``Clock`` (``PromotionGate(clock=...)``):
``SystemClock`` in production, ``ManualClock`` in a test that moves both
readings together with ``advance``. A bare callable is still taken as the
monotonic reading (the wall reading is then ``time.time``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from gate_middleware.errors import ConfigError

__all__ = ["Clock", "ManualClock", "SystemClock", "clock_readings"]

#: Where a ``ManualClock`` starts on the wall by default: 2023-11-14T22:13:20Z.
DEFAULT_EPOCH = 1_700_000_000.0


@runtime_checkable
class Clock(Protocol):
    """What the gate reads time from."""

    def monotonic(self) -> float:
        """Seconds that never step back (windows, evaluation intervals)."""
        ...

    def time(self) -> float:
        """Unix seconds (bakes, deadlines, event times; kept in the shared state)."""
        ...


class SystemClock:
    """The host's clocks: ``time.monotonic`` and ``time.time``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to: both readings advance together.

    ``ManualClock()`` reads 0.0 monotonic and ``start`` (Unix seconds) on the
    wall; ``advance(600)`` is ten minutes later on both.
    """

    def __init__(self, start: float = DEFAULT_EPOCH) -> None:
        self._epoch = _seconds(start, "start", "Unix seconds: a finite number >= 0")
        self._elapsed = 0.0

    def monotonic(self) -> float:
        return self._elapsed

    def time(self) -> float:
        return self._epoch + self._elapsed

    def advance(self, seconds: float) -> None:
        """Move both readings ``seconds`` on (a clock does not go back)."""
        self._elapsed += _seconds(seconds, "seconds", "a finite number of seconds >= 0")

    def __repr__(self) -> str:
        return f"ManualClock(monotonic={self._elapsed!r}, time={self.time()!r})"


def _seconds(value: object, field: str, expected: str) -> float:
    """``value`` as seconds: a finite int or float >= 0, else ``ConfigError``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value >= 0)
    ):
        raise ConfigError(field, value, expected)
    return float(value)


def clock_readings(
    clock: Clock | Callable[[], float] | None, wall_clock: Callable[[], float] | None = None
) -> tuple[Callable[[], float], Callable[[], float]]:
    """``(monotonic, wall)`` from a gate's ``clock`` and its older ``wall_clock``.

    A ``Clock`` gives both; a callable is the monotonic reading, with
    ``wall_clock`` (``time.time`` by default) beside it; ``None`` is the
    host's clocks (``wall_clock`` may still replace the wall reading).
    """
    if clock is None:
        clock = time.monotonic
    elif isinstance(clock, Clock):
        if wall_clock is not None:
            raise ConfigError(
                "wall_clock",
                wall_clock,
                "left out when clock is a Clock (its time() is the wall reading)",
            )
        return clock.monotonic, clock.time
    if not callable(clock):
        raise ConfigError(
            "clock",
            clock,
            "a Clock (monotonic() and time(): SystemClock, ManualClock) or a callable "
            "returning monotonic seconds",
        )
    if wall_clock is None:
        return clock, time.time
    if not callable(wall_clock):
        raise ConfigError("wall_clock", wall_clock, "a callable returning Unix seconds")
    return clock, wall_clock
