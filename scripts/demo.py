"""The main job, headless: train a tiny model through a real ComfyUI's /prompt, then generate with it.

    make demo            (or: .venv/bin/python -m scripts.demo [--out DIR] [--steps N] [--max-minutes M])

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


def samples_by_prompt(server: ComfyServer, prompt: dict, entry: dict) -> list[tuple[str, list[Image.Image]]]:
    """(prompt line, its images) for the workflow's raw samples: the sampler gives each prompt its share of the
    batch, in order."""
    [samples] = [n for n, spec in prompt.items() if spec["class_type"] == "SaveImage"
                 and spec["inputs"]["filename_prefix"].endswith("shapes_samples")]
    [encode] = [spec for spec in prompt.values() if spec["class_type"] == "T2IMiniTextEncode"]
    lines = [line.strip() for line in encode["inputs"]["text"].splitlines() if line.strip()]
    images = server.images(entry, samples)
    per_prompt = len(images) // len(lines)
    return [(line, images[i * per_prompt:(i + 1) * per_prompt]) for i, line in enumerate(lines)]


def judge_samples(rows: list[tuple[str, list[Image.Image]]]) -> list[list[bool]]:
    """Per prompt, per image: does it match its prompt, by the shapes judge (color, shape, position, size)."""
    import numpy as np
    import torch

    from evals.shapes import ShapesJudge
    judge, verdicts = ShapesJudge(), []
    for line, images in rows:
        batch = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                             for im in images])
        verdicts.append(judge.matches(batch, [line] * len(images)).tolist())
    return verdicts


def grid_cells(prompt: dict, grid_image: Image.Image) -> list[Image.Image]:
    """The images a workflow's T2IMiniImageGrid laid out (then ImageScaleBy enlarged), cut back out of the saved
    grid with the workflow's own columns, padding and scale."""
    [layout] = [spec["inputs"] for spec in prompt.values() if spec["class_type"] == "T2IMiniImageGrid"]
    [scaled] = [spec["inputs"] for spec in prompt.values() if spec["class_type"] == "ImageScaleBy"]
    columns, scale = layout["columns"], scaled["scale_by"]
    pad = round(layout["padding"] * scale)
    cell = (grid_image.width - (columns - 1) * pad) // columns
    rows = (grid_image.height + pad) // (cell + pad)
    return [grid_image.crop((c * (cell + pad), r * (cell + pad), c * (cell + pad) + cell, r * (cell + pad) + cell))
            for r in range(rows) for c in range(columns)]


SHEET_CELL, SHEET_PAD, SHEET_LABEL = 96, 8, 26  # pixels: a sample's side on the sheet, gaps, a label line


