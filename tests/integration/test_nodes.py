"""The pack's nodes inside a real ComfyUI: registration, train -> generate through /prompt, error messages,
and Cancel during training. Sizes are tiny so the whole file runs in about a minute on 2 CPU cores."""
from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
import torch

from scripts.comfy_harness import PACK_NAME, execution_error

EXPECTED_NODES = {
    "T2IMiniCheckpointLoader", "T2IMiniTinyTextEncoder", "T2IMiniOpenCLIPTextEncoder", "T2IMiniTextEncoderFile",
    "T2IMiniVAELoader", "T2IMiniPixelCodec", "T2IMiniTextEncode", "T2IMiniEmptyConditioning",
    "T2IMiniNoiseLatent", "T2IMiniEmptyLatent", "T2IMiniGuidedSampler", "T2IMiniDecode", "T2IMiniTrain",
    "T2IMiniMakeDataset",
    "T2IMiniImageGrid", "T2IMiniAttentionMaps", "T2IMiniTrainingStatus",
}
PROMPT = "a large red circle on the left"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def model_dir(comfy):
    return comfy.base_dir / "models" / "t2i_mini"


# ---- prompt builders (API format) ----

def train_prompt(name: str, *, steps: int = 4, dataset_folder: str | None = None, make_dataset: bool = True,
                 checkpoint_every: int = 0, validation_prompts: str = PROMPT, resume: bool = True,
                 dataset_count: int = 48) -> dict:
    train_inputs = {
        "dataset": dataset_folder or "(connect dataset_path)", "text_encoder": ["2", 0], "codec": ["3", 0],
        "preset": "tiny", "steps": steps, "max_minutes": 0.0, "batch_size": 8, "learning_rate": 0.001, "cfg_dropout": 0.1,
        "resolution": 16, "seed": 0, "checkpoint_name": name, "resume": resume,
        "validation_prompts": validation_prompts, "validation_every": 0, "checkpoint_every": checkpoint_every,
        "precision": "fp32",
    }
    prompt = {
        "2": {"class_type": "T2IMiniTinyTextEncoder", "inputs": {"seed": 0}},
        "3": {"class_type": "T2IMiniPixelCodec", "inputs": {}},
        "4": {"class_type": "T2IMiniTrain", "inputs": train_inputs},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": f"it/{name}_loss"}},
    }
    if make_dataset:
        prompt["1"] = {"class_type": "T2IMiniMakeDataset", "inputs": {
            "dataset": "shapes", "folder_name": "it_shapes", "count": dataset_count, "resolution": 16, "seed": 0}}
        train_inputs["dataset_path"] = ["1", 0]
    return prompt


