"""The main job, headless: train a tiny model through a real ComfyUI's /prompt, then generate with it.

    make demo            (or: .venv/bin/python -m scripts.demo [--out DIR] [--steps N])

1. starts ComfyUI (from .cache/comfyui) with this pack linked, in a persistent home (.cache/demo-home),
   so the trained model is kept between runs;
2. posts workflows/api/train_from_dataset.json: makes the built-in shapes dataset, trains the tiny model
   (first run only: later runs resume the finished checkpoint and return at once), samples a prompt grid;
3. posts workflows/api/guidance_sweep.json: the same noise at guidance 1, 3 and 7.5;
4. writes every image plus a contact sheet to the output folder, and prints where.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image, ImageDraw

from scripts.comfy_harness import ComfyServer

REPO = Path(__file__).resolve().parents[1]


def load_workflow(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())


def run_workflow(server: ComfyServer, name: str, prompt: dict, timeout: float) -> list[tuple[str, Image.Image]]:
    start = time.monotonic()
    prompt_id = server.queue(prompt)
    print(f"[demo] {name}: queued", flush=True)
    last_report = start
    while prompt_id not in server.get_json(f"/history/{prompt_id}"):  # history lists finished prompts only
        if not server.is_running() or time.monotonic() - start > timeout:
            break  # wait() below reports the dead server or interrupts the overdue prompt
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            print(f"[demo] {name}: running for {last_report - start:.0f} s ...", flush=True)
        time.sleep(1)
    entry = server.wait(prompt_id, timeout=1)
    print(f"[demo] {name}: done in {time.monotonic() - start:.0f} s", flush=True)
    saved = [node for node, spec in prompt.items() if spec["class_type"] == "SaveImage"]  # not the nodes' previews
    return [(f"{name}_{node}_{i}", image) for node in saved for i, image in enumerate(server.images(entry, node))]


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

    train = load_workflow("train_from_dataset")
    if args.steps is not None:
        train["4"]["inputs"]["steps"] = args.steps
    with ComfyServer(Path(args.home)) as server:
        print(f"[demo] ComfyUI up at {server.url} in {server.startup_seconds:.1f} s (log: {server.log_path})")
        images = run_workflow(server, "train_from_dataset", train, timeout=3600)
        images += run_workflow(server, "guidance_sweep", load_workflow("guidance_sweep"), timeout=600)
    for name, img in images:
        img.save(out / f"{name}.png")
    contact_sheet(images).save(out / "contact_sheet.png")
    print(f"[demo] {len(images)} images and contact_sheet.png written to {out}")


if __name__ == "__main__":
    main()
