"""``gate-middleware``: watch and steer a rollout from the terminal.

It talks to the admin API (``--url``, or ``GATE_MIDDLEWARE_URL``) with a
bearer token (``--token``, or ``GATE_MIDDLEWARE_TOKEN``)::

    gate-middleware [--rollout NAME] COMMAND ...
    gate-middleware status [--watch] [--json]
    gate-middleware status --wait [--timeout DURATION]
    gate-middleware rollouts [--json]
    gate-middleware create FILE [--scenario NAME] [--json]
    gate-middleware retire NAME | reinstate NAME
    gate-middleware plan [show|pause|resume|abort|retry|skip] ...
    gate-middleware history [--json | --jsonl] [--since TIME] [--limit N]
    gate-middleware promote [staging|production] [--force]
    gate-middleware traffic PERCENT
    gate-middleware canary PERCENT --flag NAME ...
    gate-middleware rollback --reason TEXT
    gate-middleware flags enable|disable NAME
    gate-middleware demo [--scenario healthy|faulty|manual|metric]
    gate-middleware hash-token < token-file

``--rollout NAME`` (or ``GATE_MIDDLEWARE_ROLLOUT``) picks one rollout of a
``Rollouts`` set: it goes with every call as ``?rollout=NAME`` (a set of
several needs it for every command but ``status``, ``rollouts``,
``create``, ``retire`` and ``reinstate``). ``status`` without it shows every
rollout of the set; ``status --wait`` follows one, so a set of several
needs it. ``create FILE`` adds a rollout to the set while the app runs
(``POST /rollouts``, the admin role): the table of a scenario file's
``[scenarios.NAME]`` (the format ``PromotionConfig.from_toml`` reads;
``--scenario NAME`` picks one of several), its ``name`` naming the new
rollout; a ``store`` key is left out (the rollout is kept in the set's
store), and a set without a store serves it in that process only, which is
printed as a warning.

Exit codes: 0 done, 1 refused by the gate (the reason is printed) or for
the token's role (the role needed is printed), 2 usage or connection error. ``status --wait`` watches the rollout for a pipeline
(as ``kubectl argo rollouts status`` does): 0 once it reaches production,
1 on a rollback or abort, 3 when ``--timeout`` (``90s``, ``15m``, ``2h``)
runs out first, printing a line whenever the step or the verdict changes.
Each change is recorded with the token's operator as its actor, and
``cli:<login>`` (any login name, in UTF-8) beside it as the client's note
(the ``X-Gate-Actor`` header). Needs ``pip install "gate-middleware[cli]"`` (click and
rich); the demo needs ``[demo]``.

The token goes to the ``--url`` origin only: a redirect to another scheme,
host or port is refused (as is a redirected POST, which would turn into a
GET), and plain ``http://`` is refused for any host but a loopback address
unless ``--allow-http`` says the network is trusted. Everything printed goes
through rich ``Text`` with control characters shown escaped, so nothing the
server sends can drive the terminal.
"""

from __future__ import annotations

import getpass
import importlib
import ipaddress
import json
import sys
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPMessage
from typing import IO, Any, NoReturn

from gate_middleware.domain.config import scenario_table
from gate_middleware.domain.naming import TOKEN_EXPECTED, valid_token
from gate_middleware.domain.plan import ROLLBACK_HELD
from gate_middleware.errors import ConfigError
from gate_middleware.operate.admin import route_named
from gate_middleware.operate.operators import token_sha256
from gate_middleware.version import __version__

try:
    import click
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise SystemExit(
        f'gate-middleware\'s command line needs click and rich: pip install "gate-middleware[cli]" ({exc})'
    ) from exc

DEFAULT_URL = "http://127.0.0.1:8000/gate"
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
HISTORY_PAGE = 200  # events a request, when the CLI pages through the history
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90``, ``90s``, ``15m``, ``2h``, ``1d``."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _UNITS and value[-1:] else ""
    number = value[: len(value) - len(unit)]
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m or 2h") from None
    if not 0 < seconds < float("inf"):
        raise click.BadParameter(f"{text!r} is not a positive duration")
    return seconds


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (a container without one)
        return "cli"


