"""The Train node in-process with ComfyUI's modules: what its inputs set reaches the training run. The workflow
tests show that ComfyUI accepts the inputs; these show that the node hands them on."""
import csv

import pytest
import torch
from t2i_test_utils import TEST_TEXT_CONFIG

from t2i_core import PixelCodec, TextEncoderSpec, build_text_encoder
from t2i_core.data import make_shapes_dataset
from t2i_core.training.config import TrainConfig
from t2i_core.training.state import history_path

WARMUP = TrainConfig.warmup_steps  # the node does not set it
STEPS = WARMUP + 10  # past the warm-up, so the learning-rate schedule shows


@pytest.fixture
def train_node(comfy_pack, tmp_path, monkeypatch):
    """The node, with ComfyUI's input folder and the pack's model folder in tmp_path."""
    import folder_paths

    from scripts.comfy_inprocess import pack_module
    paths = pack_module("nodes.paths")
    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, paths.MODEL_FOLDER,
                        ([str(tmp_path / "models")], {paths.CHECKPOINT_EXTENSION}))
    make_shapes_dataset(tmp_path / "input" / "shapes", count=8, resolution=16)
    yield pack_module("nodes.training").Train
    folder_paths.set_input_directory(before)


def run(train_node, name: str, **inputs):
    text_encoder = build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG))
    args = dict(dataset="shapes", text_encoder=text_encoder, codec=PixelCodec(), preset="micro", steps=STEPS,
                max_minutes=0.0, batch_size=2, learning_rate=0.001, cfg_dropout=0.1, resolution=16, seed=0,
                checkpoint_name=name, resume=False, validation_prompts="", validation_every=0, checkpoint_every=0,
                precision="fp32")
    with torch.inference_mode():  # as ComfyUI runs a node
        model, _curve, steps, _core, _run_id = train_node.execute(**args, **inputs).args
    assert steps == STEPS
    with history_path(model.training["config"]["output"]).open(newline="") as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return model.training["config"], history


def test_lr_schedule_optimizer_and_min_snr_gamma_reach_the_run(train_node):
    default, default_history = run(train_node, "default")
    chosen, chosen_history = run(train_node, "chosen", lr_schedule="cosine", min_snr_gamma=5.0, optimizer="muon")

    assert default["lr_schedule"] == "constant" and default["min_snr_gamma"] == 0.0
    assert chosen["lr_schedule"] == "cosine" and chosen["min_snr_gamma"] == 5.0
    assert default["optimizer"] == "adamw" and chosen["optimizer"] == "muon"
    # the learning rates the optimizer used (the loss CSV beside the checkpoint): constant after the warm-up,
    # or falling towards 0 by the last step
    assert {row["lr"] for row in default_history[WARMUP:]} == {0.001}
    cosine = [row["lr"] for row in chosen_history[WARMUP:]]
    assert cosine == sorted(cosine, reverse=True) and cosine[-1] < 0.0001
    # the same batches (same seed), weighted differently: Min-SNR-5 changes the very first loss
    assert default_history[0]["loss"] != chosen_history[0]["loss"]
