"""The control plane's dashboard: the traffic feed and routes, the key-in-a-cookie login, and
the page itself in a real headless Chromium over a real stack (nats-server, mcm with --auth,
sim-engine replicas, a router serving real requests).

What an operator relies on: without a management key the page shows a login form and no
data; the cookie the login sets reads but never writes; the figures the page shows are the
API's; and the page works in a browser with nothing fetched from outside.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from basalt import apikeys, bus, subjects
from basalt.pb import deploy_pb2
from basalt_tools.natsserver import NatsServer
from services.mcm.api import create_app
from services.mcm.dashboard import COOKIE, Traffic, install, with_cookie_auth
from services.mcm.store import Store
from tests.browser import Browser
from tests.mcm_process import FAST_SIM_ARGS, McmProcess, eventually, kill_runtimes
from tests.router_process import RouterProcess

pytestmark = pytest.mark.integration


# -- in process: the routes, the feed and the login ----------------------------------------


@dataclass
class Api:
    http: httpx.AsyncClient
    key: str
    inference_key: str
    limited_key: str
    nc: Client


@pytest.fixture
async def api(client: Client) -> AsyncIterator[Api]:
    verifier = apikeys.KeyVerifier(await bus.kv_bucket(client, subjects.API_KEYS_BUCKET))
    app = create_app(await Store.open(client), nc=client, verifier=verifier)
    traffic = Traffic(client)
    await traffic.start()
    install(app, traffic, verifier)
    key = await apikeys.create(client, "dash", apikeys.MANAGEMENT)
    inference = await apikeys.create(client, "dash-inf", apikeys.INFERENCE)
    limited = await apikeys.create(client, "dash-lim", apikeys.MANAGEMENT, models=["m"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mcm.test") as http:
        yield Api(http, key, inference, limited, client)
    await traffic.stop()


def _login_form(r: httpx.Response) -> bool:
    return 'name="key"' in r.text and "dashboard.js" not in r.text


async def test_without_a_key_the_page_is_a_login_form_and_every_data_route_refuses(
        api: Api) -> None:
    r = await api.http.get("/dashboard")
    assert r.status_code == 200 and _login_form(r)
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    for path in ("/v1/traffic/recent", "/v1/traffic/series", "/v1/models"):
        assert (await api.http.get(path)).status_code == 401, path
    # The page's own files hold no data: open, and only the files that are there.
    assert (await api.http.get("/dashboard/static/dashboard.js")).status_code == 200
    for name in ("%2e%2e%2fmain.py", "..%2f__init__.py", "index.html", "nope.js"):
        assert (await api.http.get(f"/dashboard/static/{name}")).status_code == 404, name
    # A bearer header works on the page as it does on the API.
    r = await api.http.get("/dashboard", headers={"Authorization": f"Bearer {api.key}"})
    assert r.status_code == 200 and "dashboard.js" in r.text


async def test_login_sets_a_strict_httponly_cookie_that_reads_but_never_writes(
        api: Api) -> None:
    origin = {"Origin": "http://mcm.test"}
    for bad, status in (("bsk_000000000000.nope", 401), (api.inference_key, 401),
                        (api.limited_key, 403), ("", 401)):
        r = await api.http.post("/dashboard/session", data={"key": bad}, headers=origin)
        assert r.status_code == status and _login_form(r) and "set-cookie" not in r.headers
    r = await api.http.post("/dashboard/session", data={"key": api.key},
                            headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers, "no login from another site"

    r = await api.http.post("/dashboard/session", data={"key": api.key}, headers=origin)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    api.http.cookies.clear()  # sent by hand below, as a browser would
    jar = {"Cookie": f"{COOKIE}={api.key}"}
    page = await api.http.get("/dashboard", headers=jar)
    assert page.status_code == 200 and "dashboard.js" in page.text
    assert (await api.http.get("/v1/models", headers=jar)).status_code == 200
    assert (await api.http.get("/v1/traffic/series", headers=jar)).status_code == 200
    write = await api.http.post("/v1/models/m/deployments", headers=jar,
                                json={"id": "cookie-write", "engine": "sim"})
    assert write.status_code == 401, "a cookie never authorizes a write"
    # Logging out clears the cookie.
    r = await api.http.post("/dashboard/session", data={"logout": "1"}, headers=origin)
    assert r.status_code == 303 and f'{COOKIE}=""' in r.headers["set-cookie"]


def test_the_cookie_becomes_a_bearer_header_only_on_get_and_head() -> None:
    key = "bsk_0123456789ab.secret-part"
    headers = [(b"cookie", f"x=1; {COOKIE}={key}".encode())]
    for method, added in (("GET", True), ("HEAD", True), ("POST", False), ("DELETE", False)):
        scope = with_cookie_auth({"type": "http", "method": method, "headers": headers})
        got = dict(scope["headers"]).get(b"authorization")
        assert (got == f"Bearer {key}".encode()) is added, method
    own = [*headers, (b"authorization", b"Bearer other")]
    scope = with_cookie_auth({"type": "http", "method": "GET", "headers": own})
    assert scope["headers"] == own, "an Authorization header sent is never replaced"
    odd = [(b"cookie", f"{COOKIE}=not-a-key\r\nx".encode())]
    assert with_cookie_auth({"type": "http", "method": "GET", "headers": odd})["headers"] == odd


async def test_the_feed_shows_what_routers_publish(api: Api) -> None:
    auth = {"Authorization": f"Bearer {api.key}"}
    for i in range(3):
        rec = deploy_pb2.RequestRecord(
            request_id=f"feed-{i}", deployment_id="feed-dep", ttft_ms=20.0, e2e_ms=60.0,
            prompt_tokens=10, completion_tokens=5, cached_tokens=5, outcome="ok",
            ts=time.time())
        await api.nc.publish(subjects.requests("feed-dep"), rec.SerializeToString())
    await api.nc.publish(subjects.requests("feed-dep"), b"\xff\xffnot a record")

    async def three() -> dict[str, Any] | None:
        r = await api.http.get("/v1/traffic/recent", params={"deployment": "feed-dep"},
                               headers=auth)
        body = r.json()
        return body if len(body["requests"]) == 3 else None

    body = await eventually(three, 5.0, "three records in the feed")
    assert [q["request_id"] for q in body["requests"]] == ["feed-2", "feed-1", "feed-0"]
    assert body["requests"][0]["itl_ms"] == 10.0
    series = (await api.http.get("/v1/traffic/series", headers=auth,
                                 params={"deployment": "feed-dep", "window_s": 60})).json()
    assert series["summary"]["requests"] == 3 and series["summary"]["prefix_hit_ratio"] == 0.5
    bad = await api.http.get("/v1/traffic/series", headers=auth, params={"window_s": -1})
    assert bad.status_code == 422 and "error" in bad.json()


async def test_the_control_plane_role_may_subscribe_to_request_records(
        tmp_path: Path) -> None:
    """With NATS credentials on (basalt/natsauth.py), the mcm role receives what the router
    role publishes on basalt.requests.<deployment>."""
    server = NatsServer(store_dir=tmp_path / "nats", creds_dir=tmp_path / "creds",
                        log_file=tmp_path / "nats.log").start()
    try:
        mcm = await bus.connect(server.url, name="t-mcm", auth=bus.NatsAuth(str(server.creds("mcm"))))
        router = await bus.connect(server.url, name="t-router",
                                   auth=bus.NatsAuth(str(server.creds("router"))))
        try:
            traffic = Traffic(mcm)
            await traffic.start()
            await mcm.flush()
            rec = deploy_pb2.RequestRecord(request_id="auth-1", deployment_id="d", outcome="ok")
            await router.publish(subjects.requests("d"), rec.SerializeToString())

            async def got() -> bool:
                return len(traffic.book.recent) == 1

            await eventually(got, 10.0, "the record at the mcm role")
            await traffic.stop()
        finally:
            await router.close()
            await mcm.close()
    finally:
        server.stop()


# -- a real browser over a real stack --------------------------------------------------------

MCM_ARGS = ["--reconcile-period", "0.5", "--replica-grace", "5", "--stop-replicas-on-exit",
            "--auth"]
DEP = "dash-v1"
MODEL = "dash-model"
REQUESTS = 16


@dataclass
class Stack:
    mcm: McmProcess
    router: RouterProcess
    key: str


@pytest.fixture
def stack(nats: NatsServer, tmp_path: Path) -> Iterator[Stack]:
    mcm = McmProcess(nats.url, tmp_path / "mcm", MCM_ARGS, name="mcm-dash")
    router = RouterProcess(nats.url, tmp_path, name="router-dash")

    async def make_key() -> str:
        nc = await bus.connect(nats.url, name="test-dash-keys")
        try:
            return await apikeys.create(nc, "dash-browser", apikeys.MANAGEMENT)
        finally:
            await nc.close()

    try:
        key = asyncio.run(make_key())
        mcm.start()
        router.start()
        yield Stack(mcm, router, key)
    finally:
        router.kill()
        if mcm.proc is not None and mcm.proc.poll() is None:
            try:
                mcm.terminate(timeout=20)
            except Exception:  # noqa: BLE001 - killed below anyway
                mcm.kill()
        mcm.kill()
        if mcm.owner:
            kill_runtimes(mcm.owner)


async def _serve_requests(stack: Stack, http: httpx.AsyncClient) -> None:
    """The deployment up with two READY replicas, then REQUESTS chat requests through the
    router, until the control plane's feed has them all."""
    auth = {"Authorization": f"Bearer {stack.key}"}
    body = {"id": DEP, "engine": "sim", "replicas": 2, "engine_args": dict(FAST_SIM_ARGS)}
    r = await http.post(f"{stack.mcm.base_url}/v1/models/{MODEL}/deployments", json=body,
                        headers=auth)
    assert r.status_code == 201, r.text

    async def ready() -> bool:
        r = await http.get(f"{stack.mcm.base_url}/v1/models/{MODEL}/deployments/{DEP}",
                           headers=auth)
        return r.json()["active_replica_count"] == 2

    await eventually(ready, 30.0, "two READY replicas", every=0.25)

    async def routable() -> bool:
        r = await http.get(stack.router.base_url + "/v1/models")
        return r.status_code == 200 and MODEL in {m["id"] for m in r.json()["data"]}

    await eventually(routable, 15.0, "the router lists the model", every=0.2)

    async def chat(i: int) -> None:
        r = await http.post(stack.router.base_url + "/v1/chat/completions", json={
            "model": MODEL, "max_tokens": 6 + i % 5,
            "messages": [{"role": "user", "content": f"hello dashboard, request {i % 4}"}]})
        assert r.status_code == 200, r.text

    # Two waves in two 10 s buckets of the feed, so the charts draw lines, not dots.
    for start in range(0, REQUESTS, 4):
        if start == REQUESTS // 2:
            await asyncio.sleep(10.0 - time.time() % 10.0 + 0.2)
        await asyncio.gather(*(chat(i) for i in range(start, start + 4)))

    async def recorded() -> bool:
        r = await http.get(f"{stack.mcm.base_url}/v1/traffic/series", headers=auth)
        return r.json()["summary"]["requests"] >= REQUESTS

    await eventually(recorded, 10.0, f"{REQUESTS} request records at the control plane")


