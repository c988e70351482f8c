"""The shipped workflows in a real ComfyUI: listed in the Templates dialog, node specs as the server reports
them, and every API twin run end to end with tiny settings (few steps, small sizes)."""
from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from integration.browser import CHROMIUM, chromium_page
from integration.prompts import API_DIR, WORKFLOWS, api_workflow, nodes_of, set_inputs, tiny

from scripts import make_ui_workflows as gen
from scripts.comfy_harness import PACK_NAME


@pytest.fixture(scope="module")
def trained_by_template(comfy):
    """Run the train_from_dataset template with a few steps; its checkpoint feeds the other templates."""
    name = f"wf_{uuid.uuid4().hex[:8]}"
    prompt = tiny(api_workflow("train_from_dataset"), name)
    set_inputs(prompt, "T2IMiniMakeDataset", count=64, folder_name="wf_shapes")
    set_inputs(prompt, "T2IMiniTrain", steps=6, batch_size=8, validation_every=3, checkpoint_every=0,
               checkpoint_name=name, precision="fp32")
    set_inputs(prompt, "T2IMiniNoiseLatent", batch_size=8)  # 4 prompts x 2 seeds
    set_inputs(prompt, "T2IMiniImageGrid", columns=2)  # one row per prompt
    entry = comfy.run(prompt, timeout=300)
    return name, prompt, entry


def saved_images(comfy, entry, prompt, prefix_suffix: str):
    node_id = next(k for k, n in prompt.items()
                   if n["class_type"] == "SaveImage" and n["inputs"]["filename_prefix"].endswith(prefix_suffix))
    return comfy.images(entry, node_id)


def test_templates_dialog_lists_the_ui_workflows(comfy):
    names = {p.stem for p in WORKFLOWS.glob("*.json")}
    listed = comfy.workflow_templates().get(PACK_NAME, [])
    assert set(listed) == names, listed  # workflows/api/ twins are not listed
    for name in names:
        served = comfy.get_json(f"/api/workflow_templates/{PACK_NAME}/{name}.json")
        assert served == json.loads((WORKFLOWS / f"{name}.json").read_text())


def test_node_specs_match_the_server(comfy):
    # scripts/workflow_node_specs.json is what the pure-JSON tests and the generator trust for widget order.
    committed = gen.load_specs()
    info = comfy.object_info()
    live = {node_type: gen.spec_from_object_info(info[node_type]) for node_type in committed}
    assert live == committed, "node inputs changed: run python -m scripts.make_ui_workflows --refresh-specs"
    assert gen.used_types() <= set(committed)


def test_train_from_dataset_template_runs(comfy, trained_by_template):
    name, prompt, entry = trained_by_template
    assert (comfy.base_dir / "models" / "t2i_mini" / f"{name}.safetensors").is_file()
    [curve] = saved_images(comfy, entry, prompt, "loss_curve")
    assert curve.size == (512, 256)
    [grid] = saved_images(comfy, entry, prompt, "shapes_grid")
    assert grid.size == ((2 * 16 + 1) * 8, (4 * 16 + 3) * 8)  # 2 seeds x 4 prompts, padding 1, scaled 8x


def test_text_to_image_template_runs(comfy, trained_by_template):
    name, _, _ = trained_by_template
    prompt = tiny(api_workflow("text_to_image"), name)
    set_inputs(prompt, "T2IMiniCheckpointLoader", ckpt_name=f"{name}.safetensors")
    entry = comfy.run(prompt, timeout=120)
    images = saved_images(comfy, entry, prompt, "text_to_image")
    assert [im.size for im in images] == [(128, 128)] * 4
    # the template's MiniLM encoder comes back from its package: Load Checkpoint names nothing to connect
    [loader] = [k for k, n in prompt.items() if n["class_type"] == "T2IMiniCheckpointLoader"]
    assert not entry["outputs"].get(loader, {}).get("text"), entry["outputs"][loader]


def test_guidance_sweep_template_runs(comfy, trained_by_template):
    name, _, _ = trained_by_template
    prompt = tiny(api_workflow("guidance_sweep"), name)
    set_inputs(prompt, "T2IMiniCheckpointLoader", ckpt_name=f"{name}.safetensors")
    assert sorted(n["inputs"]["cfg"] for n in nodes_of(prompt, "T2IMiniGuidedSampler")) == [1.0, 3.0, 7.5]
    [grid] = saved_images(comfy, comfy.run(prompt, timeout=120), prompt, "guidance_sweep")
    assert grid.size == ((4 * 16 + 3) * 8, (3 * 16 + 2) * 8)  # 4 seeds x 3 scales


def test_text_to_image_ksampler_template_runs(comfy, trained_by_template):
    name, _, _ = trained_by_template
    prompt = tiny(api_workflow("text_to_image_ksampler"), name)
    set_inputs(prompt, "T2IMiniCheckpointLoader", ckpt_name=f"{name}.safetensors")
    images = saved_images(comfy, comfy.run(prompt, timeout=120), prompt, "text_to_image_ksampler")
    assert [im.size for im in images] == [(128, 128)] * 4


def test_train_latent_with_your_clip_and_vae_template_runs(comfy, latent_checkpoint):
    ckpt, prompt, entry = latent_checkpoint
    assert (comfy.base_dir / "models" / "t2i_mini" / ckpt).is_file()
    [image] = saved_images(comfy, entry, prompt, "latent_256")
    assert image.size == (128, 128)  # the fixture's size


def test_every_api_twin_is_covered():
    covered = {"train_from_dataset", "text_to_image", "guidance_sweep", "text_to_image_ksampler",
               "train_latent_with_your_clip_and_vae",
               "attention_maps"}  # run in tests/integration/test_attention_maps.py
    assert {p.stem for p in Path(API_DIR).glob("*.json")} == covered, "add a run test for the new workflow"


# ---- the real frontend: load each UI file, then ask it for the prompt it would queue ----

async def frontend_prompts(url: str, workflows: dict[str, str], timeout: float = 90) -> dict[str, dict]:
    """{name: API prompt} as ComfyUI's own frontend produces it (app.loadGraphData + app.graphToPrompt)."""
    async with chromium_page(timeout) as page:
        await page.open_comfyui(url)
        prompts = {}
        for name, text in workflows.items():
            output = await page.js(f"(async () => {{ await app.loadGraphData({text}, true, true, {json.dumps(name)});"
                                   " return JSON.stringify((await app.graphToPrompt()).output); })()")
            prompts[name] = {k: {"class_type": v["class_type"], "inputs": v["inputs"]}
                             for k, v in json.loads(output).items()}
        return prompts


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (apt-get install chromium)")
def test_frontend_turns_each_template_into_its_api_twin(comfy):
    workflows = {p.stem: p.read_text() for p in sorted(WORKFLOWS.glob("*.json"))}
    prompts = asyncio.run(frontend_prompts(comfy.url, workflows))
    for name in workflows:
        queued, twin = prompts[name], api_workflow(name)
        differences = {}
        for node in sorted(set(queued) | set(twin)):
            a, b = (p.get(node, {}).get("inputs", {}) for p in (queued, twin))
            differences.update({node: {key: (a.get(key), b.get(key)) for key in a | b if a.get(key) != b.get(key)}}
                               if a != b else {})
        assert queued == twin, (f"{name}: the frontend queues something else than api/{name}.json; "
                                f"{{node: {{input: (frontend, twin)}}}}: {differences}")