def header_text(text: str) -> str:
    """``text`` as a header value that goes out as UTF-8 (http.client sends
    Latin-1: each UTF-8 byte is handed over as the Latin-1 character of that
    byte). A login name the locale could not decode keeps its bytes; control
    characters are dropped (a server refuses a header that holds one)."""
    printable = "".join(c for c in text if c.isprintable() or "\udc80" <= c <= "\udcff")
    return printable.encode("utf-8", "surrogateescape").decode("latin-1")


class AdminError(Exception):
    """The admin API answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class InsecureURL(ValueError):
    """The admin URL would send the token where it should not go."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def is_loopback(host: str) -> bool:
    if host.rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_http: bool) -> None:
    """Refuse a URL the token must not be sent to (raises ``InsecureURL``)."""
    scheme, host, _ = _origin(url)
    if scheme not in ("http", "https") or not host:
        raise InsecureURL(f"--url must be an http:// or https:// address, not {url!r}")
    if scheme == "http" and not is_loopback(host) and not allow_http:
        raise InsecureURL(
            f"refusing to send the admin token over plain http to {host}: use https, "
            "or pass --allow-http on a network you trust"
        )


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same origin, and never for a POST."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        method = req.get_method()
        if method not in ("GET", "HEAD"):
            fp.close()
            raise AdminError(
                code,
                f"the admin API redirected a {method} to {newurl}: not followed "
                "(it would arrive as a GET); point --url at where the API is",
            )
        if _origin(newurl) != _origin(req.full_url):
            fp.close()
            raise AdminError(
                code,
                f"refusing to follow a redirect to another origin ({newurl}): "
                "the token is only sent to --url's scheme, host and port",
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class AdminClient:
    """A small JSON client for the admin API (standard library only)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float = 10.0,
        *,
        allow_http: bool = False,
        rollout: str | None = None,
    ) -> None:
        check_url(url, allow_http=allow_http)
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        #: The rollout of a set every call of one rollout names (``?rollout=``).
        self.rollout = rollout
        self._opener = urllib.request.build_opener(_SameOriginRedirects())

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(f"{self.url}/{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("X-Gate-Actor", header_text(cli_actor()))
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            try:
                message = str(json.loads(exc.read())["error"])
            except (ValueError, KeyError, TypeError):
                message = str(exc.reason)
            raise AdminError(exc.code, message) from exc
        try:
            return json.loads(raw or b"{}")
        except ValueError as exc:
            raise AdminError(
                status, "the answer is not JSON: is --url where the admin API is mounted?"
            ) from exc

    def call(
        self,
        route: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        **parameters: str,
    ) -> Any:
        """Call the admin route named ``route`` (its operationId in
        ``gate_middleware.operate.admin.ROUTES``), filling in its path's
        ``parameters`` and adding the ``query``."""
        found = route_named(route)
        path = found.url(**parameters).lstrip("/")
        if self.rollout is not None and "rollout" in found.query:
            query = {**(query or {}), "rollout": self.rollout}
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return self.request(found.method, path, body)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("getStatus")
        return result

    def history(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("getHistory")["events"]
        return result


def printable(text: object, style: str = "") -> Text:
    """``text`` as rich ``Text``, control characters shown escaped (``\\x1b``):
    a reason or name from the server cannot move the cursor, ring the bell or
    forge a line."""
    escaped = "".join(
        c.encode("unicode_escape").decode("ascii")
        if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")
        else c
        for c in str(text)
    )
    return Text(escaped, style)


def environment_label(environment: dict[str, Any]) -> str:
    if environment["name"] == "canary":
        return f"canary ({environment['traffic_percent']:g}%)"
    return str(environment["name"])


def event_line(event: dict[str, Any]) -> str:
    when = event["timestamp"].replace("T", " ")[:19]
    actor = f"  [by {event['actor']}]" if event.get("actor") else ""
    if event["kind"] == "rollback":
        origin = environment_label(event["environment"])
        if event["feature"] != "all":
            return f"{when}  flag off: {event['feature']} (in {origin}){actor}"
        what = "automatic rollback" if event["automatic"] else "rollback"
        return f"{when}  {what}: {origin} -> production: {event['reason']}{actor}"
    if event["action"] == "enable_flag":
        flag = event["reason"].rpartition(": ")[2]
        origin = environment_label(event["to_environment"])
        return f"{when}  flag on: {flag} (in {origin}){actor}"
    forced = " (forced)" if event["forced"] else ""
    origin = environment_label(event["from_environment"])
    target = environment_label(event["to_environment"])
    why = f": {event['reason']}" if event.get("reason") else ""
    return f"{when}  {event['action']}: {origin} -> {target}{forced}{why}{actor}"


def render_status(status: dict[str, Any]) -> Group:
    """A compact view of the rollout (used by ``status`` and the demo)."""
    health = status["health"]
    verdict = str(health["verdict"])
    seen = health["canary_requests"] + health["production_requests"]
    slo = f"{status['slo']['compliance']:.2%}" if seen else "– (no requests yet)"

    def p99(side: str) -> str:  # no request, no percentile: not "0.0 ms"
        if not health[f"{side}_requests"]:
            return "–"
        return f"{health[f'{side}_p99_latency'] * 1000:.1f} ms"

    def rate(side: str) -> str:
        return f"{health[f'{side}_error_rate']:.2%}" if health[f"{side}_requests"] else "–"

    colour = {"HEALTHY": "green", "MONITOR": "yellow", "ROLLBACK": "red"}.get(verdict, "white")
    head = Text.assemble(
        printable(f"{status['rollout']}  ", "bold"),
        printable(environment_label(status["environment"]), "bold magenta"),
        f"   health {health['health_score']:.2f} ",
        printable(verdict, f"bold {colour}"),
        f"   SLO {slo} (min {status['slo']['threshold']:.0%})",
    )
    table = Table(box=None, pad_edge=False)
    for column in ("variant", "requests", "error rate", "p99"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    table.add_row(
        Text("canary", "dark_orange"),
        printable(health["canary_requests"]),
        Text(rate("canary")),
        Text(p99("canary")),
    )
    table.add_row(
        Text("production", "blue"),
        printable(health["production_requests"]),
        Text(rate("production")),
        Text(p99("production")),
    )
    flags = status["flags"]
    flag_line = printable(
        f"flags: stable {', '.join(flags['stable']) or '-'}; release {', '.join(flags['release']) or '-'}"
    )
    events = [printable(event_line(e), "dim") for e in status["recent_events"][-3:]]
    parts: list[Any] = [head, table]
    metrics = status.get("metrics") or []
    if metrics:
        parts.append(metrics_table(metrics))
    undefined = status.get("undefined_metrics") or {}
    if undefined:
        names = ", ".join(f"{name} ({count})" for name, count in undefined.items())
        parts.append(printable(f"tracked but not defined (ignored): {names}", "dim"))
    return Group(*parts, flag_line, printable(health["recommendation"], "italic"), *events)


def metrics_table(metrics: list[dict[str, Any]]) -> Table:
    """The business metrics: each side's per-session figure and the change."""
    table = Table(box=None, pad_edge=False)
    for column in ("metric", "canary", "production", "change", "sessions"):
        table.add_column(column, justify="left" if column == "metric" else "right")

    def figure(metric: dict[str, Any], side: str) -> str:
        mean = float(metric[side]["mean"])
        return f"{mean:.2%}" if metric["kind"] == "conversion" else f"{mean:.4g}"

    for metric in metrics:
        judged = "" if metric["guardrail"] else " (reported)"
        table.add_row(
            printable(f"{metric['name']}{judged}"),
            Text(figure(metric, "canary"), "dark_orange"),
            Text(figure(metric, "production"), "blue"),
            Text(f"{float(metric['relative_change']):+.1%}"),
            printable(f"{metric['canary']['sessions']} / {metric['production']['sessions']}"),
        )
    return table


_OUT = Console(highlight=False, soft_wrap=True)
_ERR = Console(stderr=True, highlight=False, soft_wrap=True)


def say(text: object) -> None:
    """Print one line for the operator (through ``printable``)."""
    _OUT.print(printable(text))


def _fail(message: str, code: int) -> NoReturn:
    _ERR.print(printable(message))
    raise SystemExit(code)


class _AdminGroup(click.Group):
    """Turns an answer of an unexpected shape into exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            client = ctx.obj
            where = client.url if isinstance(client, AdminClient) else "the admin API"
            _fail(
                f"unexpected answer from {where} ({type(exc).__name__}: {exc}): "
                "is --url where the admin API is mounted?",
                EXIT_USAGE,
            )


def call(
    ctx: click.Context,
    route: str,
    body: dict[str, Any] | None = None,
    query: dict[str, str] | None = None,
    **parameters: str,
) -> Any:
    """Call the admin route named ``route``; exit 1 if the gate refuses (or
    the token's role does not reach), 2 on other errors."""
    client: AdminClient = ctx.obj
    try:
        return client.call(route, body, query, **parameters)
    except AdminError as exc:
        if exc.status == 409:
            _fail(f"refused by the gate: {exc}", EXIT_REFUSED)
        if exc.status == 403:
            _fail(f"refused for the token's role: {exc}", EXIT_REFUSED)
        if exc.status == 401:
            _fail(
                f"error 401: {exc}: give the admin token with --token or GATE_MIDDLEWARE_TOKEN",
                EXIT_USAGE,
            )
        _fail(f"error {exc.status}: {exc}", EXIT_USAGE)
    except (urllib.error.URLError, OSError) as exc:
        _fail(f"cannot reach the admin API at {client.url}: {exc}", EXIT_USAGE)


@click.group(cls=_AdminGroup)
@click.option(
    "--url",
    envvar="GATE_MIDDLEWARE_URL",
    default=DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    help="Where the admin API is mounted.",
)
@click.option(
    "--token",
    envvar="GATE_MIDDLEWARE_TOKEN",
    show_envvar=True,
    help="The admin bearer token (its operator's role decides what it may do).",
)
@click.option(
    "--allow-http",
    is_flag=True,
    envvar="GATE_MIDDLEWARE_ALLOW_HTTP",
    show_envvar=True,
    help="Send the token over plain http to a host that is not loopback.",
)
@click.option(
    "--rollout",
    envvar="GATE_MIDDLEWARE_ROLLOUT",
    show_envvar=True,
    default=None,
    help="The rollout of a Rollouts set to watch or steer (sent as ?rollout=NAME).",
)
@click.version_option(__version__, "--version", prog_name="gate-middleware")
@click.pass_context
def main(
    ctx: click.Context, url: str, token: str | None, allow_http: bool, rollout: str | None
) -> None:
    """Watch and steer a gate-middleware rollout through its admin API."""
    if ctx.invoked_subcommand in ("demo", "hash-token"):
        return  # the demo starts its own server; hash-token needs none
    try:
        ctx.obj = AdminClient(url, token, allow_http=allow_http, rollout=rollout)
    except InsecureURL as exc:
        _fail(str(exc), EXIT_USAGE)


def outcome(status: dict[str, Any]) -> int | None:
    """0 when the rollout has reached production, 1 when it was rolled back or
    aborted (or its plan is held on a ROLLBACK verdict the gate may not act
    on), ``None`` while it is on its way."""
    plan = status.get("plan") or {}
    position = plan.get("position") or {}
    if position.get("status") == "done":
        return 0
    if position.get("status") in ("rolled_back", "aborted"):
        return 1
    if position.get("status") == "paused" and ROLLBACK_HELD in (position.get("reason") or ""):
        return 1
    if status["environment"]["name"] != "production":
        return None
    releases = [
        event
        for event in status["recent_events"]
        if event["kind"] == "promotion" or event.get("feature") == "all"
    ]
    if releases and releases[-1]["kind"] == "rollback":
        return 1
    return 0


def progress_line(status: dict[str, Any]) -> str:
    """One line: where the rollout is, its verdict, and the plan's bake and ETA."""
    line = f"{environment_label(status['environment'])}  {status['health']['verdict']}"
    plan = status.get("plan") or {}
    position = plan.get("position")
    if position:
        steps = plan["steps"]
        line += (
            f"  step {position['index'] + 1}/{len(steps)} ({plan['current']['label']}, "
            f"{position['status']})  bake {plan['bake']['fraction']:.0%}"
        )
        if plan.get("eta_seconds") is not None:
            line += f"  ETA {plan['eta_seconds']:.0f} s"
        waiting = plan.get("waiting_for") or position.get("reason")
        if waiting:
            line += f"  {waiting}"
    return line


def all_events(ctx: click.Context, since: str | None = None, limit: int | None = None) -> list[Any]:
    """The history (after ``since``, at most ``limit`` events), page by page."""
    events: list[dict[str, Any]] = []
    while limit is None or len(events) < limit:
        size = HISTORY_PAGE if limit is None else min(HISTORY_PAGE, limit - len(events))
        query = {"limit": str(size)}
        if since is not None:
            query["since"] = since
        page = call(ctx, "getHistory", query=query)
        events.extend(page["events"])
        since = page.get("next")
        if since is None:
            break
    return events


def end_of_release(events: list[dict[str, Any]]) -> tuple[int, str] | None:
    """How the release in progress before ``events`` ended: (0, how) when it
    reached production, (1, why) when it was rolled back; ``None``: not yet."""
    for event in events:
        if event["kind"] == "rollback" and event["feature"] == "all":
            return 1, f"rolled back: {event['reason']}"
        if event["kind"] == "promotion" and event["to_environment"]["name"] == "production":
            return 0, "reached production"
    return None


def wait_for_outcome(ctx: click.Context, timeout: float, interval: float) -> NoReturn:
    """Follow the release in progress when the wait began: its outcome, even
    if another release has started since."""
    deadline = time.monotonic() + timeout
    last = ""
    start = all_events(ctx)
    # Where the history stood: the events after it are this release's and later ones'.
    cursor = None
    if start:
        stamp = start[-1]["timestamp"]
        cursor = f"{stamp}~{sum(1 for event in start if event['timestamp'] == stamp)}"
    release = None
    while True:
        current = call(ctx, "getStatus")
        if release is None:
            release = current.get("release")
        line = progress_line(current)
        if line.split("  bake")[0] != last.split("  bake")[0]:
            say(line)
        last = line
        result = outcome(current)
        if current.get("release") != release:  # another release began: how did ours end?
            ended = end_of_release(all_events(ctx, cursor))
            if ended is None:
                _fail(
                    f"release {release} ended before release {current.get('release')} began, "
                    "but the history no longer says how",
                    EXIT_USAGE,
                )
            say(f"release {release} {ended[1]}")
            raise SystemExit(0 if ended[0] == 0 else EXIT_REFUSED)
        if result == 0:
            say("reached production")
            raise SystemExit(0)
        if result == 1:
            events = [e for e in current["recent_events"] if e["kind"] == "rollback"]
            position = (current.get("plan") or {}).get("position") or {}
            if position.get("status") == "paused":
                say(f"held: {position.get('reason')}")
            else:
                say("rolled back" + (f": {events[-1]['reason']}" if events else ""))
            raise SystemExit(EXIT_REFUSED)
        if time.monotonic() >= deadline:
            say(f"timed out after {timeout:g} s: {line}")
            raise SystemExit(EXIT_TIMEOUT)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


@main.command()
@click.option("--watch", is_flag=True, help="Redraw a live view until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between redraws.")
@click.option("--iterations", default=0, help="With --watch: stop after N redraws (0: never).")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the outcome: exit 0 in production, 1 on rollback or abort, 3 on timeout.",
)
@click.option(
    "--timeout", default="1h", show_default=True, help="With --wait: how long (90s, 15m, 2h)."
)
@click.pass_context
def status(
    ctx: click.Context,
    watch: bool,
    as_json: bool,
    interval: float,
    iterations: int,
    wait: bool,
    timeout: str,
) -> None:
    """The rollout now: environment, traffic, health of both variants, SLO,
    flags (without --rollout: every rollout of a set, one after the other)."""
    if wait:
        wait_for_outcome(ctx, parse_duration(timeout), interval)
    if as_json:
        click.echo(json.dumps(status_answer(ctx), indent=2))
        return
    console = _OUT
    if not watch:
        console.print(render_answer(status_answer(ctx)))
        return
    count = 0
    with Live(render_answer(status_answer(ctx)), console=console, auto_refresh=False) as live:
        try:
            while iterations <= 0 or count < iterations - 1:
                time.sleep(interval)
                live.update(render_answer(status_answer(ctx)), refresh=True)
                count += 1
        except KeyboardInterrupt:
            pass


def status_answer(ctx: click.Context) -> dict[str, Any]:
    """``GET /status`` of the one rollout (``--rollout``, or the only one
    served), or ``GET /rollouts`` when a set serves several or none."""
    if ctx.obj.rollout is not None:
        answer: dict[str, Any] = call(ctx, "getStatus")
        return answer
    listed: dict[str, Any] = call(ctx, "getRollouts")
    if len(listed["rollouts"]) == 1:
        only: dict[str, Any] = listed["rollouts"][0]["status"]
        return only
    return listed


def render_answer(answer: dict[str, Any]) -> Group:
    """One rollout's status, or each of a set's (from ``status_answer``)."""
    if "rollouts" not in answer:
        return render_status(answer)
    parts: list[Any] = []
    for rollout in answer["rollouts"]:
        parts.extend([render_status(rollout["status"]), Text("")])
    if not answer["rollouts"]:
        parts.append(printable("no rollout is served"))
    if answer["retired"]:
        parts.append(printable(f"retired: {', '.join(answer['retired'])}", "dim"))
    return Group(*parts)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the events as one JSON array.")
@click.option(
    "--jsonl", "as_jsonl", is_flag=True, help="Print one JSON event a line (an audit export)."
)
@click.option("--since", default=None, help="Only the events after this ISO 8601 time.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.pass_context
def history(
    ctx: click.Context, as_json: bool, as_jsonl: bool, since: str | None, limit: int | None
) -> None:
    """Every change to the rollout, oldest first, with who made it."""
    if as_json and as_jsonl:
        raise click.UsageError("--json and --jsonl: choose one")
    events = all_events(ctx, since, limit)
    if as_json:
        click.echo(json.dumps(events, indent=2))
        return
    if as_jsonl:
        for event in events:
            click.echo(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
        return
    for event in events:
        say(event_line(event))
    if not events:
        say("no events yet")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print GET /rollouts as JSON.")
@click.pass_context
def rollouts(ctx: click.Context, as_json: bool) -> None:
    """Each rollout of the set: its environment, canary traffic and verdict (or retired)."""
    listed = call(ctx, "getRollouts")
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("rollout", "environment", "traffic", "verdict", "added by"):
        table.add_column(column, justify="right" if column == "traffic" else "left")
    for rollout in listed["rollouts"]:
        status = rollout["status"]
        environment = status["environment"]
        created = rollout.get("created")
        table.add_row(
            printable(rollout["name"], "bold"),
            printable(environment["name"]),
            printable(f"{float(environment['traffic_percent']):g}%"),
            printable("retired" if status.get("retired") else status["health"]["verdict"]),
            printable(f"{created['actor']}, {created['added_at'][:19]}" if created else "-"),
        )
    _OUT.print(table)
    if listed["retired"]:
        say(f"retired: {', '.join(listed['retired'])}")
    for name, why in (listed.get("refused") or {}).items():
        say(f"not served here: {name}: {why}")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option(
    "--scenario",
    default=None,
    help="The scenario of FILE to add ([scenarios.NAME]; left out: the file's only one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer as JSON.")
@click.pass_context
def create(ctx: click.Context, file: str, scenario: str | None, as_json: bool) -> None:
    """Add the rollout of a scenario FILE to the set while the app runs."""
    try:
        where, table = scenario_table(file, scenario)
    except (ConfigError, OSError) as exc:
        _fail(f"{file}: {exc}", EXIT_USAGE)
    if "store" in table:
        table = {key: value for key, value in table.items() if key != "store"}
        _ERR.print(
            printable(
                f"note: {where}.store is not sent: the new rollout is kept in the set's store"
            )
        )
    try:
        json.dumps(table, allow_nan=False)
    except (TypeError, ValueError) as exc:
        _fail(f"{file}: {where} holds a value JSON cannot carry ({exc})", EXIT_USAGE)
    result = call(ctx, "createRollout", table)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        status = result["status"]
        say(
            f"rollout {result['rollout']} created: {environment_label(status['environment'])}; "
            f"the rollouts now: {', '.join(result['rollouts'])}"
        )
    if result.get("warning"):
        _ERR.print(printable(f"warning: {result['warning']}"))


@main.command()
@click.argument("name")
@click.pass_context
def retire(ctx: click.Context, name: str) -> None:
    """Stop serving the rollout NAME of a set in every process (its flags off)."""
    result = call(ctx, "retireRollout", {}, name=name)
    say(f"rollout {name} retired; retired now: {', '.join(result['retired'])}")


@main.command()
@click.argument("name")
@click.pass_context
def reinstate(ctx: click.Context, name: str) -> None:
    """Serve the retired rollout NAME again, where it stood."""
    call(ctx, "reinstateRollout", {}, name=name)
    say(f"rollout {name} reinstated")


@main.command("hash-token")
def hash_token() -> None:
    """Print the SHA-256 of the token on stdin, for an operator's token_sha256."""
    token = sys.stdin.read().strip()
    if not valid_token(token):
        _fail(f"the token on stdin is not a bearer token of {TOKEN_EXPECTED}", EXIT_USAGE)
    click.echo(token_sha256(token))


@main.command()
@click.argument("target", required=False, type=click.Choice(["staging", "production"]))
@click.option("--force", is_flag=True, help="Skip the health and SLO checks.")
@click.pass_context
def promote(ctx: click.Context, target: str | None, force: bool) -> None:
    """Promote the release (to the next stage when TARGET is left out)."""
    body: dict[str, Any] = {"force": force}
    if target:
        body["target"] = target
    result = call(ctx, "promote", body)
    say(f"promoted: now {environment_label(result['environment'])}")


@main.command()
@click.argument("percent", type=float)
@click.pass_context
def traffic(ctx: click.Context, percent: float) -> None:
    """Ramp the canary to PERCENT % of sessions."""
    result = call(ctx, "setTraffic", {"percent": percent})
    say(f"traffic set: now {environment_label(result['environment'])}")


@main.command()
@click.argument("percent", type=float)
@click.option("--flag", "flags", multiple=True, help="A flag of the release (repeatable).")
@click.pass_context
def canary(ctx: click.Context, percent: float, flags: tuple[str, ...]) -> None:
    """Start the next release from production at PERCENT %."""
    result = call(ctx, "startCanary", {"percent": percent, "flags": list(flags)})
    say(f"canary started: now {environment_label(result['environment'])}")


@main.command()
@click.option("--reason", required=True, help="Why: kept in the history.")
@click.pass_context
def rollback(ctx: click.Context, reason: str) -> None:
    """Roll the release in progress back to production."""
    result = call(ctx, "rollback", {"reason": reason})
    say(f"rolled back from {environment_label(result['event']['environment'])}: {reason}")


@main.command()
@click.argument("action", type=click.Choice(["enable", "disable"]))
@click.argument("name")
@click.pass_context
def flags(ctx: click.Context, action: str, name: str) -> None:
    """Turn a flag on, or take it from every session."""
    call(ctx, {"enable": "enableFlag", "disable": "disableFlag"}[action], name=name)
    say(f"flag {name} {action}d")


def plan_lines(plan: dict[str, Any] | None) -> list[str]:
    if plan is None:
        return ["the gate has no rollout plan"]
    position = plan.get("position")
    lines = []
    for index, step in enumerate(plan["steps"]):
        here = position is not None and index == position["index"]
        gate = "  (manual gate)" if step["manual"] else ""
        mark = ">" if here else " "
        lines.append(
            f"{mark} {index + 1}  {step['label']:<12} bake {step['bake_seconds']:g} s{gate}"
        )
    if position is None:
        lines.append("no release is following the plan")
    else:
        lines.append(progress_line_of_plan(plan))
    return lines


def progress_line_of_plan(plan: dict[str, Any]) -> str:
    position = plan["position"]
    line = f"{position['status']}: bake {plan['bake']['fraction']:.0%}"
    if plan.get("eta_seconds") is not None:
        line += f", production in {plan['eta_seconds']:.0f} s at the earliest"
    waiting = plan.get("waiting_for") or position.get("reason")
    if waiting:
        line += f" ({waiting})"
    return line


@main.group(cls=_AdminGroup, invoke_without_command=True)
@click.pass_context
def plan(ctx: click.Context) -> None:
    """The rollout plan: show it (the default), or pause, resume, abort, retry, skip."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(plan_show)


@plan.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan_show(ctx: click.Context, as_json: bool = False) -> None:
    """The steps, the current one, its bake and the ETA."""
    shown = call(ctx, "getPlan")["plan"]
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    for line in plan_lines(shown):
        say(line)


@plan.command("pause")
@click.option("--reason", default="paused by an operator", help="Why: kept in the history.")
@click.pass_context
def plan_pause(ctx: click.Context, reason: str) -> None:
    """Stop the plan where it is (a failing verdict still rolls back)."""
    call(ctx, "pausePlan", {"reason": reason})
    say("plan paused")


@plan.command("resume")
@click.pass_context
def plan_resume(ctx: click.Context) -> None:
    """Go on after a pause, or through a manual gate."""
    result = call(ctx, "resumePlan", {})
    say(f"plan resumed: now {environment_label(result['environment'])}")


@plan.command("abort")
@click.option("--reason", required=True, help="Why: kept in the history.")
@click.pass_context
def plan_abort(ctx: click.Context, reason: str) -> None:
    """Roll the release back and end its plan."""
    call(ctx, "abortPlan", {"reason": reason})
    say(f"aborted: {reason}")


@plan.command("retry")
@click.pass_context
def plan_retry(ctx: click.Context) -> None:
    """Start the plan again for the release last rolled back."""
    result = call(ctx, "retryPlan", {})
    say(f"plan restarted: now {environment_label(result['environment'])}")


@plan.command("skip")
@click.argument("step", required=False, type=int)
@click.option("--force", is_flag=True, help="Skip the health and SLO checks.")
@click.pass_context
def plan_skip(ctx: click.Context, step: int | None, force: bool) -> None:
    """Move to step number STEP now, as `plan` lists it (from 1; left out:
    production, "promote now")."""
    body: dict[str, Any] = {"force": force}
    if step is not None:
        body["step"] = step
    result = call(ctx, "skipPlan", body)
    say(f"skipped: now {environment_label(result['environment'])}")


@main.command()
@click.option(
    "--scenario",
    type=click.Choice(["healthy", "faulty", "manual", "metric"]),
    default="healthy",
    show_default=True,
    help="healthy: the plan reaches production; faulty: the judge rolls it back; "
    "manual: the plan stops at a manual gate; metric: no checkout completes on the "
    "canary, and the business metric's guardrail rolls it back.",
)
@click.option("--duration", default=60.0, show_default=True, help="Longest run, in seconds.")
@click.option("--users", default=50, show_default=True, help="Simulated users at a time.")
@click.option("--keep-serving", is_flag=True, help="Leave the app and dashboard up afterwards.")
@click.option("--port", default=0, help="Port on 127.0.0.1 (0: a free one).")
def demo(scenario: str, duration: float, users: int, keep_serving: bool, port: int) -> None:
    """Run a real app under uvicorn and watch its plan carry a release through the gate."""
    try:
        demo_module = importlib.import_module("gate_middleware.integrations.demo")
    except ImportError as exc:
        _fail(f'the demo needs: pip install "gate-middleware[demo]" ({exc})', EXIT_USAGE)
    raise SystemExit(demo_module.run_demo(scenario, duration, users, keep_serving, port))


if __name__ == "__main__":  # pragma: no cover
    main()
