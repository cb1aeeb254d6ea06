"""Drives headless Chromium over the DevTools protocol for the HTML report's tests.

    python browser.py --page PAGE.html --steps STEPS.json --screenshots DIR [--chromium BIN]

Starts `chromium --headless=new` with a fresh profile, opens PAGE from disk, runs the
steps (a JSON list, below) with real input events, and prints one JSON object on stdout:

    {"values": {NAME: VALUE...}, "console_errors": [...], "exceptions": [...],
     "requests": [URL...], "dialogs": [...], "screenshots": [PATH...], "error": null}

`requests` lists every request the page made that was not `file:` or `data:`; `dialogs`
every alert/confirm/prompt the page opened. Chromium is killed on exit, whatever happens
(its whole process group).

Steps, each an object with `do`:
  {"do": "wait", "js": EXPR, "timeout_s": 10}        until EXPR is truthy (fails otherwise)
  {"do": "eval", "js": EXPR, "as": NAME}              stores EXPR's value (JSON) under NAME
  {"do": "click", "selector": CSS, "index": 0, "x": 0.5, "y": 0.5, "as": NAME}
        presses and releases the left button at that point of the element's box
        (fractions of its width and height), after scrolling it into view; stores the
        point under NAME if given
  {"do": "type", "selector": CSS, "text": TEXT}      clicks the element, then inserts TEXT
  {"do": "clear", "selector": CSS}                   selects the element's text and deletes it
  {"do": "hover", "selector": CSS, "index": 0}       moves the mouse to the element's centre
  {"do": "screenshot", "name": NAME, "full_page": true}
  {"do": "viewport", "width": W, "height": H}        and waits until the page has redrawn
  {"do": "upload", "selector": CSS, "path": PATH}    chooses PATH in that <input type=file>,
        as a user picking the file does (its change event fires)
"""

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket  # PyPI websocket-client: the DevTools protocol is JSON over a WebSocket


class StepFailed(Exception):
    pass


