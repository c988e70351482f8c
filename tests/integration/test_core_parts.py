"""The pack inside a ComfyUI user's own stack, through /prompt: core CLIP and VAE in, a core MODEL out.

A model trained on a user's clip_l and SD VAE (the train_latent_with_your_clip_and_vae template, at test size)
samples from core CLIP Text Encode's conditioning and decodes with core VAE Decode; its checkpoint names the
files it needs. Trained models, pixel and latent, are sampled by core KSampler with the core samplers and
schedulers, and KSampler's DDIM equals the pack's own sampler."""
from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from integration.conftest import CLIP_L_NAME, SD_VAE_NAME
from integration.test_nodes import generate_prompt, run_failing, train_prompt, watch

PROMPT = "a large red circle on the left"
SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc", "ddim", "lcm")
SCHEDULERS = ("karras", "simple", "sgm_uniform")


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def pixel_checkpoint(comfy):
    name = f"pixel_{uuid.uuid4().hex[:8]}"
    comfy.run(train_prompt(name, steps=4), timeout=300)
    return f"{name}.safetensors"


def latent_parts(ckpt: str) -> dict:
    """Load the latent model, the user's CLIP and VAE; encode with the CLIP as core CLIP Text Encode does."""
    return {
        "1": {"class_type": "T2IMiniCheckpointLoader", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_L_NAME, "type": "stable_diffusion"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": SD_VAE_NAME}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0]}},
        "5": {"class_type": "T2IMiniEmptyConditioning", "inputs": {"text_encoder": ["2", 0]}},
    }


def guided(model, positive, negative, latent, steps=2):
    return {"class_type": "T2IMiniGuidedSampler", "inputs": {
        "model": model, "positive": positive, "negative": negative, "latent": latent, "steps": steps, "cfg": 3.0,
        "sampler_name": "ddim", "eta": 0.0, "guidance_rescale": 0.0, "precision": "fp32"}}


def save(images, prefix):
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": f"core/{prefix}"}}


def test_latent_model_checkpoint_names_the_clip_and_vae_to_connect(comfy, latent_checkpoint):
    ckpt, _, _ = latent_checkpoint
    prompt = latent_parts(ckpt)
    # the checkpoint's CODEC stands for the VAE: it knows the latent's shape and scaling, so noise can be made
    prompt["6"] = {"class_type": "T2IMiniNoiseLatent", "inputs": {"codec": ["1", 2], "seed": 0, "width": 128,
                                                                  "height": 128, "batch_size": 1, "model": ["1", 0]}}
    prompt["7"] = guided(["1", 0], ["4", 0], ["5", 0], ["6", 0], steps=1)
    prompt["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}}
    prompt["9"] = save(["8", 0], "named_parts")
    entry = comfy.run(prompt, timeout=300)
    shown = " ".join(entry["outputs"]["1"]["text"])
    assert f"{CLIP_L_NAME} with CLIPLoader (type stable_diffusion" in shown, shown
    assert f"{SD_VAE_NAME} with VAELoader" in shown, shown
    # decoding with the checkpoint's stand-in, which holds no VAE, says which file to load
    prompt["8"] = {"class_type": "T2IMiniDecode", "inputs": {"codec": ["1", 2], "samples": ["7", 0]}}
    error = run_failing(comfy, prompt)
    assert "MissingPartError" in error and SD_VAE_NAME in error, error


def test_core_clip_text_encode_and_our_text_encode_on_the_clip_sample_alike(comfy, latent_checkpoint):
    ckpt, _, _ = latent_checkpoint
    prompt = latent_parts(ckpt)
    prompt["6"] = {"class_type": "T2IMiniTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT,
                                                                 "one_prompt_per_line": False}}
    prompt["7"] = {"class_type": "T2IMiniNoiseLatent", "inputs": {"codec": ["3", 0], "seed": 4, "width": 128,
                                                                  "height": 128, "batch_size": 1, "model": ["1", 0]}}
    prompt["8"] = guided(["1", 0], ["4", 0], ["5", 0], ["7", 0])
    prompt["9"] = guided(["1", 0], ["6", 0], ["5", 0], ["7", 0])
    prompt["10"] = {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}}
    prompt["11"] = {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["3", 0]}}
    prompt["12"] = {"class_type": "T2IMiniDecode", "inputs": {"codec": ["3", 0], "samples": ["8", 0]}}
    prompt["13"], prompt["14"], prompt["15"] = save(["10", 0], "core_te"), save(["11", 0], "our_te"), save(["12", 0], "our_dec")
    entry = comfy.run(prompt, timeout=300)
    [core_te], [our_te], [our_decode] = (comfy.images(entry, n) for n in ("13", "14", "15"))
    assert core_te.size == (128, 128)
    assert (pixels(core_te) == pixels(our_te)).all()  # the same conditioning tensors
    assert (pixels(core_te) == pixels(our_decode)).all()  # our Decode on a core VAE is core VAE Decode


