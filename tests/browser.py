"""A real headless Chromium, driven over the DevTools protocol on a pipe (no extra packages).

`open_page(url, script)` loads the page, evaluates `script` (an expression whose value is JSON-
able) after the load event, and returns (value, errors): errors are console errors, uncaught
exceptions and failed loads the browser reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class _Pipe:
    def __init__(self, browser: str, profile: str) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # Chromium reads commands on fd 3 and answers on fd 4
            r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)  # neither may be 3 or 4 now
            os.dup2(r, 3)
            os.dup2(w, 4)
        self.proc = subprocess.Popen(
            [browser, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--allow-file-access-from-files", f"--user-data-dir={profile}",
             "about:blank"],
            close_fds=False, preexec_fn=fds,  # (close_fds would run after fds() and undo it)
            start_new_session=True,  # its own process group: close() stops its helpers too
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
        raise TimeoutError(method)

    def read(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self.events.append(msg)
        return msg

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e["method"] == method for e in self.events):
                return
            self.read()
        raise TimeoutError(method)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # renderers still write the profile
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            out.append(p["exceptionDetails"].get("text", "exception"))
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
            out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(p["entry"]["text"])
    return out


def open_page(url: str, script: str, browser: str | None = None) -> tuple[object, list[str]]:
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found")
    # a helper the kill missed may still write the profile as it is removed: not our failure
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        pipe = _Pipe(browser, profile)
        try:
            target = next(t for t in pipe.send("Target.getTargets")["targetInfos"]
                          if t["type"] == "page")
            session = pipe.send("Target.attachToTarget",
                                {"targetId": target["targetId"], "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired")
            result = pipe.send("Runtime.evaluate", {"expression": script, "returnByValue": True,
                                                    "awaitPromise": True}, session=session)
            value = result["result"].get("value")
            return value, _errors(pipe.events)
        finally:
            pipe.close()
