"""Webhooks: every transition, pause and hold of a rollout, POSTed as signed JSON.

::

    gate.add_webhook("https://hooks.example.com/gate", secret="...")

Each event is one JSON POST (``{"rollout", "delivery", "event", ...}``),
signed as GitHub signs its webhooks: the header ``X-Gate-Signature-256``
holds ``sha256=`` and the hex HMAC-SHA256 of the body under the secret
(check it with ``hmac.compare_digest``). ``X-Gate-Delivery`` is a unique id
per event (the same on every retry, so a receiver can drop a duplicate),
``X-Gate-Event`` the event's action. With ``slack=True`` the body is a
Slack-compatible ``{"text": ...}`` instead (still signed), in which every
text that comes from a person (rollout, actor, reason) is escaped as Slack
asks (``&``, ``<``, ``>``), so that it can form no mention and no link.

An address's user info (``https://user:password@host/...``) is sent as
HTTP Basic authentication (percent-decoded) to the host, never in the
address. Wherever the address is shown (``status()``, the logs, errors) it
is ``redacted_url``: the user info, the query and the path of the services
whose path is the credential (Slack, Discord, Microsoft Teams) are ``***``.

Deliveries never leave on a request's thread. The process that makes an
event puts it into its gate's outbox (``gate_middleware.stores.outbox``);
a background thread in every process that runs the webhook takes the oldest
due delivery (leased to that process while it posts), so each event is
posted at least once and by one process at a time, in order. A failed one
(no answer, or a status other than 2xx) is retried with exponential backoff
(``backoff_seconds`` doubling up to ``max_backoff_seconds``) for
``max_attempts`` attempts. With a SQLite store the outbox is in the file:
what a process could not deliver before it exited (recycled, restarted,
killed) is delivered by another process or by the next one to start. With
the in-memory and the Redis stores it is this process's memory and dies
with it. Waiting deliveries are bounded (``max_pending``; the oldest is
dropped and counted beyond it). ``status()`` gives the counts and the last
``log_size`` deliveries of this process (shown in the admin API's
``/status``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import re
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from typing import Any

from gate_middleware.background import BackgroundThread
from gate_middleware.domain.state import DeliveryView, WebhookView, this_process
from gate_middleware.errors import ConfigError
from gate_middleware.stores.outbox import Delivery, MemoryOutbox, Outbox

logger = logging.getLogger("gate_middleware")

SIGNATURE_HEADER = "X-Gate-Signature-256"
DELIVERY_HEADER = "X-Gate-Delivery"
EVENT_HEADER = "X-Gate-Event"
POLL_SECONDS = 0.25  # the sender looks for due deliveries (its own and other processes')
LEASE_MARGIN_SECONDS = 5.0  # beyond the post's timeout, before another process may retake it

# Receivers whose address's path is the credential (Slack's incoming
# webhooks, Discord's /api/webhooks/<id>/<token>, Microsoft Teams' Office
# connectors), each with its subdomains: redacted_url hides the whole path.
SECRET_PATH_HOSTS = (
    "hooks.slack.com",
    "hooks.slack-gov.com",
    "discord.com",
    "discordapp.com",
    "webhook.office.com",
    "outlook.office.com",
    "outlook.office365.com",
)
HIDDEN = "***"
_VALID_URL = "an http:// or https:// address with a host, such as https://hooks.example.com/gate"
_VALID_PORT = "an http:// or https:// address whose port, if given, is a number from 1 to 65535"
# What http.client refuses to send (spaces, control and non-ASCII characters).
_UNSENDABLE = re.compile(r"[^\x21-\x7e]")


def signature(secret: str, body: bytes) -> str:
    """The ``X-Gate-Signature-256`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def redacted_url(url: str) -> str:
    """``url`` as it may be shown (status, logs, errors): ``scheme://host[:port]``
    and the path, with the user info as ``***@``, the query as ``?***``, the
    fragment as ``#***`` and, for the ``SECRET_PATH_HOSTS``, the path as
    ``/***``. What cannot be read as an address with a host is ``***`` after
    its scheme. Never raises."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # such as an unclosed "[" of an IPv6 address
        return HIDDEN
    if not parts.netloc:  # no "//host": the host cannot be told from the path
        return f"{parts.scheme}:{HIDDEN}" if parts.scheme else HIDDEN
    _, at, host_port = parts.netloc.rpartition("@")
    path = "/" + HIDDEN if _path_is_secret(parts) else parts.path
    return (
        f"{parts.scheme}://{HIDDEN + '@' if at else ''}{host_port}{path}"
        f"{'?' + HIDDEN if parts.query else ''}{'#' + HIDDEN if parts.fragment else ''}"
    )


def _path_is_secret(parts: urllib.parse.SplitResult) -> bool:
    """Whether the path of ``parts`` is a credential: it is on one of the
    ``SECRET_PATH_HOSTS`` (or a subdomain of one) and not just ``/``."""
    host = (parts.hostname or "").rstrip(".")
    return parts.path not in ("", "/") and any(
        host == known or host.endswith("." + known) for known in SECRET_PATH_HOSTS
    )


def slack_escaped(text: str) -> str:
    """``text`` as Slack shows it literally: ``&``, ``<`` and ``>`` as
    ``&amp;``, ``&lt;`` and ``&gt;`` (Slack's "Formatting text for app
    surfaces", Escaping text), so that no mention or link can be formed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(payload: dict[str, Any]) -> str:
    """One line for a chat channel; every text in it that the gate did not
    write is ``slack_escaped``."""
    event = payload["event"]
    rollout = slack_escaped(str(payload["rollout"]))
    actor = slack_escaped(str(event.get("actor", "")))
    reason = f": {slack_escaped(str(event['reason']))}" if event.get("reason") else ""
    if event["kind"] == "rollback":
        what = "automatic rollback" if event.get("automatic") else "rollback"
        return f"[{rollout}] {what} by {actor}{reason}"
    source = event["from_environment"]
    target = event["to_environment"]

    def label(environment: dict[str, Any]) -> str:
        if environment["name"] == "canary":
            return f"canary ({environment['traffic_percent']:g}%)"
        return slack_escaped(str(environment["name"]))

    return (
        f"[{rollout}] {slack_escaped(str(event['action']))} by {actor}: "
        f"{label(source)} -> {label(target)}{reason}"
    )


def _checked_url(url: Any) -> urllib.parse.SplitResult:
    """``url`` split, if a webhook can post to it, or ``ConfigError`` naming
    the field, the ``redacted_url`` and what would be valid."""
    if not isinstance(url, str):
        raise ConfigError("webhook url", type(url), _VALID_URL)
    shown = redacted_url(url)
    if _UNSENDABLE.search(url):
        raise ConfigError(
            "webhook url",
            shown,
            "an http:// or https:// address without spaces, control or non-ASCII characters (percent-encode them)",
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # its message may quote the address: not chained
        raise ConfigError("webhook url", shown, _VALID_PORT) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("webhook url", shown, _VALID_URL)
    if port == 0:
        raise ConfigError("webhook url", shown, _VALID_PORT)
    if ":" in urllib.parse.unquote(parts.username or ""):
        raise ConfigError(
            "webhook url",
            shown,
            "an address whose user name (sent as HTTP Basic authentication) has no ':'",
        )
    return parts


def _basic_authorization(parts: urllib.parse.SplitResult) -> str | None:
    """The ``Authorization`` header for the user info of ``parts`` (RFC 7617:
    ``Basic`` and base64 of ``user:password``, percent-decoded, in UTF-8), or
    ``None`` without user info."""
    if "@" not in parts.netloc:
        return None
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


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
    ) -> None:
        parts = _checked_url(url)
        if not isinstance(secret, str) or len(secret) < 16:
            raise ConfigError("secret", "<hidden>", "a text of at least 16 characters")
        for name, count in (("max_attempts", max_attempts), ("max_pending", max_pending)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(name, count, "a whole number of at least 1")
        for name, value in (
            ("backoff_seconds", backoff_seconds),
            ("max_backoff_seconds", max_backoff_seconds),
            ("timeout_seconds", timeout_seconds),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(name, value, "a positive number of seconds")
        #: The address as given (with its credentials, if any); ``shown_url``
        #: is what the status, the logs and the errors show.
        self.url = url
        self.shown_url = redacted_url(url)
        # Where the posts go: the address without its user info, which goes
        # as Basic authentication (urllib would take it for part of the host).
        user_info, _, host_port = parts.netloc.rpartition("@")
        self._target = f"{parts.scheme}://{host_port}{parts.path}" + (
            f"?{parts.query}" if parts.query else ""
        )
        self._authorization = _basic_authorization(parts)
        # What an error's text must never carry (see _scrubbed); a piece of
        # fewer than 4 characters would mask ordinary words and guard little.
        secret_path = parts.path if _path_is_secret(parts) else ""
        self._secrets = tuple(
            piece for piece in (user_info, parts.query, secret_path) if len(piece) >= 4
        )
        self.slack = bool(slack)
        self._secret = secret
        self.max_attempts = max_attempts
        self.backoff_seconds = float(backoff_seconds)
        self.max_backoff_seconds = float(max_backoff_seconds)
        self.timeout_seconds = float(timeout_seconds)
        self.max_pending = max_pending
        #: The outbox's key for this receiver: the same in every process that
        #: configures the same address and format (the secret is no part of it).
        self.receiver = hashlib.sha256(f"{url} {self.slack}".encode()).hexdigest()[:24]
        self._outbox: Outbox = MemoryOutbox()
        self._unsent: deque[Delivery] = deque()  # not yet in the outbox (its store failed)
        self._log: deque[DeliveryView] = deque(maxlen=log_size)
        self.counts = {"attempted": 0, "delivered": 0, "retried": 0, "failed": 0, "dropped": 0}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._trouble = ""
        self._owner = _owner()
        # At exit, what is not yet in the outbox goes there (a durable one
        # keeps it for the processes that stay).
        self._sender = BackgroundThread(
            "gate-webhook", self._send_due, POLL_SECONDS, on_exit=self._move_unsent
        )
        self._opener = urllib.request.build_opener(_NoRedirects())

    def __repr__(self) -> str:
        return f"Webhook({self.shown_url!r}, slack={self.slack})"

    def attach(self, outbox: Outbox) -> None:
        """Keep deliveries in ``outbox`` (the gate's store's, when the webhook
        is added to a gate); a durable one's sender starts now, to send what
        an earlier process left."""
        if self._outbox.durable and outbox is not self._outbox:
            raise ConfigError(
                "webhook", self.shown_url, "a webhook of one gate (add another for this one)"
            )
        self._outbox = outbox
        if outbox.durable:
            self._sender.ensure()

    def send(self, rollout: str, event: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
        """Queue one event in the outbox; returns its delivery id. Never waits
        on the network; a durable outbox that fails keeps it in memory until
        it can take it."""
        delivery = secrets.token_hex(12)
        payload: dict[str, Any] = {"rollout": rollout, "delivery": delivery, "event": event}
        if extra:
            payload.update(extra)
        if self.slack:
            payload = {"text": slack_text(payload)}
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        action = str(event.get("action", event.get("kind", "event")))
        with self._lock:
            self._unsent.append(Delivery(delivery, action, body))
        self._move_unsent()
        self._sender.ensure()
        self._sender.wake()
        return delivery

    def _move_unsent(self) -> None:
        with self._lock:
            while self._unsent:
                try:
                    dropped = self._outbox.put(self.receiver, self._unsent[0], self.max_pending)
                except Exception as exc:  # noqa: BLE001 - a failing store is reported, not raised
                    self._failed_store(exc)
                    if len(self._unsent) > self.max_pending:
                        self._unsent.popleft()
                        self.counts["dropped"] += 1
                    return
                self._unsent.popleft()
                self.counts["dropped"] += dropped
        self._store_works()

    def _send_due(self) -> None:
        """The sender's step: every due delivery, oldest first."""
        self._move_unsent()
        lease = self.timeout_seconds + LEASE_MARGIN_SECONDS
        while not self._sender.closed:
            try:
                item = self._outbox.take(self.receiver, self._owner, lease)
            except Exception as exc:  # noqa: BLE001
                self._failed_store(exc)
                return
            if item is None:
                return
            with self._lock:
                self._busy = True
            try:
                self._deliver(item)
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def _deliver(self, item: Delivery) -> None:
        attempt = item.attempts + 1
        self.counts["attempted"] += 1
        if attempt > 1:
            self.counts["retried"] += 1
        started = time.time()
        status, error = self._post(item.delivery, item.action, item.body)
        with self._lock:
            self._log.append(
                {
                    "delivery": item.delivery,
                    "event": item.action,
                    "attempt": attempt,
                    "at": started,
                    "status": status,
                    "error": error,
                }
            )
        try:
            if error is None:
                self._outbox.done(self.receiver, item.delivery)
                self.counts["delivered"] += 1
            elif attempt >= self.max_attempts:
                self._outbox.done(self.receiver, item.delivery)
                self.counts["failed"] += 1
                logger.error(
                    "webhook %s: delivery %s given up after %d attempts",
                    self.shown_url,
                    item.delivery,
                    attempt,
                )
            else:
                pause = min(self.backoff_seconds * 2 ** (attempt - 1), self.max_backoff_seconds)
                self._outbox.retry(self.receiver, item.delivery, attempt, time.time() + pause)
        except Exception as exc:  # noqa: BLE001 - the lease runs out: it is sent again
            self._failed_store(exc)

    def _failed_store(self, exc: BaseException) -> None:
        if not self._trouble:
            logger.error(
                "webhook %s: its outbox failed (%s); deliveries wait in memory", self.shown_url, exc
            )
        self._trouble = f"{type(exc).__name__}: {exc}"[:200]

    def _store_works(self) -> None:
        if self._trouble:
            self._trouble = ""
            logger.warning("webhook %s: its outbox works again", self.shown_url)

    def _post(self, delivery: str, action: str, body: bytes) -> tuple[int | None, str | None]:
        request = urllib.request.Request(self._target, data=body, method="POST")
        if self._authorization is not None:
            request.add_header("Authorization", self._authorization)
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
        except (OSError, ValueError, http.client.HTTPException) as exc:  # a garbled answer too
            return None, self._scrubbed(f"{type(exc).__name__}: {exc}")[:200]
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"

    def _scrubbed(self, text: str) -> str:
        """An error's ``text`` without the address's credentials (should a
        library's message quote the address)."""
        for piece in self._secrets:
            text = text.replace(piece, HIDDEN)
        return text

    def pending(self) -> int:
        """Deliveries waiting for this receiver (in every process, with a
        durable outbox)."""
        with self._lock:
            unsent = len(self._unsent)
        try:
            return unsent + self._outbox.pending(self.receiver)
        except Exception as exc:  # noqa: BLE001
            self._failed_store(exc)
            return unsent

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending (for tests and shutdown); ``True`` if so."""
        deadline = time.monotonic() + timeout
        while self.pending() or self._busy:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._sender.wake()
            with self._idle:
                self._idle.wait(min(left, 0.05))
        return True

    def status(self) -> WebhookView:
        """Counts and the latest deliveries (the secret is never shown)."""
        with self._lock:
            log = list(self._log)
        shown: WebhookView = {
            "url": self.shown_url,
            "format": "slack" if self.slack else "json",
            "outbox": "durable" if self._outbox.durable else "memory",
            "pending": self.pending(),
            "attempted": self.counts["attempted"],
            "delivered": self.counts["delivered"],
            "retried": self.counts["retried"],
            "failed": self.counts["failed"],
            "dropped": self.counts["dropped"],
            "log": log,
        }
        if self._trouble:
            shown["trouble"] = self._trouble
        return shown

    def after_fork(self) -> None:
        """In a forked child: fresh locks and owner; a durable outbox's sender
        starts again here (what the parent left is this process's to send too)."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._owner = _owner()
        if self._outbox.durable:
            self._sender.ensure()

    def close(self) -> None:
        """Stop sending from this process; a durable outbox keeps what is left
        for the others and the next start."""
        self._sender.close()


def _owner() -> str:
    """Who holds a lease: this process, on this host."""
    return f"{this_process()}:{secrets.token_hex(4)}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a delivery: it is retried, never followed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