def test_another_clip_is_refused_with_both_named_unless_allowed(comfy, latent_checkpoint):
    from safetensors.torch import load_file, save_file
    ckpt, _, _ = latent_checkpoint
    folder = comfy.base_dir / "models" / "text_encoders"
    other = "other_clip_l.safetensors"
    if not (folder / other).exists():
        sd = load_file(str(folder / CLIP_L_NAME))
        sd["text_model.final_layer_norm.bias"] = sd["text_model.final_layer_norm.bias"] + 0.5
        save_file(sd, str(folder / other))
    prompt = latent_parts(ckpt)
    prompt["2"]["inputs"]["clip_name"] = other
    prompt["6"] = {"class_type": "T2IMiniTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT,
                                                                 "one_prompt_per_line": False}}
    prompt["7"] = {"class_type": "T2IMiniNoiseLatent", "inputs": {"codec": ["1", 2], "seed": 0, "width": 128,
                                                                  "height": 128, "batch_size": 1, "model": ["1", 0]}}
    prompt["8"] = guided(["1", 0], ["6", 0], ["5", 0], ["7", 0], steps=1)
    prompt["9"] = {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}}
    prompt["10"] = save(["9", 0], "other_clip")
    error = run_failing(comfy, prompt)
    assert "PartMismatchError" in error and CLIP_L_NAME in error and other in error, error
    assert "check_text_encoder off" in error
    prompt["8"]["inputs"]["check_text_encoder"] = False
    assert comfy.images(comfy.run(prompt, timeout=300), "10")


def test_ksampler_drives_a_latent_model_with_core_empty_latent_and_vae_decode(comfy, latent_checkpoint):
    ckpt, _, _ = latent_checkpoint
    prompt = latent_parts(ckpt)
    prompt["6"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}}
    prompt["7"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 3], "seed": 1, "steps": 2, "cfg": 3.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "denoise": 1.0}}
    prompt["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}}
    prompt["9"] = save(["8", 0], "ksampler_latent")
    [image] = comfy.images(comfy.run(prompt, timeout=300), "9")
    assert image.size == (128, 128)


def pixel_ksampler(ckpt, sampler, scheduler, *, seed=3, steps=4, size=16, batch=1, node_offset=0):
    base = node_offset
    ids = [str(base + i) for i in range(5)]
    return {
        ids[0]: {"class_type": "T2IMiniEmptyLatent", "inputs": {"codec": ["1", 2], "width": size, "height": size,
                                                                "batch_size": batch, "model": ["1", 0]}},
        ids[1]: {"class_type": "KSampler", "inputs": {
            "model": ["1", 3], "seed": seed, "steps": steps, "cfg": 3.0, "sampler_name": sampler,
            "scheduler": scheduler, "positive": ["2", 0], "negative": ["3", 0], "latent_image": [ids[0], 0],
            "denoise": 1.0}},
        ids[2]: {"class_type": "T2IMiniDecode", "inputs": {"codec": ["1", 2], "samples": [ids[1], 0]}},
        ids[3]: save([ids[2], 0], f"ks_{sampler}_{scheduler}"),
    }


def pixel_base(ckpt):
    return {k: v for k, v in generate_prompt(ckpt).items() if k in ("1", "2", "3")}


def test_ksampler_runs_every_core_sampler_with_core_schedulers(comfy, pixel_checkpoint):
    prompt = pixel_base(pixel_checkpoint)
    saves = {}
    for i, (sampler, scheduler) in enumerate((s, c) for s in SAMPLERS for c in SCHEDULERS):
        part = pixel_ksampler(pixel_checkpoint, sampler, scheduler, node_offset=100 + 10 * i, batch=2)
        prompt.update(part)
        saves[(sampler, scheduler)] = str(100 + 10 * i + 3)
    entry = comfy.run(prompt, timeout=600)
    for combo, node in saves.items():
        images = comfy.images(entry, node)
        assert [im.size for im in images] == [(16, 16)] * 2, combo
        assert all(pixels(im).std() > 0 for im in images), combo  # not a blank image


def test_ksampler_ddim_equals_our_guided_ddim_on_the_same_seed(comfy, pixel_checkpoint):
    # Our sampler's steps are the "trailing" timesteps (999, 999 - T/steps, ...), which ComfyUI's "simple"
    # scheduler visits; "ddim_uniform" visits diffusers' "leading" set instead, a different step set by
    # construction (tests/test_comfy_model.py compares it with our DDIM on that set). For one image KSampler's
    # seed gives the same noise as Noise Latent's.
    prompt = generate_prompt(pixel_checkpoint, seed=9, batch=1, steps=10, prefix="core/ours_ddim")
    prompt.update(pixel_ksampler(pixel_checkpoint, "ddim", "simple", seed=9, steps=10, node_offset=20))
    entry = comfy.run(prompt, timeout=120)
    [ours], [core] = comfy.images(entry, "7"), comfy.images(entry, "23")
    assert np.abs(pixels(ours) - pixels(core)).max() <= 1  # float rounding, then 8 bits


def test_ksampler_shows_previews_and_cancels_like_a_core_model(comfy, pixel_checkpoint):
    prompt = pixel_base(pixel_checkpoint)
    prompt.update(pixel_ksampler(pixel_checkpoint, "euler", "simple", steps=6, size=32, node_offset=10))
    progress, previews, status = asyncio.run(watch(comfy, prompt))
    assert status == "execution_success"
    assert [p["value"] for p in progress if p["node"] == "11"] == list(range(1, 7))
    assert len(previews) >= 6  # latent2rgb previews of the forming image, one per step
    prompt = pixel_base(pixel_checkpoint)
    prompt.update(pixel_ksampler(pixel_checkpoint, "euler", "simple", steps=1000, node_offset=10))
    progress, _, status = asyncio.run(watch(comfy, prompt, interrupt_at=2))
    assert status == "execution_interrupted" and len(progress) < 20, progress
