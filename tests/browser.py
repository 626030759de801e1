"""Open a page in real headless Chromium and report what a user's browser would complain of.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages ended by NUL on file descriptors 3 and 4), so no websocket library is needed.
Console errors, uncaught exceptions, failed loads (`Log.entryAdded` at level error) and every
network request the page makes are collected; the screenshot is the rendered page.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in a container
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",  # screenshots as wide as the window
    "--remote-debugging-pipe",
    # A page that tries the network gets an error instead of a fetch: the request is still
    # reported, and the test does not depend on (or leak to) the internet.
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


class BrowserError(RuntimeError):
    pass


@dataclass
class PageReport:
    console_errors: list[str] = field(default_factory=list)
    """console.error/assert calls, uncaught exceptions and failed loads, as text."""
    network_requests: list[str] = field(default_factory=list)
    """URLs the page requested that are not inline (data:) or the page itself."""
    title: str = ""
    broken_images: int = 0
    """<img> elements that did not decode to a picture."""
    images: int = 0


class _Pipe:
    """The DevTools protocol over Chromium's pipe: send a command, wait for its answer."""

    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int, read_fd: int) -> None:
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise BrowserError(f"{method}: {reply['error']}")
                    return dict(reply.get("result") or {})
                self.events.append(reply)

    def wait_for(self, method: str, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.extend(self._read(deadline))

    def _read(self, deadline: float) -> list[dict[str, Any]]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], min(left, 0.5))
            if not ready:
                if self.proc.poll() is not None:
                    raise BrowserError(f"Chromium exited with code {self.proc.returncode}")
                continue
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed its DevTools pipe")
            self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]


def _child_fds(commands: int, replies: int) -> None:
    """In Chromium's process: commands arrive on fd 3, replies leave on fd 4."""
    high_in = fcntl.fcntl(commands, fcntl.F_DUPFD, 10)
    high_out = fcntl.fcntl(replies, fcntl.F_DUPFD, 10)
    os.dup2(high_in, 3)
    os.dup2(high_out, 4)


def open_page(path: Path, screenshot: Path | None = None, width: int = 1280,
              height: int = 900, timeout_s: float = 60.0) -> PageReport:
    """Load `path` in headless Chromium; collect its errors and requests, save a screenshot
    of the whole page."""
    if not CHROMIUM.exists():
        raise BrowserError(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    url = path.resolve().as_uri()
    profile = Path(tempfile.mkdtemp(prefix="kdflow-chromium-"))
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    proc = subprocess.Popen(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
         "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=(3, 4),
        preexec_fn=lambda: _child_fds(to_chrome_r, from_chrome_w),  # noqa: PLW0108
    )
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(proc, to_chrome_w, from_chrome_r)
    try:
        return _inspect(pipe, url, screenshot, width, height, timeout_s)
    finally:
        try:
            pipe.send("Browser.close", timeout_s=5)
        except BrowserError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        shutil.rmtree(profile, ignore_errors=True)


def _inspect(pipe: _Pipe, url: str, screenshot: Path | None, width: int, height: int,
             timeout_s: float) -> PageReport:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
              session=session)
    pipe.events.clear()
    pipe.send("Page.navigate", {"url": url}, session=session)
    pipe.wait_for("Page.loadEventFired", timeout_s)
    # Late console calls (timers, promise rejections) get a moment to arrive.
    time.sleep(0.5)
    state = pipe.send("Runtime.evaluate", {
        "expression": "JSON.stringify({title: document.title, images: document.images.length,"
                      " broken: Array.from(document.images).filter("
                      "i => !(i.complete && i.naturalWidth > 0)).length})",
        "returnByValue": True,
    }, session=session)
    page = json.loads(state["result"]["value"])
    report = PageReport(title=page["title"], images=page["images"], broken_images=page["broken"])
    for event in pipe.events:
        method, params = event.get("method"), event.get("params") or {}
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            text = (details.get("exception") or {}).get("description") or details.get("text")
            report.console_errors.append(f"uncaught: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in
                            params.get("args") or [])
            report.console_errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            report.console_errors.append(f"{entry.get('source')}: {entry.get('text')} "
                                         f"{entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            requested = params["request"]["url"]
            if not requested.startswith("data:") and requested != url:
                report.network_requests.append(requested)
    if screenshot is not None:
        shot = pipe.send("Page.captureScreenshot",
                         {"format": "png", "captureBeyondViewport": True}, session=session)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    return report
