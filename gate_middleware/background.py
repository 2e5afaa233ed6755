"""The one way the package runs work in the background: a daemon thread per
process that calls a step every few seconds (sooner when woken), started
lazily, started again in a forked child (threads do not survive a fork) and
never again once closed. The plan's timer, the stores' followers and
flushers and the webhooks' senders are each one of these."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

logger = logging.getLogger("gate_middleware")


class BackgroundThread:
    """Calls ``step()`` every ``interval`` seconds on a daemon thread of this
    process (``wait_first``: the first call after one interval). An exception
    from ``step`` is logged and the thread carries on; ``wake()`` makes the
    next call now; ``close()`` stops it for good, in forked children too."""

    def __init__(
        self, name: str, step: Callable[[], None], interval: float, *, wait_first: bool = False
    ) -> None:
        self._name = name
        self._step = step
        self._interval = interval
        self._wait_first = wait_first
        self._pid = -1
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    def ensure(self) -> None:
        """Start the thread unless this process already runs it (or it is closed)."""
        if self._pid == os.getpid() or self._closed:
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._wake = threading.Event()
        threading.Thread(
            target=self._run, args=(self._stop, self._wake), name=self._name, daemon=True
        ).start()

    def wake(self) -> None:
        """Call the step now rather than at the end of the interval."""
        self._wake.set()

    def _run(self, stop: threading.Event, wake: threading.Event) -> None:
        if self._wait_first:
            wake.wait(self._interval)
            wake.clear()
        while not stop.is_set():
            try:
                self._step()
            except Exception:  # the thread must never die
                logger.exception("%s failed; retrying", self._name)
            wake.wait(self._interval)
            wake.clear()

    def close(self) -> None:
        self._closed = True
        self._stop.set()
        self._wake.set()