def generate_prompt(ckpt_name: str | None, *, seed: int = 0, width: int = 16, height: int = 16, batch: int = 2,
                    steps: int = 5, cfg: float = 3.0, text: str = PROMPT, prefix: str = "it/gen") -> dict:
    return {
        "1": {"class_type": "T2IMiniCheckpointLoader", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "T2IMiniTextEncode",
              "inputs": {"text_encoder": ["1", 1], "text": text, "one_prompt_per_line": False}},
        "3": {"class_type": "T2IMiniEmptyConditioning", "inputs": {"text_encoder": ["1", 1]}},
        "4": {"class_type": "T2IMiniNoiseLatent", "inputs": {"codec": ["1", 2], "seed": seed, "width": width,
                                                             "height": height, "batch_size": batch,
                                                             "model": ["1", 0]}},
        "5": {"class_type": "T2IMiniGuidedSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0], "steps": steps,
            "cfg": cfg, "sampler_name": "ddim", "eta": 0.0, "guidance_rescale": 0.0, "precision": "fp32"}},
        "6": {"class_type": "T2IMiniDecode", "inputs": {"codec": ["1", 2], "samples": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def run_failing(comfy, prompt: dict, timeout: float = 120) -> str:
    """Queue a prompt that must fail while running; returns ComfyUI's error text."""
    entry = comfy.run(prompt, timeout=timeout, check=False)
    assert entry["status"]["status_str"] == "error", entry["status"]
    return execution_error(entry)


def rejection(comfy, prompt: dict) -> str:
    """POST a prompt that validation must reject; returns the node errors as text."""
    status, body = comfy.post_prompt(prompt)
    assert status == 400, body
    return json.dumps(body)


def assert_still_serving(comfy):
    entry = comfy.run({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                     "color": int(time.time() * 1000) % 0xFFFFFF}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }, timeout=60)
    assert comfy.images(entry)[0].size == (8, 8)


# ---- fixtures ----

@pytest.fixture(scope="module")
def trained(comfy):
    """A checkpoint trained through /prompt: the Make Dataset and Train nodes, a few steps."""
    name = unique("trained")
    t0 = time.monotonic()
    entry = comfy.run(train_prompt(name, steps=4), timeout=300)
    print(f"\ntrained {name} through /prompt in {time.monotonic() - t0:.1f} s")
    return name + ".safetensors", entry


@pytest.fixture(scope="module")
def narrow_checkpoint(comfy):
    """A checkpoint whose U-Net reads 32-wide text states (the tiny text encoder gives 256)."""
    from t2i_test_utils import make_test_model

    from t2i_core import save_checkpoint
    name = unique("narrow") + ".safetensors"
    model_dir(comfy).mkdir(parents=True, exist_ok=True)
    save_checkpoint(model_dir(comfy) / name, make_test_model())
    return name


# ---- registration ----

def test_every_node_is_registered_without_import_errors(comfy):
    assert comfy.pack_import_failures() == [], comfy.log_tail(120)
    nodes = comfy.pack_nodes()
    assert set(nodes) >= EXPECTED_NODES, f"missing: {EXPECTED_NODES - set(nodes)}"
    assert "Traceback" not in "\n".join(line for line in comfy.log().splitlines() if PACK_NAME in line)
    for node_id, info in nodes.items():
        assert node_id.startswith("T2IMini"), node_id
        assert info["category"].startswith("T2I Mini"), (node_id, info["category"])
        assert info["description"], node_id
        for category in ("required", "optional"):
            for name, spec in info["input"].get(category, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), f"{node_id} has outputs without tooltips"


def test_checkpoint_dropdown_lists_new_files(comfy, narrow_checkpoint):
    options = comfy.object_info("T2IMiniCheckpointLoader")["input"]["required"]["ckpt_name"][1]["options"]
    assert narrow_checkpoint in options
    later = unique("later") + ".safetensors"
    (model_dir(comfy) / later).write_bytes((model_dir(comfy) / narrow_checkpoint).read_bytes())
    options = comfy.object_info("T2IMiniCheckpointLoader")["input"]["required"]["ckpt_name"][1]["options"]
    assert later in options


# ---- train -> generate ----

def test_training_through_prompt_writes_a_checkpoint_and_loss_curve(comfy, trained):
    ckpt, entry = trained
    assert (model_dir(comfy) / ckpt).is_file()
    assert (model_dir(comfy) / ckpt.replace(".safetensors", ".t2istate")).is_file()
    loss_curves = comfy.images(entry, "5")
    assert len(loss_curves) == 1 and loss_curves[0].size == (512, 256)
    assert comfy.images(entry, "4"), "the Train node shows its loss curve as a preview"
    options = comfy.object_info("T2IMiniCheckpointLoader")["input"]["required"]["ckpt_name"][1]["options"]
    assert ckpt in options


async def watch(comfy, prompt: dict, timeout: float = 180, interrupt_at: int | None = None):
    """Run a prompt while listening on ComfyUI's websocket as its client: (progress events, preview JPEGs,
    final status). With interrupt_at, POST /interrupt once that many progress events arrived."""
    import asyncio

    import aiohttp  # a ComfyUI dependency
    client_id = uuid.uuid4().hex
    progress, previews = [], []
    ws_url = f"{comfy.url.replace('http', 'ws')}/ws?clientId={client_id}"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        async with session.post(f"{comfy.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
            assert r.status == 200, await r.text()
            prompt_id = (await r.json())["prompt_id"]
        while True:
            msg = await asyncio.wait_for(ws.receive(), timeout)
            if msg.type == aiohttp.WSMsgType.BINARY:
                if int.from_bytes(msg.data[:4], "big") == 1:  # PREVIEW_IMAGE: event, image type, JPEG
                    previews.append(msg.data[8:])
                continue
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            event = json.loads(msg.data)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if event["type"] == "progress":
                progress.append(data)
                if len(progress) == interrupt_at:
                    async with session.post(f"{comfy.url}/interrupt", json={}) as r:
                        assert r.status == 200
            if event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                return progress, previews, event["type"]


def test_training_reports_progress_and_validation_previews(comfy):
    import asyncio
    from io import BytesIO

    from PIL import Image
    prompt = train_prompt(unique("watched"), steps=4)
    prompt["4"]["inputs"]["validation_every"] = 2
    progress, previews, status = asyncio.run(watch(comfy, prompt))
    assert status == "execution_success"
    steps = [(p["value"], p["max"]) for p in progress if p["node"] == "4"]
    assert steps[-1] == (4, 4) and [v for v, _ in steps] == sorted(v for v, _ in steps), steps
    assert len(previews) >= 2  # validation at step 2 and at the end
    assert Image.open(BytesIO(previews[-1])).format == "JPEG"


def test_sampler_reports_progress_with_step_previews(comfy, trained):
    import asyncio
    ckpt, _ = trained
    progress, previews, status = asyncio.run(watch(comfy, generate_prompt(ckpt, seed=11, steps=20)))
    assert status == "execution_success"
    assert [(p["value"], p["max"]) for p in progress if p["node"] == "5"] == [(i, 20) for i in range(1, 21)]
    assert len(previews) == 10  # every second step (PREVIEWS_PER_RUN = 8 of 20 steps, rounded): not one per step


def test_sampler_cancels_within_a_step(comfy, trained):
    import asyncio
    ckpt, _ = trained
    prompt = generate_prompt(ckpt, seed=12, steps=1000, batch=1)
    progress, _, status = asyncio.run(watch(comfy, prompt, interrupt_at=2))
    assert status == "execution_interrupted"
    assert len(progress) <= 4, progress  # stopped right after the step that saw the flag
    assert_still_serving(comfy)


def test_trained_checkpoint_generates_what_t2i_core_generates(comfy, trained):
    from t2i_core import load_checkpoint
    ckpt, _ = trained
    entry = comfy.run(generate_prompt(ckpt, seed=7, batch=2, steps=5), timeout=120)
    images = comfy.images(entry, "7")
    assert [im.size for im in images] == [(16, 16), (16, 16)]

    model = load_checkpoint(model_dir(comfy) / ckpt)
    expected = model.generate(PROMPT, seeds=[7, 8], height=16, width=16, steps=5, guidance_scale=3.0,
                              precision="fp32")
    got = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                       for im in images])
    # SaveImage truncates to 8 bits; the rest is the same computation on the same device.
    assert (got - expected).abs().max().item() <= 1.5 / 255


