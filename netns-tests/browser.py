#!/usr/bin/env python3
"""browser.py: drive headless Chromium through a list of steps, for the
status-page scenario. Standard library only: it speaks the DevTools
protocol over --remote-debugging-pipe (JSON messages ending in NUL on the
browser's fds 3 and 4), so nothing is fetched and no port is opened.

    browser.py CHROMIUM PROFILE_DIR STEP...

Steps, run in order:
    open:TAB:URL        a new tab named TAB at URL
    wait:TAB:MS:JS      poll JS (an expression) in TAB every 100 ms, at most
                        MS ms, until it is truthy; prints
                        "wait TAB ok at=UNIX after_run_ms=N" or fails with
                        the tab's text
    shot:TAB:PATH       a PNG screenshot of TAB
    text:TAB            print TAB's innerText
    run:CMD             run CMD with sh -c (e.g. kill a node), note the time

Exit status 0 if every step passed, 1 on the first that did not. Every
wait is bounded, and the browser is killed on exit.
"""

import base64
import json
import os
import select
import subprocess
import sys
import time

REPLY_TIMEOUT_S = 15


class Browser:
    def __init__(self, chromium, profile):
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()

        def fds():
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        args = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            "--user-data-dir=" + profile, "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--disable-default-apps", "--mute-audio",
            "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows", "--window-size=1280,1000", "about:blank",
        ]
        self.proc = subprocess.Popen(args, preexec_fn=fds, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(profile, "chromium.log"), "w"))
        os.close(to_r)
        os.close(from_w)
        self.next_id = 0
        self.buf = b""
        self.tabs = {}

    def call(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{method}: no answer from chromium within {REPLY_TIMEOUT_S} s")
            ready, _, _ = select.select([self.from_r], [], [], left)
            if ready:
                chunk = os.read(self.from_r, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"{method}: chromium closed its pipe (exit {self.proc.poll()})")
                self.buf += chunk

    def open(self, name, url):
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.tabs[name] = session
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session)
        self.call("Page.enable", {}, session)
        self.call("Page.navigate", {"url": url}, session)

    def evaluate(self, name, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.tabs[name])
        return result.get("result", {}).get("value")

    def text(self, name):
        return self.evaluate(name, "document.body ? document.body.innerText : '(no body)'")

    def screenshot(self, name, path):
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, self.tabs[name])
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    browser = Browser(sys.argv[1], sys.argv[2])
    last_run = time.time()
    try:
        for step in sys.argv[3:]:
            kind, _, rest = step.partition(":")
            if kind == "open":
                name, _, url = rest.partition(":")
                browser.open(name, url)
            elif kind == "wait":
                name, ms, expression = rest.split(":", 2)
                check = f"(() => {{ try {{ return Boolean({expression}); }} catch (e) {{ return false; }} }})()"
                deadline = time.monotonic() + int(ms) / 1000
                while not browser.evaluate(name, check):
                    if time.monotonic() >= deadline:
                        print(f"wait {name} FAILED after {ms} ms: {expression}\n--- {name} shows:\n{browser.text(name)}")
                        return 1
                    time.sleep(0.1)
                now = time.time()
                print(f"wait {name} ok at={now:.3f} after_run_ms={int((now - last_run) * 1000)}")
            elif kind == "shot":
                name, _, path = rest.partition(":")
                browser.screenshot(name, path)
                print(f"shot {name} {path}")
            elif kind == "text":
                print(f"--- {rest} shows:\n{browser.text(rest)}")
            elif kind == "run":
                subprocess.run(["sh", "-c", rest], check=True, timeout=30)
                last_run = time.time()
                print(f"run ok at={last_run:.3f}: {rest}")
            else:
                print(f"unknown step {step!r}", file=sys.stderr)
                return 2
            sys.stdout.flush()
        return 0
    finally:
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
