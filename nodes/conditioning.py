"""Text -> ComfyUI CONDITIONING, so core conditioning nodes (ConditioningConcat, ConditioningAverage,
ConditioningZeroOut, ...) can work on it."""
from __future__ import annotations

import logging

import comfy.model_management as mm
from comfy_api.latest import io

from .comfy_format import to_comfy_conditioning
from .types import CATEGORY, TextEncoder

log = logging.getLogger("t2i_mini")
CONDITIONING = f"{CATEGORY}/conditioning"


def prompt_list(text: str, one_per_line: bool) -> list[str]:
    if not one_per_line:
        return [text]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines or [""]


class TextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniTextEncode",
            display_name="Text Encode (T2I Mini)",
            category=CONDITIONING,
            description="Encodes a prompt with a T2I Mini text encoder into a CONDITIONING: per-token states, "
                        "the pooled vector and the mask of real tokens. Prompts longer than the encoder's context "
                        "(77 tokens for CLIP) are cut, with a warning in the log.",
            inputs=[
                TextEncoder.Input("text_encoder", tooltip="The text encoder the model was trained with."),
                io.String.Input("text", multiline=True, default="a large red circle on the left",
                                tooltip="The prompt. With one_prompt_per_line, each non-empty line is a prompt."),
                io.Boolean.Input("one_prompt_per_line", default=False,
                                 tooltip="Encode every non-empty line as its own prompt (a batch of conditionings). "
                                         "The sampler then gives each prompt batch_size / lines images, in order."),
            ],
            outputs=[io.Conditioning.Output(tooltip="The encoded prompt(s), one row per prompt.")],
        )

    @classmethod
    def execute(cls, text_encoder, text, one_prompt_per_line=False) -> io.NodeOutput:
        prompts = prompt_list(text, one_prompt_per_line)
        encoded = text_encoder.encode(prompts)
        for prompt, cut in zip(prompts, encoded.truncated):
            if cut:
                log.warning("T2I Mini: the prompt %r is longer than the text encoder's %d tokens and was truncated",
                            prompt[:80] + ("..." if len(prompt) > 80 else ""), text_encoder.context_length)
        return io.NodeOutput(to_comfy_conditioning(encoded.conditioning, mm.intermediate_device()))


class EmptyConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniEmptyConditioning",
            display_name="Empty Conditioning (T2I Mini)",
            category=CONDITIONING,
            description="The empty prompt's conditioning: the unconditional input of classifier-free guidance, "
                        "which the model learned through CFG dropout. Connect it to the sampler's negative.",
            inputs=[TextEncoder.Input("text_encoder", tooltip="The text encoder the model was trained with.")],
            outputs=[io.Conditioning.Output(tooltip="The empty prompt's conditioning.")],
        )

    @classmethod
    def execute(cls, text_encoder) -> io.NodeOutput:
        return io.NodeOutput(to_comfy_conditioning(text_encoder.empty(), mm.intermediate_device()))


NODES = [TextEncode, EmptyConditioning]
