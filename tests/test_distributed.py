"""Data-parallel training (t2i_core.distributed, t2i_core.training.launch): 2 gloo ranks on the CPU against one process.

The ranks are real processes started by torchrun (`python -m torch.distributed.run ... -m t2i_core train`),
as a user starts them. Training is the tiny preset at 16 px on 48 shapes images, a few steps.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from t2i_core import PixelCodec, load_checkpoint, tiny_text_encoder
from t2i_core.data import make_shapes_dataset
from t2i_core.distributed import Distributed
from t2i_core.training.config import TrainCallbacks, TrainConfig
from t2i_core.training.launch import config_args, launch, result_of
from t2i_core.training.state import TrainingError, load_train_state, state_path
from t2i_core.training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parent.parent
STEPS = 8  # the 2-rank run: enough to show the loss falling and the ranks' EMA weights staying identical
# Where 2 ranks and 1 process must agree. DDP averages two half-batch gradients where one process takes the mean
# over the whole batch, so sums run in another order: float32 rounding. So what is compared starts from identical
# weights, or nearly: the loss of a step taken from the same weights (step 1, and the first step after a resume,
# whose weights are loaded bit for bit), and the weights after EARLY_STEPS steps. Step 1 alone would not do: the
# zero-initialised output conv passes no gradient back, so only that conv moves, by lr * sign(g), whatever the batch.
# Later steps are not compared across world sizes: AdamW amplifies the rounding step by step, by an amount that
# depends on the CPU's kernels and thread count. The tolerances sit between the measured rounding and what a wrong
# shard or un-averaged gradients give (docs/RELIABILITY.md, "Data-parallel equality").
EARLY_STEPS = 2
SAME_WEIGHTS_LOSS_TOL = dict(rtol=0, atol=5e-6)
EARLY_UPDATE_TOL = 1e-2  # |update_a - update_b| / |update_b| after EARLY_STEPS steps


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", count=48, resolution=16, seed=0)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def encoder():
    return tiny_text_encoder(0)  # what torchrun() names: --text-encoder=tiny, seed 0


def config(shapes, work, name, **kw) -> TrainConfig:
    base = dict(dataset=str(shapes), output=str(work / name / "m.safetensors"), resolution=16, steps=STEPS,
                batch_size=32, lr=2e-3, warmup_steps=2, checkpoint_every=0, precision="fp32",
                cache_dir=str(work / "cache"))
    return TrainConfig(**{**base, **kw})


def cpu_env() -> dict:
    # gloo on the CPU even where a GPU is visible (the CI case); one thread a rank, as torchrun sets by default
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def torchrun(cfg: TrainConfig, processes: int = 2) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "t2i_core", "train", "--text-encoder=tiny", *config_args(cfg)]
    done = subprocess.run(command, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def losses(cfg: TrainConfig) -> list[float]:
    return [h["loss"] for h in load_train_state(state_path(cfg.output)).history]


def update_drift(a: dict, b: dict, initial: dict) -> float:
    """|update_a - update_b| / |update_b|, the updates taken from the initial weights."""
    da = torch.cat([(a[k] - initial[k]).flatten() for k in initial])
    db = torch.cat([(b[k] - initial[k]).flatten() for k in initial])
    return float((da - db).norm() / db.norm())


@pytest.fixture(scope="module")
def initial(shapes, work, encoder):
    """The weights every run starts from (a function of the seed)."""
    return Trainer(config(shapes, work, "initial"), encoder, device="cpu").unet.state_dict()


@pytest.fixture(scope="module")
def two_ranks(shapes, work):
    """2 ranks x 16 images = a global batch of 32, STEPS steps, through the CLI."""
    cfg = config(shapes, work, "two_ranks")
    return cfg, torchrun(cfg)


@pytest.fixture(scope="module")
def early_two_ranks(shapes, work):
    """The same run's first EARLY_STEPS steps on 2 ranks, its state read before anything resumes it."""
    cfg = config(shapes, work, "early_two_ranks", steps=EARLY_STEPS)
    torchrun(cfg)
    return cfg, load_train_state(state_path(cfg.output))


def test_two_ranks_equal_one_process(two_ranks, early_two_ranks, shapes, work, encoder, initial):
    cfg, out = two_ranks
    assert "training with 2 processes, 16 of the batch of 32 each" in out
    assert len(losses(cfg)) == STEPS
    assert losses(cfg)[-1] < 0.8 * losses(cfg)[0]  # it trained
    _, ranks = early_two_ranks
    assert ranks.history == load_train_state(state_path(cfg.output)).history[:EARLY_STEPS]  # 2 ranks repeat themselves
    one = train(config(shapes, work, "early_one_process", steps=EARLY_STEPS), encoder, device="cpu")
    process = load_train_state(state_path(one.checkpoint))
    torch.testing.assert_close(ranks.history[0]["loss"], process.history[0]["loss"], **SAME_WEIGHTS_LOSS_TOL)
    for part in ("unet", "ema"):
        drift = update_drift(getattr(ranks, part), getattr(process, part), initial)
        assert drift < EARLY_UPDATE_TOL, f"{part}: the updates of {EARLY_STEPS} steps differ by {drift:.2e} of their size"


def test_ema_bit_identical_across_ranks(two_ranks):
    # the trainer all-gathers a sha256 of every rank's EMA weights at the end and fails if they differ
    _, out = two_ranks
    assert "EMA weights bit-identical on all 2 ranks" in out


