"""The Make Dataset node in-process (ComfyUI's modules, no server): the sprites choices write the dataset into
ComfyUI's input folder."""
from PIL import Image
from t2i_test_utils import needs_sprites


@needs_sprites
def test_make_dataset_writes_sprites(comfy_pack, tmp_path):
    import folder_paths

    from scripts.comfy_inprocess import pack_module
    datasets = pack_module("nodes.datasets")
    assert list(datasets.BUILTIN_DATASETS)[2:] == ["sprites", "sprites_keep_aspect"]
    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        square = datasets.MakeDataset.execute("sprites", "t2i_sprites", 4, 32, 0).result[0]
        shaped = datasets.MakeDataset.execute("sprites_keep_aspect", "t2i_sprites_aspect", 4, 32, 0).result[0]
    finally:
        folder_paths.set_input_directory(before)
    assert square.startswith(str(tmp_path)) and shaped.startswith(str(tmp_path))
    assert {Image.open(p).size for p in (tmp_path / "t2i_sprites").glob("*.png")} == {(32, 32)}
    assert len({Image.open(p).size for p in (tmp_path / "t2i_sprites_aspect").glob("*.png")}) > 1
    assert (tmp_path / "t2i_sprites" / "sprite_004.txt").read_text() == "an orange fire pokemon, charmander\n"