def contact_sheet(sample_rows, verdicts, sweep_prompt: str, sweep_rows, loss_curve: Image.Image) -> Image.Image:
    """One sheet a reader can check by eye: a labelled row per prompt (each sample marked as the judge read it),
    the guidance sweep with one row per w, and the loss curve. Every block has its own line of text above it."""
    from PIL import ImageFont
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    columns = max(len(images) for _, images in [*sample_rows, *sweep_rows])
    width = max(2 * SHEET_PAD + columns * (SHEET_CELL + SHEET_PAD), loss_curve.width + 2 * SHEET_PAD, 560)
    blocks = []  # (y, kind, payload), laid out top to bottom
    y = SHEET_PAD

    def line(text, f=font):
        nonlocal y
        blocks.append((y, "text", (text, f)))
        y += SHEET_LABEL

    def row(images, marks=None):
        nonlocal y
        blocks.append((y, "row", (images, marks)))
        y += SHEET_CELL + (18 if marks else 0) + SHEET_PAD

    matched = sum(map(sum, verdicts))
    line(f"Samples at guidance 3: {matched} of {sum(map(len, verdicts))} match their prompt (shapes judge)")
    for (text, images), marks in zip(sample_rows, verdicts):
        line(f'"{text}"  ({sum(marks)} of {len(marks)})', small)
        row(images, marks)
    line(f'Guidance sweep, the same noise: "{sweep_prompt}"')
    for w, images in sweep_rows:
        line(f"w = {w:g}", small)
        row(images)
    line("Training loss")
    blocks.append((y, "image", loss_curve))
    y += loss_curve.height + SHEET_PAD

    sheet = Image.new("RGB", (width, y), "white")
    draw = ImageDraw.Draw(sheet)
    for top, kind, payload in blocks:
        if kind == "text":
            text, f = payload
            draw.text((SHEET_PAD, top + 4), text, fill="black", font=f)
        elif kind == "image":
            sheet.paste(payload.convert("RGB"), (SHEET_PAD, top))
        else:
            images, marks = payload
            for i, img in enumerate(images):
                x = SHEET_PAD + i * (SHEET_CELL + SHEET_PAD)
                sheet.paste(img.convert("RGB").resize((SHEET_CELL, SHEET_CELL), Image.NEAREST), (x, top))
                if marks:
                    ok = marks[i]
                    draw.text((x, top + SHEET_CELL + 2), "match" if ok else "no match",
                              fill=(0, 128, 0) if ok else (192, 0, 0), font=small)
    return sheet


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "out" / "demo"), help="folder for the images")
    p.add_argument("--home", default=str(REPO / ".cache" / "demo-home"), help="ComfyUI base directory (kept)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the workflow's)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="training-time budget in minutes (default: the workflow's)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    train = load_workflow("train_from_dataset")
    if args.steps is not None:
        train["4"]["inputs"]["steps"] = args.steps
    if args.max_minutes is not None:
        train["4"]["inputs"]["max_minutes"] = args.max_minutes
    sweep = load_workflow("guidance_sweep")
    with ComfyServer(Path(args.home)) as server:
        print(f"[demo] ComfyUI up at {server.url} in {server.startup_seconds:.1f} s (log: {server.log_path})")
        entry = asyncio.run(watch(server, "train_from_dataset", train, timeout=3600))
        images = saved_images(server, "train_from_dataset", train, entry)
        sample_rows = samples_by_prompt(server, train, entry)
        sweep_entry = asyncio.run(watch(server, "guidance_sweep", sweep, 600))
        sweep_images = saved_images(server, "guidance_sweep", sweep, sweep_entry)
    verdicts = judge_samples(sample_rows)
    for name, img in [*images, *sweep_images]:
        img.save(out / f"{name}.png")
    [loss_node] = [n for n, spec in train.items() if spec["class_type"] == "SaveImage"
                   and spec["inputs"]["filename_prefix"].endswith("loss_curve")]
    [loss_curve] = [img for name, img in images if name.startswith(f"train_from_dataset_{loss_node}_")]
    scales = sorted(spec["inputs"]["cfg"] for spec in sweep.values() if spec["class_type"] == "T2IMiniGuidedSampler")
    cells = grid_cells(sweep, sweep_images[0][1])
    per_scale = len(cells) // len(scales)  # the sweep batches its samplers' outputs in rising cfg
    sweep_rows = [(w, cells[i * per_scale:(i + 1) * per_scale]) for i, w in enumerate(scales)]
    [sweep_text] = [spec["inputs"]["text"] for spec in sweep.values() if spec["class_type"] == "T2IMiniTextEncode"]
    contact_sheet(sample_rows, verdicts, sweep_text, sweep_rows, loss_curve).save(out / "contact_sheet.png")
    matched, total = sum(map(sum, verdicts)), sum(map(len, verdicts))
    print(f"[demo] {matched} of {total} images match their prompt (the shapes judge reads color, shape, position "
          f"and size; guidance 3)")
    n = len(images) + len(sweep_images)
    print(f"[demo] {n} images and contact_sheet.png written to {out} in {time.monotonic() - started:.0f} s")

if __name__ == "__main__":
    main()
