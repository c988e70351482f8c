"""Fixtures for tests that run the pack inside a real ComfyUI server.

Tests get the running server through the session-scoped ``comfy`` fixture (a scripts.comfy_harness.ComfyServer,
which the demo and bench use too).
"""

import uuid
from pathlib import Path

import pytest
from t2i_test_utils import require_comfyui

from scripts.comfy_harness import ComfyServer

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # Every test in this folder starts (or shares) a real server, so mark them
    # all; `-m "not integration"` then gives a fast unit-only run.
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    require_comfyui()
    # latent2rgb previews, so KSampler's progress shows the image forming (ComfyUI's default is none)
    server = ComfyServer(base_dir=tmp_path_factory.mktemp("comfy-base"), extra_args=("--preview-method", "latent2rgb"))
    server.start()
    print(f"\nComfyUI {server.url} up in {server.startup_seconds:.1f} s, log: {server.log_path}")
    yield server
    server.stop()


# The file names a ComfyUI user has; the tests link real-size random-weight files of those formats there.
CLIP_L_NAME = "clip_l.safetensors"
SD_VAE_NAME = "vae-ft-mse-840000-ema-pruned.safetensors"


@pytest.fixture(scope="session")
def user_model_files(comfy):
    """A user's clip_l (Hugging Face layout) and SD VAE (LDM layout) in the server's models folders."""
    from scripts.comfy_inprocess import import_pack
    from scripts.model_files import clip_l_file, sd_vae_file
    import_pack()  # the VAE file is built with ComfyUI's own LDM AutoencoderKL
    for folder, name, source in (("text_encoders", CLIP_L_NAME, clip_l_file()), ("vae", SD_VAE_NAME, sd_vae_file())):
        target = comfy.base_dir / "models" / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source)
    return CLIP_L_NAME, SD_VAE_NAME


@pytest.fixture(scope="session")
def latent_checkpoint(comfy, user_model_files):
    """The train_latent_with_your_clip_and_vae template at test size: core CLIPLoader + VAELoader, a few steps of
    training at 128 px in the VAE's latent space, then sampling. Returns (checkpoint name, prompt, history)."""
    from integration.prompts import api_workflow, set_inputs, tiny
    name = f"latent_{uuid.uuid4().hex[:8]}"
    prompt = tiny(api_workflow("train_latent_with_your_clip_and_vae"), name)
    # 128 px: a quarter of the template's pixels through the real SD VAE, which dominates this fixture's time
    set_inputs(prompt, "T2IMiniMakeDataset", count=8, resolution=128, folder_name="wf_shapes_128")
    set_inputs(prompt, "T2IMiniTrain", preset="tiny", steps=2, batch_size=4, resolution=128, validation_prompts="",
               checkpoint_every=0, checkpoint_name=name, precision="fp32")
    set_inputs(prompt, "T2IMiniNoiseLatent", width=128, height=128, batch_size=1)
    entry = comfy.run(prompt, timeout=600)
    return f"{name}.safetensors", prompt, entry
