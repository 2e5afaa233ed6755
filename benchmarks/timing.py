"""Interleaved repetitions, medians and min–max, ratios against a baseline.

Each group runs its cases round-robin: repetition 1 of every case, then
repetition 2 of every case, and so on, so a noisy neighbour slows all of them
alike. A case's figure is the median of its repetitions (each one the mean
of ``number`` calls), with the fastest and slowest repetition beside it; its
ratio is against the group's baseline measured in the same run.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    name: str
    samples: list[float] = field(default_factory=list)  # seconds per call

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)


def interleaved(
    cases: dict[str, Callable[[int], None]], number: int, repeat: int
) -> dict[str, Result]:
    """Time ``fn(number)`` for each case, ``repeat`` rounds, interleaved."""
    results = {name: Result(name) for name in cases}
    for fn in cases.values():  # warm up
        fn(max(1, number // 10))
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for name, fn in cases.items():
                started = time.perf_counter()
                fn(number)
                results[name].samples.append((time.perf_counter() - started) / number)
            gc.collect()
    finally:
        if enabled:
            gc.enable()
    return results


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.2f}"


def table(title: str, results: dict[str, Result], baseline: str, overhead: bool = False) -> str:
    """A plain-text table: median µs, min–max, ratio to the baseline (and overhead)."""
    base = results[baseline].median
    lines = [title, ""]
    header = f"  {'case':<52} {'median µs':>10} {'min–max µs':>19} {'× baseline':>10}"
    if overhead:
        header += f" {'overhead µs':>12}"
    lines.append(header)
    for name, result in results.items():
        row = (
            f"  {name:<52} {us(result.median):>10} "
            f"{us(result.low) + '–' + us(result.high):>19} {result.median / base:>10.2f}"
        )
        if overhead:
            row += f" {us(result.median - base) if name != baseline else '':>12}"
        lines.append(row)
    return "\n".join(lines) + "\n"