def test_one_prompt_per_line_gives_each_prompt_its_share_of_the_batch(comfy, trained):
    ckpt, _ = trained
    prompt = generate_prompt(ckpt, batch=4, steps=2, text=f"{PROMPT}\na small blue square on the right")
    prompt["2"]["inputs"]["one_prompt_per_line"] = True
    images = comfy.images(comfy.run(prompt, timeout=120), "7")
    assert len(images) == 4
    prompt["4"]["inputs"]["batch_size"] = 3
    assert "multiple of the prompt count" in run_failing(comfy, prompt)


def test_text_encoder_file_gives_the_same_conditioning_as_the_tiny_encoder(comfy, trained):
    from safetensors.torch import save_file

    from t2i_core import tiny_text_encoder
    ckpt, _ = trained
    folder = comfy.base_dir / "models" / "text_encoders"
    folder.mkdir(parents=True, exist_ok=True)
    name = unique("tiny_te") + ".safetensors"
    save_file({k: v.contiguous() for k, v in tiny_text_encoder(0).tower.state_dict().items()}, str(folder / name))

    reference = generate_prompt(ckpt, seed=3, steps=3)
    from_file = generate_prompt(ckpt, seed=3, steps=3)
    from_file["9"] = {"class_type": "T2IMiniTextEncoderFile",
                      "inputs": {"file": name, "model_name": "custom",
                                 "text_config": json.dumps({"context_length": 77, "vocab_size": 49408,
                                                            "width": 256, "heads": 4, "layers": 4})}}
    from_file["2"]["inputs"]["text_encoder"] = ["9", 0]
    a = [np.asarray(im) for im in comfy.images(comfy.run(reference, timeout=120), "7")]
    b = [np.asarray(im) for im in comfy.images(comfy.run(from_file, timeout=120), "7")]
    assert all((x == y).all() for x, y in zip(a, b))


