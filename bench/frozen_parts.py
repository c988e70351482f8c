"""The frozen parts a ComfyUI user already has, as training reads them: caption encoding through a core CLIP against
the engine's own open_clip path on the same clip_l weights, and latent caching with the Stable Diffusion VAE.

    python -m bench.frozen_parts [--quick]

Both read real-size random-weight files in the real layouts (scripts/model_files.py: clip_l, 123M parameters;
the SD 1.x VAE, 84M), loaded in this process by ComfyUI's own loaders and by t2i_core's. Captions are encoded one
at a time, as the trainer's caption table does (each caption's states depend on it alone). Latent caching times
the steps of `Trainer.encode_latents` for a folder of shapes images at 256 px: decoding and resizing the PNGs,
the VAE's encoder, and the cache write, and projects the time for 1,000 images from the measured per-image cost.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from .common import Section, Table, interleaved, run_options_suffix, run_part

RES = 256


def caption_rates(n: int, repeats: int) -> Table:
    import comfy.sd

    from scripts.comfy_inprocess import pack_module
    from scripts.model_files import clip_l_file
    from t2i_core import load_text_encoder_file
    from t2i_core.data.shapes import SHAPES_VOCAB, shapes_caption
    captions = [shapes_caption(c, s, p, z) for c in SHAPES_VOCAB["color"] for s in SHAPES_VOCAB["shape"]
                for p in SHAPES_VOCAB["position"] for z in SHAPES_VOCAB["size"]][:n]
    path = clip_l_file()
    core = pack_module("nodes.comfy_parts").as_text_encoder(
        comfy.sd.load_clip(ckpt_paths=[str(path)], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION))
    ours = load_text_encoder_file(path)

    def one_at_a_time(encoder):
        return lambda: [encoder.encode([c]) for c in captions]
    times = interleaved({"core CLIP (CLIPLoader, as CLIP Text Encode)": one_at_a_time(core),
                         "t2i_core open_clip tower, same clip_l file": one_at_a_time(ours),
                         "t2i_core, all captions in one batch": lambda: ours.encode(captions)},
                        repeats=repeats, warmup=1)
    base = times["core CLIP (CLIPLoader, as CLIP Text Encode)"].median
    table = Table(f"Caption encoding, clip_l (768 wide, 12 layers), {n} distinct captions, median of {repeats}",
                  ["path", "captions / s", "vs core CLIP", "spread"])
    for name, t in times.items():
        table.add(name, n / t.median, base / t.median, f"{t.spread:.0%}")
    return table


def latent_caching(n: int) -> Table:
    import comfy.sd
    import comfy.utils

    from scripts.comfy_inprocess import pack_module
    from scripts.model_files import sd_vae_file
    from t2i_core import load_vae
    from t2i_core.data import TensorCache, load_dataset, make_shapes_dataset
    path = sd_vae_file()
    codecs = {"t2i_core load_vae (diffusers AutoencoderKL)": load_vae(path),
              "core VAE (VAELoader)": pack_module("nodes.comfy_parts").as_codec(
                  comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path))))}
    table = Table(f"Latent caching, SD 1.x VAE, {n} shapes images at {RES} px (fp32, batch 1, as the trainer does)",
                  ["codec", "read + resize ms/image", "VAE encode ms/image", "cache write ms/image",
                   "projected s for 1,000 images", "encode share"])
    with tempfile.TemporaryDirectory(prefix="t2i-bench-latents-") as tmp:
        folder = make_shapes_dataset(Path(tmp) / "data", count=n, resolution=RES)
        t0 = time.perf_counter()
        data = load_dataset(folder, RES)
        read = (time.perf_counter() - t0) / n
        for name, codec in codecs.items():
            cache = TensorCache(Path(tmp) / name.split()[0])
            encode = write = 0.0
            for i in range(n):
                image = data.images[i: i + 1].float().div(255)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    z = codec.encode(image)[0]
                t1 = time.perf_counter()
                cache.put(TensorCache.key("latent", str(i)), z)
                encode, write = encode + t1 - t0, write + time.perf_counter() - t1
            per_image = read + (encode + write) / n
            table.add(name, read * 1000, encode / n * 1000, write / n * 1000, per_image * 1000,
                      f"{encode / n / per_image:.0%}")
    return table


def run(quick: bool = False) -> Section:
    """Caption encoding and latent caching with a user's clip_l and SD VAE."""
    from scripts.comfy_inprocess import import_pack
    section = Section("frozen_parts", "Frozen parts: caption encoding through core CLIP, latent caching with the SD VAE",
                      "python -m bench.frozen_parts" + (" --quick" if quick else "") + run_options_suffix())
    import_pack()
    section.tables.append(caption_rates(16 if quick else 72, 2 if quick else 5))
    section.tables.append(latent_caching(4 if quick else 16))
    section.notes.append("Caption encoding runs once per distinct caption and is cached by content, so it is "
                         "paid once per dataset; the VAE's encoder dominates latent caching (the encode share).")
    return section


if __name__ == "__main__":
    run_part(__name__, run)
