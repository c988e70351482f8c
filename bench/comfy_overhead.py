"""ComfyUI's overhead: the same generation through a real ComfyUI's /prompt and through t2i_core directly.

    python -m bench.comfy_overhead [--quick]

One `tiny`-preset model (random weights, saved as a checkpoint into the server's models/t2i_mini), 32x32 px,
DDIM 25 steps, CFG 3, precision auto, at batch 1 and 4: the text_to_image workflow with PreviewImage as its
output. The direct side is what a Python user writes: `T2IModel.generate` and a PNG per image at
PreviewImage's compression level with the prompt in its metadata. Server start-up and the first run of each
workflow (checkpoint load) are excluded; every run changes the seed, so ComfyUI's cache cannot skip the
sampler. Runs alternate between the two sides and the medians are compared:

* ComfyUI, client: POST /prompt until the websocket says execution_success, as ComfyUI's own API example
  waits (no polling, which would load the server): what an API user waits;
* ComfyUI, server: the execution_start -> execution_success timestamps ComfyUI records in the history
  (milliseconds): the executor's own overhead without HTTP;
* direct: the Python call, in this process.

Both processes run torch with the same thread count and OMP_WAIT_POLICY=PASSIVE, so the idle one does not
spin on the cores the busy one needs.
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from scripts.comfy_harness import ComfyServer, comfyui_is_set_up
from t2i_core import NoiseSchedule, PixelCodec, T2IModel, save_checkpoint, tiny_text_encoder

from .common import Section, Table, build_unet, run_part

REPO = Path(__file__).resolve().parent.parent

PROMPT, RES, STEPS, GUIDANCE = "a large red circle on the left", 32, 25, 3.0
QUICK_STEPS = 5  # --quick shows the benchmark runs end to end; its figures are not the table's
CHECKPOINT = "bench_overhead.safetensors"


def workflow(seed: int, batch: int, steps: int = STEPS) -> dict:
    """The text_to_image API workflow, PreviewImage as the output, no upscale."""
    return {
        "1": {"class_type": "T2IMiniCheckpointLoader", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "T2IMiniTextEncode",
              "inputs": {"text_encoder": ["1", 1], "text": PROMPT, "one_prompt_per_line": False}},
        "3": {"class_type": "T2IMiniEmptyConditioning", "inputs": {"text_encoder": ["1", 1]}},
        "4": {"class_type": "T2IMiniNoiseLatent",
              "inputs": {"codec": ["1", 2], "seed": seed, "width": RES, "height": RES, "batch_size": batch,
                         "model": ["1", 0]}},
        "5": {"class_type": "T2IMiniGuidedSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0],
                         "steps": steps, "cfg": GUIDANCE, "sampler_name": "ddim", "eta": 0.0,
                         "guidance_rescale": 0.0, "precision": "auto"}},
        "6": {"class_type": "T2IMiniDecode", "inputs": {"codec": ["1", 2], "samples": ["5", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def bench_model() -> T2IModel:
    encoder = tiny_text_encoder(0)
    unet = build_unet("tiny", in_channels=3, out_channels=3, context_dim=encoder.width)
    return T2IModel(unet.eval(), NoiseSchedule(), encoder, PixelCodec())


def direct_run(model: T2IModel, seed: int, batch: int, out_dir: Path, steps: int = STEPS):
    images = model.generate(PROMPT, seeds=list(range(seed, seed + batch)), height=RES, width=RES, steps=steps,
                            guidance_scale=GUIDANCE, precision="auto")
    info = PngInfo()
    info.add_text("prompt", json.dumps(workflow(seed, batch, steps)))
    for i, image in enumerate(images):
        array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(array).save(out_dir / f"direct_{i:05}.png", pnginfo=info, compress_level=1)


class WebsocketClient:
    """An API client that posts a prompt and waits on ComfyUI's websocket for its end."""

    def __init__(self, server: ComfyServer):
        self.server, self.client_id = server, uuid.uuid4().hex
        self.loop = asyncio.new_event_loop()
        self.session = self.loop.run_until_complete(self._session())
        self.ws = self.loop.run_until_complete(
            self.session.ws_connect(f"{server.url.replace('http', 'ws')}/ws?clientId={self.client_id}"))

    async def _session(self):
        import aiohttp  # a ComfyUI dependency: present wherever ComfyUI is set up
        return aiohttp.ClientSession()

    async def _run(self, prompt: dict) -> str:
        from aiohttp import WSMsgType
        async with self.session.post(f"{self.server.url}/prompt",
                                     json={"prompt": prompt, "client_id": self.client_id}) as r:
            if r.status != 200:
                raise RuntimeError(f"/prompt answered {r.status}: {await r.text()}")
            prompt_id = (await r.json())["prompt_id"]
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 300)
            if msg.type != WSMsgType.TEXT:
                continue  # previews
            event = json.loads(msg.data)
            if event.get("data", {}).get("prompt_id") != prompt_id:
                continue
            if event["type"] == "execution_success":
                return prompt_id
            if event["type"] in ("execution_error", "execution_interrupted"):
                raise RuntimeError(f"prompt failed: {event}")

    def run(self, prompt: dict) -> tuple[float, float]:
        """(client seconds, server seconds) of one prompt."""
        t0 = time.perf_counter()
        prompt_id = self.loop.run_until_complete(self._run(prompt))
        client = time.perf_counter() - t0
        # ComfyUI sends execution_success a moment before it files the prompt in /history
        entry = self.server.wait(prompt_id, timeout=60)
        stamps = {name: data["timestamp"] for name, data in entry["status"]["messages"]}
        return client, (stamps["execution_success"] - stamps["execution_start"]) / 1000

    def close(self):
        self.loop.run_until_complete(self.ws.close())
        self.loop.run_until_complete(self.session.close())
        self.loop.close()


