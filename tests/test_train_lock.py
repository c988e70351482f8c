"""t2i_core.training.state.TrainingLock: one run per checkpoint name at a time; a dead holder's lock is taken over."""
import json
import os
import subprocess
import sys
import time

import pytest
from t2i_test_utils import TEST_TEXT_CONFIG

from t2i_core import TextEncoderSpec, build_text_encoder
from t2i_core.data import make_shapes_dataset
from t2i_core.training.config import TrainConfig
from t2i_core.training.state import TrainingError, TrainingLock, lock_path, training_files
from t2i_core.training.trainer import Trainer, train


def hold_lock_in_another_process(output):
    """A live process that holds `output`'s lock (as a second ComfyUI or a command-line run would)."""
    code = ("import sys, time; from t2i_core.training.state import TrainingLock; "
            f"TrainingLock({str(output)!r}).acquire(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    output = tmp_path / "m.safetensors"
    with TrainingLock(output):
        info = json.loads(lock_path(output).read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(TrainingError, match=rf"m.safetensors is being trained by another run \(process "
                                                rf"{os.getpid()} .*: this process.*delete .*m.lock"):
            TrainingLock(output).acquire()
    assert not lock_path(output).exists()
    TrainingLock(output).acquire().release()


def test_a_dead_holders_lock_is_stale(tmp_path):
    output = tmp_path / "m.safetensors"
    proc = hold_lock_in_another_process(output)
    with pytest.raises(TrainingError, match=f"process {proc.pid} "):
        TrainingLock(output).acquire()
    proc.kill()  # as SIGKILL of a training server: its lock stays behind
    proc.wait()
    assert lock_path(output).exists()
    lock = TrainingLock(output).acquire()
    assert json.loads(lock_path(output).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_and_an_old_empty_lock_are_stale(tmp_path):
    output = tmp_path / "m.safetensors"
    import socket
    lock_path(output).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": "0"}))
    TrainingLock(output).acquire().release()  # our pid, but another process's start time: not us
    lock_path(output).write_text("")
    with pytest.raises(TrainingError, match="a process that is starting"):
        TrainingLock(output).acquire()
    old = time.time() - 2 * TrainingLock.STALE_EMPTY_S
    os.utime(lock_path(output), (old, old))
    TrainingLock(output).acquire().release()


def test_training_refuses_a_held_checkpoint_and_writes_nothing(tmp_path):
    encoder = build_text_encoder(TextEncoderSpec(text_config=TEST_TEXT_CONFIG, seed=0))
    data = make_shapes_dataset(tmp_path / "shapes", count=8, resolution=16, seed=0)
    cfg = TrainConfig(dataset=str(data), output=str(tmp_path / "out" / "m.safetensors"), steps=2, batch_size=4,
                      checkpoint_every=0, precision="fp32", cache_dir=str(tmp_path / "cache"))
    (tmp_path / "out").mkdir()
    proc = hold_lock_in_another_process(cfg.output)
    try:
        with pytest.raises(TrainingError, match=f"process {proc.pid} "):
            train(cfg, encoder, device="cpu")
        assert training_files(cfg.output) == []
    finally:
        proc.kill()
        proc.wait()
    result = train(cfg, encoder, device="cpu")  # the holder is gone: its lock is taken over
    assert result.step == 2 and not lock_path(cfg.output).exists()
    # a run that fails while starting lets go of the lock too
    with pytest.raises(TrainingError, match="preset"):
        Trainer(TrainConfig(**{**cfg.__dict__, "preset": "small"}), encoder, device="cpu")
    assert not lock_path(cfg.output).exists()
