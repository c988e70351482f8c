import pytest
import torch
from t2i_test_utils import TEST_TEXT_CONFIG

from t2i_core import TextEncoderSpec, build_text_encoder, load_checkpoint
from t2i_core.data import make_shapes_dataset
from t2i_core.data.cache import TensorCache
from t2i_core.data.captions import CaptionTable
from t2i_core.plot import loss_curve_image
from t2i_core.training.config import TrainCallbacks, TrainConfig
from t2i_core.training.state import TrainingError, state_path
from t2i_core.training.trainer import Trainer, min_snr_weight, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", count=72, resolution=16, seed=0)


@pytest.fixture(scope="module")
def encoder():
    return build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=0))


def config(shapes, tmp_path, **kw):
    base = dict(dataset=str(shapes), output=str(tmp_path / "out" / "m.safetensors"), resolution=16, steps=8,
                batch_size=8, lr=2e-3, warmup_steps=2, checkpoint_every=0, precision="fp32",
                cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**{**base, **kw})


def test_loss_falls_and_checkpoint_generates(shapes, encoder, tmp_path):
    result = train(config(shapes, tmp_path, steps=40, batch_size=16, lr=3e-3), encoder, device="cpu")
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 40 and sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8
    model = load_checkpoint(result.checkpoint)
    assert model.training["step"] == 40
    images = model.generate("a large red circle on the left", seeds=[0, 1], height=16, width=16, steps=3)
    assert images.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_equals_uninterrupted_run(shapes, encoder, tmp_path, optimizer):
    whole = train(config(shapes, tmp_path / "a", steps=10, optimizer=optimizer), encoder, device="cpu")
    # stop at step 4 the way a user's cancel does, then resume to step 10 in a fresh trainer
    first = train(config(shapes, tmp_path / "b", steps=10, optimizer=optimizer), encoder, device="cpu",
                  callbacks=TrainCallbacks(should_stop=lambda: len(progress) >= 4,
                                           on_progress=lambda p: progress.append(p.step)))
    assert first.stopped and first.step == 4
    assert load_checkpoint(first.checkpoint).training["step"] == 4
    resumed = train(config(shapes, tmp_path / "b", steps=10, optimizer=optimizer), encoder, device="cpu")
    assert resumed.step == 10 and not resumed.stopped
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for (name, x), (_, y) in zip(whole.model.unet.state_dict().items(), resumed.model.unet.state_dict().items()):
        assert torch.equal(x, y), name


progress: list = []


@pytest.fixture(autouse=True)
def clear_progress():
    progress.clear()


def test_resume_with_grad_accum_and_cosine(shapes, encoder, tmp_path):
    kw = dict(steps=6, grad_accum=2, batch_size=4, lr_schedule="cosine")
    whole = train(config(shapes, tmp_path / "a", **kw), encoder, device="cpu")
    train(config(shapes, tmp_path / "b", **{**kw, "steps": 3}), encoder, device="cpu")
    resumed = train(config(shapes, tmp_path / "b", **kw), encoder, device="cpu")
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]


def test_resume_with_another_optimizer_keeps_the_weights_and_step_and_restarts_the_moments(shapes, encoder, tmp_path):
    first = train(config(shapes, tmp_path, steps=3, optimizer="adamw"), encoder, device="cpu")
    logged = []
    trainer = Trainer(config(shapes, tmp_path, steps=5, optimizer="muon", lr=1e-3), encoder, device="cpu",
                      callbacks=TrainCallbacks(log=logged.append))
    assert trainer.step == 3
    for (name, x), y in zip(first.model.unet.state_dict().items(), trainer.ema.state_dict().values()):
        assert torch.equal(x, y), name
    assert not trainer.opt.state and [g["steps"] for g in trainer.opt.param_groups] == [0, 0]
    assert any("another optimizer's (now muon)" in line for line in logged), logged
    # the same optimizer resumes its moments, with this run's rates
    trainer.run()
    again = Trainer(config(shapes, tmp_path, steps=6, optimizer="muon", lr=5e-4), encoder, device="cpu")
    assert [g["steps"] for g in again.opt.param_groups] == [2, 2]
    assert [g["initial_lr"] for g in again.opt.param_groups] == pytest.approx([5e-4, 5e-3])


