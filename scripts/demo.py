"""The main job, headless: train a tiny model through a real ComfyUI's /prompt, then generate with it.

    make demo            (or: .venv/bin/python -m scripts.demo [--out DIR] [--steps N])

1. starts ComfyUI (from .cache/comfyui) with this pack linked, in a persistent home (.cache/demo-home),
   so the trained model is kept between runs;
2. posts workflows/api/train_from_dataset.json: makes the built-in shapes dataset, trains the tiny model
   within its 3-minute budget (first run only: later runs resume the finished checkpoint and return at once),
   samples a prompt grid. Training progress (step, loss, images/s, time left) comes from ComfyUI's websocket,
   as ComfyUI's own API example reads it;
3. judges the 16 samples with the shapes judge (color, shape, position and size) and prints how many match;
4. posts workflows/api/guidance_sweep.json: the same noise at guidance 1, 3 and 7.5;
5. writes every image plus a contact sheet to the output folder, and prints where.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path

from PIL import Image, ImageDraw

from scripts.comfy_harness import ComfyServer

REPO = Path(__file__).resolve().parents[1]


def load_workflow(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())


PROGRESS_EVERY_S = 10  # seconds between training progress lines
TRAINING_EVENT = "t2i_mini.training"  # nodes/training.py sends it with each step's numbers


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


async def watch(server: ComfyServer, name: str, prompt: dict, timeout: float) -> dict:
    """Queue `prompt` as a websocket client and print what it does until it ends; returns its history entry."""
    import aiohttp  # a ComfyUI dependency

    client_id = uuid.uuid4().hex
    start = last_line = time.monotonic()
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(f"{server.url.replace('http', 'ws')}/ws?clientId={client_id}", max_msg_size=0) as ws:
        async with session.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
            body = await r.json()
            if r.status != 200 or body.get("node_errors"):
                raise SystemExit(f"[demo] {name}: ComfyUI refused the workflow: {json.dumps(body)[:2000]}")
            prompt_id = body["prompt_id"]
        print(f"[demo] {name}: queued", flush=True)
        while True:
            try:
                message = await ws.receive(timeout=max(1.0, timeout - (time.monotonic() - start)))
            except asyncio.TimeoutError:
                server.interrupt()
                raise SystemExit(f"[demo] {name}: no end after {timeout:.0f} s; interrupted") from None
            if message.type != aiohttp.WSMsgType.TEXT:
                continue  # binary messages are preview images
            event = json.loads(message.data)
            data = event.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if event["type"] == TRAINING_EVENT and (time.monotonic() - last_line >= PROGRESS_EVERY_S
                                                     or data["step"] == data["total"]):
                last_line = time.monotonic()
                print(f"[demo] training: step {data['step']}/{data['total']}  loss {data['loss']:.4f}  "
                      f"{data['images_per_s']:.0f} images/s  {minutes(data['eta_s'])} left", flush=True)
            elif event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                break
    entry = server.wait(prompt_id, timeout=60)
    print(f"[demo] {name}: done in {time.monotonic() - start:.0f} s", flush=True)
    return entry


def saved_images(server: ComfyServer, name: str, prompt: dict, entry: dict) -> list[tuple[str, Image.Image]]:
    saved = [node for node, spec in prompt.items() if spec["class_type"] == "SaveImage"]  # not the nodes' previews
    return [(f"{name}_{node}_{i}", image) for node in saved for i, image in enumerate(server.images(entry, node))]


def judge_samples(server: ComfyServer, prompt: dict, entry: dict) -> tuple[int, int]:
    """(images matching their prompt, images) for the workflow's raw samples, by the shapes judge."""
    import numpy as np
    import torch

    from evals.shapes import judge_shapes
    [samples] = [n for n, spec in prompt.items() if spec["class_type"] == "SaveImage"
                 and spec["inputs"]["filename_prefix"].endswith("shapes_samples")]
    [encode] = [spec for spec in prompt.values() if spec["class_type"] == "T2IMiniTextEncode"]
    lines = [line.strip() for line in encode["inputs"]["text"].splitlines() if line.strip()]
    images = server.images(entry, samples)
    per_prompt = len(images) // len(lines)  # the sampler gives each prompt its share of the batch, in order
    captions = [line for line in lines for _ in range(per_prompt)]
    batch = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                         for im in images])
    return sum(j["all"] for j in judge_shapes(batch, captions)), len(images)


def contact_sheet(images: list[tuple[str, Image.Image]], width: int = 1200) -> Image.Image:
    label_h, pad = 18, 12
    rows, x, y, row_h = [], pad, pad, 0
    for name, img in images:  # simple left-to-right flow layout
        if x + img.width + pad > width and x > pad:
            x, y = pad, y + row_h + label_h + pad
            row_h = 0
        rows.append((name, img, x, y))
        x += img.width + pad
        row_h = max(row_h, img.height)
    sheet = Image.new("RGB", (width, y + row_h + label_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for name, img, x, y in rows:
        draw.text((x, y), name, fill="black")
        sheet.paste(img.convert("RGB"), (x, y + label_h))
    return sheet


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "out" / "demo"), help="folder for the images")
    p.add_argument("--home", default=str(REPO / ".cache" / "demo-home"), help="ComfyUI base directory (kept)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the workflow's)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    train = load_workflow("train_from_dataset")
    if args.steps is not None:
        train["4"]["inputs"]["steps"] = args.steps
    sweep = load_workflow("guidance_sweep")
    with ComfyServer(Path(args.home)) as server:
        print(f"[demo] ComfyUI up at {server.url} in {server.startup_seconds:.1f} s (log: {server.log_path})")
        entry = asyncio.run(watch(server, "train_from_dataset", train, timeout=3600))
        images = saved_images(server, "train_from_dataset", train, entry)
        matched, total = judge_samples(server, train, entry)
        images += saved_images(server, "guidance_sweep", sweep, asyncio.run(watch(server, "guidance_sweep", sweep, 600)))
    for name, img in images:
        img.save(out / f"{name}.png")
    contact_sheet(images).save(out / "contact_sheet.png")
    print(f"[demo] {matched} of {total} images match their prompt (the shapes judge reads color, shape, position "
          f"and size; guidance 3)")
    print(f"[demo] {len(images)} images and contact_sheet.png written to {out} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