def test_vae_codec_noise_and_decode(comfy):
    from diffusers import AutoencoderKL
    folder = comfy.base_dir / "models" / "vae" / unique("tiny_vae")
    vae = AutoencoderKL(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1, sample_size=32)
    vae.save_pretrained(str(folder))
    choice = folder.name + "/"
    options = comfy.object_info("T2IMiniVAELoader")["input"]["required"]["vae_name"][1]["options"]
    assert choice in options

    def prompt(width):
        return {
            "1": {"class_type": "T2IMiniVAELoader", "inputs": {"vae_name": choice}},
            "2": {"class_type": "T2IMiniNoiseLatent", "inputs": {"codec": ["1", 0], "seed": 0, "width": width,
                                                                 "height": 32, "batch_size": 1}},
            "3": {"class_type": "T2IMiniDecode", "inputs": {"codec": ["1", 0], "samples": ["2", 0]}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        }
    assert [im.size for im in comfy.images(comfy.run(prompt(32), timeout=120), "4")] == [(32, 32)]
    error = run_failing(comfy, prompt(30))  # the VAE halves the size twice: multiples of 4
    assert "multiples of 4" in error and "30x32" in error, error


# ---- bad inputs: a clear message, and the server keeps serving ----

def test_open_clip_encoder_names_bad_tags_and_fails_fast_offline(comfy, narrow_checkpoint):
    prompt = generate_prompt(narrow_checkpoint, steps=2)
    prompt["9"] = {"class_type": "T2IMiniOpenCLIPTextEncoder",
                   "inputs": {"model_name": "ViT-B-32", "pretrained": "no_such_tag"}}
    prompt["2"]["inputs"]["text_encoder"] = ["9", 0]
    errors = rejection(comfy, prompt)
    assert "no pretrained tag 'no_such_tag' for ViT-B-32" in errors and "laion2b_s34b_b79k" in errors, errors

    prompt["9"]["inputs"]["pretrained"] = "laion2b_s34b_b79k"
    t0 = time.monotonic()
    error = run_failing(comfy, prompt)
    # The harness runs ComfyUI with HF_HUB_OFFLINE=1: without cached weights the loader says so at once. (With
    # the weights cached it loads, and the 512-wide text then does not fit the 32-wide test model.)
    assert "cannot be reached" in error or "512 wide but the model reads 32" in error, error
    assert time.monotonic() - t0 < 60
    assert_still_serving(comfy)


def test_missing_checkpoint_is_a_validation_error(comfy):
    errors = rejection(comfy, generate_prompt("no_such_model.safetensors"))
    assert "ckpt_name" in errors and "no_such_model.safetensors" in errors
    assert_still_serving(comfy)


def test_corrupt_checkpoint_names_file_and_problem(comfy):
    name = unique("corrupt") + ".safetensors"
    model_dir(comfy).mkdir(parents=True, exist_ok=True)
    (model_dir(comfy) / name).write_bytes(b"this is not a safetensors file")
    error = run_failing(comfy, generate_prompt(name))
    assert "CheckpointError" in error and name in error and "not a readable safetensors file" in error
    assert_still_serving(comfy)


def test_dataset_folder_without_images(comfy):
    folder = comfy.input_dir / unique("no_images")
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("no images here")
    error = run_failing(comfy, train_prompt(unique("empty"), dataset_folder=folder.name, make_dataset=False))
    assert "DatasetError" in error and folder.name in error, error
    assert_still_serving(comfy)


def test_width_not_a_multiple_of_the_model_factor(comfy, trained):
    ckpt, _ = trained
    error = run_failing(comfy, generate_prompt(ckpt, width=30))
    assert "multiples of 4" in error and "30x16" in error, error
    assert_still_serving(comfy)


def test_conditioning_width_must_match_the_model(comfy, narrow_checkpoint):
    prompt = generate_prompt(narrow_checkpoint, steps=2)
    prompt["9"] = {"class_type": "T2IMiniTinyTextEncoder", "inputs": {"seed": 0}}
    prompt["2"]["inputs"]["text_encoder"] = ["9", 0]  # a 256-wide encoder for a model that reads 32
    error = run_failing(comfy, prompt)
    assert "positive conditioning is 256 wide but the model reads 32" in error, error
    assert_still_serving(comfy)


@pytest.mark.parametrize("bad_name", ["../escaped", "/tmp/t2i_mini_escaped", "runs/../../escaped"])
def test_checkpoint_name_must_stay_in_the_model_folder(comfy, bad_name):
    errors = rejection(comfy, train_prompt(bad_name))
    assert "checkpoint_name" in errors and "would leave the models/t2i_mini folder" in errors, errors
    assert not list(comfy.base_dir.rglob("*escaped*"))
    assert_still_serving(comfy)


def test_make_dataset_folder_must_stay_in_the_input_folder(comfy):
    prompt = train_prompt(unique("x"))
    prompt["1"]["inputs"]["folder_name"] = "../outside"
    errors = rejection(comfy, prompt)
    assert "folder_name" in errors and "would leave ComfyUI's input folder" in errors, errors


# ---- time budget and Cancel ----

def test_time_budget_returns_the_model_trained_so_far(comfy):
    from safetensors import safe_open
    name = unique("budget")
    prompt = train_prompt(name, steps=100_000, validation_prompts="")
    prompt["4"]["inputs"]["max_minutes"] = 0.05  # 3 s of training, then save and go on
    entry = comfy.run(prompt, timeout=120)
    assert comfy.images(entry, "5")
    with safe_open(str(model_dir(comfy) / f"{name}.t2istate"), framework="pt") as f:
        assert 0 < int(f.metadata()["step"]) < 100_000
    assert "budget ended training" in comfy.log()


def test_interrupt_during_training_leaves_a_resumable_checkpoint(comfy):
    from safetensors import safe_open
    name = unique("cancelled")
    state = model_dir(comfy) / f"{name}.t2istate"
    prompt_id = comfy.queue(train_prompt(name, steps=100_000, checkpoint_every=5, validation_prompts=""))
    deadline = time.monotonic() + 120
    while not state.exists():  # the first periodic save, at step 5
        assert time.monotonic() < deadline, comfy.log_tail()
        time.sleep(0.2)
    comfy.interrupt()
    entry = comfy.wait(prompt_id, timeout=60, check=False)
    assert entry["status"]["status_str"] == "error"
    assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"])
    assert (model_dir(comfy) / f"{name}.safetensors").is_file()
    with safe_open(str(state), framework="pt") as f:
        stopped_at = int(f.metadata()["step"])
    assert 5 <= stopped_at < 100_000
    assert "cancelled at step" in comfy.log()

    # The server keeps serving, and the same settings with more steps resume where training stopped.
    resumed = comfy.run(train_prompt(name, steps=stopped_at + 2, validation_prompts=""), timeout=120)
    assert comfy.images(resumed, "5")
    with safe_open(str(state), framework="pt") as f:
        assert int(f.metadata()["step"]) == stopped_at + 2
    assert f"resumed {name}.safetensors at step {stopped_at}" in comfy.log()
