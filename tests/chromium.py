"""Headless Chromium driven over the DevTools protocol (websockets, which Prefect brings): enough to load a
page, type into it, press Enter, read the DOM back and take a screenshot. Chromium comes from the system
packages (Debian: ``chromium``); ``find_chromium`` says when there is none."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

NAMES = ("chromium", "chromium-browser", "google-chrome")
START_WAIT_S = 120  # a generous bound on a loaded machine; only waits, never asserts on speed


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


def _wait_for(condition, what: str, wait_s: float = START_WAIT_S):
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"Chromium: {what} not within {wait_s} s")


class Chromium:
    """One headless browser with one page; ``with Chromium(tmp) as page: page.open(url) ...``."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900) -> None:
        self.profile, self.size = profile, (width, height)
        self.ids = itertools.count(1)

    def __enter__(self) -> Chromium:
        command = [
            find_chromium() or NAMES[0],
            "--headless",
            "--no-sandbox",  # root in containers
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            f"--window-size={self.size[0]},{self.size[1]}",
            "about:blank",
        ]
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a reused profile keeps the last browser's port
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = _wait_for(lambda: port_file.is_file() and port_file.read_text().split("\n")[0], "DevTools port")
            targets = _wait_for(lambda: self._pages(port), "a page target")
            self.socket = connect(targets[0]["webSocketDebuggerUrl"], max_size=2**26, open_timeout=START_WAIT_S)
        except BaseException:
            self._stop()
            raise
        return self

    @staticmethod
    def _pages(port: str) -> list[dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                return [t for t in json.load(answer) if t["type"] == "page"]
        except OSError:  # not listening yet
            return []

    def __exit__(self, *exc) -> None:
        self.socket.close()
        self._stop()

    def _stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def send(self, method: str, **params) -> dict:
        """One DevTools command; its result (events in between are skipped)."""
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=START_WAIT_S))
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"Chromium {method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"Chromium: {expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, what: str):
        return _wait_for(lambda: self.evaluate(expression), what)

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_until("document.readyState === 'complete' && location.href !== 'about:blank'", f"{url} loaded")

    def type_text(self, selector: str, text: str) -> None:
        """Focus an input and type ``text`` as keyboard input."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13, text="\r"
            )

    def screenshot(self, path: Path) -> None:
        """The whole page as a PNG, however tall."""
        width, height = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        shot = self.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
