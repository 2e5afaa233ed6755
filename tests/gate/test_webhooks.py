"""Webhooks against a real HTTP receiver on 127.0.0.1: every event exactly
once, validly signed, in order, and nothing lost while the receiver is down."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from gate_middleware import ConfigError, Environment, PromotionConfig, PromotionGate
from gate_middleware.domain.plan import RolloutPlan
from gate_middleware.gate.webhooks import Webhook, redacted_url, signature
from tests.servers import ROOT, python
from tests.support import SECRET, FakeClock, Receiver, feed


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def plan_gate(clock: FakeClock, webhook: Webhook) -> PromotionGate:
    plan = RolloutPlan(steps=(1, 5), bake_seconds=60, staging_bake_seconds=60)
    config = PromotionConfig(name="checkout", min_requests=100, plan=plan)
    return PromotionGate(
        config, clock=clock, wall_clock=clock, plan_timer=False, webhooks=[webhook]
    )


def run_plan(gate: PromotionGate, clock: FakeClock) -> None:
    gate.start_canary(feature_flags=["new_checkout"], actor="alice")
    for _ in range(3):  # 1 %, 5 %, staging
        feed(gate, "canary", 200, error_every=50)
        feed(gate, "stable", 200, error_every=50)
        clock.advance(60)
        gate.tick()
    assert gate.environment == Environment.PRODUCTION


def test_every_event_arrives_once_signed(receiver: Receiver, clock: FakeClock) -> None:
    webhook = Webhook(f"http://127.0.0.1:{receiver.port}/hook", secret=SECRET)
    gate = plan_gate(clock, webhook)
    run_plan(gate, clock)
    assert webhook.wait_idle(10)
    gate.close()
    events = [r["event"] for r in receiver.received]
    assert events == ["start_canary", "plan_step", "plan_step", "plan_step"]
    assert receiver.bad_signatures == 0
    assert len({r["delivery"] for r in receiver.received}) == 4
    first = receiver.received[0]["body"]
    assert first["rollout"] == "checkout" and first["event"]["actor"] == "alice"
    assert first["delivery"] == receiver.received[0]["delivery"]
    assert receiver.received[-1]["body"]["plan"]["status"] == "done"
    shown = gate.status().to_dict()["webhooks"][0]
    assert shown["delivered"] == shown["attempted"] == 4 and shown["retried"] == 0
    assert "secret" not in json.dumps(shown)


def test_nothing_is_lost_while_the_receiver_is_down(clock: FakeClock) -> None:
    with socket.socket() as sock:  # a port with nobody listening yet
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    webhook = Webhook(
        f"http://127.0.0.1:{port}/hook",
        secret=SECRET,
        backoff_seconds=0.05,
        max_backoff_seconds=0.3,
        max_attempts=100,
    )
    gate = plan_gate(clock, webhook)
    run_plan(gate, clock)
    # The plan went through all four changes while the receiver was down: none
    # waited for its delivery (each is still queued, none given up).
    queued = webhook.status()
    assert queued["pending"] == 4 and queued["delivered"] == 0 and queued["failed"] == 0
    time.sleep(1.0)  # down for a while
    assert webhook.status()["delivered"] == 0
    receiver = Receiver(port)
    try:
        assert webhook.wait_idle(20)
    finally:
        receiver.close()
        gate.close()
    events = [r["event"] for r in receiver.received]
    assert events == ["start_canary", "plan_step", "plan_step", "plan_step"]
    assert receiver.bad_signatures == 0
    status = webhook.status()
    assert status["delivered"] == 4 and status["retried"] > 0 and status["failed"] == 0
    assert status["attempted"] == status["delivered"] + status["retried"]
    assert any(entry["error"] for entry in status["log"])


def test_slack_payload_and_a_hold_is_announced(receiver: Receiver, clock: FakeClock) -> None:
    webhook = Webhook(f"http://127.0.0.1:{receiver.port}/hook", secret=SECRET, slack=True)
    gate = plan_gate(clock, webhook)
    gate.start_canary(feature_flags=["new_checkout"])
    clock.advance(60)
    gate.tick()  # baked, no traffic: a hold
    assert webhook.wait_idle(10)
    gate.close()
    texts = [r["body"]["text"] for r in receiver.received]
    assert texts[0] == "[checkout] start_canary by api: production -> canary (1%)"
    assert texts[1].startswith("[checkout] hold by gate: canary (1%) -> canary (1%): canary 1%")


def test_webhook_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="webhook url"):
        Webhook("ftp://127.0.0.1/", secret=SECRET)
    with pytest.raises(ConfigError, match="secret"):
        Webhook("http://127.0.0.1/", secret="short")
    with pytest.raises(ConfigError, match="max_attempts"):
        Webhook("http://127.0.0.1/", secret=SECRET, max_attempts=0)
    assert signature("k", b"x") == "sha256=" + hmac.new(b"k", b"x", hashlib.sha256).hexdigest()


# -- what a person wrote reaches Slack as text; an address's credentials show nowhere ----

FORGED = "<!channel> <https://evil.example|approve> & stuff"
FORGED_ESCAPED = "&lt;!channel&gt; &lt;https://evil.example|approve&gt; &amp; stuff"


def closed_port() -> int:
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_slack_text_is_escaped_so_no_mention_or_link_is_formed(
    receiver: Receiver, clock: FakeClock
) -> None:
    webhook = Webhook(f"http://127.0.0.1:{receiver.port}/hook", secret=SECRET, slack=True)
    gate = plan_gate(clock, webhook)
    gate.start_canary(feature_flags=["new_checkout"], actor=FORGED)
    gate.rollback(FORGED, actor=FORGED)
    assert webhook.wait_idle(10)
    gate.close()
    texts = [r["body"]["text"] for r in receiver.received]
    assert texts == [
        f"[checkout] start_canary by {FORGED_ESCAPED}: production -> canary (1%)",
        f"[checkout] rollback by {FORGED_ESCAPED}: {FORGED_ESCAPED}",
    ]
    assert not any("<" in text for text in texts)


def test_user_info_is_sent_as_basic_authentication_to_the_real_host(
    receiver: Receiver, clock: FakeClock
) -> None:
    webhook = Webhook(
        f"http://hook%40user:p%3Ass%20w%C3%B6rd@127.0.0.1:{receiver.port}/hook?key=token",
        secret=SECRET,
        max_attempts=2,
        backoff_seconds=0.05,
    )
    gate = plan_gate(clock, webhook)
    gate.start_canary(feature_flags=["new_checkout"], actor="alice")
    assert webhook.wait_idle(10)
    gate.close()
    assert webhook.status()["delivered"] == 1
    (delivered,) = receiver.received
    expected = base64.b64encode("hook@user:p:ss wörd".encode()).decode("ascii")
    assert delivered["authorization"] == f"Basic {expected}"
    assert delivered["path"] == "/hook?key=token"
    assert receiver.bad_signatures == 0


def test_an_address_without_user_info_sends_no_authorization(receiver: Receiver) -> None:
    webhook = Webhook(f"http://127.0.0.1:{receiver.port}/hook", secret=SECRET)
    webhook.send("checkout", {"kind": "promotion", "action": "promote"})
    assert webhook.wait_idle(10)
    webhook.close()
    assert [r["authorization"] for r in receiver.received] == [None]


def test_credentials_show_neither_in_status_nor_logs_nor_repr(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    url = f"http://hookuser:hookpass-0123456789@127.0.0.1:{port}/hook?key=token-0123456789"
    webhook = Webhook(url, secret=SECRET, max_attempts=1)
    gate = plan_gate(clock, webhook)
    with caplog.at_level(logging.ERROR, logger="gate_middleware"):
        gate.start_canary(feature_flags=["new_checkout"], actor="alice")
        assert webhook.wait_idle(10)
    shown = gate.status().to_dict()["webhooks"]
    gate.close()
    redacted = f"http://***@127.0.0.1:{port}/hook?***"
    assert [hook["url"] for hook in shown] == [redacted]
    assert shown[0]["failed"] == 1 and shown[0]["log"][0]["error"]
    given_up = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert len(given_up) == 1 and given_up[0].startswith(f"webhook {redacted}: delivery ")
    assert repr(webhook) == f"Webhook({redacted!r}, slack=False)"
    everything = json.dumps(shown) + caplog.text + repr(webhook)
    for secret in ("hookuser", "hookpass", "token-0123456789"):
        assert secret not in everything


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/gate", "https://hooks.example.com/gate"),
        ("https://u:p@hooks.example.com:8443/gate", "https://***@hooks.example.com:8443/gate"),
        ("https://hooks.example.com/gate?key=token#part", "https://hooks.example.com/gate?***#***"),
        ("https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/***"),
        ("https://discord.com/api/webhooks/123/tok-en", "https://discord.com/***"),
        ("https://ptb.discordapp.com/api/webhooks/123/tok", "https://ptb.discordapp.com/***"),
        (
            "https://acme.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d",
            "https://acme.webhook.office.com/***",
        ),
        (
            "https://outlook.office.com/webhook/a/IncomingWebhook/b/c",
            "https://outlook.office.com/***",
        ),
        ("hooks.slack.com/services/T000/B000/XXXX", "***"),  # no scheme: no host to tell
        ("http://[::1/services", "***"),  # unreadable
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


@pytest.mark.parametrize(
    ("url", "shown", "valid"),
    [
        ("http:///hook?key=token", "http:***", "with a host"),
        (
            "http://hookuser:hookpass@127.0.0.1:99999/hook",
            "http://***@127.0.0.1:99999/hook",
            "1 to 65535",
        ),
        (
            "http://hookuser:hookpass@127.0.0.1:port/hook",
            "http://***@127.0.0.1:port/hook",
            "1 to 65535",
        ),
        ("http://127.0.0.1:0/hook", "http://127.0.0.1:0/hook", "1 to 65535"),
        (
            "ftp://hookuser:hookpass@127.0.0.1/hook",
            "ftp://***@127.0.0.1/hook",
            "http:// or https://",
        ),
        (
            "https://hooks.slack.com/services/T0/B0/hookpass x",
            "https://hooks.slack.com/***",
            "spaces",
        ),
    ],
)
def test_a_malformed_webhook_url_is_refused_without_its_credentials(
    url: str, shown: str, valid: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Webhook(url, secret=SECRET)
    error = raised.value
    assert error.field == "webhook url" and error.value == shown and valid in error.expected
    assert str(error) == f"webhook url must be {error.expected}, got {shown!r}"
    assert "hookpass" not in "".join(traceback.format_exception(error))


# -- the durable outbox: deliveries outlive the process that made them -------------------


def outbox_worker(url: str, hook: str, action: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(python("-m", "tests.outbox_worker", url, hook, action), cwd=ROOT)


def test_a_delivery_left_by_an_exited_process_is_made_once_by_the_next(tmp_path: Path) -> None:
    """A process rolls back while the receiver is down and exits: the event
    waits in the file. Three processes start with the receiver up: it gets
    the event once, with its first delivery id, validly signed."""
    url = f"sqlite://{tmp_path}/gate.db"
    with socket.socket() as sock:  # a port with nobody listening yet
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = f"http://127.0.0.1:{port}/hook"
    assert outbox_worker(url, hook, "rollback").wait(60) == 0
    receiver = Receiver(port)
    try:
        senders = [outbox_worker(url, hook, "send") for _ in range(3)]
        assert [sender.wait(60) for sender in senders] == [0, 0, 0]
    finally:
        receiver.close()
    assert [r["event"] for r in receiver.received] == ["rollback"]
    assert receiver.bad_signatures == 0
    body = receiver.received[0]["body"]
    assert body["event"]["actor"] == "alice" and body["event"]["reason"] == "a bad release"
    assert body["delivery"] == receiver.received[0]["delivery"]


def test_a_durable_outbox_says_so_and_a_memory_one_too(tmp_path: Path, receiver: Receiver) -> None:
    shared = Webhook(f"http://127.0.0.1:{receiver.port}/a", secret=SECRET)
    alone = Webhook(f"http://127.0.0.1:{receiver.port}/b", secret=SECRET)
    config = PromotionConfig(name="checkout", environment=Environment.canary(10))
    gate = PromotionGate.from_url(f"sqlite://{tmp_path}/gate.db", config, webhooks=[shared])
    in_memory = PromotionGate(webhooks=[alone])
    try:
        assert shared.status()["outbox"] == "durable"
        assert alone.status()["outbox"] == "memory"
        with pytest.raises(ConfigError, match="a webhook of one gate"):
            PromotionGate.from_url(f"sqlite://{tmp_path}/other.db", config, webhooks=[shared])
    finally:
        gate.close()
        in_memory.close()


def test_a_garbled_answer_is_a_failed_attempt_retried_with_backoff() -> None:
    """A receiver that answers with no valid status line: each delivery
    counts as an attempt and is retried with backoff, never a tight loop."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    connections = 0
    stop = threading.Event()

    def serve() -> None:
        nonlocal connections
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            connections += 1
            with conn:
                conn.recv(65536)
                conn.sendall(b"garbage, not HTTP\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    webhook = Webhook(
        f"http://127.0.0.1:{port}/hook",
        secret=SECRET,
        backoff_seconds=0.05,
        max_backoff_seconds=0.2,
        max_attempts=4,
    )
    gate = PromotionGate(PromotionConfig(), webhooks=[webhook])
    try:
        gate.start_canary(5, ["new"])
        assert webhook.wait_idle(20)
        status = webhook.status()
        assert status["failed"] == 1 and status["attempted"] == 4 and status["delivered"] == 0
        assert connections == 4
        assert all("BadStatusLine" in entry["error"] for entry in status["log"])
    finally:
        gate.close()
        stop.set()
        thread.join(5)
        listener.close()
