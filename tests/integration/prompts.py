"""Shipped workflows as prompts for the tests: read an API twin, shrink it to CPU-test sizes, set inputs."""
from __future__ import annotations

import copy
import json

from scripts.comfy_harness import REPO_ROOT

WORKFLOWS = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS / "api"


def api_workflow(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def nodes_of(prompt: dict, class_type: str) -> list[dict]:
    return [n for n in prompt.values() if n["class_type"] == class_type]


def set_inputs(prompt: dict, class_type: str, **values) -> None:
    found = nodes_of(prompt, class_type)
    assert found, f"the workflow has no {class_type}"
    for node in found:
        for key, value in values.items():
            assert key in node["inputs"], f"{class_type} has no input {key}"
            node["inputs"][key] = value


def tiny(prompt: dict, prefix: str) -> dict:
    """The same graph with CPU-test sizes and this run's own output prefix."""
    prompt = copy.deepcopy(prompt)
    if nodes_of(prompt, "T2IMiniGuidedSampler"):
        set_inputs(prompt, "T2IMiniGuidedSampler", steps=3, precision="fp32")
    if nodes_of(prompt, "KSampler"):
        set_inputs(prompt, "KSampler", steps=3)
    for node in nodes_of(prompt, "SaveImage"):
        node["inputs"]["filename_prefix"] = f"{prefix}/{node['inputs']['filename_prefix'].split('/')[-1]}"
    return prompt
