"""The SQLite store's faults, done for real to a real file (the drill of
``benchmarks/sqlite_faults.py``, which prints the same figures as a table):
another process holding the write lock, the disk full, the state's row
overwritten with garbage, the file deleted, the file replaced by garbage, a
writer SIGKILLed mid-transaction, and the file system under the directory
turned read-only by an ext4 error, then writable again (a repaired copy
mounted at the same path). For each, 0 failed requests, the operator's
rollback applied once, reported once, one callback, and every gate agreeing
on the rolled-back state (how soon is a figure of the benchmark's table, not
a budget asserted here). A fault this machine cannot inject (the disk full
and the read-only file system need root, ``mount`` and, for the latter, a
loop device and the ext4 tools) is skipped, saying why."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from benchmarks.drill import Figures
from benchmarks.sqlite_faults import FAULTS


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.__name__ for fault in FAULTS])
def test_a_fault_loses_no_request_and_no_change(
    fault: Callable[[], Figures], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.CRITICAL, logger="gate_middleware"):  # the faults log by design
        figures = fault()
    if any(note.startswith("skipped") for note in figures.notes):
        pytest.skip(figures.notes[0])
    assert figures.served > 0 and figures.failed == 0, figures
    assert (figures.applied, figures.reported, figures.callbacks) == (1, 1, 1), figures
    assert figures.agree_seconds < float("inf"), figures  # within the drill's bounded wait
