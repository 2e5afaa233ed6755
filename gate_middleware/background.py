"""The one way the package runs work in the background: a daemon thread per
process that calls a step every few seconds (sooner when woken), started
lazily, started again in a forked child (threads do not survive a fork) and
never again once closed. The plan's timer, the stores' followers and
flushers and the webhooks' senders are each one of these; ``run_once`` runs
a single job (the gate's evaluation off a request's thread).

A process that exits (a worker recycled by ``--max-requests``, a restart)
first stops every background thread from starting another step, then lets
the steps and jobs under way finish, for up to ``EXIT_GRACE_SECONDS`` in
all, then runs each thread's ``on_exit``: a rollback it has just stored is
reported (callbacks, webhooks) by it, as nobody else would, and a webhook
delivery it has not begun is left in a durable outbox for the processes
that stay, not taken and dropped half-sent."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

logger = logging.getLogger("gate_middleware")

EXIT_GRACE_SECONDS = 10.0

_busy: set[threading.Thread] = set()  # threads in the middle of a step or job
_busy_lock = threading.Lock()


def _working() -> None:
    with _busy_lock:
        _busy.add(threading.current_thread())


def _done() -> None:
    with _busy_lock:
        _busy.discard(threading.current_thread())


_threads: weakref.WeakSet[BackgroundThread] = weakref.WeakSet()


def finish_work(grace: float = EXIT_GRACE_SECONDS) -> None:
    """At exit: no new steps; wait (up to ``grace`` seconds in all) for the
    steps and jobs under way; then each thread's ``on_exit``."""
    threads = list(_threads)
    for background in threads:
        background.close()
    deadline = time.monotonic() + grace
    with _busy_lock:
        busy = [t for t in _busy if t is not threading.current_thread()]
    for thread in busy:
        thread.join(max(0.0, deadline - time.monotonic()))
    for background in threads:
        background.exiting()


_starting = threading.Lock()  # held while a thread is started


def _forget_parents_work() -> None:
    global _busy_lock, _starting
    _busy_lock = threading.Lock()
    _starting = threading.Lock()
    _busy.clear()


atexit.register(finish_work)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_work)


def run_once(name: str, job: Callable[[], None]) -> None:
    """Run ``job`` on a daemon thread of its own; an exception is logged.
    An exiting process waits for it (see the module's documentation)."""

    def run() -> None:
        try:
            job()
        except Exception:  # the job must not take the process down
            logger.exception("%s failed", name)
        finally:
            _done()

    thread = threading.Thread(target=run, name=name, daemon=True)
    with _busy_lock:  # busy from now: an exit that comes before it runs waits too
        _busy.add(thread)
    try:
        thread.start()
    except BaseException:
        with _busy_lock:
            _busy.discard(thread)
        raise


class BackgroundThread:
    """Calls ``step()`` every ``interval`` seconds on a daemon thread of this
    process (``wait_first``: the first call after one interval, in the
    process that built it; started again in a forked child, the first call
    is at once, as the child may have been forked long after the parent's
    last step). An exception from ``step`` is logged and the thread carries
    on; ``wake()`` makes the next call now; ``close()`` stops it for good, in
    forked children too."""

    def __init__(
        self,
        name: str,
        step: Callable[[], None],
        interval: float,
        *,
        wait_first: bool = False,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self._on_exit = on_exit
        _threads.add(self)
        self._name = name
        self._step = step
        self._interval = interval
        self._wait_first = wait_first
        self._built_in = os.getpid()
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
        with _starting:  # two first callers start one thread
            if self._pid == os.getpid() or self._closed:
                return
            self._stop = threading.Event()
            self._wake = threading.Event()
            wait_first = self._wait_first and os.getpid() == self._built_in
            threading.Thread(
                target=self._run,
                args=(self._stop, self._wake, wait_first),
                name=self._name,
                daemon=True,
            ).start()
            self._pid = os.getpid()  # (once started: a failed start is tried again)

    def exiting(self) -> None:
        """The process exits: run ``on_exit`` (an exception is logged)."""
        if self._on_exit is None:
            return
        try:
            self._on_exit()
        except Exception:
            logger.exception("%s could not finish at exit", self._name)

    def wake(self) -> None:
        """Call the step now rather than at the end of the interval."""
        self._wake.set()

    def _run(self, stop: threading.Event, wake: threading.Event, wait_first: bool) -> None:
        if wait_first:
            wake.wait(self._interval)
            wake.clear()
        while not stop.is_set():
            _working()
            if stop.is_set():  # closed (an exit) while it registered: no new step
                _done()
                return
            try:
                self._step()
            except Exception:  # the thread must never die
                logger.exception("%s failed; retrying", self._name)
            finally:
                _done()
            wake.wait(self._interval)
            wake.clear()

    def close(self) -> None:
        self._closed = True
        self._stop.set()
        self._wake.set()