# What the page shows, read from its DOM.
READ_PAGE = """(() => {
  const rows = [...document.querySelectorAll('#deployments tr[data-deployment]')].map(tr => {
    const f = {};
    tr.querySelectorAll('[data-field]').forEach(td => { f[td.dataset.field] = td.textContent; });
    return {id: tr.dataset.deployment, ...f};
  });
  const stats = {};
  document.querySelectorAll('[data-stat]').forEach(e => { stats[e.dataset.stat] = e.textContent; });
  return JSON.stringify({rows, stats,
    replicas: [...document.querySelectorAll('#replicas tr[data-replica]')].map(tr => ({
      id: tr.dataset.replica, state: tr.querySelector('[data-field=state]').textContent})),
    recent: document.querySelectorAll('#recent tr[data-request]').length,
    lines: [...document.querySelectorAll('svg[data-chart] polyline')]
      .map(p => p.closest('svg').dataset.chart),
    error: document.getElementById('error').textContent});
})()"""


async def test_the_dashboard_in_a_real_browser_shows_what_the_api_says(
        stack: Stack, tmp_path: Path) -> None:
    started = time.monotonic()
    auth = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(timeout=30.0) as http:
        await _serve_requests(stack, http)
        browser = Browser(tmp_path / "chromium").start()
        try:
            page = await browser.page()
            await page.navigate(f"{stack.mcm.base_url}/dashboard")
            before = await page.evaluate("document.body.innerText")
            assert "Management API key" in before and DEP not in before, "no data before login"
            # Sign in through the form, as a person would.
            await page.evaluate(f"document.getElementById('key').value = {json.dumps(stack.key)};"
                                "document.getElementById('login-form').submit(); true")
            await page.until("Number(document.body.dataset.refreshes || 0) >= 1", 20.0,
                             "the dashboard's first refresh")
            shown = json.loads(await page.evaluate(READ_PAGE))
            models = (await http.get(f"{stack.mcm.base_url}/v1/models", headers=auth)).json()
            detail = (await http.get(
                f"{stack.mcm.base_url}/v1/models/{MODEL}/deployments/{DEP}", headers=auth)).json()
            series = (await http.get(f"{stack.mcm.base_url}/v1/traffic/series", headers=auth,
                                     params={"window_s": 900})).json()
            targets = (await http.get(f"{stack.mcm.base_url}/v1/metrics/targets",
                                      headers=auth)).json()
            scraped = (await http.get(f"http://{targets[0]['targets'][0]}/metrics")).text
            shot = await page.screenshot(tmp_path / "dashboard.png")
            await page.ws.close()
        finally:
            browser.stop()
    if out := os.environ.get("BASALT_SCREENSHOT_DIR"):
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(out) / "dashboard.png")
    print(f"dashboard screenshot: {shot} ({time.monotonic() - started:.1f}s)")

    assert shown["error"] == ""
    [view] = [d for m in models["models"] for d in m["deployments"] if d["id"] == DEP]
    [row] = [r for r in shown["rows"] if r["id"] == DEP]
    assert row["desired"] == str(view["desired_replicas"]) == "2"
    assert row["ready"] == str(view["active_replica_count"]) == "2"
    assert row["replicas"] == str(view["replica_count"])
    if "health" in view:  # the API's deployment health, shown as its state (and reason)
        assert row["health"].startswith(view["health"]["state"].upper())
    assert sorted(r["id"] for r in shown["replicas"]) == sorted(r["id"] for r in detail["replicas"])
    assert {r["state"] for r in shown["replicas"]} == {"ready"}
    summary = series["summary"]
    assert shown["stats"]["requests"] == str(summary["requests"]) and summary["requests"] >= REQUESTS
    for q in ("p50", "p90", "p99"):
        assert summary["ttft_ms"][q] is not None
        for kind in ("ttft", "itl"):
            # The page rounds with JS's toFixed(1), Python with round-half-even: a value on a
            # half (9.25) shows as 9.3 there and 9.2 here, so compare the numbers to 0.05 ms.
            value, api = shown["stats"][f"{kind}_{q}"], summary[f"{kind}_ms"][q]
            assert value.endswith(" ms") and abs(float(value[:-3]) - api) <= 0.0501, (
                kind, q, value, api)
    assert shown["recent"] == min(50, summary["requests"])
    assert {"rate", "ttft", "itl"} <= set(shown["lines"]), "the charts have lines"
    assert shot.stat().st_size > 10_000
    # Prometheus finds every replica's /metrics through the control plane (http_sd_configs).
    assert sorted(t["labels"]["deployment"] for t in targets) == [DEP, DEP]
    assert "basalt:num_requests_running" in scraped
