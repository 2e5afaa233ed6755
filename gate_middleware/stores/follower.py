"""A background thread per process that a store runs, started lazily and
again in a forked child (threads do not survive a fork)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

logger = logging.getLogger("gate_middleware")


class Follower:
    """A background thread per process, started lazily (and again after a fork)."""

    def __init__(self, name: str, step: Callable[[], None], interval: float) -> None:
        self._name = name
        self._step = step
        self._interval = interval
        self._pid = -1
        self._stop = threading.Event()

    def ensure(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        thread.start()

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                self._step()
            except Exception:  # the follower must never die
                logger.exception("%s failed; retrying", self._name)
            stop.wait(self._interval)

    def close(self) -> None:
        self._stop.set()
