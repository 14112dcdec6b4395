"""The control plane's dashboard: the traffic feed from the routers' request records, its
read-only JSON routes, and the browser page with its key-in-a-cookie login (does I/O: NATS
subscription, HTTP).

Routes `install` adds:
- `GET /v1/traffic/recent?limit=&deployment=`: the last requests, newest first;
- `GET /v1/traffic/series?deployment=&window_s=`: rate, TTFT/ITL percentiles, prefix-hit
  ratio and error rates per 10 s bucket, and the window's summary (`core/traffic.py`);
- `GET /v1/metrics/targets`: Prometheus HTTP service discovery of the replicas' /metrics
  (`core/scrape.py`; deploy/observability/prometheus.yml uses it);
- `GET /dashboard`: the page; without a valid management key only a login form (no data);
- `POST /dashboard/session`: the login form's target (`key=`), or `logout=1`;
- `GET /dashboard/static/<file>`: the page's script and style (no data, open).

Auth. Every data route stays behind the deployments API's own check (`_auth` in api.py, a
management key in `Authorization`). A browser cannot send that header on a navigation, so the
login form posts the key once (in the body, never in a URL); it is verified with the same
`KeyVerifier` and kept in an HttpOnly, SameSite=Strict cookie. The outer middleware here turns
that cookie into `Authorization: Bearer <key>` for GET and HEAD only, before `_auth` sees the
request: what a cookie authorizes is read-only, so a forged cross-site request can change
nothing (no CSRF token needed), and a script on another site cannot read the answers (no CORS).
The key is never logged.
"""

from __future__ import annotations

import html
import re
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue
from starlette.requests import Request, cookie_parser
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from basalt import bus, subjects
from basalt.apikeys import MANAGEMENT, KeyStoreUnavailable, KeyVerifier, key_from_header
from basalt.log import get_logger
from basalt.pb import deploy_pb2, events_pb2

from .core.api_errors import MethodNotAllowed, RouteNotFound
from .core.scrape import scrape_targets
from .core.traffic import TrafficBook, request_of

log = get_logger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
COOKIE = "basalt_key"
COOKIE_MAX_AGE_S = 12 * 3600
PAGE = "/dashboard"
SESSION = "/dashboard/session"
STATIC_PREFIX = "/dashboard/static/"
# The login form's body: a key and a flag; anything bigger is not a login.
MAX_FORM_BYTES = 4096
# What a key looks like (basalt/apikeys.py make_key): only such a value goes into a cookie.
_KEY_SHAPE = re.compile(r"bsk_[0-9a-f]{12}\.[A-Za-z0-9_\-]{1,128}")
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}
# The page loads only its own files and talks only to this origin; no frame may hold it.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}


class Traffic:
    """The live feed: every `RequestRecord` on `basalt.requests.>` into a `TrafficBook`; also
    reads the replica records for the scrape targets."""

    def __init__(self, nc: Client, book: TrafficBook | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.nc = nc
        self.book = book or TrafficBook()
        self.clock = clock
        self.unreadable = 0
        self._sub: Subscription | None = None
        self._replicas_kv: KeyValue | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.REQUESTS_ALL, cb=self._on_record)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as e:  # noqa: BLE001 - NATS gone first: nothing left to undo
                log.warning("traffic_unsubscribe_failed", error=str(e) or type(e).__name__)

    async def replicas(self) -> list[events_pb2.ReplicaRecord]:
        """Every readable replica record (for the scrape targets)."""
        if self._replicas_kv is None:
            self._replicas_kv = await bus.replicas_bucket(self.nc)
        out = []
        for value in (await bus.kv_items(self._replicas_kv)).values():
            try:
                out.append(events_pb2.ReplicaRecord.FromString(value))
            except DecodeError:
                continue  # the reconciler logs unreadable records
        return out

    async def _on_record(self, msg: Msg) -> None:
        try:
            rec = deploy_pb2.RequestRecord.FromString(msg.data)
        except DecodeError:
            self.unreadable += 1
            return
        self.book.observe(request_of(rec), self.clock())


def install(app: FastAPI, traffic: Traffic, verifier: KeyVerifier | None,
            static_dir: Path = STATIC_DIR) -> None:
    """Add the traffic routes (behind the app's own key check) and the outer middleware that
    serves the page, the login and the static files, and honours the cookie on GET/HEAD.
    Call before the app serves its first request."""
    book = traffic.book

    @app.get("/v1/traffic/recent")
    async def traffic_recent(limit: int = Query(50, ge=1, le=1000),
                             deployment: str = Query("", max_length=256)) -> dict[str, Any]:
        return {"requests": book.recent_view(limit, deployment),
                "deployments": book.deployments()}

    @app.get("/v1/traffic/series")
    async def traffic_series(deployment: str = Query("", max_length=256),
                             window_s: float = Query(900.0, gt=0, le=86400.0),
                             ) -> dict[str, Any]:
        return book.series_view(deployment, window_s, traffic.clock())

    @app.get("/v1/metrics/targets")
    async def metrics_targets() -> list[dict[str, Any]]:
        return scrape_targets(await traffic.replicas())

    app.add_middleware(DashboardMiddleware, verifier=verifier,  # type: ignore[arg-type]
                       static=_read_static(static_dir))


