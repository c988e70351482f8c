"""The live training panel: the routes that keep a run's history, and the panel itself in ComfyUI's own frontend
(headless Chromium): its chart gains points as events arrive, the validation images appear, after a page
reload mid-run the chart shows the history again, and its Stop button ends the run saved."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.parse

import pytest
from integration.browser import CHROMIUM, chromium_page
from integration.test_nodes import train_prompt, unique


def run_of(comfy, prompt_id: str) -> dict:
    [run] = [r for r in comfy.get_json("/t2i_mini/runs")["runs"] if r["prompt_id"] == prompt_id]
    return run


def test_the_runs_route_returns_a_runs_history_and_refuses_other_ids(comfy):
    prompt = train_prompt(unique("routed"), steps=6)
    prompt["4"]["inputs"]["validation_every"] = 3
    prompt_id = comfy.queue(prompt)
    comfy.wait(prompt_id)
    run = run_of(comfy, prompt_id)
    assert run["status"] == "done" and run["node"] == "4" and run["total"] == 6 and run["step"] == 6
    assert "/" not in run["checkpoint"] and run["checkpoint"].endswith(".safetensors")  # a name, not a path
    history = comfy.get_json(f"/t2i_mini/runs/{run['id']}")
    assert [p["step"] for p in history["points"]] == [1, 2, 3, 4, 5, 6]
    assert all(p["loss"] > 0 and p["lr"] > 0 for p in history["points"])
    assert [v["step"] for v in history["validations"]] == [3, 6]
    [image] = history["validations"][-1]["images"]
    status, png = comfy.request("GET", "/view?" + urllib.parse.urlencode(
        {k: image[k] for k in ("filename", "subfolder", "type")}))
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    # the same history through the /api prefix the frontend's fetchApi uses
    assert comfy.get_json(f"/api/t2i_mini/runs/{run['id']}")["points"] == history["points"]

    for bad, code in (("not-a-run", 400), ("0" * 32, 404), ("..%2F..%2Fetc%2Fpasswd", None)):
        status, body = comfy.request("GET", f"/t2i_mini/runs/{bad}")
        assert status in ((code,) if code else (400, 404)), (bad, status, body[:200])
        assert b"root:" not in body
    status, body = comfy.request("GET", "/t2i_mini/runs/0123/../../../etc/passwd")
    assert status == 404 and b"root:" not in body


PANEL = "window.t2iMiniPanel(4)"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (apt-get install chromium)")
def test_the_panel_draws_the_run_live_and_again_after_a_reload(comfy, tmp_path):
    from scripts import make_ui_workflows as gen

    prompt = train_prompt(unique("panel"), steps=400, dataset_count=64)
    prompt["4"]["inputs"].update(preset="micro", batch_size=8, validation_every=40, checkpoint_every=0)
    # the frontend builds the node from its definition: one the shipped workflows use (scripts/workflow_node_specs.json)
    prompt["2"] = {"class_type": "T2IMiniPretrainedTextEncoder", "inputs": {"folder": "all-MiniLM-L6-v2 (package)"}}
    workflow = json.dumps(gen.api_to_ui("panel", prompt, gen.load_specs()))

    async def scenario():
        async with chromium_page(timeout=240) as page:
            await page.open_comfyui(comfy.url)
            await page.js(f"app.loadGraphData({workflow}, true, true, 'panel')")
            assert await page.until(f"!!{PANEL}", "the Train node's panel")
            await page.js("app.queuePrompt(0)")  # as the Queue button does: the events come to this page
            # an earlier run of node 4 may be drawn first (the panel shows the node's newest run): wait for this one's
            first = int(await page.until(f"{PANEL}.lastEvent > 0 && Number({PANEL}.element.dataset.points) >= 5 && "
                                         f"{PANEL}.element.dataset.points", "points from the training events"))
            await asyncio.sleep(1.5)
            later = int(await page.js(f"{PANEL}.element.dataset.points"))
            assert later > first, (first, later)  # the chart gains points as the events arrive
            src = await page.until(f"{PANEL}.element.querySelector('.t2i-mini-validation img')?.src",
                                   "the validation image")
            assert "/view?" in src and "type=temp" in src
            loaded = await page.js(f"(() => {{ const img = {PANEL}.element.querySelector('.t2i-mini-validation img');"
                                   " return new Promise(r => img.complete ? r(img.naturalWidth) :"
                                   " (img.onload = () => r(img.naturalWidth))); })()")
            assert loaded == 16
            # the panel on screen, with the first-run dialog out of the way, for the README's picture
            rect = await page.js(f"""(async () => {{
                document.querySelectorAll('.p-dialog-mask').forEach(e => e.remove());
                const node = app.graph.getNodeById(4);
                app.canvas.ds.scale = 1.2; app.canvas.centerOnNode(node); app.canvas.setDirty(true, true);
                await new Promise(r => setTimeout(r, 800));
                const r = {PANEL}.element.getBoundingClientRect();
                return {{x: r.x, y: r.y, width: r.width, height: r.height}}; }})()""")
            screenshot = await page.call("Page.captureScreenshot", format="png", clip={
                "x": max(rect["x"] - 8, 0), "y": max(rect["y"] - 8, 0), "width": rect["width"] + 16,
                "height": rect["height"] + 16, "scale": 1})

            await page.call("Page.reload")  # mid-run: a new page, a new websocket client
            await page.open_comfyui(comfy.url)
            if not await page.js(f"!!{PANEL}"):  # the frontend did not restore the workflow itself
                await page.js(f"app.loadGraphData({workflow}, true, true, 'panel')")
            restored = int(await page.until(f"Number({PANEL}?.element.dataset.points) > {later} && "
                                            f"{PANEL}.element.dataset.points", "the history after the reload"))
            step_now = run_of(comfy, prompt_id())["step"]
            assert restored > later and run_of(comfy, prompt_id())["status"] == "running", (restored, step_now)
            await page.until(f"!!{PANEL}.element.querySelector('.t2i-mini-validation img')",
                             "the validation image again")
            # Stop: the button asks the run to save and end, and the panel shows how it ended
            await page.until(f"{PANEL}.stopButton.style.display !== 'none'", "the Stop button of a running run")
            await page.js(f"{PANEL}.stopButton.click()")
            ended = await page.until(f"['stopped', 'done'].includes({PANEL}.element.dataset.status) && "
                                     f"{PANEL}.element.dataset.status", "the stopped run on the panel")
            assert ended == "stopped" and run_of(comfy, prompt_id())["status"] == "stopped"
            assert await page.js(f"{PANEL}.stopButton.style.display") == "none"
            return screenshot

    def prompt_id() -> str:
        runs = [r for r in comfy.get_json("/t2i_mini/runs")["runs"] if r["checkpoint"].startswith(
            prompt["4"]["inputs"]["checkpoint_name"])]
        return runs[0]["prompt_id"]

    started = time.monotonic()
    try:
        screenshot = asyncio.run(scenario())
    finally:
        comfy.request("POST", "/interrupt")
        comfy.request("POST", "/queue", {"clear": True})
    import base64
    import os
    # T2I_PANEL_SCREENSHOT=docs/images/training_panel.png keeps the page as the run drew it (the README's picture)
    target = os.environ.get("T2I_PANEL_SCREENSHOT") or tmp_path / "panel.png"
    with open(target, "wb") as f:
        f.write(base64.b64decode(screenshot["data"]))
    assert time.monotonic() - started < 240
