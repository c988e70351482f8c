"""Model files in the real formats of a ComfyUI install, with random weights, built once into .cache/test-models/.

No model hub is reachable here, so tests and benchmarks that need a user's files build them:
- `clip_l_file()`: a CLIP ViT-L/14 text model in Hugging Face transformers layout (`text_model.encoder.layers.N...`
  + `text_projection.weight`), fp16, the shape of the `clip_l.safetensors` ComfyUI users have (123M parameters,
  about 250 MB);
- `sd_vae_file()`: a Stable Diffusion 1.x VAE in the original LDM layout (`encoder.down.N.block.M...`), fp16, the
  shape of `vae-ft-mse-840000-ema-pruned.safetensors` (84M parameters, about 160 MB).
Real sizes matter: ComfyUI's loaders tell the model by its keys and shapes. Each file is written to a temporary
name and renamed, so an interrupted build is never taken for a finished one.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .comfy_harness import REPO_ROOT

MODEL_DIR = REPO_ROOT / ".cache" / "test-models"
CLIP_L_CONFIG = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
SD_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                   "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _build(name: str, make_state) -> Path:
    from safetensors.torch import save_file
    path = MODEL_DIR / name
    if not path.is_file():
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            state = {k: v.detach().to(torch.float16).contiguous() for k, v in make_state().items()}
        tmp = path.with_name(f".{name}.tmp")
        save_file(state, str(tmp))
        tmp.replace(path)
    return path


def clip_l_file() -> Path:
    def state():
        import transformers
        return transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**CLIP_L_CONFIG)).state_dict()
    return _build("clip_l_random.safetensors", state)


def sd_vae_file() -> Path:
    """Built with ComfyUI's own LDM AutoencoderKL (import ComfyUI first: scripts.comfy_inprocess.import_pack)."""
    def state():
        from comfy.ldm.models.autoencoder import AutoencoderKL
        vae = AutoencoderKL(ddconfig=SD_VAE_DDCONFIG, embed_dim=4)
        # ComfyUI's layers skip weight initialisation (a file always fills them): give them PyTorch's own
        for module in vae.modules():
            for layer in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm):
                if isinstance(module, layer):
                    layer.reset_parameters(module)
        return vae.state_dict()
    return _build("sd_vae_random_v2.safetensors", state)
