"""The dashboard page in a real headless browser (Debian's Chromium, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
from starlette.applications import Starlette
from starlette.routing import Mount

from gate_middleware import Environment, PromotionConfig, PromotionGate
from gate_middleware.operate.admin import AdminASGIApp
from tests.servers import serving
from tests.support import FakeClock

TOKEN = "browser-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is not installed: ./dev test installs it (apt-get install chromium)")
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gate(clock: FakeClock) -> PromotionGate:
    # The wall clock moves with the fake clock, so samples and events are
    # seconds apart on the charts, as in a live app.
    start = time.time() - clock.now - 60
    gate = PromotionGate(
        PromotionConfig(
            environment=Environment.canary(10),
            feature_flags=["new_checkout_flow"],
            min_requests=20,
            auto_rollback_enabled=False,
        ),
        clock=clock,
        wall_clock=lambda: start + clock.now,
    )
    gate.enable_feature("dark_mode")
    for sample in range(8):
        for i in range(30):
            gate.record_request_outcome(f"s{i}", i % 20 != 0, 0.020 + i / 1000, variant="stable")
        for i in range(5):
            gate.record_request_outcome(f"c{i}", True, 0.025 + sample / 1000, variant="canary")
        gate.monitor_canary_health()  # one sample for the charts
        clock.advance(5)
    return gate


@pytest.fixture
def base(gate: PromotionGate) -> Iterator[str]:
    app = Starlette(routes=[Mount("/gate", AdminASGIApp(gate, token=TOKEN))])
    with serving(app) as url:
        yield url


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def shown(page: Page, element: str) -> str | None:
    return page.get_attribute(f"#{element}", "data-value")


def test_the_dashboard_shows_the_api_and_rolls_back(
    page: Page, base: str, gate: PromotionGate, clock: FakeClock, tmp_path: Path
) -> None:
    page.goto(f"{base}/gate/#token={TOKEN}")
    page.wait_for_selector('#environment[data-value="canary"]')
    assert "token" not in page.url  # the token leaves the address bar

    status = httpx.get(f"{base}/gate/status", headers=AUTH).json()
    health = status["health"]
    assert page.text_content("#environment") == "canary (10%)"
    assert shown(page, "traffic") == "10"
    for element, key in [
        ("canary-requests", "canary_requests"),
        ("production-requests", "production_requests"),
        ("canary-error-rate", "canary_error_rate"),
        ("production-error-rate", "production_error_rate"),
        ("canary-p99", "canary_p99_latency"),
        ("production-p99", "production_p99_latency"),
        ("health-score", "health_score"),
    ]:
        assert float(shown(page, element) or "nan") == pytest.approx(health[key]), element
    assert (
        page.text_content("#production-error-rate")
        == f"{health['production_error_rate'] * 100:.2f} %"
    )
    assert page.text_content("#verdict") == health["verdict"]
    flags = page.eval_on_selector_all("#flags .flag", "nodes => nodes.map(n => n.dataset.flag)")
    assert sorted(flags) == ["dark_mode", "new_checkout_flow"]
    # Both variants are drawn as time series over the window.
    lines = page.eval_on_selector_all(
        "#chart-error polyline.series", "nodes => nodes.map(n => n.dataset.key)"
    )
    assert lines == ["canary_error_rate", "production_error_rate"]
    assert page.eval_on_selector("#chart-p99 polyline.series", "n => n.points.length") == 8
    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("GATE_DASHBOARD_SCREENSHOT"):  # refreshes the README's picture
        shutil.copy(screenshot, os.environ["GATE_DASHBOARD_SCREENSHOT"])

    page.fill("#rollback-reason", "rolled back from the browser test")
    page.click("#btn-rollback")
    page.wait_for_selector('#environment[data-value="production"]')
    assert gate.environment == Environment.PRODUCTION
    [event] = gate.get_rollback_history()
    assert event.reason == "rolled back from the browser test"
    assert "Rolled back" in (page.text_content("#message") or "")
    assert page.is_disabled("#btn-rollback")

    # The rollback is marked on the charts once the next sample is in.
    clock.advance(5)
    gate.monitor_canary_health()
    page.wait_for_selector("#chart-error line.marker", state="attached", timeout=10_000)
    rows = page.eval_on_selector_all("#history tr", "rows => rows.map(r => r.dataset.kind)")
    assert rows == ["rollback", "promotion"]  # newest first: the rollback, then dark_mode's "on"


def test_a_wrong_token_gets_the_login_form(page: Page, base: str) -> None:
    page.goto(f"{base}/gate/#token=wrong-token-0123456789")
    page.wait_for_selector("#token-form:not([hidden])")
    assert page.is_hidden("#main")
    page.fill("#token-input", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector('#environment[data-value="canary"]')


COLLECT_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""


def test_the_page_runs_under_its_content_security_policy(page: Page, base: str) -> None:
    # The policy pins the inline script and style by hash: the page must work
    # with nothing else allowed (no style attributes, no eval).
    page.add_init_script(COLLECT_VIOLATIONS)
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text))
    page.goto(f"{base}/gate/#token={TOKEN}")
    page.wait_for_selector('#environment[data-value="canary"]')
    page.wait_for_selector("#chart-error polyline.series", state="attached")
    assert page.evaluate("window.__violations") == []
    assert [text for text in refused if "Content Security Policy" in text] == []


def test_opened_as_a_double_slash_the_page_calls_its_own_origin(
    page: Page, gate: PromotionGate
) -> None:
    # Mounted at the root and opened as "//", the page computed its API base
    # as "//": its calls went to hosts named "status" and "history", with the token.
    with serving(AdminASGIApp(gate, token=TOKEN)) as root:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{root}//#token={TOKEN}")
        page.wait_for_selector('#environment[data-value="canary"]', timeout=10_000)
        api_calls = [url for url in requested if url.endswith(("/status", "/history"))]
        assert api_calls
        assert all(url.startswith(root + "/") for url in requested), requested


def test_the_plan_panel_shows_the_plan_and_steers_it(page: Page, clock: FakeClock) -> None:
    from gate_middleware.domain.plan import RolloutPlan

    plan = RolloutPlan(steps=(1, 5, 25), bake_seconds=3600, staging_bake_seconds=3600)
    gate = PromotionGate(PromotionConfig(name="checkout", plan=plan), clock=clock, plan_timer=False)
    gate.start_canary(feature_flags=["new_checkout_flow"])
    app = Starlette(routes=[Mount("/gate", AdminASGIApp(gate, token=TOKEN))])
    with serving(app) as url:
        page.goto(f"{url}/gate/#token={TOKEN}")
        page.wait_for_selector('#plan-status[data-value="running"]')
        steps = page.eval_on_selector_all(
            "#plan-steps li", "items => items.map(i => i.textContent)"
        )
        assert steps[0] == "canary 1% · bake 3600 s" and steps[-1].startswith("production")
        assert page.get_attribute('#plan-steps li[data-step="1"]', "class") == "current"
        assert "production at the earliest" in (page.text_content("#plan-eta") or "")
        assert page.is_disabled("#btn-plan-retry") and page.is_disabled("#btn-plan-resume")
        page.click("#btn-plan-pause")
        page.wait_for_selector('#plan-status[data-value="paused"]')
        page.click("#btn-plan-resume")
        page.wait_for_selector('#plan-status[data-value="running"]')
        page.fill("#plan-reason", "totals look wrong")
        page.click("#btn-plan-abort")
        page.wait_for_selector('#plan-status[data-value="aborted"]')
        assert gate.environment == Environment.PRODUCTION
        page.click("#btn-plan-retry")
        page.wait_for_selector('#plan-status[data-value="running"]')
        assert gate.environment == Environment.canary(1)
        page.click("#btn-plan-now")  # refused: no evidence yet
        page.wait_for_selector("#message.error")
        assert "Refused by the gate" in (page.text_content("#message") or "")
    actions = [(getattr(e, "action", "rollback"), e.actor) for e in gate.get_history()]
    assert actions[1:] == [
        ("pause", "admin (client note: dashboard)"),
        ("resume", "admin (client note: dashboard)"),
        ("rollback", "admin (client note: dashboard)"),
        ("retry", "admin (client note: dashboard)"),
    ]


def test_the_metrics_table_shows_each_business_metric(page: Page, clock: FakeClock) -> None:
    from gate_middleware.domain.metrics import MetricDefinition

    gate = PromotionGate(
        PromotionConfig(
            name="shop",
            environment=Environment.canary(50),
            min_requests=20,
            metrics=[
                MetricDefinition("checkout_completed", tolerance=0.05),
                MetricDefinition("order_value", kind="mean", guardrail=False),
            ],
        ),
        clock=clock,
    )
    for number in range(200):
        decision = gate.route_request(f"visitor-{number}")
        gate.record_request_outcome(f"visitor-{number}", True, 0.02, decision=decision)
        if number % 3 == 0:
            decision.track("checkout_completed")
            decision.track("order_value", 30.0)
    gate.route_request("visitor-1").track("chekout")  # misspelt: counted, ignored
    app = Starlette(routes=[Mount("/gate", AdminASGIApp(gate, token=TOKEN))])
    with serving(app) as url:
        page.goto(f"{url}/gate/#token={TOKEN}")
        page.wait_for_selector('#metrics tr[data-metric="checkout_completed"]')
        rows = page.eval_on_selector_all(
            "#metrics tr",
            "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))",
        )
        undefined = page.text_content("#metrics-undefined") or ""
    status = gate.status().to_dict()["metrics"]
    assert [row[0] for row in rows] == ["checkout_completed", "order_value"]
    checkout = rows[0]
    assert checkout[2].startswith("guardrail: a decrease beyond 5.00 %")
    canary = status[0]["canary"]
    assert checkout[3] == f"{canary['mean'] * 100:.2f} % · {canary['sessions']} sessions"
    assert rows[1][2] == "reported only"
    assert "chekout (1)" in undefined


def test_a_viewer_sees_no_controls_and_an_operator_only_its_own(
    page: Page, gate: PromotionGate
) -> None:
    """The page works read-only with a viewer's token and shows each role
    only the controls it may use."""
    viewer, operator = "viewer-token-0123456789abcdef", "operator-token-0123456789abcdef"
    operators = [
        {"name": "ada", "role": "admin", "token": TOKEN},
        {"name": "vera", "role": "viewer", "token": viewer},
        {"name": "otto", "role": "operator", "token": operator},
    ]
    app = Starlette(routes=[Mount("/gate", AdminASGIApp(gate, operators=operators))])
    controls = [
        "btn-promote",
        "btn-ramp",
        "btn-rollback",
        "btn-plan-pause",
        "btn-plan-resume",
        "btn-plan-now",
        "btn-plan-abort",
        "btn-plan-retry",
    ]
    with serving(app) as base:
        seen = {}
        for token in (viewer, operator, TOKEN):
            page.goto(f"{base}/gate/#token={token}")
            page.wait_for_selector('#environment[data-value="canary"]')
            page.wait_for_function("document.getElementById('operator').textContent !== ''")
            visible = {c for c in controls if page.is_visible(f"#{c}")}
            flag_off = page.is_visible('.flag[data-flag="dark_mode"] button')
            seen[page.text_content("#operator")] = (visible, flag_off)
            page.evaluate("sessionStorage.clear()")
            page.goto("about:blank")  # the next token's page is a new load, not a hash change
    assert seen == {
        "vera · viewer": (set(), False),
        "otto · operator": (
            {"btn-rollback", "btn-plan-pause", "btn-plan-resume", "btn-plan-abort"},
            True,
        ),
        "ada · admin": (set(controls), True),
    }


def test_no_data_reads_as_no_data(page: Page) -> None:
    """Before any request: "–", not "0.00 %" compliance or a 0.0 ms p99."""
    gate = PromotionGate(PromotionConfig(environment=Environment.canary(10), feature_flags=["x"]))
    app = Starlette(routes=[Mount("/gate", AdminASGIApp(gate, token=TOKEN))])
    with serving(app) as base:
        page.goto(f"{base}/gate/#token={TOKEN}")
        page.wait_for_selector('#environment[data-value="canary"]')
        for element in ("slo-compliance", "canary-p99", "production-p99", "canary-error-rate"):
            assert page.text_content(f"#{element}") == "–", element
    gate.close()


def test_a_set_of_rollouts_shows_each_in_its_own_section_and_steers_each_alone(
    page: Page, clock: FakeClock
) -> None:
    """Under a Rollouts set, one page: a section per rollout with its state,
    and each section's controls act on its own rollout only (?rollout=NAME)."""
    from gate_middleware.gate import Rollouts

    checkout = PromotionGate(
        PromotionConfig(name="checkout", environment=Environment.canary(10), min_requests=20),
        clock=clock,
    )
    search = PromotionGate(
        PromotionConfig(name="search", environment=Environment.canary(30), min_requests=20),
        clock=clock,
    )
    search.enable_feature("search_v2")
    rollouts = Rollouts([checkout, search])
    app = Starlette(routes=[Mount("/gate", AdminASGIApp(rollouts, token=TOKEN))])
    page.add_init_script(COLLECT_VIOLATIONS)
    with serving(app) as url:
        page.goto(f"{url}/gate/#token={TOKEN}")
        page.wait_for_selector('.rollout-view[data-rollout="search"] .badge[data-value="canary"]')
        sections = page.eval_on_selector_all(
            ".rollout-view", "nodes => nodes.map(n => n.dataset.rollout)"
        )
        assert sections == ["checkout", "search"]
        assert page.is_hidden("#main")
        assert page.text_content("#r0-rollout") == "checkout"
        assert page.text_content("#r0-environment") == "canary (10%)"
        assert page.text_content("#r1-rollout") == "search"
        assert page.text_content("#r1-environment") == "canary (30%)"
        flags = page.eval_on_selector_all(
            '.rollout-view[data-rollout="search"] .flag', "nodes => nodes.map(n => n.dataset.flag)"
        )
        assert flags == ["search_v2"]

        before = checkout.state
        page.fill("#r1-rollback-reason", "search results are empty")
        page.click("#r1-btn-rollback")
        page.wait_for_selector('#r1-environment[data-value="production"]')
        assert search.environment == Environment.PRODUCTION
        assert search.get_rollback_history()[-1].reason == "search results are empty"
        assert "Rolled back" in (page.text_content("#r1-message") or "")
        assert checkout.state == before  # the other section's rollout is untouched
        assert page.text_content("#r0-environment") == "canary (10%)"

        page.fill("#r0-ramp-percent", "20")
        page.click("#r0-btn-ramp")
        page.wait_for_selector('#r0-traffic[data-value="20"]')
        assert checkout.environment == Environment.canary(20)
        assert search.environment == Environment.PRODUCTION

        rollouts.retire("search", actor="ada")  # still a section, named among the retired
        page.wait_for_selector("#retired:visible", timeout=10_000)
        assert page.text_content("#retired") == "retired: search"
        assert page.eval_on_selector_all(
            ".rollout-view", "nodes => nodes.map(n => n.dataset.rollout)"
        ) == ["checkout", "search"]
        rollouts.remove("search")  # out of this process's set: the plain page of one rollout
        page.wait_for_selector('#environment[data-value="canary"]:visible', timeout=10_000)
        assert page.is_hidden("#rollouts")
        assert page.text_content("#rollout") == "checkout"
        assert page.is_hidden("#retired")
        assert page.evaluate("window.__violations") == []  # copies obey the page's CSP