class Browser:
    def __init__(self, chromium):
        self.profile = tempfile.mkdtemp(prefix="memwarden-chromium-")
        self.process = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--remote-debugging-port=0",
                "--user-data-dir=" + self.profile,
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1400,1000",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.socket = None
        self.next_id = 0
        self.events = []
        self.result = {
            "values": {},
            "console_errors": [],
            "exceptions": [],
            "requests": [],
            "dialogs": [],
            "screenshots": [],
            "error": None,
        }

    def close(self):
        try:
            if self.socket is not None:
                self.socket.close()
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def connect(self):
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
            if self.process.poll() is not None:
                raise StepFailed("chromium exited with %s" % self.process.returncode)
            if time.monotonic() > deadline:
                raise StepFailed("chromium wrote no DevToolsActivePort in 30 s")
            time.sleep(0.05)
        with open(port_file) as f:
            port = int(f.readline().strip())
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        self.socket = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )
        for domain in ("Runtime", "Log", "Network", "Page", "DOM"):
            self.call(domain + ".enable")

    def call(self, method, **params):
        self.next_id += 1
        message_id = self.next_id
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise StepFailed("%s: %s" % (method, message["error"]))
                return message.get("result", {})
            if "method" in message:
                self.on_event(message["method"], message.get("params", {}))

    def on_event(self, method, params):
        self.events.append(method)
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.result["console_errors"].append(text)
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            self.result["exceptions"].append(exception.get("description") or details.get("text"))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.result["console_errors"].append(entry.get("text"))
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not (url.startswith("file:") or url.startswith("data:")):
                self.result["requests"].append(url)
        elif method == "Page.javascriptDialogOpening":
            self.result["dialogs"].append(params.get("message"))
            self.socket.send(json.dumps({
                "id": 0, "method": "Page.handleJavaScriptDialog", "params": {"accept": False},
            }))

    def pump(self, seconds):
        """Reads events for `seconds` (a navigation's, a dialog's)."""
        self.socket.settimeout(seconds)
        try:
            while True:
                message = json.loads(self.socket.recv())
                if "method" in message:
                    self.on_event(message["method"], message.get("params", {}))
        except websocket.WebSocketTimeoutException:
            pass
        finally:
            self.socket.settimeout(30)

    def evaluate(self, expression):
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise StepFailed("%s: %s" % (expression, details.get("exception", {}).get("description", details.get("text"))))
        return result.get("result", {}).get("value")

    def open(self, path):
        self.call("Page.navigate", url="file://" + os.path.abspath(path))
        deadline = time.monotonic() + 30
        while "Page.loadEventFired" not in self.events:
            if time.monotonic() > deadline:
                raise StepFailed("the page did not load in 30 s")
            self.pump(0.1)

    def point(self, selector, index, x, y):
        point = self.evaluate(
            "(() => { const e = document.querySelectorAll(%s)[%d]; if (!e) return null;"
            " e.scrollIntoView({block: 'center', inline: 'nearest'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.left + r.width * %f, y: r.top + r.height * %f,"
            " width: r.width, height: r.height}; })()" % (json.dumps(selector), index, x, y)
        )
        if point is None:
            raise StepFailed("no element %s [%d]" % (selector, index))
        return point

    def click(self, x, y):
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, directory, name, full_page):
        if full_page:
            # A window as tall as the page, so sticky and fixed elements sit where a
            # reader sees them (capturing beyond the viewport would repeat them midway).
            viewport = self.evaluate("({width: window.innerWidth, height: window.innerHeight})")
            metrics = self.call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            self.call("Emulation.setDeviceMetricsOverride", width=viewport["width"],
                      height=int(size["height"]), deviceScaleFactor=1, mobile=False)
            self.evaluate("window.scrollTo(0, 0)")
            self.pump(0.3)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        if full_page:
            self.call("Emulation.setDeviceMetricsOverride", width=viewport["width"],
                      height=viewport["height"], deviceScaleFactor=1, mobile=False)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name + ".png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        self.result["screenshots"].append(path)

    def run(self, step, screenshots):
        do = step["do"]
        if do == "wait":
            deadline = time.monotonic() + step.get("timeout_s", 10)
            while not self.evaluate(step["js"]):
                if time.monotonic() > deadline:
                    raise StepFailed("timed out waiting for " + step["js"])
                self.pump(0.05)
        elif do == "eval":
            self.result["values"][step["as"]] = self.evaluate(step["js"])
        elif do in ("click", "type", "hover", "clear"):
            point = self.point(step["selector"], step.get("index", 0), step.get("x", 0.5), step.get("y", 0.5))
            if do == "hover":
                self.call("Input.dispatchMouseEvent", type="mouseMoved", x=point["x"], y=point["y"])
            else:
                self.click(point["x"], point["y"])
            if do == "type":
                self.call("Input.insertText", text=step["text"])
            if do == "clear":
                self.call("Input.dispatchKeyEvent", type="keyDown", key="a", code="KeyA", modifiers=2,
                          windowsVirtualKeyCode=65, commands=["selectAll"])
                self.call("Input.dispatchKeyEvent", type="keyUp", key="a", code="KeyA", modifiers=2,
                          windowsVirtualKeyCode=65)
                self.call("Input.dispatchKeyEvent", type="keyDown", key="Backspace", code="Backspace",
                          windowsVirtualKeyCode=8)
                self.call("Input.dispatchKeyEvent", type="keyUp", key="Backspace", code="Backspace",
                          windowsVirtualKeyCode=8)
            if "as" in step:
                self.result["values"][step["as"]] = point
            self.pump(0.05)
        elif do == "screenshot":
            self.screenshot(screenshots, step["name"], step.get("full_page", True))
        elif do == "upload":
            root = self.call("DOM.getDocument", depth=0)["root"]["nodeId"]
            node = self.call("DOM.querySelector", nodeId=root, selector=step["selector"])["nodeId"]
            if not node:
                raise StepFailed("no element " + step["selector"])
            self.call("DOM.setFileInputFiles", nodeId=node, files=[os.path.abspath(step["path"])])
            self.pump(0.05)
        elif do == "viewport":
            self.call("Emulation.setDeviceMetricsOverride", width=step["width"], height=step["height"],
                      deviceScaleFactor=1, mobile=False)
            # Pages redraw a while after a resize (the report's after 100 ms): a timer set
            # after the next frame fires after theirs, however loaded the machine is.
            self.evaluate("new Promise((r) => requestAnimationFrame(() => setTimeout(() => r(true), 250)))")
        else:
            raise StepFailed("unknown step " + json.dumps(step))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", required=True)
    parser.add_argument("--steps", required=True)
    parser.add_argument("--screenshots", required=True)
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args()
    with open(args.steps) as f:
        steps = json.load(f)
    # A test harness that gives up sends SIGTERM: leave through `finally`, killing chromium.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    browser = Browser(args.chromium)
    try:
        browser.connect()
        browser.open(args.page)
        for number, step in enumerate(steps):
            try:
                browser.run(step, args.screenshots)
            except StepFailed as e:
                raise StepFailed("step %d (%s): %s" % (number, step.get("do"), e))
        # Late events: a dialog or an error the last step caused.
        browser.pump(0.2)
    except Exception as e:  # reported in the result; the caller fails the test with it
        browser.result["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        browser.close()
    json.dump(browser.result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
