"""ComfyUI's own frontend in headless Chromium, driven over the Chrome DevTools protocol (no browser driver to
install: Debian's `chromium` and aiohttp, a ComfyUI dependency)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

from scripts.comfy_harness import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    def __init__(self, ws, deadline: float):
        self.ws, self.deadline = ws, deadline
        self._ids = iter(range(1, 1_000_000))

    async def call(self, method: str, **params):
        call_id = next(self._ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == call_id:
                assert "error" not in message, message["error"]
                return message["result"]

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, json.dumps(result["exceptionDetails"])[:2000]
        return result["result"].get("value")

    async def until(self, expression: str, what: str, every: float = 0.25):
        """Wait until the expression is truthy in the page; returns its value."""
        while not (value := await self.js(expression)):
            assert time.monotonic() < self.deadline, f"timed out waiting for {what}"
            await asyncio.sleep(every)
        return value

    async def open_comfyui(self, url: str):
        """Load the frontend and wait until it has registered this pack's nodes."""
        await self.call("Page.navigate", url=url)
        await self.until("!!(window.app && window.app.graph && window.LiteGraph && "
                         "'T2IMiniTrain' in LiteGraph.registered_node_types)", "the frontend to load the pack's nodes")


@contextlib.asynccontextmanager
async def chromium_page(timeout: float = 90):
    """A Page in a fresh headless Chromium profile, closed with its whole process group afterwards."""
    import aiohttp

    port = free_port()
    # Chromium's helper processes can still write to the profile after the browser exits: end the whole
    # process group, and let a late cache write not fail the cleanup.
    with tempfile.TemporaryDirectory(prefix="t2i-chromium-", ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--window-size=1400,1000",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2).read())
                    break
                except OSError:
                    assert time.monotonic() < deadline, "headless Chromium did not start"
                    await asyncio.sleep(0.2)
            target = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with aiohttp.ClientSession() as session, session.ws_connect(target, max_msg_size=0) as ws:
                yield Page(ws, deadline)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(10)
