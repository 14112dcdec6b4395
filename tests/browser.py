"""A real headless Chromium for tests, driven over the Chrome DevTools Protocol (does I/O:
installs Debian's `chromium` when missing, starts the browser, talks CDP over its websocket).

`chromium_path()` finds the browser, or installs it (basalt_tools/chromium.py: `apt-get
install -y chromium` as root, `sudo -n apt-get ...` otherwise; idempotent, so a fresh
machine's `make test` sets it up itself), or skips the test naming why it could not. `Browser` starts it in its own process
group (so every renderer and helper goes with it) and `Page` sends CDP commands to one tab.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from basalt_tools import chromium

_DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_path() -> str:
    """The browser's path; installs it first when missing (basalt_tools/chromium.py: waiting
    for the install `make test` started); skips when it cannot be had."""
    path, why = chromium.ensure()
    if path is None:
        pytest.skip(f"headless chromium unavailable: {why}")
    return path


@dataclass
class Page:
    """One tab's CDP session: `send` a command, wait for its answer."""

    ws: ClientConnection
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30.0))
            if msg.get("id") == call_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return dict(msg.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        """The expression's value (JSON-serialisable), awaited when it is a promise."""
        got = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                              awaitPromise=True)
        if "exceptionDetails" in got:
            raise RuntimeError(f"page raised: {got['exceptionDetails']}")
        return got["result"].get("value")

    async def until(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):  # a navigation in between
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout}s: {what}")
            await asyncio.sleep(0.2)

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && location.href", 15.0,
                         f"{url} loaded")

    async def screenshot(self, path: Path, width: int = 1400, height: int = 1600) -> Path:
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=False)
        shot = await self.send("Page.captureScreenshot", format="png",
                               captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@dataclass
class Browser:
    """Headless chromium with remote debugging on a free port, its profile in `workdir`."""

    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    endpoint: str = ""  # http://127.0.0.1:<port>

    def start(self, timeout: float = 30.0) -> Browser:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "chromium.log"
        args = [chromium_path(), "--headless=new", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                f"--user-data-dir={self.workdir / 'profile'}", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # chromium refuses its sandbox as root
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            found = _DEVTOOLS.search(log.read_text(errors="replace"))
            if found:
                port = found.group(1).split("//", 1)[1].split("/", 1)[0]
                self.endpoint = f"http://{port}"
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"chromium did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    async def page(self) -> Page:
        """A CDP session on the browser's first tab."""
        async with httpx.AsyncClient() as http:
            targets = (await http.get(f"{self.endpoint}/json/list")).json()
        tab = next(t for t in targets if t.get("type") == "page")
        ws = await connect(tab["webSocketDebuggerUrl"], max_size=64 * 2**20)
        page = Page(ws)
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page

    def stop(self) -> None:
        """SIGKILL the browser's process group (renderers, zygotes and helpers with it)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
