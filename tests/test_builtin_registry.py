"""The built-in dataset registry end to end: every dataset it lists builds, trains a step, and its judge reads the
samples, so a dataset added with one module and one registry entry is covered here without another test."""
import numpy as np
import pytest
import torch
from t2i_test_utils import TEST_TEXT_CONFIG, needs_sprites

from evals.judgement import Judgement
from evals.judges import JUDGES, evaluation
from t2i_core import TextEncoderSpec, build_text_encoder
from t2i_core.data.builtin import BUILTIN_DATASETS, builtin_dataset
from t2i_core.samplers import SAMPLERS
from t2i_core.training.config import TrainConfig
from t2i_core.training.trainer import train
from t2i_core.unet import PRESETS


def needs_for(name: str):
    return [needs_sprites] if name.startswith("sprites") else []


def test_the_registry_lists_each_dataset_with_a_judge_and_a_preset():
    assert list(BUILTIN_DATASETS) == ["shapes", "digits", "sprites", "sprites_keep_aspect"]
    for d in BUILTIN_DATASETS.values():
        assert d.judge in JUDGES and d.preset in PRESETS and d.resolution % 8 == 0, d
        assert d.description.startswith(f"{d.name}: ")
    with pytest.raises(ValueError, match="unknown built-in dataset 'pets'; choose one of shapes, digits"):
        builtin_dataset("pets")


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_for(n)) for n in BUILTIN_DATASETS])
def test_each_dataset_builds_trains_a_step_and_is_judged(name, tmp_path):
    dataset = builtin_dataset(name)
    resolution = 16 if dataset.resolution <= 16 else 32
    folder = dataset.write(tmp_path / name, count=8, resolution=resolution)
    assert sorted(p.suffix for p in folder.iterdir() if p.suffix in (".png", ".txt"))[:1] == [".png"]
    assert dataset.write(tmp_path / name, count=8, resolution=resolution) == folder  # the same output: reused
    encoder = build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=0))
    cfg = TrainConfig(dataset=str(folder), output=str(tmp_path / "m.safetensors"), preset="micro",
                      resolution=resolution, steps=1, batch_size=4, checkpoint_every=0, precision="fp32",
                      cache_dir=str(tmp_path / "cache"))
    result = train(cfg, encoder, device="cpu")
    assert result.step == 1 and np.isfinite(result.history[0]["loss"])

    ev = evaluation(dataset.judge, resolution)
    prompts = ev.prompts(3)
    assert len(prompts) == 3 and all(isinstance(p, str) for p in prompts)
    images = result.model.generate(prompts, seeds=[0, 1, 2], height=resolution, width=resolution, steps=2,
                                   sampler=next(iter(SAMPLERS)))
    judged = ev.judge.judge(images, prompts)
    assert isinstance(judged, Judgement) and list(judged.scores) == list(ev.judge.attributes)
    assert 0 <= judged.adherence <= 1
    assert judged.adherence == pytest.approx(float(ev.judge.matches(images, prompts).mean()))
    # the judge reads real images of the dataset as right, and real images under the wrong captions as wrong
    real = ev.heldout_images[:24]
    captions = ev.heldout_captions[:24]
    assert ev.judge.judge(real, captions).adherence >= 0.9
    assert ev.judge.judge(torch.roll(real, 1, dims=0), captions).adherence < 0.6


def test_the_cli_writes_any_registered_dataset_and_refuses_a_foreign_folder(tmp_path, capsys):
    from t2i_core.training.cli import main
    assert main(["make-dataset", "shapes", str(tmp_path / "s"), "--count", "5"]) == 0
    assert len(list((tmp_path / "s").glob("*.png"))) == 5 and "--preset tiny --resolution 16" in capsys.readouterr().out
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["make-dataset", "digits", str(tmp_path / "mine")]) == 2
    assert "refusing to write there" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit):
        main(["make-dataset", "pets", str(tmp_path / "p")])
