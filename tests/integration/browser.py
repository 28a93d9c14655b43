"""
A headless Chromium driven over the DevTools protocol, for the dashboard's
browser test: the browser is Debian's C{chromium} (C{.ci/run} installs it),
started with a fresh profile and no network beyond what the page asks for,
and spoken to over its DevTools WebSocket with the C{websockets} client the
tests already use. Blocking: call it from a thread (C{deferToThread}) while
the nodes run in the reactor.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from websockets.sync.client import ClientConnection, connect

#: The flags the browser is started with: headless, and quiet (no calls
#: home, no updates, no first-run pages, no sync).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1400,1000",
    "--remote-debugging-port=0",
]


def find_chromium() -> str:
    """
    :returns: the path of the Chromium executable.
    :raises AssertionError: if there is none (the test needs it: on Debian,
        C{apt-get install -y chromium}, as C{.ci/run} does).
    """
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(
        "the dashboard's browser test needs Chromium: apt-get install -y chromium (.ci/run does)"
    )


class Browser:
    """
    One headless Chromium showing C{url}; L{close} it (the test's cleanup
    does) to end the process and remove its profile.
    """

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        executable = find_chromium()
        self.profile = tempfile.mkdtemp(prefix="relaytx-chromium-")
        self.process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own temporary files go in the profile, removed with it;
            # its helper processes share its group, ended with it.
            env={**os.environ, "TMPDIR": self.profile},
            start_new_session=True,
        )
        self._ids = itertools.count(1)
        self._socket: ClientConnection | None = None
        try:
            socket = connect(self._page_socket(timeout), max_size=None, open_timeout=timeout)
            self._socket = socket.__enter__()  # closed by close()
        except BaseException:
            self.close()
            raise

    def _page_socket(self, timeout: float) -> str:
        # Chromium writes its DevTools port to DevToolsActivePort in the
        # profile once it listens; the page is then among its targets.
        deadline = time.monotonic() + timeout
        marker = os.path.join(self.profile, "DevToolsActivePort")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"chromium exited with status {self.process.returncode}")
            try:
                with open(marker) as f:
                    port = int(f.readline())
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = json.loads(r.read())
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"chromium's DevTools did not answer within {timeout}s")

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        """:returns: the result of one DevTools command (events on the way are dropped)."""
        assert self._socket is not None
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer to {method} within {timeout}s")
            answer = json.loads(self._socket.recv(timeout=left))
            if answer.get("id") == message_id:
                if "error" in answer:
                    raise AssertionError(f"{method} failed: {answer['error']}")
                return answer.get("result")

    def evaluate(self, expression: str) -> Any:
        """:returns: the value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, interval: float = 0.05) -> float:
        """
        Poll a JavaScript expression until it is true.

        :returns: the seconds it took.
        :raises AssertionError: after C{timeout} seconds.
        """
        start = time.monotonic()
        while not self.evaluate(expression):
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{expression} not true within {timeout}s")
            time.sleep(interval)
        return time.monotonic() - start

    def screenshot(self, path: str) -> None:
        """Save what the page shows now as a PNG."""
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        """End the browser and remove its profile."""
        if self._socket is not None:
            socket, self._socket = self._socket, None
            try:
                socket.close()
            except Exception:  # the browser may be gone already
                pass
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        try:
            # Helpers (renderer, GPU) outliving the browser would write to
            # the profile again as it is removed.
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.profile, ignore_errors=True)
