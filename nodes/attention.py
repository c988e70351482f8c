"""Attention Maps: the Guided Sampler's run, with the cross-attention of every word of the prompt recorded."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..t2i_core.attention_maps import record_attention, render_batch, tokens_per_image, word_maps
from .comfy_format import conditioning_tokens, images_to_comfy
from .sampling import SAMPLING, GuidedSampler
from .types import Node

POSITIVE_TOOLTIP = ("The prompt, from Text Encode (T2I Mini) with the model's text encoder: its conditioning "
                    "records the prompt's tokens, which name the maps. One prompt per line gives each its share of "
                    "the batch.")


def sampler_inputs() -> list:
    """The Guided Sampler's inputs: the same run, so the same image for the same settings."""
    return [io.Conditioning.Input("positive", tooltip=POSITIVE_TOOLTIP) if i.id == "positive" else i
            for i in GuidedSampler.define_schema().inputs]


class AttentionMaps(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniAttentionMaps",
            display_name="Attention Maps (T2I Mini)",
            category=SAMPLING,
            description="Samples exactly as the Guided DDIM Sampler does while recording where each word of the "
                        "prompt lands: the cross-attention probabilities softmax(QK^T/sqrt(d)) of every image "
                        "position over the prompt's tokens, averaged over heads, layers and the chosen steps. "
                        "Gives one heat map per word, laid over the generated image and labelled with the word "
                        "and its share of the attention (the rest goes to the start and end of text).",
            inputs=[
                *sampler_inputs(),
                io.Float.Input("average_start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Average the maps of the steps from this point of the run on (0 = pure "
                                       "noise, 1 = clean, as guidance_start)."),
                io.Float.Input("average_end", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="... up to this point (1 = to the end). The default, the first half of the run, is where "
                                       "the layout is decided; later steps add the details."),
                io.Int.Input("tile_size", default=128, min=16, max=2048, step=8,
                             tooltip="Each map is enlarged by a whole factor to about this many pixels, so the "
                                     "label is readable."),
                io.Float.Input("opacity", default=0.6, min=0.0, max=1.0, step=0.05,
                               tooltip="How strongly the heat map covers the image (0 = the image only)."),
            ],
            outputs=[
                io.Image.Output("attention_maps", display_name="attention_maps", tooltip="One labelled heat map per word and image: image 0's "
                                                          "words in prompt order, then image 1's, ..."),
                io.Image.Output("images", display_name="images", tooltip="The generated images, as the Guided Sampler and Decode give them."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, cfg, sampler_name, eta, guidance_rescale, precision,
                average_start, average_end, tile_size, opacity, guidance_start=0.0, guidance_end=1.0,
                check_text_encoder=True, allow_large_sizes=False) -> io.NodeOutput:
        tokens = conditioning_tokens(positive)
        with record_attention(model.unet, model.schedule.cfg.num_train_timesteps,
                              (average_start, average_end)) as recorder:
            samples = GuidedSampler.execute(model, positive, negative, latent, steps, cfg, sampler_name, eta,
                                            guidance_rescale, precision, guidance_start, guidance_end,
                                            check_text_encoder, allow_large_sizes).args[0]["samples"]
        with torch.inference_mode():
            images = model.codec.to("cpu").decode_raw(samples.float().cpu())
        per_image = word_maps(recorder.maps(), tokens_per_image(tokens, len(images)), tuple(images.shape[-2:]),
                              getattr(model.text_encoder, "tokenizer", None))
        tiles = render_batch(images, per_image, tile_size, opacity)
        return io.NodeOutput(images_to_comfy(tiles), images_to_comfy(images))


NODES = [AttentionMaps]
