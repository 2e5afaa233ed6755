"""Redis URLs: every malformed one is a ``ConfigError``, and no password
reaches an error, a log line or a repr (real redis-server)."""

from __future__ import annotations

import logging
import traceback
import uuid

import pytest

from gate_middleware import ConfigError, Environment, PromotionConfig, PromotionGate
from gate_middleware.stores.redis import redacted_url
from tests.servers import RedisServer
from tests.support import OPEN_GATES

SECRET = "pw-SECRET"

# {port}: the test server's. Each is malformed (a ConfigError before any connection).
MALFORMED = [
    "redis+sentinel://:{pw}@127.0.0.1:1/",  # no service
    "redis+sentinel://:{pw}@127.0.0.1:{port}/gate/notadb",  # a db that is not an integer
    "redis+sentinel://:{pw}@127.0.0.1:{port}/gate/0/more",  # more than /service/db
    "redis+sentinel://:{pw}@127.0.0.1:notaport/gate",
    "redis+sentinel://:{pw}@127.0.0.1:{port},127.0.0.1:99999/gate",
    "redis+sentinel://user:{pw}@127.0.0.1:{port}/gate?ssl=true",  # options are not read
    "redis+cluster://:{pw}@127.0.0.1:notaport",
    "redis+cluster://:{pw}@127.0.0.1:99999",
    "redis+cluster://:{pw}@127.0.0.1:{port},127.0.0.1:",
    "redis+cluster://:{pw}@127.0.0.1:{port},[::1:7000",
    "redis+cluster://:{pw}@127.0.0.1:{port}/3",  # a cluster has db 0 only
    "redis+cluster://user:{pw}@127.0.0.1:{port}?ssl=true",  # options are not read
    "redis://:{pw}@127.0.0.1:notaport/0",
    "redis://:{pw}@127.0.0.1:70000/0",
    "redis://:{pw}@127.0.0.1:{port}/notadb",  # redis-py alone would take db 0
    "redis://user:{pw}@127.0.0.1:{port}/0/1",
    "redis://:{pw}@[::1/0",
    "redis://:{pw}@127.0.0.1:{port}/0?socket_timeout=soon",
    "redis://:{pw}@127.0.0.1:{port}/0?no_such_option=1",
    "rediss://:{pw}@127.0.0.1:notaport/0",
    "rediss://user:{pw}@127.0.0.1:{port}/x",
    "rediss://:{pw}@127.0.0.1:{port}/0?db=one",
    "unix://:{pw}@/tmp/no-such.sock?db=abc",
]


def _secret_free(text: str) -> bool:
    return SECRET not in text and "pw-SECR" not in text


@pytest.mark.parametrize("template", MALFORMED)
def test_a_malformed_url_is_a_config_error_without_its_password(
    redis_server: RedisServer, template: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = template.format(pw=SECRET, port=redis_server.port)
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as raised:
        gate = PromotionGate.from_url(url, PromotionConfig(name=f"url-{uuid.uuid4().hex[:6]}"))
        OPEN_GATES.append(gate)
    error = raised.value
    assert error.field == "url"
    assert url.partition("://")[0] + "://" in str(error)  # it shows the URL, redacted
    assert ":***@" in str(error)
    everything = "".join(traceback.format_exception(error)) + repr(error) + repr(error.value)
    assert _secret_free(everything), everything
    assert _secret_free(" ".join(record.getMessage() for record in caplog.records))


def test_a_password_in_a_url_that_works_reaches_no_log_line_or_repr(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.cli("ACL", "SETUSER", "urluser", "reset", "on", f">{SECRET}", "~*", "&*", "+@all")
    url = f"redis://urluser:{SECRET}@127.0.0.1:{redis_server.port}/0"
    with caplog.at_level(logging.DEBUG):
        config = PromotionConfig(
            name=f"url-{uuid.uuid4().hex[:6]}", environment=Environment.canary(50)
        )
        gate = PromotionGate.from_url(url, config)
        OPEN_GATES.append(gate)
        gate.set_traffic_percent(10)
        shown = [
            repr(gate),
            repr(gate._store),  # type: ignore[attr-defined]
            repr(gate._windows),  # type: ignore[attr-defined]
            repr(gate.config),
            str(gate.status().to_dict()),
        ]
    assert _secret_free(" ".join(shown))
    assert _secret_free(" ".join(record.getMessage() for record in caplog.records))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:s3cret@host/0", "rediss://user:***@host/0"),
        ("redis+sentinel://:s3:cr@t@a:1,b:2/svc", "redis+sentinel://:***@a:1,b:2/svc"),
        ("redis+cluster://user@host:7000", "redis+cluster://user@host:7000"),
        ("redis://host:6379/0?password=s3cret&db=1", "redis://host:6379/0?password=***&db=1"),
        ("unix://:s3cret@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        ("redis://host/0", "redis://host/0"),
    ],
)
def test_redacted_url_hides_the_password_only(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
