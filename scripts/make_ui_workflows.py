"""Write the UI-format workflows in workflows/ from their API-format twins in workflows/api/.

    python -m scripts.make_ui_workflows                  # regenerate workflows/*.json
    python -m scripts.make_ui_workflows --check          # exit 1 if a committed file differs
    python -m scripts.make_ui_workflows --refresh-specs  # re-read node specs from a real ComfyUI (make setup)

ComfyUI's Templates dialog lists UI-format files (what the frontend saves: nodes with positions, slots and
`widgets_values`, plus a `links` table) from a pack's workflows/ folder; /prompt takes the API format
({id: {class_type, inputs}}). The API twin is the source of truth, because tests run it. Turning it into the
UI format needs each node type's socket inputs, outputs and widget order, which the frontend takes from
/object_info; scripts/workflow_node_specs.json holds that excerpt for the node types the workflows use
(tests/integration/test_workflows.py checks it against a live server). A widget with
`control_after_generate` (seed widgets) has a second value in widgets_values, the control mode.

Importable (no ComfyUI needed): tests/test_workflow_files.py uses ui_to_api() and api_to_ui().
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
API_DIR = WORKFLOWS / "api"
SPECS_FILE = ROOT / "scripts" / "workflow_node_specs.json"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"MarkdownNote", "Note"}  # UI nodes that never reach /prompt
SEED_NAMES = ("seed", "noise_seed")  # the frontend adds a control widget to these unless told not to

# What the Templates dialog shows beside each graph, and how seed widgets behave after a run.
NOTES = {
    "text_to_image": (
        "## Text to image\n\nGenerates images from a prompt with a T2I Mini checkpoint from "
        "`models/t2i_mini/`.\n\nNo checkpoint yet? Run the **train_from_dataset** template first: it trains "
        "`shapes.safetensors` on a CPU in minutes.\n\nA model trained with the MiniLM text encoder also follows "
        "other wordings of its captions' meaning, e.g. *a navy box, tiny, at the right* for *a small blue square on the "
        "right*; one trained with the tiny random encoder follows only the captions' own words."),
    "train_from_dataset": (
        "## Train from dataset\n\n1. **Make Dataset** writes 1,000 captioned shapes images into "
        "`input/t2i_shapes/`.\n2. **Train from Dataset** trains the micro U-Net (1.2M parameters) with the pretrained "
        "MiniLM text encoder (frozen, from a pip package, no download) and saves "
        "`models/t2i_mini/shapes.safetensors` (resumable: Cancel keeps a checkpoint, and queueing again continues it).\n3. The trained model samples a grid: one row per prompt, one column per "
        "seed.\n\nTraining runs for 3 minutes (max_minutes) or 2,000 steps, whichever ends first (batch 32): about "
        "2,000 steps on a fast 2-core CPU, 1,000 on one without AVX-512. The cosine learning rate falls to 0 at "
        "whichever end comes first, so the model is finished either way. Validation images appear on the training "
        "node as it runs."),
    "guidance_sweep": (
        "## Guidance sweep\n\nThe same noise sampled at guidance scales 1, 3 and 7.5 (one row each): higher "
        "scales follow the prompt more closely and vary less.\n\nNeeds `shapes.safetensors` from the "
        "**train_from_dataset** template."),
    "attention_maps": (
        "## Attention maps\n\nWhere each word of the prompt lands: **Attention Maps** samples like the Guided "
        "Sampler and records, for every image position, how much attention each word gets in the U-Net's "
        "cross-attention (averaged over heads, layers and the steps between average_start and average_end: here "
        "the first half of the run, where the layout is decided). One row per image, one heat map per word, labelled with the word and its share of the attention.\n\nNeeds "
        "`shapes.safetensors` from the **train_from_dataset** template. With another prompt, set the grid's columns "
        "to its number of words."),
}
CONTROL_MODE = {"text_to_image": "randomize"}  # default: "fixed"

COLUMN_WIDTH, NODE_WIDTH, WIDE_NODE_WIDTH, GAP = 380, 320, 360, 40


# ---- node specs (the /object_info excerpt) ----

def accepts(input_type: str, output_type: str) -> bool:
    """Whether an input takes an output's type: an input may list several, "T2I_TEXT_ENCODER,CLIP" (ComfyUI's
    rule, comfy_execution.validation.validate_node_input)."""
    return output_type in {t.strip() for t in input_type.split(",")}


def spec_from_object_info(info: dict) -> dict:
    """One node type's socket inputs, widgets (in the frontend's order) and outputs."""
    inputs = []
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for category in ("required", "optional"):
        for name in order.get(category, []):
            entry = info["input"][category][name]
            io_type = entry[0]
            opts = entry[1] if len(entry) > 1 else {}
            type_name = "COMBO" if isinstance(io_type, list) else io_type
            widget = type_name in WIDGET_TYPES and not opts.get("forceInput", False)
            control = bool(opts["control_after_generate"]) if "control_after_generate" in opts else (
                type_name == "INT" and name in SEED_NAMES)
            item = {"name": name, "type": type_name, "widget": widget, "optional": category == "optional"}
            if widget:
                item["control"] = control
                item["multiline"] = bool(opts.get("multiline", False))
            inputs.append(item)
    outputs = [{"name": n, "type": t if isinstance(t, str) else "COMBO"}
               for n, t in zip(info.get("output_name", []), info.get("output", []))]
    return {"inputs": inputs, "outputs": outputs}


def dump_specs(specs: dict) -> str:
    """One line per input, so a changed widget shows up as a one-line diff."""
    entries = []
    for node_type, spec in sorted(specs.items()):
        inputs = ",\n".join(f"   {json.dumps(i)}" for i in spec["inputs"])
        entries.append(f' {json.dumps(node_type)}: {{\n  "inputs": [\n{inputs}\n  ],\n'
                       f'  "outputs": {json.dumps(spec["outputs"])}\n }}')
    return "{\n" + ",\n".join(entries) + "\n}\n"


def load_specs() -> dict:
    return json.loads(SPECS_FILE.read_text())


def used_types() -> set[str]:
    types = set()
    for path in sorted(API_DIR.glob("*.json")):
        types |= {n["class_type"] for n in json.loads(path.read_text()).values()}
    return types


def refresh_specs() -> None:
    import tempfile

    from scripts.comfy_harness import ComfyServer
    with tempfile.TemporaryDirectory(prefix="t2i-specs-") as base, ComfyServer(base_dir=Path(base)) as server:
        info = server.object_info()
    specs = {t: spec_from_object_info(info[t]) for t in sorted(used_types())}
    SPECS_FILE.write_text(dump_specs(specs))
    print(f"wrote {SPECS_FILE.relative_to(ROOT)} ({len(specs)} node types)")


# ---- API -> UI ----

def _sorted_ids(api: dict) -> list[str]:
    return sorted(api, key=lambda k: (int(k) if k.isdigit() else 10**9, k))


def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str, seen=()) -> int:
        if node_id in depth:
            return depth[node_id]
        if node_id in seen:
            raise ValueError(f"cycle through node {node_id}")
        parents = [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list)]
        depth[node_id] = 1 + max((visit(p, (*seen, node_id)) for p in parents), default=-1)
        return depth[node_id]

    for node_id in api:
        visit(node_id)
    return depth


def _size(spec: dict, width: int) -> list[int]:
    sockets = max(sum(not i["widget"] for i in spec["inputs"]), len(spec["outputs"]))
    widgets = sum(1 + i.get("control", False) for i in spec["inputs"] if i["widget"])
    multiline = sum(i.get("multiline", False) for i in spec["inputs"] if i["widget"])
    return [width, 30 + 22 * sockets + 26 * widgets + 90 * multiline]


def api_to_ui(name: str, api: dict, specs: dict) -> dict:
    """The UI-format workflow for API workflow `api` (node ids kept; links numbered in input order)."""
    ids = _sorted_ids(api)
    depth = _depths(api)
    control = CONTROL_MODE.get(name, "fixed")
    nodes, links = {}, []
    column_y: dict[int, int] = {}
    order = sorted(ids, key=lambda i: (depth[i], ids.index(i)))
    for position, node_id in enumerate(order):
        node = api[node_id]
        spec = specs[node["class_type"]]
        unknown = set(node["inputs"]) - {i["name"] for i in spec["inputs"]}
        if unknown:
            raise ValueError(f"{name}: node {node_id} ({node['class_type']}) has unknown inputs {sorted(unknown)}")
        width = WIDE_NODE_WIDTH if any(i.get("multiline") for i in spec["inputs"] if i["widget"]) else NODE_WIDTH
        size = _size(spec, width)
        col = depth[node_id]
        y = column_y.get(col, 60)
        column_y[col] = y + size[1] + GAP
        inputs, widgets = [], []
        for item in spec["inputs"]:
            value = node["inputs"].get(item["name"])
            if item["widget"]:
                if isinstance(value, list):
                    raise ValueError(f"{name}: node {node_id} links widget {item['name']!r}; not supported here")
                if value is None:
                    if not item["optional"]:
                        raise ValueError(f"{name}: node {node_id} lacks widget {item['name']!r}")
                    continue
                widgets.append(value)
                if item.get("control"):
                    widgets.append(control)
            else:
                slot = {"name": item["name"], "type": item["type"], "link": None}
                if item["optional"]:
                    slot["shape"] = 7  # the frontend's hollow dot for optional inputs
                if value is not None:  # a link has its output's type, which the input must accept
                    out_type = specs[api[value[0]]["class_type"]]["outputs"][int(value[1])]["type"]
                    if not accepts(item["type"], out_type):
                        raise ValueError(f"{name}: node {node_id}.{item['name']} takes {item['type']}, not {out_type}")
                    links.append([len(links) + 1, int(value[0]), int(value[1]), int(node_id), len(inputs), out_type])
                    slot["link"] = len(links)
                inputs.append(slot)
        nodes[node_id] = {
            "id": int(node_id), "type": node["class_type"], "pos": [50 + col * COLUMN_WIDTH, y], "size": size,
            "flags": {}, "order": position, "mode": 0, "inputs": inputs,
            "outputs": [{"name": o["name"], "type": o["type"], "slot_index": i, "links": []}
                        for i, o in enumerate(specs[node["class_type"]]["outputs"])],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        }
    for link_id, origin, slot, _target, _tslot, _type in links:
        nodes[str(origin)]["outputs"][slot]["links"].append(link_id)
    for node in nodes.values():
        for out in node["outputs"]:
            if not out["links"]:
                out["links"] = None
    result = [nodes[i] for i in ids]
    last_id = max(int(i) for i in ids)
    if name in NOTES:
        last_id += 1
        result.append({"id": last_id, "type": "MarkdownNote", "pos": [50, -260], "size": [460, 240], "flags": {},
                       "order": len(result), "mode": 0, "inputs": [], "outputs": [], "title": "About this workflow",
                       "properties": {}, "widgets_values": [NOTES[name]], "color": "#432", "bgcolor": "#653"})
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"t2i-mini/workflows/{name}")),
        "revision": 0, "last_node_id": last_id, "last_link_id": len(links),
        "nodes": result, "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 0.9, "offset": [0, 300]}}, "version": 0.4,
    }


# ---- UI -> API (what the frontend does on Queue, for the node types in specs) ----

def ui_to_api(ui: dict, specs: dict) -> dict:
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # notes, muted, bypassed
            continue
        spec = specs[node["type"]]
        inputs = {}
        slots = {slot["name"]: slot for slot in node.get("inputs", [])}
        values = list(node.get("widgets_values") or [])
        for item in spec["inputs"]:
            slot = slots.get(item["name"])
            if slot is not None and slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[item["name"]] = [str(link[1]), link[2]]
            if item["widget"]:
                if not values:
                    if item["optional"]:
                        continue
                    raise ValueError(f"node {node['id']} ({node['type']}): no value for widget {item['name']!r}")
                value = values.pop(0)
                if item.get("control"):
                    values.pop(0)
                inputs.setdefault(item["name"], value)
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values left over")
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def dump(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report differences instead of writing")
    parser.add_argument("--refresh-specs", action="store_true", help="re-read node specs from a real ComfyUI")
    args = parser.parse_args(argv)
    if args.refresh_specs:
        refresh_specs()
    specs = load_specs()
    stale = []
    for api_path in sorted(API_DIR.glob("*.json")):
        name = api_path.stem
        text = dump(api_to_ui(name, json.loads(api_path.read_text()), specs))
        ui_path = WORKFLOWS / f"{name}.json"
        if args.check:
            if not ui_path.is_file() or ui_path.read_text() != text:
                stale.append(ui_path.relative_to(ROOT))
        else:
            ui_path.write_text(text)
            print(f"wrote {ui_path.relative_to(ROOT)}")
    if stale:
        print("out of date (run python -m scripts.make_ui_workflows):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
