"""Webhooks: every transition, pause and hold of a rollout, POSTed as signed JSON.

::

    gate.add_webhook("https://hooks.example.com/gate", secret="...")

Each event is one JSON POST (``{"rollout", "delivery", "event", ...}``),
signed as GitHub signs its webhooks: the header ``X-Gate-Signature-256``
holds ``sha256=`` and the hex HMAC-SHA256 of the body under the secret
(check it with ``hmac.compare_digest``). ``X-Gate-Delivery`` is a unique id
per event (the same on every retry, so a receiver can drop a duplicate),
``X-Gate-Event`` the event's action. With ``slack=True`` the body is a
Slack-compatible ``{"text": ...}`` instead (still signed).

Deliveries leave on a background thread per webhook, never on a request's
thread, in order; a failed one (no answer, or a status other than 2xx) is
retried with exponential backoff (``backoff_seconds`` doubling up to
``max_backoff_seconds``) for ``max_attempts`` attempts. Waiting deliveries
are bounded (``max_pending``; the oldest is dropped and counted beyond
it). ``status()`` gives the counts and the last ``log_size`` deliveries
(shown in the admin API's ``/status``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from typing import Any

from gate_middleware.errors import ConfigError

logger = logging.getLogger("gate_middleware")

SIGNATURE_HEADER = "X-Gate-Signature-256"
DELIVERY_HEADER = "X-Gate-Delivery"
EVENT_HEADER = "X-Gate-Event"


def signature(secret: str, body: bytes) -> str:
    """The ``X-Gate-Signature-256`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def slack_text(payload: dict[str, Any]) -> str:
    """One line for a chat channel."""
    event = payload["event"]
    actor = event.get("actor", "")
    reason = f": {event['reason']}" if event.get("reason") else ""
    if event["kind"] == "rollback":
        what = "automatic rollback" if event.get("automatic") else "rollback"
        return f"[{payload['rollout']}] {what} by {actor}{reason}"
    source = event["from_environment"]
    target = event["to_environment"]

    def label(environment: dict[str, Any]) -> str:
        if environment["name"] == "canary":
            return f"canary ({environment['traffic_percent']:g}%)"
        return str(environment["name"])

    return (
        f"[{payload['rollout']}] {event['action']} by {actor}: "
        f"{label(source)} -> {label(target)}{reason}"
    )


class Webhook:
    """One receiver of a gate's events (see the module's documentation)."""

    def __init__(
        self,
        url: str,
        *,
        secret: str,
        slack: bool = False,
        max_attempts: int = 8,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 60.0,
        timeout_seconds: float = 5.0,
        max_pending: int = 1000,
        log_size: int = 50,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("webhook url", url, "an http:// or https:// address")
        if not isinstance(secret, str) or len(secret) < 16:
            raise ConfigError("secret", "<hidden>", "a text of at least 16 characters")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigError("max_attempts", max_attempts, "a whole number of at least 1")
        for name, value in (
            ("backoff_seconds", backoff_seconds),
            ("max_backoff_seconds", max_backoff_seconds),
            ("timeout_seconds", timeout_seconds),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(name, value, "a positive number of seconds")
        self.url = url
        self.slack = bool(slack)
        self._secret = secret
        self.max_attempts = max_attempts
        self.backoff_seconds = float(backoff_seconds)
        self.max_backoff_seconds = float(max_backoff_seconds)
        self.timeout_seconds = float(timeout_seconds)
        self._pending: deque[tuple[str, str, bytes]] = deque()
        self._max_pending = max_pending
        self._log: deque[dict[str, Any]] = deque(maxlen=log_size)
        self.counts = {"attempted": 0, "delivered": 0, "retried": 0, "failed": 0, "dropped": 0}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._pid = -1
        self._busy = False
        self._opener = urllib.request.build_opener(_NoRedirects())

    def send(self, rollout: str, event: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
        """Queue one event; returns its delivery id. Never blocks on the network."""
        delivery = secrets.token_hex(12)
        payload: dict[str, Any] = {"rollout": rollout, "delivery": delivery, "event": event}
        if extra:
            payload.update(extra)
        if self.slack:
            payload = {"text": slack_text(payload)}
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        action = str(event.get("action", event.get("kind", "event")))
        with self._wake:
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self.counts["dropped"] += 1
            self._pending.append((delivery, action, body))
            self._wake.notify()
        self._ensure_thread()
        return delivery

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid() or self._stop.is_set():
            return
        self._pid = os.getpid()
        threading.Thread(target=self._run, name="gate-webhook", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                while not self._pending and not self._stop.is_set():
                    self._wake.wait(1.0)
                if self._stop.is_set():
                    return
                delivery, action, body = self._pending[0]
                self._busy = True
            try:
                self._deliver(delivery, action, body)
            except Exception:  # the sender must never die
                logger.exception("webhook %s: delivery %s failed", self.url, delivery)
            with self._wake:
                if self._pending and self._pending[0][0] == delivery:
                    self._pending.popleft()
                self._busy = False
                self._wake.notify_all()

    def _deliver(self, delivery: str, action: str, body: bytes) -> None:
        pause = self.backoff_seconds
        for attempt in range(1, self.max_attempts + 1):
            self.counts["attempted"] += 1
            if attempt > 1:
                self.counts["retried"] += 1
            started = time.time()
            status, error = self._post(delivery, action, body)
            entry = {
                "delivery": delivery,
                "event": action,
                "attempt": attempt,
                "at": started,
                "status": status,
                "error": error,
            }
            with self._lock:
                self._log.append(entry)
            if error is None:
                self.counts["delivered"] += 1
                return
            if attempt < self.max_attempts and self._stop.wait(pause):
                return  # closed while waiting
            pause = min(pause * 2, self.max_backoff_seconds)
        self.counts["failed"] += 1
        logger.error(
            "webhook %s: delivery %s given up after %d attempts",
            self.url,
            delivery,
            self.max_attempts,
        )

    def _post(self, delivery: str, action: str, body: bytes) -> tuple[int | None, str | None]:
        request = urllib.request.Request(self.url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "gate-middleware-webhook")
        request.add_header(SIGNATURE_HEADER, signature(self._secret, body))
        request.add_header(DELIVERY_HEADER, delivery)
        request.add_header(EVENT_HEADER, action)
        try:
            with self._opener.open(request, timeout=self.timeout_seconds) as response:
                response.read(65536)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:200]
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending (for tests and shutdown); ``True`` if so."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.1))
        return True

    def status(self) -> dict[str, Any]:
        """Counts and the latest deliveries (the secret is never shown)."""
        with self._lock:
            log = list(self._log)
            pending = len(self._pending)
        return {
            "url": self.url,
            "format": "slack" if self.slack else "json",
            "pending": pending,
            **self.counts,
            "log": log,
        }

    def after_fork(self) -> None:
        """In a forked child: fresh locks; the sender starts again when needed."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a delivery: it is retried, never followed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
