"""Training in the background (the Train node's run_in_background) inside a real ComfyUI: the prompt returns at
once, a generation prompt queued meanwhile finishes while the run trains, Stop (the panel's route) leaves a
resumable checkpoint that a later Train continues, and the Training Status node reports the run."""
from __future__ import annotations

import time

from integration.test_nodes import generate_prompt, model_dir, narrow_checkpoint, train_prompt, unique  # noqa: F401

from t2i_core import load_checkpoint


def run_named(comfy, checkpoint: str) -> dict:
    [run] = [r for r in comfy.get_json("/t2i_mini/runs")["runs"] if r["checkpoint"] == checkpoint][:1]
    return run


def until(condition, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def status_prompt(run_id: str, stop: bool = False) -> dict:
    return {"1": {"class_type": "T2IMiniTrainingStatus", "inputs": {"run_id": run_id, "stop": stop}}}


def background_prompt(name: str, steps: int) -> dict:
    prompt = train_prompt(name, steps=steps)
    prompt["4"]["inputs"].update(preset="micro", run_in_background=True)
    prompt["8"] = {"class_type": "T2IMiniTrainingStatus", "inputs": {"run_id": ["4", 4], "stop": False}}
    return prompt


def test_a_background_run_leaves_the_queue_free_and_stop_leaves_a_resumable_checkpoint(comfy, narrow_checkpoint):  # noqa: F811
    name = unique("background")
    try:
        background_run_stops_resumable(comfy, name, narrow_checkpoint)
    finally:  # a failed check leaves no run training beside the next tests
        for run in comfy.get_json("/t2i_mini/runs")["runs"]:
            if run["checkpoint"].startswith(name) and run["status"] == "running":
                comfy.request("POST", f"/t2i_mini/runs/{run['id']}/stop")


def background_run_stops_resumable(comfy, name: str, narrow_checkpoint: str):  # noqa: F811
    checkpoint = name + ".safetensors"
    started = time.monotonic()
    entry = comfy.run(background_prompt(name, steps=100_000), timeout=120)
    returned_s = time.monotonic() - started
    [text] = entry["outputs"]["8"]["text"]
    assert text.startswith(f"{checkpoint}: running"), text
    run = run_named(comfy, checkpoint)
    assert run["status"] == "running" and run["background"] and run["total"] == 100_000
    until(lambda: run_named(comfy, checkpoint)["step"] >= 3, "the background run's first steps")

    # the same checkpoint cannot train twice at once: refused by this server's run store or the run's lock
    second = comfy.wait(comfy.queue(background_prompt(name, steps=100_000)), timeout=120, check=False)
    assert second["status"]["status_str"] == "error"
    assert f"{checkpoint} is being trained by" in str(second["status"]["messages"]), second["status"]

    # a prompt queued during the run runs as usual, and finishes while the run is still training
    generated = comfy.run(generate_prompt(narrow_checkpoint, prefix=f"it/{name}_meanwhile"), timeout=120)
    assert comfy.images(generated) and run_named(comfy, checkpoint)["status"] == "running"

    status, body = comfy.request("POST", f"/t2i_mini/runs/{run['id']}/stop")
    assert status == 200 and b'"stopping"' in body, body
    stopped = until(lambda: (r := run_named(comfy, checkpoint))["status"] != "stopping" and r, "the stop", 120)
    assert stopped["status"] == "stopped" and stopped["error"] is None, stopped
    model = load_checkpoint(model_dir(comfy) / checkpoint)
    step = model.training["step"]
    assert step >= 3 and step == stopped["step"] and (model_dir(comfy) / f"{name}.t2istate").is_file()
    assert not (model_dir(comfy) / f"{name}.lock").exists()
    [text] = comfy.run(status_prompt(run["id"]))["outputs"]["1"]["text"]
    assert text.startswith(f"{checkpoint}: stopped, step {step} of 100000"), text

    # a Train in the queue resumes the stopped run and continues from its step
    resumed = train_prompt(name, steps=step + 3)
    resumed["4"]["inputs"]["preset"] = "micro"
    comfy.run(resumed, timeout=180)
    assert load_checkpoint(model_dir(comfy) / checkpoint).training["step"] == step + 3
    print(f"\nbackground Train prompt returned in {returned_s:.1f} s; stopped at step {step}")


def test_the_stop_route_and_the_status_node_refuse_what_is_no_run(comfy):
    for bad, code in (("not-a-run", 400), ("0" * 32, 404)):
        status, body = comfy.request("POST", f"/t2i_mini/runs/{bad}/stop")
        assert status == code, (bad, status, body[:200])
    entry = comfy.wait(comfy.queue(status_prompt("0" * 32)), check=False)
    assert entry["status"]["status_str"] == "error"
    assert "no training run" in str(entry["status"]["messages"])


def test_stop_ends_a_queued_run_with_its_model_saved_where_cancel_would_interrupt(comfy):
    name = unique("stopped_in_queue")
    prompt = train_prompt(name, steps=100_000)
    prompt["4"]["inputs"]["preset"] = "micro"
    prompt_id = comfy.queue(prompt)
    run = until(lambda: [r for r in comfy.get_json("/t2i_mini/runs")["runs"]
                         if r["checkpoint"] == name + ".safetensors" and r["step"] >= 3][:1], "the run's first steps")[0]
    assert not run["background"]
    status, _ = comfy.request("POST", f"/t2i_mini/runs/{run['id']}/stop")
    assert status == 200
    entry = comfy.wait(prompt_id, timeout=120)  # success: the model and its loss curve are handed on
    assert comfy.images(entry, "5")  # the loss curve SaveImage ran after the stopped Train
    step = load_checkpoint(model_dir(comfy) / f"{name}.safetensors").training["step"]
    assert run_named(comfy, name + ".safetensors")["status"] == "stopped" and 3 <= step < 100_000
