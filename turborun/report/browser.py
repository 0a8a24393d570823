"""Open a report page in headless Chromium and say what a person would see: console
errors, uncaught exceptions, network requests, the charts' rendered sizes, and a
screenshot. Used by the tests and to make the screenshots in docs/.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages ending in a
NUL byte on file descriptors 3 and 4 of the browser): no port, no driver package, nothing
but the ``chromium`` binary (Debian: ``apt-get install chromium``).

    python -m turborun.report.browser REPORT.html [--screenshot OUT.png] [--width 1200]
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
_FLAGS = (
    "--headless",
    "--remote-debugging-pipe",
    "--no-sandbox",  # root in containers and CI; the page is our own file
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
)
# What every chart figure looks like once drawn: its SVG's size and element count.
_CHARTS_JS = """JSON.stringify(Array.from(document.querySelectorAll('figure.chart')).map(f => {
  const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : null;
  return {name: f.dataset.chart, width: box ? box.width : 0, height: box ? box.height : 0,
          elements: svg ? svg.querySelectorAll('path,line,rect,text,use').length : 0};
}))"""
_METRICS_JS = """JSON.stringify(Object.fromEntries(Array.from(
  document.querySelectorAll('[data-metric]')).map(e => [e.dataset.metric, e.dataset.value])))"""


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageCheck:
    """What loading one page showed."""

    url: str
    loaded: bool = False
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    charts: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)  # data-metric -> data-value
    text: str = ""  # the page's visible text
    load_s: float = 0.0

    @property
    def network_requests(self) -> list[str]:
        """Requests other than the page itself (a self-contained page makes none)."""
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]


class Chromium:
    """One headless Chromium process driven over its DevTools pipe."""

    def __init__(self, executable: str | None = None, timeout_s: float = 30.0) -> None:
        executable = executable or find_chromium()
        if executable is None:
            raise FileNotFoundError("no chromium binary (apt-get install chromium)")
        self._timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="turborun-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Above any descriptor number the child's dup2 onto 3 and 4 could clobber.
        theirs = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)

        def place_pipes() -> None:  # in the child, before exec
            os.dup2(theirs[0], 3)
            os.dup2(theirs[1], 4)

        self._process = subprocess.Popen(
            [executable, *_FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4, *theirs),
            preexec_fn=place_pipes,  # noqa: PLW1509 - no threads of ours run here
        )
        for fd in theirs:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    # ---- protocol ---------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:  # fmt: skip
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, orjson.dumps(message) + b"\0")
        deadline = time.monotonic() + self._timeout_s
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return True
        while time.monotonic() < deadline:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return True
        return False

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = orjson.loads(message)
        return parsed

    # ---- pages ----------------------------------------------------------------------------

    def check(
        self,
        path: Path,
        *,
        width: int = 1200,
        screenshot: Path | None = None,
        height: int | None = None,
    ) -> PageCheck:
        """Load ``path``, wait for its load event and a moment after, and report;
        ``screenshot``: a PNG of the whole page (of its top ``height`` px if given)."""
        url = Path(path).resolve().as_uri()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                  session)  # fmt: skip
        first = len(self.events)
        started = time.monotonic()
        self.call("Page.navigate", {"url": url}, session)
        check = PageCheck(url=url)
        check.loaded = self.wait_event("Page.loadEventFired", session, self._timeout_s)
        check.load_s = time.monotonic() - started
        self._settle(session)
        check.charts = orjson.loads(self._evaluate(_CHARTS_JS, session))
        check.metrics = orjson.loads(self._evaluate(_METRICS_JS, session))
        check.text = self._evaluate("document.body ? document.body.innerText : ''", session)
        if screenshot is not None:
            self._screenshot(session, width, height, Path(screenshot))
        self._collect(check, self.events[first:], session)
        self.call("Target.closeTarget", {"targetId": target})
        return check

    def _settle(self, session: str, quiet_s: float = 0.3) -> None:
        """Give late console messages and requests a moment to arrive."""
        deadline = time.monotonic() + quiet_s
        try:
            while True:
                self.events.append(self._read(deadline))
        except TimeoutError:
            pass

    def _evaluate(self, expression: str, session: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _screenshot(self, session: str, width: int, height: int | None, out: Path) -> None:
        size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
        height = int(min(size["height"], height or 16000))
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session)  # fmt: skip
        shot = self.call("Page.captureScreenshot", {"format": "png"}, session)
        out.write_bytes(base64.b64decode(shot["data"]))

    @staticmethod
    def _collect(check: PageCheck, events: list[dict[str, Any]], session: str) -> None:
        for event in events:
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                check.console_errors.append(_console_text(params))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                check.console_errors.append(params["entry"].get("text", ""))
            elif method == "Runtime.exceptionThrown":
                check.exceptions.append(str(params.get("exceptionDetails", {}).get("text")))
            elif method == "Network.requestWillBeSent":
                check.requests.append(params["request"]["url"])

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _console_text(params: dict[str, Any]) -> str:
    return " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m turborun.report.browser")
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, help="screenshot the top HEIGHT px only")
    args = parser.parse_args(argv)
    with Chromium() as browser:
        check = browser.check(
            args.page, width=args.width, screenshot=args.screenshot, height=args.height
        )
    print(f"loaded: {check.loaded} in {check.load_s:.2f} s")
    print(f"console errors: {check.console_errors or 'none'}")
    print(f"exceptions: {check.exceptions or 'none'}")
    print(f"network requests: {check.network_requests or 'none'}")
    for chart in check.charts:
        print(f"chart {chart['name']}: {chart['width']:.0f} x {chart['height']:.0f} px, "
              f"{chart['elements']} elements")  # fmt: skip
    ok = check.loaded and not (check.console_errors or check.exceptions)
    return 0 if ok and not check.network_requests else 1


if __name__ == "__main__":
    sys.exit(main())