def run(quick: bool = False) -> Section:
    """ComfyUI's overhead over the engine, same generation."""
    section = Section("comfy_overhead", "ComfyUI /prompt against a direct t2i_core call, same generation",
                      "python -m bench.comfy_overhead")
    if not comfyui_is_set_up():
        section.skipped = "no ComfyUI in .cache/comfyui: run `make setup` first"
        return section
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the server
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    repeats, steps = (2, QUICK_STEPS) if quick else (9, STEPS)
    model = bench_model()
    table = Table(f"`tiny` preset, {RES}x{RES} px, DDIM {steps} steps, CFG {GUIDANCE:g}, precision auto, "
                  f"{torch.get_num_threads()} threads; medians of {repeats} alternating runs",
                  ["batch", "direct s", "ComfyUI server s", "ComfyUI client s", "server overhead",
                   "client overhead", "spread (direct / client)"])
    with tempfile.TemporaryDirectory(prefix="t2i_overhead_") as tmp:
        tmp = Path(tmp)
        (tmp / "direct").mkdir()
        (tmp / "comfy" / "models" / "t2i_mini").mkdir(parents=True)
        save_checkpoint(tmp / "comfy" / "models" / "t2i_mini" / CHECKPOINT, model)
        with ComfyServer(tmp / "comfy") as server:
            section.notes.append(f"ComfyUI started in {server.startup_seconds:.1f} s (excluded).")
            client = WebsocketClient(server)
            for batch in (1, 4):
                seed = 1000 * batch
                client.run(workflow(seed, batch, steps))  # loads the checkpoint; excluded, like start-up
                direct_run(model, seed, batch, tmp / "direct", steps)
                direct, server_s, client_s = [], [], []
                for r in range(repeats):
                    seed += batch
                    order = (0, 1) if r % 2 == 0 else (1, 0)
                    for side in order:
                        if side == 0:
                            t0 = time.perf_counter()
                            direct_run(model, seed, batch, tmp / "direct", steps)
                            direct.append(time.perf_counter() - t0)
                        else:
                            c, s = client.run(workflow(seed, batch, steps))
                            client_s.append(c)
                            server_s.append(s)
                d, s, c = (statistics.median(x) for x in (direct, server_s, client_s))
                spread = [(max(x) - min(x)) / statistics.median(x) for x in (direct, client_s)]
                table.add(batch, d, s, c, f"{100 * (s / d - 1):+.1f}%", f"{100 * (c / d - 1):+.1f}%",
                          f"{spread[0]:.0%} / {spread[1]:.0%}")
                section.summary[f"client_overhead_b{batch}"] = c / d - 1
                section.summary[f"server_overhead_b{batch}"] = s / d - 1
            client.close()
    section.tables.append(table)
    section.notes.append("The server's figure includes the sampler node's per-step progress and previews "
                         "(a preview JPEG each step for pixel-space models) and the executor's bookkeeping; the "
                         "client's adds HTTP, queueing and the websocket messages. Target: <= 5% overhead.")
    return section


if __name__ == "__main__":
    run_part("bench.comfy_overhead", run)
