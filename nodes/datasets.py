"""Built-in datasets written into ComfyUI's input folder, so training needs nothing downloaded."""
from __future__ import annotations

from comfy_api.latest import io

from ..t2i_core.data.builtin import BUILTIN_DATASETS, builtin_dataset
from . import paths
from .types import CATEGORY, Node


def per_dataset(field: str) -> str:
    return "; ".join(f"{d.name}: {getattr(d, field)}" for d in BUILTIN_DATASETS.values())


class MakeDataset(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniMakeDataset",
            display_name="Make Dataset (built-in)",
            category=f"{CATEGORY}/training",
            description="Writes a built-in captioned dataset (PNG + .txt per image) into a subfolder of ComfyUI's "
                        "input folder and returns its path. "
                        + " ".join(d.description for d in BUILTIN_DATASETS.values())
                        + " Re-running with the same settings reuses the folder; it never overwrites files it did "
                          "not write.",
            inputs=[
                io.Combo.Input("dataset", options=list(BUILTIN_DATASETS), default="shapes",
                               tooltip="Which built-in dataset to write."),
                io.String.Input("folder_name", default="t2i_shapes",
                                tooltip="Subfolder of ComfyUI's input folder to write into (created if missing)."),
                io.Int.Input("count", default=1000, min=1, max=100_000,
                             tooltip=per_dataset("count") + "."),
                io.Int.Input("resolution", default=16, min=8, max=512, step=8,
                             tooltip="Side of the square images in pixels (sprites_keep_aspect: about this "
                                     "squared pixels per image, at its own aspect ratio; sprites need 16 or more)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip=per_dataset("seed") + "."),
            ],
            outputs=[io.String.Output(display_name="dataset_path",
                                      tooltip="Absolute path of the dataset folder (connect to Train from "
                                              "Dataset's dataset_path).")],
        )

    @classmethod
    def validate_inputs(cls, folder_name):
        if folder_name is None:  # linked: checked when the node runs
            return True
        try:
            paths.input_subfolder(folder_name)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, dataset, folder_name, count, resolution, seed) -> io.NodeOutput:
        folder = paths.input_subfolder(folder_name)
        written = builtin_dataset(dataset).write(folder, count=count, resolution=resolution, seed=seed)
        return io.NodeOutput(str(written))


NODES = [MakeDataset]
