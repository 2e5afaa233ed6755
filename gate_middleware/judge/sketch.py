"""A log-bucketed latency sketch: p99 within 1 % relative error, fixed memory.

Durations are counted in buckets whose bounds grow by the factor
``GAMMA = (1 + 0.01) / (1 - 0.01)``; bucket ``i`` covers
``(MIN_SECONDS * GAMMA**(i-1), MIN_SECONDS * GAMMA**i]`` and reports the
value ``2 * MIN_SECONDS * GAMMA**i / (GAMMA + 1)``, which is within 1 % of
every duration in it (the DDSketch construction). Durations at or below
``MIN_SECONDS`` (10 µs) share bucket 0, and durations above
``MAX_SECONDS`` (1,000 s) the last bucket: both ends are clamped.

Sketches with the same bucket layout merge by adding counts, so a window of
time slices (or a store shared between processes) can add and subtract them.
No raw samples are kept.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
MIN_SECONDS = 1e-5
MAX_SECONDS = 1e3
_INV_LOG_GAMMA = 1.0 / math.log(GAMMA)
BUCKET_COUNT = math.ceil(math.log(MAX_SECONDS / MIN_SECONDS) * _INV_LOG_GAMMA) + 1
_LOG_MIN = math.log(MIN_SECONDS)
_TOP = BUCKET_COUNT - 1


def bucket_index(duration: float) -> int:
    """The sketch bucket for a duration in seconds."""
    if duration <= MIN_SECONDS:
        return 0
    index = math.ceil((math.log(duration) - _LOG_MIN) * _INV_LOG_GAMMA)
    return index if index < _TOP else _TOP


def bucket_value(index: int) -> float:
    """The duration that bucket ``index`` reports."""
    if index <= 0:
        return MIN_SECONDS
    return 2.0 * MIN_SECONDS * GAMMA**index / (GAMMA + 1.0)


def new_counts() -> array[int]:
    """An empty bucket array (unsigned 32-bit counts)."""
    return array("L", bytes(array("L").itemsize * BUCKET_COUNT))


BLOCK_BITS = 5  # 32 buckets a block: a window keeps block sums to find quantiles fast


def new_blocks() -> array[int]:
    """Empty block sums for ``new_counts()`` (one per 32 buckets)."""
    return array("L", bytes(array("L").itemsize * ((BUCKET_COUNT >> BLOCK_BITS) + 1)))


def quantile(
    counts: Sequence[int],
    total: int,
    q: float,
    highest: int = _TOP,
    blocks: Sequence[int] | None = None,
) -> float:
    """The ``q`` quantile of ``total`` durations counted in ``counts``.

    ``highest`` is an upper bound on the highest non-empty bucket; the scan
    runs down from it. With ``blocks`` (the sums of each 32 buckets) it skips
    whole blocks, so its cost does not depend on how far the tail reaches.
    Returns 0.0 when ``total`` is 0.
    """
    if total <= 0:
        return 0.0
    rank = int(q * (total - 1))  # 0-based rank from the bottom
    above = total - 1 - rank  # how many durations lie above it
    seen = 0
    top = min(highest, _TOP)
    if blocks is not None:
        for block in range(top >> BLOCK_BITS, -1, -1):
            in_block = blocks[block]
            if seen + in_block > above:
                first = block << BLOCK_BITS
                for index in range(min(top, first + (1 << BLOCK_BITS) - 1), first - 1, -1):
                    seen += counts[index]
                    if seen > above:
                        return bucket_value(index)
            seen += in_block
        return bucket_value(0)
    for index in range(top, -1, -1):
        seen += counts[index]
        if seen > above:
            return bucket_value(index)
    return bucket_value(0)