def test_two_ranks_interrupted_resume_with_one(shapes, work, encoder, two_ranks, early_two_ranks):
    whole, _ = two_ranks
    interrupted, _ = early_two_ranks
    cfg = config(shapes, work, "resumed", steps=EARLY_STEPS + 1)
    shutil.copytree(Path(interrupted.output).parent, Path(cfg.output).parent)  # the 2-rank run stopped early
    resumed = train(cfg, encoder, device="cpu")  # 1 process takes it on
    assert resumed.step == EARLY_STEPS + 1 and not resumed.stopped
    # the steps before the stop are the 2-rank computation, bit for bit; the next starts from its weights, loaded
    # bit for bit, on the same batch and noise, so only the reduction order differs from the 2-rank run's
    assert losses(cfg)[:EARLY_STEPS] == losses(whole)[:EARLY_STEPS]
    torch.testing.assert_close(losses(cfg)[EARLY_STEPS], losses(whole)[EARLY_STEPS], **SAME_WEIGHTS_LOSS_TOL)
    later = train(config(shapes, work, "resumed"), encoder, device="cpu")
    assert later.step == STEPS and len(later.history) == STEPS and later.history[-1]["loss"] < losses(cfg)[0]


def test_batch_must_split_over_ranks(shapes, work, encoder):
    with pytest.raises(TrainingError, match="batch_size 30 does not split over 4 processes.*multiple of 4"):
        Trainer(config(shapes, work, "odd", batch_size=30), encoder, device="cpu", dist=Distributed(0, 4))


def test_rows_partition_the_batch():
    taken = [i for r in range(4) for i in range(32)[Distributed(r, 4).rows(32)]]
    assert taken == list(range(32))


def test_launch_streams_progress_and_cancel_saves(shapes, work, encoder):
    cfg = config(shapes, work, "launched", steps=200, batch_size=8, validation_prompts=["a red circle"],
                 validation_every=2, validation_steps=2)
    seen, previews, lines = [], [], []
    callbacks = TrainCallbacks(on_progress=lambda p: seen.append(p.step), should_stop=lambda: len(seen) >= 3,
                               on_validation=lambda step, images: previews.append(images.shape), log=lines.append)
    launched = launch(cfg, encoder, PixelCodec(), 2, callbacks, devices=[])
    assert launched.stopped and not launched.out_of_time
    assert 3 <= launched.step < 200 and seen[:3] == [1, 2, 3]
    assert previews and previews[0] == (1, 3, 16, 16)
    assert any(line.startswith("rank 1: cpu") for line in lines)
    result = result_of(launched, encoder, PixelCodec())
    assert result.step == launched.step == load_checkpoint(cfg.output).training["step"]
    resumed = train(config(shapes, work, "launched", steps=launched.step + 2, batch_size=8), encoder, device="cpu")
    assert resumed.step == launched.step + 2 and len(resumed.history) == launched.step + 2


def test_killed_rank_is_a_clear_error_and_the_checkpoint_survives(shapes, work, encoder):
    cfg = config(shapes, work, "killed", steps=500, batch_size=8, checkpoint_every=3)
    killed = []

    def kill_rank_1(p):
        if p.step >= 4 and not killed:  # the step-3 checkpoint is on disk
            for proc in psutil.Process().children(recursive=True):
                try:
                    if proc.environ().get("RANK") == "1" and "t2i_core" in proc.cmdline():
                        proc.kill()
                        killed.append(proc.pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass

    with pytest.raises(TrainingError) as error:
        launch(cfg, encoder, PixelCodec(), 2, TrainCallbacks(on_progress=kill_rank_1), devices=[])
    assert killed
    message = str(error.value)
    assert "training process rank 1 failed (killed by SIGKILL)" in message
    assert "last checkpoint" in message and "intact" in message and "--- rank 1" in message
    # rank 0 saved at least the step-3 checkpoint; when the dead rank breaks its collective, rank 0 also saves
    # the step it had finished (progress is kept), so the last save may be past a multiple of 3
    state = load_train_state(state_path(cfg.output))
    assert state.step >= 3
    assert load_checkpoint(cfg.output).training["step"] == state.step


def test_config_round_trips_through_the_command_line(shapes, work):
    import argparse

    from t2i_core.training.cli import train_parser
    cfg = config(shapes, work, "cli", validation_prompts=["a red circle", "two words"], random_flip=True,
                 max_minutes=1.5, lr_schedule="cosine")
    parser = argparse.ArgumentParser()
    args = vars(train_parser(parser.add_subparsers(dest="command")).parse_args(config_args(cfg)))
    args = {k: v for k, v in args.items() if k in TrainConfig.__dataclass_fields__}
    assert TrainConfig(**args) == cfg


def test_launch_reports_rank_0s_error_as_it_is(shapes, work, encoder):
    cfg = config(shapes, work, "refused", steps=2, batch_size=8, resume=False)
    Path(cfg.output).parent.mkdir(parents=True)
    Path(cfg.output).write_bytes(b"someone's model")
    with pytest.raises(TrainingError, match="already exists and resume is off"):
        launch(cfg, encoder, PixelCodec(), 2, devices=[])
    assert Path(cfg.output).read_bytes() == b"someone's model"


def test_parts_file_hands_the_ranks_the_same_encoder_and_vae(work, encoder):
    from t2i_core.codecs import vae_from_config
    from t2i_core.parts_file import load_parts, save_parts
    torch.manual_seed(0)
    vae = vae_from_config(dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                               layers_per_block=1, norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                               up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.5))
    text_encoder, codec = load_parts(save_parts(work / "parts.safetensors", encoder, vae))
    assert text_encoder.identity == encoder.identity and codec.identity == vae.identity
    images = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(codec.encode(images), vae.encode(images))
    torch.testing.assert_close(text_encoder.encode(["a red circle"]).conditioning.context,
                               encoder.encode(["a red circle"]).conditioning.context)
