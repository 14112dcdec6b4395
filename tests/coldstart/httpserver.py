"""A small real HTTP server for the weight sources' tests (does I/O): serves a directory on a free
loopback port with byte ranges, and can drop connections, corrupt files and demand a token."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 1 << 20
_FLIP = bytes(255 - i for i in range(256))


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # relative to the served directory, e.g. "model.bin"
    range: str | None  # the Range header as sent


class TestHTTPServer:
    """Serves `root` at `.url` until `.stop()` (or the end of a `with`). Knobs, settable any
    time: `drop_after_bytes` closes a response's connection after that many body bytes (once,
    or on every response when `drop_always`); `corrupt` holds paths served with every byte
    flipped; `require_token` answers 401 unless `Authorization: Bearer <it>` comes. `requests`
    logs what was asked, in arrival order."""

    __test__ = False  # not a pytest class

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.drop_after_bytes: int | None = None
        self.drop_always = False
        self.corrupt: set[str] = set()
        self.require_token: str | None = None
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def ranged(self, path: str) -> list[str]:
        """The Range headers of the GETs of `path` that carried one."""
        return [r.range for r in self.requests if r.path == path and r.range]

    def _take_drop(self, length: int) -> int | None:
        """Where to cut a body of `length` bytes (None: send it whole)."""
        with self._lock:
            limit = self.drop_after_bytes
            if limit is None or limit >= length:
                return None
            if not self.drop_always:
                self.drop_after_bytes = None
            return limit

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                rel = unquote(urlsplit(self.path).path).lstrip("/")
                server.requests.append(Request(self.command, rel, self.headers.get("Range")))
                want = server.require_token
                if want is not None and self.headers.get("Authorization") != f"Bearer {want}":
                    return self._status(401)
                file = (server.root / rel).resolve()
                if not file.is_relative_to(server.root) or not file.is_file():
                    return self._status(404)
                size = file.stat().st_size
                start, end, code = 0, size, 200
                if (header := self.headers.get("Range")) is not None:
                    match = _RANGE.match(header)
                    if match is None or int(match[1]) >= size:
                        return self._status(416, {"Content-Range": f"bytes */{size}"})
                    start = int(match[1])
                    end = min(size, int(match[2]) + 1) if match[2] else size
                    code = 206
                self.send_response(code)
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.end_headers()
                if body:
                    self._send(file, start, end, rel in server.corrupt)

            def _send(self, file: Path, start: int, end: int, flip: bool) -> None:
                limit = server._take_drop(end - start)
                budget = end - start if limit is None else limit
                try:
                    with open(file, "rb") as f:
                        f.seek(start)
                        while budget > 0:
                            chunk = f.read(min(_CHUNK, budget))
                            if flip:
                                chunk = chunk.translate(_FLIP)
                            self.wfile.write(chunk)
                            budget -= len(chunk)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a cancelled fetch)
                if limit is not None:
                    self.close_connection = True  # the body ends short: an interrupted transfer

            def _status(self, code: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
