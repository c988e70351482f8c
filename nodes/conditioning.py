"""Text -> ComfyUI CONDITIONING, so core conditioning nodes (ConditioningConcat, ConditioningAverage,
ConditioningZeroOut, ...) can work on it."""
from __future__ import annotations

import logging

import comfy.model_management as mm
from comfy_api.latest import io

from .comfy_format import to_comfy_conditioning
from .comfy_parts import as_text_encoder, loader_of
from .types import CATEGORY, Node, text_encoder_input

log = logging.getLogger("t2i_mini")
CONDITIONING = f"{CATEGORY}/conditioning"


def prompt_list(text: str, one_per_line: bool) -> list[str]:
    if not one_per_line:
        return [text]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines or [""]


class TextEncode(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniTextEncode",
            display_name="Text Encode (T2I Mini)",
            category=CONDITIONING,
            description="Encodes a prompt into a CONDITIONING: per-token states, the pooled vector and the mask of "
                        "real tokens. With a T2I Mini text encoder, prompts longer than its context (77 tokens for "
                        "CLIP) are cut, with a warning in the log; with a ComfyUI CLIP the result equals core CLIP "
                        "Text Encode's. The conditioning records which encoder made it, so the sampler can refuse "
                        "one the model was not trained with.",
            inputs=[
                text_encoder_input(tooltip="The text encoder the model was trained with."),
                io.String.Input("text", multiline=True, default="a large red circle on the left",
                                tooltip="The prompt. With one_prompt_per_line, each non-empty line is a prompt."),
                io.Boolean.Input("one_prompt_per_line", default=False,
                                 tooltip="Encode every non-empty line as its own prompt (a batch of conditionings). "
                                         "The sampler then gives each prompt batch_size / lines images, in order."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            outputs=[io.Conditioning.Output(tooltip="The encoded prompt(s), one row per prompt.")],
        )

    @classmethod
    def execute(cls, text_encoder, text, one_prompt_per_line=False) -> io.NodeOutput:
        text_encoder = as_text_encoder(text_encoder, loader_of(cls.hidden, "text_encoder"))
        prompts = prompt_list(text, one_prompt_per_line)
        encoded = text_encoder.encode(prompts)
        for prompt, cut in zip(prompts, encoded.truncated):
            if cut:
                log.warning("T2I Mini: the prompt %r is longer than the text encoder's %d tokens and was truncated",
                            prompt[:80] + ("..." if len(prompt) > 80 else ""), text_encoder.context_length)
        return io.NodeOutput(to_comfy_conditioning(encoded.conditioning, mm.intermediate_device(), text_encoder,
                                                   encoded.tokens))


class EmptyConditioning(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniEmptyConditioning",
            display_name="Empty Conditioning (T2I Mini)",
            category=CONDITIONING,
            description="The empty prompt's conditioning: the unconditional input of classifier-free guidance, "
                        "which the model learned through CFG dropout. Connect it to the sampler's negative.",
            inputs=[text_encoder_input(tooltip="The text encoder the model was trained with.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            outputs=[io.Conditioning.Output(tooltip="The empty prompt's conditioning.")],
        )

    @classmethod
    def execute(cls, text_encoder) -> io.NodeOutput:
        text_encoder = as_text_encoder(text_encoder, loader_of(cls.hidden, "text_encoder"))
        return io.NodeOutput(to_comfy_conditioning(text_encoder.empty(), mm.intermediate_device(), text_encoder))


NODES = [TextEncode, EmptyConditioning]
