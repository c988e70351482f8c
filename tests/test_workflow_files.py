"""The shipped workflows, checked as JSON files (no ComfyUI needed).

workflows/<name>.json is the UI format the Templates dialog loads; workflows/api/<name>.json is its API-format
twin, which the integration tests run. Each pair must describe the same graph: same node types, same links,
same widget values in the order the frontend stores them (scripts/workflow_node_specs.json, which
tests/integration/test_workflows.py checks against a live server).
"""
import json
from pathlib import Path

import pytest

from scripts import make_ui_workflows as gen

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
API_DIR = WORKFLOWS / "api"
REQUIRED = {"text_to_image", "train_from_dataset", "guidance_sweep"}


SPECS = gen.load_specs()
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_FILES = sorted(API_DIR.glob("*.json"))


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_required_workflows_ship_in_both_formats():
    assert {p.stem for p in UI_FILES} >= REQUIRED
    assert {p.stem for p in UI_FILES} == {p.stem for p in API_FILES}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_templates_folder_holds_only_ui_format(path):
    # ComfyUI lists every workflows/*.json in the Templates dialog; an API-format file there would open as an
    # empty graph. (workflows/api/ is not listed: ComfyUI only globs the folder's top level.)
    ui = read(path)
    assert ui.get("version") == 0.4
    assert isinstance(ui.get("nodes"), list) and ui["nodes"]
    assert isinstance(ui.get("links"), list)
    assert "class_type" not in json.dumps(ui)


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_api_twin_is_a_valid_prompt(path):
    api = read(path)
    for node_id, node in api.items():
        spec = SPECS.get(node["class_type"])
        assert spec is not None, f"{path.name}: node {node_id}: {node['class_type']} missing from the node specs"
        declared = {i["name"]: i for i in spec["inputs"]}
        assert set(node["inputs"]) <= set(declared), f"{path.name}: node {node_id} has undeclared inputs"
        for name, item in declared.items():
            if not item["optional"]:
                assert name in node["inputs"], f"{path.name}: node {node_id} lacks required input {name!r}"
            # the frontend queues every widget, optional ones at their defaults: a twin without one is not
            # what a user who opens the UI file and presses Queue sends
            if item["widget"]:
                assert name in node["inputs"], f"{path.name}: node {node_id} lacks widget {name!r}"
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                origin, slot = value
                assert origin in api, f"{path.name}: node {node_id}.{name} links to missing node {origin}"
                out_type = SPECS[api[origin]["class_type"]]["outputs"][slot]["type"]
                assert gen.accepts(declared[name]["type"], out_type), (
                    f"{path.name}: node {node_id}.{name} takes {declared[name]['type']} but gets {out_type}")
            else:
                assert declared[name]["widget"], f"{path.name}: node {node_id}.{name} is a socket, not a value"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_and_api_twins_agree(path):
    ui, api = read(path), read(API_DIR / path.name)
    assert gen.ui_to_api(ui, SPECS) == api


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_links_table_matches_node_slots(path):
    ui = read(path)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "duplicate node ids"
    assert ui["last_node_id"] >= max(nodes)
    link_ids = [link[0] for link in ui["links"]]
    assert len(set(link_ids)) == len(link_ids), "duplicate link ids"
    assert ui["last_link_id"] >= max(link_ids, default=0)
    for link_id, origin, origin_slot, target, target_slot, link_type in ui["links"]:
        out = nodes[origin]["outputs"][origin_slot]
        assert link_id in (out["links"] or []), f"link {link_id} missing from node {origin}'s output {origin_slot}"
        slot = nodes[target]["inputs"][target_slot]
        assert slot["link"] == link_id, f"link {link_id} missing from node {target}'s input {target_slot}"
        assert out["type"] == link_type and gen.accepts(slot["type"], link_type)
    referenced = {s["link"] for n in ui["nodes"] for s in n.get("inputs", []) if s.get("link") is not None}
    referenced |= {i for n in ui["nodes"] for o in n.get("outputs", []) for i in (o.get("links") or [])}
    assert referenced == set(link_ids), "nodes reference links the table lacks (or the reverse)"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_committed_ui_file_is_what_the_generator_writes(path):
    # Edit workflows/api/<name>.json, then run `python -m scripts.make_ui_workflows`.
    expected = gen.dump(gen.api_to_ui(path.stem, read(API_DIR / path.name), SPECS))
    assert path.read_text(encoding="utf-8") == expected


def test_ui_to_api_reads_seed_control_values_and_skips_notes():
    ui = gen.api_to_ui("text_to_image", read(API_DIR / "text_to_image.json"), SPECS)
    noise = next(n for n in ui["nodes"] if n["type"] == "T2IMiniNoiseLatent")
    assert noise["widgets_values"][:2] == [0, "randomize"]  # seed, then its control_after_generate mode
    assert any(n["type"] == "MarkdownNote" for n in ui["nodes"])
    assert "MarkdownNote" not in {n["class_type"] for n in gen.ui_to_api(ui, SPECS).values()}


def test_widget_order_follows_object_info_rules():
    info = {
        "input": {
            "required": {"seed": ["INT", {}], "steps": ["INT", {"control_after_generate": True}],
                         "model": ["T2I_MODEL", {}], "mode": [["a", "b"]],
                         "path": ["STRING", {"forceInput": True}]},
            "optional": {"text": ["STRING", {"multiline": True}], "noise_seed": ["INT", {"control_after_generate": False}]},
        },
        "input_order": {"required": ["seed", "steps", "model", "mode", "path"], "optional": ["text", "noise_seed"]},
        "output": ["LATENT"], "output_name": ["LATENT"],
    }
    spec = gen.spec_from_object_info(info)
    widgets = [(i["name"], i["control"]) for i in spec["inputs"] if i["widget"]]
    assert widgets == [("seed", True), ("steps", True), ("mode", False), ("text", False), ("noise_seed", False)]
    assert [i["name"] for i in spec["inputs"] if not i["widget"]] == ["model", "path"]