def test_resume_refuses_changed_architecture(shapes, encoder, tmp_path):
    train(config(shapes, tmp_path, steps=2), encoder, device="cpu")
    with pytest.raises(TrainingError, match="preset: 'tiny' -> 'small'"):
        Trainer(config(shapes, tmp_path, steps=4, preset="small"), encoder, device="cpu")


def test_existing_checkpoint_is_not_overwritten_without_resume(shapes, encoder, tmp_path):
    result = train(config(shapes, tmp_path, steps=2), encoder, device="cpu")
    before = result.checkpoint.read_bytes()
    with pytest.raises(TrainingError, match="resume is off"):
        train(config(shapes, tmp_path, steps=4, resume=False), encoder, device="cpu")
    assert result.checkpoint.read_bytes() == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(shapes, encoder, tmp_path, monkeypatch):
    cfg = config(shapes, tmp_path, steps=10, checkpoint_every=2)
    trainer = Trainer(cfg, encoder, device="cpu")
    real_loss = trainer.loss
    monkeypatch.setattr(trainer, "loss", lambda s, m: real_loss(s, m) * (float("nan") if s == 4 else 1.0))
    with pytest.raises(TrainingError, match="loss became nan at step 5.*Lower the learning rate"):
        trainer.run()
    assert load_checkpoint(cfg.output).training["step"] == 4
    resumed = Trainer(config(shapes, tmp_path, steps=10), encoder, device="cpu")
    assert resumed.step == 4


def test_unexpected_error_saves_progress_then_raises(shapes, encoder, tmp_path):
    def boom(p):
        if p.step == 3:
            raise RuntimeError("callback exploded")
    with pytest.raises(RuntimeError, match="exploded"):
        train(config(shapes, tmp_path), encoder, device="cpu", callbacks=TrainCallbacks(on_progress=boom))
    assert load_checkpoint(tmp_path / "out" / "m.safetensors").training["step"] == 3
    assert state_path(tmp_path / "out" / "m.safetensors").exists()


def test_unwritable_output_fails_before_training(shapes, encoder, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    calls = []
    with pytest.raises(TrainingError, match="cannot write the checkpoint"):
        train(config(shapes, tmp_path, output=str(blocker / "m.safetensors")), encoder, device="cpu",
              callbacks=TrainCallbacks(log=calls.append, on_progress=calls.append))
    assert calls == []  # not even the dataset was read


def test_snapshots_keep_last_k(shapes, encoder, tmp_path):
    train(config(shapes, tmp_path, steps=8, checkpoint_every=2, keep_last=2), encoder, device="cpu")
    names = sorted(p.name for p in (tmp_path / "out" / "snapshots" / "m").glob("m-step*.safetensors"))
    assert names == ["m-step000006.safetensors", "m-step000008.safetensors"]
    assert not list((tmp_path / "out").glob("m-step*"))  # beside the finished model, only the model
    assert (tmp_path / "out" / "m.loss.csv").read_text().count("\n") == 9


def test_validation_images_every_n_steps(shapes, encoder, tmp_path):
    seen = []
    train(config(shapes, tmp_path, steps=4, validation_every=2, validation_steps=2,
                 validation_prompts=["a small blue square in the center", "a large red circle on the left"]),
          encoder, device="cpu", callbacks=TrainCallbacks(on_validation=lambda s, im: seen.append((s, tuple(im.shape)))))
    assert seen == [(2, (2, 3, 16, 16)), (4, (2, 3, 16, 16))]


def test_captions_are_encoded_once_and_cached(shapes, encoder, tmp_path, monkeypatch):
    cache = TensorCache(tmp_path / "c")
    CaptionTable(encoder, ["a", "b", "a"], cache, "cpu")
    calls = []
    real = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda p: calls.append(p) or real(p))
    table = CaptionTable(encoder, ["a", "b"], cache, "cpu")
    assert calls == []
    text = table.lookup(["a", "b"], torch.tensor([False, True]))
    ctx, mask = text.context, text.key_mask
    torch.testing.assert_close(ctx[1], table.context[0])  # dropped caption -> the empty prompt's row
    assert mask[1].sum() == 2 and mask[0].sum() == 3


