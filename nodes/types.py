"""The pack's own socket types, and the inputs that take ComfyUI's types beside them.

T2I_MODEL is a plain PyTorch object (t2i_core.T2IModel), for the pack's own sampler; Load Checkpoint and Train
also hand out the same model as a core MODEL for ComfyUI's samplers (nodes/comfy_model.py). A text-encoder input
takes the pack's T2I_TEXT_ENCODER or a core CLIP, a codec input the pack's T2I_CODEC or a core VAE
(nodes/comfy_parts.py turns the core ones into the engine's interfaces).

`Node` is the base class of every node of the pack: the input checks ComfyUI 0.3.75 does not make live there."""
from __future__ import annotations

import functools
import inspect
import math
import numbers

from comfy_api.latest import io

# t2i_core.T2IModel: U-Net, noise schedule, text encoder and codec
T2IModel = io.Custom("T2I_MODEL")
# a t2i_core.conditioning.TextEncoder: FrozenCLIPTextEncoder, or a checkpoint's record of one it does not hold
TextEncoder = io.Custom("T2I_TEXT_ENCODER")
# a t2i_core.conditioning.Codec (PixelCodec, VAECodec, or a record): images <-> the space the U-Net denoises
Codec = io.Custom("T2I_CODEC")


def text_encoder_input(name: str = "text_encoder", tooltip: str = "") -> io.MultiType.Input:
    return io.MultiType.Input(name, types=[TextEncoder, io.Clip],
                              tooltip=f"{tooltip} A T2I Mini text encoder or a ComfyUI CLIP (CLIPLoader).".strip())


def codec_input(name: str = "codec", tooltip: str = "") -> io.MultiType.Input:
    return io.MultiType.Input(name, types=[Codec, io.Vae],
                              tooltip=f"{tooltip} A T2I Mini codec or a ComfyUI VAE (VAELoader).".strip())

CATEGORY = "T2I Mini"


def combo_error(node_cls, **values) -> str | None:
    """ComfyUI 0.3.75 does not check V3 dropdown values against their options (its check only sees V1-style
    option lists), so Node.validate_inputs calls this for every dropdown. Linked inputs arrive as None and are
    skipped."""
    options = {i.id: i.options for i in node_cls.define_schema().inputs if isinstance(i, io.Combo.Input)}
    for name, value in values.items():
        if value is None or name not in options or value in options[name]:
            continue
        listed = options[name]
        shown = ", ".join(map(str, listed[:20])) + (f" ... ({len(listed)} in all)" if len(listed) > 20 else "")
        return f"{name}: {value!r} is not one of the choices ({shown or 'none available'})"
    return None


def _numeric_inputs(node_cls) -> list:
    return [i for i in node_cls.define_schema().inputs if isinstance(i, (io.Float.Input, io.Int.Input))]


def _range(spec) -> str:
    low = "" if spec.min is None else f" from {spec.min}"
    high = "" if spec.max is None else f" to {spec.max}"
    default = "" if spec.default is None else f" (the default is {spec.default})"
    return f"{low}{high}{default}"


def non_finite_error(node_cls, values: dict) -> str | None:
    """The first number input that is NaN or infinite, named, with what to give instead."""
    for spec in _numeric_inputs(node_cls):
        value = values.get(spec.id)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
            return f"{spec.id} is {value}, not a finite number: give a number{_range(spec)}"
    return None


def number_error(node_cls, values: dict) -> str | None:
    """non_finite_error, then ComfyUI's own min/max check, which it skips once validate_inputs takes **kwargs."""
    problem = non_finite_error(node_cls, values)
    if problem:
        return problem
    for spec in _numeric_inputs(node_cls):
        value = values.get(spec.id)
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            continue  # None: linked, checked for finiteness when the node runs
        if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
            return f"{spec.id} is {value}, outside its range: give a number{_range(spec)}"
    return None


def _checked_validate(own):
    """A node's own validate_inputs, run after the number checks and before the dropdown checks, with only the
    inputs it names (as ComfyUI would call it)."""
    spec = inspect.getfullargspec(own)
    names = None if spec.varkw is not None else set(spec.args[1:]) | set(spec.kwonlyargs)

    @functools.wraps(own)
    def validate_inputs(cls, **values):
        problem = number_error(cls, values)
        if problem:
            return problem
        result = own(cls, **(values if names is None else {k: v for k, v in values.items() if k in names}))
        if result is not True:
            return result
        return combo_error(cls, **values) or True
    validate_inputs.t2i_checked = True
    return validate_inputs


def _checked_execute(own):
    """A node's execute, refusing non-finite numbers first: a linked value (a core Primitive, a math node) is
    None at validation, so it is checked here, before the node uses it."""
    def check(cls, values):
        problem = non_finite_error(cls, values)
        if problem:
            raise ValueError(problem)

    if inspect.iscoroutinefunction(own):
        @functools.wraps(own)
        async def execute(cls, *args, **values):
            check(cls, values)
            return await own(cls, *args, **values)
    else:
        @functools.wraps(own)
        def execute(cls, *args, **values):
            check(cls, values)
            return own(cls, *args, **values)
    execute.t2i_checked = True
    return execute


class Node(io.ComfyNode):
    """The base of every T2I Mini node. ComfyUI 0.3.75 lets through values a node must never get: a NaN or an
    infinite FLOAT ("nan" and JSON's NaN parse as floats, and NaN fails no min/max comparison) and a V3
    dropdown value that is not among its options. Every subclass gets these checks, whatever it declares:
    validate_inputs refuses such widget values when the prompt is queued (POST /prompt answers 400 naming the
    input), and execute refuses a non-finite linked number before the node runs. A subclass's own
    validate_inputs is kept and runs between the two checks."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, wrap in (("validate_inputs", _checked_validate), ("execute", _checked_execute)):
            own = cls.__dict__.get(name)
            if isinstance(own, classmethod) and not getattr(own.__func__, "t2i_checked", False):
                setattr(cls, name, classmethod(wrap(own.__func__)))

    @classmethod
    def validate_inputs(cls, **values):
        return number_error(cls, values) or combo_error(cls, **values) or True