def _read_static(folder: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (content, media type) of the page's files, read once: only these names are
    served (no path from a request ever reaches the file system)."""
    out = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in _TYPES:
            out[path.name] = (path.read_bytes(), _TYPES[path.suffix])
    if "index.html" not in out or "login.html" not in out:
        raise FileNotFoundError(f"dashboard files missing in {folder}")
    return out


def with_cookie_auth(scope: Scope) -> Scope:
    """The scope with `authorization: Bearer <cookie>` added, for a GET or HEAD that carries
    the cookie and no Authorization header; any other request unchanged."""
    if scope.get("method") not in ("GET", "HEAD"):
        return scope
    headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
    if any(k == b"authorization" for k, _ in headers):
        return scope
    key = _cookie_key(headers)
    if key is None:
        return scope
    return {**scope, "headers": [*headers, (b"authorization", b"Bearer " + key.encode())]}


def _cookie_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for k, v in headers:
        if k == b"cookie":
            value = cookie_parser(v.decode("latin-1")).get(COOKIE, "")
            if _KEY_SHAPE.fullmatch(value):
                return value
    return None


class DashboardMiddleware:
    """Outermost ASGI layer: answers the page, the login and the static files; everything else
    goes on to the app, with the cookie turned into a bearer header on GET/HEAD."""

    def __init__(self, app: ASGIApp, verifier: KeyVerifier | None,
                 static: dict[str, tuple[bytes, str]]) -> None:
        self.app = app
        self.verifier = verifier
        self.static = static

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in (PAGE, PAGE + "/"):
            response = await self._page(with_cookie_auth(scope))
        elif path == SESSION:
            response = await self._session(Request(scope, receive))
        elif path.startswith(STATIC_PREFIX):
            response = self._static(scope, path.removeprefix(STATIC_PREFIX))
        else:
            await self.app(with_cookie_auth(scope), receive, send)
            return
        await response(scope, receive, send)

    # -- the page and its files ----------------------------------------------------------

    async def _page(self, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            return _not_allowed(scope, "GET")
        headers = dict(scope.get("headers") or [])
        key = key_from_header(headers.get(b"authorization", b"").decode("latin-1") or None)
        problem, status = await self._check(key)
        if problem is None:
            return self._html("index.html", 200)
        # A visit with no key is not an error; a key that no longer works is.
        return self._login(problem if key else "", status if key else 200)

    def _static(self, scope: Scope, name: str) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            return _not_allowed(scope, "GET")
        found = self.static.get(name)
        if found is None or name.endswith(".html"):
            return JSONResponse(RouteNotFound(f"no dashboard file {name[:80]!r}").body(), 404)
        body, media = found
        return Response(body, media_type=media,
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    def _html(self, name: str, status: int, message: str = "") -> Response:
        text = self.static[name][0].decode()
        text = text.replace("{{message}}", html.escape(message))
        return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)

    def _login(self, message: str, status: int) -> Response:
        return self._html("login.html", status, message)

    async def _check(self, key: str | None) -> tuple[str | None, int]:
        """None when `key` may read the dashboard, else why not and the HTTP status."""
        if self.verifier is None:
            return None, 200  # the API is open (--auth off): so is its dashboard
        if key is None:
            return "a management API key is needed", 401
        try:
            rec = await self.verifier.verify(key, MANAGEMENT)
        except KeyStoreUnavailable as e:
            return str(e), 503
        if rec is None:
            return "invalid or expired key, or not a management key", 401
        if rec.models:
            return ("this key is limited to some models; the dashboard reads every model: "
                    "use a management key without a model limit"), 403
        return None, 200

    # -- login and logout ----------------------------------------------------------------

    async def _session(self, request: Request) -> Response:
        if request.method != "POST":
            return _not_allowed(request.scope, "POST")
        if not _same_origin(request):
            return self._login("the login must come from this page", 403)
        form = await _read_form(request)
        if form is None:
            return self._login("send the form from the page (at most 4 KiB)", 400)
        if form.get("logout"):
            response: Response = RedirectResponse(PAGE, status_code=303)
            response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
            return response
        key = form.get("key", "").strip()
        problem, status = await self._check(key or None)
        if problem is not None or not _KEY_SHAPE.fullmatch(key):
            log.info("dashboard_login_refused", status=status)
            return self._login(problem or "not a key", status if problem else 401)
        response = RedirectResponse(PAGE, status_code=303)
        response.set_cookie(COOKIE, key, max_age=COOKIE_MAX_AGE_S, path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        log.info("dashboard_login")
        return response


def _same_origin(request: Request) -> bool:
    """A login posted from another site (login CSRF: the victim would browse the attacker's
    key) is refused; browsers say where a form came from in Origin and Sec-Fetch-Site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return site is not None or origin is None
    host = request.headers.get("host", "")
    return urllib.parse.urlsplit(origin).netloc == host


async def _read_form(request: Request) -> dict[str, str] | None:
    """The urlencoded form's fields (the first of each), or None when it is too big or not a
    form."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return None
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _not_allowed(scope: Scope, allow: str) -> Response:
    e = MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}")
    return JSONResponse(e.body(), 405, headers={"Allow": allow})