def test_vae_codec_latents_are_cached(shapes, encoder, tmp_path):
    from test_codecs import TINY_VAE

    from t2i_core.codecs import vae_from_config
    torch.manual_seed(0)
    vae = vae_from_config(TINY_VAE)
    cfg = config(shapes, tmp_path, steps=2, resolution=16)
    trainer = Trainer(cfg, encoder, vae, device="cpu")
    assert trainer.latents.shape == (72, 4, 8, 8)
    cached = sum(1 for _ in (tmp_path / "cache").rglob("*.safetensors"))
    Trainer(config(shapes, tmp_path / "again", steps=2, cache_dir=cfg.cache_dir), encoder, vae, device="cpu")
    assert sum(1 for _ in (tmp_path / "cache").rglob("*.safetensors")) == cached
    assert trainer.run().step == 2


def test_random_crop_with_a_vae_crops_latents_to_the_training_size(shapes, encoder, tmp_path):
    from test_codecs import TINY_VAE

    from t2i_core.codecs import vae_from_config
    torch.manual_seed(0)
    vae = vae_from_config(TINY_VAE)  # factor 2: 16 px images are 8x8 latents
    trainer = Trainer(config(shapes, tmp_path, steps=2, resolution=16, random_crop=True), encoder, vae, device="cpu")
    stored = trainer.latents.shape[-1]
    assert stored > 8  # latents of the larger stored squares, so each step can crop another window
    x0 = trainer.batch(0, 0)[0]
    assert x0.shape[1:] == (4, 8, 8)
    windows = [trainer.latents[i][:, y:y + 8, x:x + 8] for i in range(len(trainer.latents))
               for y in range(stored - 7) for x in range(stored - 7)]
    assert any(torch.equal(x0[0], w) for w in windows)  # a window of some image's latent, not a resized one
    assert trainer.run().step == 2


def test_min_snr_weight():
    from t2i_core.schedule import NoiseSchedule
    s = NoiseSchedule()
    t = torch.tensor([0, 500, 999])
    w = min_snr_weight(s, t, 5.0)
    assert w[0] < 1 and torch.isclose(w[2], torch.tensor(1.0))


def test_loss_curve_image():
    img = loss_curve_image([{"step": i, "loss": 1 / (i + 1), "lr": 1e-3} for i in range(50)])
    assert img.shape == (3, 256, 512) and img.min() >= 0 and img.max() <= 1 and img.std() > 0


def test_bad_config_is_rejected(shapes, tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        config(shapes, tmp_path, preset="giant")
    with pytest.raises(ValueError, match="cfg_dropout"):
        config(shapes, tmp_path, cfg_dropout=1.5)


def test_compiled_training_matches_the_plain_path(shapes, encoder, tmp_path, monkeypatch):
    """compile=True changes how the U-Net runs, not what it computes or what is saved. (The test compiles with
    the aot_eager backend, which traces forward and backward as inductor does but needs no C++ compiler.)"""
    compile_, compiled_modules = torch.compile, []

    def compile_for_test(module, **kw):
        compiled_modules.append(module)
        return compile_(module, backend="aot_eager")
    monkeypatch.setattr(torch, "compile", compile_for_test)
    # 2 steps: compiled kernels may round differently, and AdamW amplifies rounding step by step (see
    # tests/test_distributed.py), so longer runs would compare the CPU's rounding, not the compiled path
    plain = train(config(shapes, tmp_path / "a", steps=2), encoder, device="cpu")
    assert compiled_modules == []
    compiled = train(config(shapes, tmp_path / "b", steps=2, compile=True), encoder, device="cpu")
    assert len(compiled_modules) == 1
    torch.testing.assert_close([h["loss"] for h in compiled.history], [h["loss"] for h in plain.history],
                               rtol=1e-4, atol=1e-6)
    saved = load_checkpoint(compiled.checkpoint)  # keys as the plain model's: no "_orig_mod." prefix
    for (name, x), (_, y) in zip(plain.model.unet.state_dict().items(), saved.unet.state_dict().items()):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5, msg=name)
