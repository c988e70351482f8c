"""TrainConfig.max_minutes: a training-time budget that stops cleanly and saves, like a cancel."""
import pytest
import torch
from t2i_test_utils import TEST_TEXT_CONFIG

from t2i_core import TextEncoderSpec, build_text_encoder, load_checkpoint
from t2i_core.data import make_shapes_dataset
from t2i_core.training import cli
from t2i_core.training import trainer as train_module
from t2i_core.training.config import TrainCallbacks, TrainConfig
from t2i_core.training.trainer import train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", count=72, resolution=16, seed=0)


@pytest.fixture(scope="module")
def encoder():
    return build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=0))


class FakeClock:
    """time.perf_counter that advances `tick` seconds per call, so budgets stop at a known step."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def config(shapes, tmp_path, **kw):
    base = dict(dataset=str(shapes), output=str(tmp_path / "out" / "m.safetensors"), resolution=16, steps=1000,
                batch_size=4, lr=2e-3, warmup_steps=2, checkpoint_every=0, precision="fp32",
                cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**{**base, **kw})


def test_budget_stops_saves_and_reports(shapes, encoder, tmp_path, monkeypatch):
    # one perf_counter call per step (the budget check) plus one at the start: 10 s a step
    monkeypatch.setattr(train_module, "time", FakeClock(10.0))
    result = train(config(shapes, tmp_path, max_minutes=1.0), encoder, device="cpu")
    assert result.stopped and result.out_of_time
    assert 1 <= result.step < 1000
    assert len(result.history) == result.step
    saved = load_checkpoint(result.checkpoint)
    assert saved.training["step"] == result.step
    assert 55 <= saved.training["train_seconds"] <= 75


def test_a_cosine_schedule_ends_its_decay_at_the_time_budget_when_that_comes_first(shapes, encoder, tmp_path,
                                                                                    monkeypatch):
    import math
    # 10 s a step against a 60 s budget: five steps, the budget 1/6 .. 5/6 spent at their starts
    monkeypatch.setattr(train_module, "time", FakeClock(10.0))
    result = train(config(shapes, tmp_path, max_minutes=1.0, lr_schedule="cosine"), encoder, device="cpu")
    assert result.out_of_time and result.step == 5
    cosine = [0.5 * (1 + math.cos(math.pi * spent / 6)) for spent in (3, 4, 5)]  # by time: steps alone say ~1
    expected = [2e-3 * f for f in (0.5, 1.0, *cosine)]  # two warm-up steps first
    assert [h["lr"] for h in result.history] == pytest.approx(expected)
    # without a budget the same steps follow the step count alone
    monkeypatch.setattr(train_module, "time", FakeClock(10.0))
    unbudgeted = train(config(shapes, tmp_path / "b", steps=5, lr_schedule="cosine"), encoder, device="cpu")
    assert [h["lr"] for h in unbudgeted.history] == pytest.approx(
        [2e-3 * f for f in (0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 3)), 0.5 * (1 + math.cos(2 * math.pi / 3)))])


def test_no_budget_and_cancel_are_not_out_of_time(shapes, encoder, tmp_path):
    whole = train(config(shapes, tmp_path / "a", steps=3), encoder, device="cpu")
    assert not whole.stopped and not whole.out_of_time and whole.step == 3
    cancelled = train(config(shapes, tmp_path / "b", steps=3), encoder, device="cpu",
                      callbacks=TrainCallbacks(should_stop=lambda: True))
    assert cancelled.stopped and not cancelled.out_of_time and cancelled.step == 0


def test_budget_stop_resumes_exactly(shapes, encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "time", FakeClock(10.0))
    first = train(config(shapes, tmp_path / "b", steps=20, max_minutes=0.5), encoder, device="cpu")
    assert first.out_of_time and 1 <= first.step < 20
    # the budget counts the checkpoint's total training time: the same budget again trains no further
    again = train(config(shapes, tmp_path / "b", steps=20, max_minutes=0.5), encoder, device="cpu")
    assert again.out_of_time and again.step == first.step
    monkeypatch.undo()
    resumed = train(config(shapes, tmp_path / "b", steps=first.step + 3), encoder, device="cpu")
    whole = train(config(shapes, tmp_path / "a", steps=first.step + 3), encoder, device="cpu")
    assert resumed.step == whole.step and not resumed.stopped
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for (name, x), (_, y) in zip(whole.model.unet.state_dict().items(), resumed.model.unet.state_dict().items()):
        assert torch.equal(x, y), name


def test_budget_validation_runs_at_the_end(shapes, encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "time", FakeClock(10.0))
    seen = []
    result = train(config(shapes, tmp_path, max_minutes=0.5, validation_prompts=["a large red circle on the left"],
                          validation_steps=2),
                   encoder, device="cpu", callbacks=TrainCallbacks(on_validation=lambda step, images: seen.append(step)))
    assert result.out_of_time and seen == [result.step]


def test_budget_must_not_be_negative(shapes, tmp_path):
    with pytest.raises(ValueError, match="max_minutes"):
        config(shapes, tmp_path, max_minutes=-1)


def test_cli_accepts_max_minutes(shapes, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "train", lambda cfg, encoder, **kw: seen.setdefault("cfg", cfg) and (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        cli.main(["train", "--dataset", str(shapes), "--output", str(tmp_path / "m.safetensors"), "--max-minutes", "2.5"])
    assert seen["cfg"].max_minutes == 2.5
