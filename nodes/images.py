"""Small image utilities that ComfyUI core lacks."""
from __future__ import annotations

from comfy_api.latest import io

from .comfy_format import grid
from .types import CATEGORY, Node


class ImageGrid(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniImageGrid",
            display_name="Image Grid (T2I Mini)",
            category=f"{CATEGORY}/image",
            description="Lays a batch of images out as one grid image, row by row (e.g. prompts x seeds).",
            inputs=[
                io.Image.Input("images", tooltip="The batch to lay out."),
                io.Int.Input("columns", default=0, min=0, max=256,
                             tooltip="Images per row; 0 picks a near-square layout."),
                io.Int.Input("padding", default=2, min=0, max=64, tooltip="Pixels between images."),
                io.Float.Input("pad_value", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Brightness of the padding (0 black, 1 white)."),
            ],
            outputs=[io.Image.Output(tooltip="One image holding the whole batch.")],
        )

    @classmethod
    def execute(cls, images, columns, padding, pad_value) -> io.NodeOutput:
        return io.NodeOutput(grid(images, columns, padding, pad_value))


NODES = [ImageGrid]
