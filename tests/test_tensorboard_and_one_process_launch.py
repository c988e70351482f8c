"""Optional TensorBoard logging (t2i_core.training.tensorboard) and training in one subprocess without torchrun
(t2i_core.training.launch with processes=1, what the Train node's run_in_background starts)."""
import sys

import pytest
import torch

from t2i_core import PixelCodec, load_checkpoint, tiny_text_encoder
from t2i_core.data import make_shapes_dataset
from t2i_core.training.config import TrainCallbacks, TrainConfig
from t2i_core.training.launch import launch, train_command
from t2i_core.training.state import TrainingError, state_path
from t2i_core.training.trainer import train

pytest.importorskip("tensorboard", reason="tensorboard is a dev requirement (requirements-dev.txt)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", count=32, resolution=16, seed=0)


@pytest.fixture(scope="module")
def encoder():
    return tiny_text_encoder(0)


def config(shapes, tmp_path, **kw) -> TrainConfig:
    base = dict(dataset=str(shapes), output=str(tmp_path / "out" / "m.safetensors"), resolution=16, steps=4,
                batch_size=8, lr=2e-3, warmup_steps=1, checkpoint_every=0, precision="fp32", preset="micro",
                cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**{**base, **kw})


def read_log(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_the_log_holds_each_steps_scalars_and_the_validation_images(shapes, encoder, tmp_path):
    logs = tmp_path / "logs"
    result = train(config(shapes, tmp_path, log_dir=str(logs), validation_prompts=["a red circle", "a blue square"],
                          validation_every=2, validation_steps=2), encoder, device="cpu")
    events = read_log(logs)
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([h["loss"] for h in result.history], rel=1e-5)
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3, 4]
    assert all(e.value > 0 for e in events.Scalars("train/images_per_s"))
    images = events.Images("validation")  # a round's images side by side in one grid
    assert [e.step for e in images] == [2, 4] and (images[0].width, images[0].height) == (2 * 16, 16)
    assert any("a blue square" in str(t) for t in events.Tensors("validation/prompts/text_summary"))


def test_a_resumed_run_appends_and_shows_each_step_once(shapes, encoder, tmp_path):
    logs = tmp_path / "logs"
    train(config(shapes, tmp_path, log_dir=str(logs), steps=3), encoder, device="cpu")
    train(config(shapes, tmp_path, log_dir=str(logs), steps=5), encoder, device="cpu")
    assert [e.step for e in read_log(logs).Scalars("train/loss")] == [1, 2, 3, 4, 5]


def test_without_the_package_the_error_says_so_before_any_training(shapes, encoder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when it isn't installed
    cfg = config(shapes, tmp_path, log_dir=str(tmp_path / "logs"))
    with pytest.raises(TrainingError, match="pip install tensorboard"):
        train(cfg, encoder, device="cpu")
    assert not (tmp_path / "out" / "m.safetensors").exists() and not (tmp_path / "logs").exists()
    assert not list((tmp_path / "out").glob("*.lock"))  # nothing held afterwards


def test_one_process_trains_without_torchrun_and_stops_resumable(shapes, encoder, tmp_path):
    cfg = config(shapes, tmp_path, steps=500, log_dir=str(tmp_path / "logs"))
    command = train_command(cfg, 1, tmp_path / "run")
    assert command[1:4] == ["-m", "t2i_core", "train"] and "torch.distributed.run" not in command
    assert "torch.distributed.run" in train_command(cfg, 2, tmp_path / "run")
    seen = []
    callbacks = TrainCallbacks(on_progress=lambda p: seen.append(p.step), should_stop=lambda: len(seen) >= 3)
    launched = launch(cfg, encoder, PixelCodec(), 1, callbacks, devices=[])
    assert launched.stopped and 3 <= launched.step < 500 and seen[:3] == [1, 2, 3]
    assert load_checkpoint(cfg.output).training["step"] == launched.step and state_path(cfg.output).exists()
    assert [e.step for e in read_log(tmp_path / "logs").Scalars("train/loss")] == list(range(1, launched.step + 1))
    resumed = train(config(shapes, tmp_path, steps=launched.step + 2), encoder, device="cpu")
    assert resumed.step == launched.step + 2 and len(resumed.history) == launched.step + 2
    with pytest.raises(ValueError, match="at least 1"):
        launch(cfg, encoder, PixelCodec(), 0, devices=[])
    assert torch.isfinite(torch.tensor([h["loss"] for h in resumed.history])).all()
