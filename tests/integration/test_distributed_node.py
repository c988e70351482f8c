"""The Train node with processes=2 in a real ComfyUI: 2 gloo ranks in a torchrun subprocess group on the CPU.

It trains and streams progress and previews, Cancel leaves a checkpoint that resumes, and a rank killed mid-run
is a clear error with the checkpoint intact and the server still serving. A few seconds of training each.
"""
from __future__ import annotations

import asyncio
import time

import psutil
from integration.test_nodes import assert_still_serving, model_dir, train_prompt, unique, watch
from safetensors import safe_open

from scripts.comfy_harness import execution_error


def two_processes(prompt: dict) -> dict:
    prompt["4"]["inputs"].update(processes=2, devices="")
    return prompt


def saved_step(comfy, name: str) -> int:
    with safe_open(str(model_dir(comfy) / f"{name}.t2istate"), framework="pt") as f:
        return int(f.metadata()["step"])


def wait_for_state(comfy, name: str, timeout: float = 240):
    state = model_dir(comfy) / f"{name}.t2istate"
    deadline = time.monotonic() + timeout
    while not state.exists():  # the first periodic save
        assert time.monotonic() < deadline, comfy.log_tail()
        time.sleep(0.2)


def rank_processes(rank: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if "t2i_core" in proc.cmdline() and proc.environ().get("RANK") == str(rank):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_two_processes_train_and_stream_progress(comfy):
    name = unique("ddp")
    prompt = two_processes(train_prompt(name, steps=6))
    prompt["4"]["inputs"]["validation_every"] = 3
    progress, previews, status = asyncio.run(watch(comfy, prompt, timeout=300))
    assert status == "execution_success", comfy.log_tail()
    steps = [(p["value"], p["max"]) for p in progress if p["node"] == "4"]
    assert steps[-1] == (6, 6) and [v for v, _ in steps] == sorted(v for v, _ in steps), steps
    assert previews  # validation images from rank 0
    assert saved_step(comfy, name) == 6
    log = comfy.log()
    assert "training in 2 processes on the CPU (gloo), 4 images each of the batch of 8" in log
    assert "rank 1: cpu" in log


def test_cancel_saves_a_checkpoint_that_resumes(comfy):
    name = unique("ddp_cancel")
    prompt_id = comfy.queue(two_processes(train_prompt(name, steps=100_000, checkpoint_every=5,
                                                       validation_prompts="")))
    wait_for_state(comfy, name)
    comfy.interrupt()
    entry = comfy.wait(prompt_id, timeout=120, check=False)
    assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"]), entry["status"]
    stopped_at = saved_step(comfy, name)
    assert 5 <= stopped_at < 100_000
    assert "cancelled at step" in comfy.log()
    assert not rank_processes(0) and not rank_processes(1)  # the group has ended

    resumed = comfy.run(train_prompt(name, steps=stopped_at + 2, validation_prompts=""), timeout=120)
    assert comfy.images(resumed, "5")
    assert saved_step(comfy, name) == stopped_at + 2
    assert f"resumed {name}.safetensors at step {stopped_at}" in comfy.log()


def test_killed_rank_is_a_clear_error_and_the_server_serves(comfy):
    name = unique("ddp_killed")
    prompt_id = comfy.queue(two_processes(train_prompt(name, steps=100_000, checkpoint_every=3,
                                                       validation_prompts="")))
    wait_for_state(comfy, name)
    victims = rank_processes(1)
    assert len(victims) == 1, victims
    victims[0].kill()
    entry = comfy.wait(prompt_id, timeout=120, check=False)
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    assert "training process rank 1 failed (killed by SIGKILL)" in error, error
    assert "is intact" in error and "--- rank 1" in error, error
    step = saved_step(comfy, name)
    assert step >= 3 and step % 3 == 0
    assert (model_dir(comfy) / f"{name}.safetensors").is_file()
    assert_still_serving(comfy)
