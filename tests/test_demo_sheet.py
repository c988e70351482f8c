"""The demo's contact sheet: the sweep's grid cut back into its images, and a sheet with a labelled row each."""
import numpy as np
import torch
from PIL import Image

from scripts.demo import SHEET_CELL, contact_sheet, grid_cells, load_workflow


def test_grid_cells_recover_the_images_of_the_sweep_grid():
    sweep = load_workflow("guidance_sweep")
    [layout] = [spec["inputs"] for spec in sweep.values() if spec["class_type"] == "T2IMiniImageGrid"]
    [scaled] = [spec["inputs"] for spec in sweep.values() if spec["class_type"] == "ImageScaleBy"]
    images = torch.rand(12, 16, 16, 3)
    columns, pad = layout["columns"], layout["padding"]
    tiled = torch.ones(3 * 16 + 2 * pad, columns * 16 + (columns - 1) * pad, 3)  # T2IMiniImageGrid's layout
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        tiled[r * (16 + pad): r * (16 + pad) + 16, c * (16 + pad): c * (16 + pad) + 16] = image
    pil = Image.fromarray((tiled.numpy() * 255).round().astype(np.uint8))
    scale = int(scaled["scale_by"])
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    cells = grid_cells(sweep, pil)
    assert len(cells) == 12
    for cell, image in zip(cells, images):
        expected = (image.numpy() * 255).round().astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
        assert np.array_equal(np.asarray(cell), expected)


def test_contact_sheet_has_a_row_per_prompt_and_per_guidance_scale():
    tile = Image.new("RGB", (16, 16), "blue")  # a colour no label uses
    rows = [(f"prompt {i}", [tile] * 4) for i in range(4)]
    verdicts = [[True, False, True, True]] * 4
    sweep = [(w, [tile] * 4) for w in (1.0, 3.0, 7.5)]
    loss = Image.new("RGB", (512, 256), "gray")
    sheet = np.asarray(contact_sheet(rows, verdicts, "prompt 0", sweep, loss))
    blue = (sheet[..., 2] > 200) & (sheet[..., 0] < 50)
    blue_rows = np.flatnonzero(blue.any(axis=1))
    bands = 1 + int((np.diff(blue_rows) > 1).sum())  # separate horizontal bands of samples
    assert bands == len(rows) + len(sweep)
    assert blue.any(axis=0).sum() == 4 * SHEET_CELL  # four samples side by side, none cut or overlapping
