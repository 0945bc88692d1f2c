"""Drive Debian's headless chromium over the DevTools protocol (raw CDP over ``websockets``; nothing else).

Flags and pitfalls are the ones measured in ``../shared/browser_testing.md``: fake mic from a PCM16 WAV, fake
camera from a y4m, ``--no-sandbox`` (root), a private user-data dir and XDG dirs, and the DevToolsActivePort
file to find the debugging port.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def find_chromium() -> str | None:
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def write_y4m(path: Path, frames: int = 20, width: int = 160, height: int = 120) -> None:
    """A fake camera: coloured frames whose hue changes with time (4:2:0, as chromium's reader wants)."""
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            f.write(b"FRAME\n")
            f.write(np.full(width * height, 60 + 8 * i, np.uint8).tobytes())
            f.write(np.full(width * height // 4, 90, np.uint8).tobytes())
            f.write(np.full(width * height // 4, 200, np.uint8).tobytes())


class Chromium:
    """A headless chromium with a fake microphone and camera; ``evaluate`` runs JS in the open page."""

    def __init__(self, wav: Path, y4m: Path):
        exe = find_chromium()
        if exe is None:
            raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
        self.home = Path(tempfile.mkdtemp(prefix="ijax-chromium-"))
        os.chmod(self.home, 0o700)
        env = {**os.environ, "XDG_CONFIG_HOME": str(self.home), "XDG_CACHE_HOME": str(self.home),
               "XDG_RUNTIME_DIR": str(self.home), "HOME": str(self.home)}
        profile = self.home / "profile"
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--no-first-run", "--no-default-browser-check", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav.resolve()}",
             f"--use-file-for-fake-video-capture={y4m.resolve()}", "--autoplay-policy=no-user-gesture-required",
             "about:blank"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port within 20 s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.cdp = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20))
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.cdp.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.cdp.recv(timeout=60))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page JS failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 20
        while self.evaluate("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load within 20 s")
            time.sleep(0.1)

    def wait_for(self, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied {expression!r}; stats: "
                                   f"{self.evaluate('JSON.stringify({...stats, played: 0, heard: 0})')}")
            time.sleep(0.2)

    def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(png)
        return png

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close")
        with contextlib.suppress(Exception):
            self._stack.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        shutil.rmtree(self.home, ignore_errors=True)
