"""nodes/types.Node: every node of the pack refuses NaN and infinite numbers (which ComfyUI 0.3.75 accepts),
out-of-range numbers and unknown dropdown values, and keeps its own checks. In-process with ComfyUI's modules;
tests/integration/test_faults.py sends a NaN cfg through a real server's /prompt."""
import asyncio
import inspect
import math

import pytest


@pytest.fixture(scope="module")
def pack_nodes(comfy_pack):
    from scripts.comfy_inprocess import pack_module
    extension = asyncio.run(pack_module("nodes").comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


@pytest.fixture(scope="module")
def io(comfy_pack):
    from comfy_api.latest import io
    return io


def number_inputs(node, io):
    return [i for i in node.define_schema().inputs if isinstance(i, (io.Float.Input, io.Int.Input))]


def test_every_node_has_the_shared_checks(pack_nodes, comfy_pack):
    from comfy_api.internal import first_real_override

    from scripts.comfy_inprocess import pack_module
    Node = pack_module("nodes.types").Node
    assert len(pack_nodes) >= 15
    for node in pack_nodes:
        assert issubclass(node, Node), node
        validate = first_real_override(node, "validate_inputs")
        # ComfyUI passes every input to a validate_inputs that takes **kwargs (execution.py, validate_inputs)
        assert validate is not None and inspect.getfullargspec(validate).varkw is not None, node


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_naming_the_input(pack_nodes, io, bad):
    checked = 0
    for node in pack_nodes:
        for spec in number_inputs(node, io):
            if not isinstance(spec, io.Float.Input):
                continue  # ComfyUI's int() already refuses NaN and inf for INT inputs
            problem = node.validate_inputs(**{spec.id: bad})
            assert isinstance(problem, str) and spec.id in problem and "not a finite number" in problem, \
                (node, spec.id, problem)
            checked += 1
    assert checked >= 9  # cfg, eta, guidance_rescale, guidance_start/end, learning_rate, cfg_dropout, ...


def test_a_linked_non_finite_number_is_refused_before_the_node_runs(pack_nodes, io):
    sampler = next(n for n in pack_nodes if n.define_schema().node_id == "T2IMiniGuidedSampler")
    # a linked input is None at validation; execute gets the value and refuses it before touching the model
    with pytest.raises(ValueError, match="cfg is nan, not a finite number: give a number from 0.0 to 30.0"):
        sampler.execute(model=None, positive=None, negative=None, latent=None, steps=5, cfg=math.nan,
                        sampler_name="ddim", eta=0.0, guidance_rescale=0.0, precision="auto")


def test_ranges_and_dropdowns_are_still_checked(pack_nodes):
    # a validate_inputs that takes **kwargs turns ComfyUI's own min/max check off, so Node makes it
    sampler = next(n for n in pack_nodes if n.define_schema().node_id == "T2IMiniGuidedSampler")
    assert "cfg is 31.0, outside its range" in sampler.validate_inputs(cfg=31.0)
    assert "steps is 0, outside its range" in sampler.validate_inputs(steps=0)
    assert "sampler_name: 'euler' is not one of the choices" in sampler.validate_inputs(sampler_name="euler")
    assert sampler.validate_inputs(cfg=7.5, steps=20, sampler_name="ddpm", model=None) is True


def test_a_nodes_own_check_still_runs(pack_nodes):
    make = next(n for n in pack_nodes if n.define_schema().node_id == "T2IMiniMakeDataset")
    assert "would leave ComfyUI's input folder" in make.validate_inputs(folder_name="../x", dataset="shapes")
    assert "dataset: 'faces' is not one of the choices" in make.validate_inputs(folder_name="ok", dataset="faces")
    assert "count is nan" not in str(make.validate_inputs(folder_name="ok", count=5))
