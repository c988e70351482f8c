"""Fault injection through a real ComfyUI's /prompt, as a hostile or careless shared workflow (and a bad day of
the server) would do it. One server runs every case that keeps it alive, with an operator's dataset root in its
extra_model_paths.yaml and umask 002; the last two cases SIGKILL it mid-training (in the queue, then in the
background) and a new server on the same folders resumes. docs/RELIABILITY.md lists the cases with what each showed.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m pytest tests/integration/test_faults.py -v -s
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from integration.test_nodes import (
    PROMPT,
    assert_still_serving,
    generate_prompt,
    rejection,
    run_failing,
    train_prompt,
)
from t2i_test_utils import require_comfyui

from scripts.comfy_harness import ComfyServer, execution_error

UMASK = 0o002  # not ComfyUI's usual 022, so a mode that merely matched a default would show


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def start_server(base: Path, yaml: Path) -> ComfyServer:
    previous = os.umask(UMASK)  # the server inherits it
    try:
        return ComfyServer(base_dir=base, extra_args=("--extra-model-paths-config", str(yaml))).start()
    finally:
        os.umask(previous)


class Faults:
    """The shared server and its folders; `server` is replaced by the restart case."""

    def __init__(self, base: Path, operator_root: Path, yaml: Path):
        self.base, self.operator_root, self.yaml = base, operator_root, yaml
        self.server = start_server(base, yaml)
        print(f"\nComfyUI {self.server.url} up in {self.server.startup_seconds:.1f} s, log: {self.server.log_path}")

    @property
    def models(self) -> Path:
        return self.base / "models" / "t2i_mini"


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    require_comfyui()
    base = tmp_path_factory.mktemp("faults-base")
    operator_root = tmp_path_factory.mktemp("operator-datasets")
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(f"operator:\n    base_path: {operator_root}\n    t2i_mini_datasets: .\n")
    env = Faults(base, operator_root, yaml)
    yield env
    env.server.stop()


def train_on_path(name: str, dataset_path: str, **kw) -> dict:
    """Train from Dataset with dataset_path from a core String node (dataset_path takes a link only)."""
    prompt = train_prompt(name, make_dataset=False, validation_prompts="", **kw)
    prompt["1"] = {"class_type": "PrimitiveString", "inputs": {"value": dataset_path}}
    prompt["4"]["inputs"]["dataset_path"] = ["1", 0]
    return prompt


def step_of(state: Path) -> int:
    from safetensors import safe_open
    with safe_open(str(state), framework="pt") as f:
        return int(f.metadata()["step"])


# ---- 1. datasets only from input/ and the operator's folders ----

SECRETS = ("passwd", "shadow", "hostname", "PackageKit")


@pytest.mark.parametrize("path", ["/etc", "../../etc", "link_out"])
def test_dataset_outside_input_is_refused_without_listing_it(faults, path):
    server = faults.server
    link = server.input_dir / "link_out"
    if not link.exists():
        server.input_dir.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/etc", target_is_directory=True)
    error = run_failing(server, train_on_path(unique("escape"), path))
    assert f"dataset_path {path!r}" in error and "input folder" in error and "T2I_MINI_DATASET_ROOTS" in error, error
    assert not any(secret in error for secret in SECRETS), error
    assert not list(faults.models.glob("escape_*")), "nothing may be written for a refused dataset"


def test_an_operator_root_from_extra_model_paths_is_allowed(faults):
    from t2i_core.data import make_shapes_dataset
    folder = make_shapes_dataset(faults.operator_root / "shapes", count=8, resolution=16, seed=0)
    name = unique("operator")
    faults.server.run(train_on_path(name, str(folder), steps=2), timeout=180)
    assert (faults.models / f"{name}.safetensors").is_file()
    options = faults.server.object_info("T2IMiniTrain")["input"]["required"]["dataset"][1]["options"]
    assert str(folder.resolve()) in options


def test_an_empty_folder_message_gives_counts_not_names(faults):
    folder = faults.server.input_dir / unique("no_images")
    folder.mkdir(parents=True)
    (folder / "secret_notes.txt").write_text("x")
    error = run_failing(faults.server, train_prompt(unique("empty"), dataset_folder=folder.name, make_dataset=False))
    assert "none among its 1 file and 0 subfolders" in error and "secret_notes" not in error, error


# ---- 3. numbers: NaN and inf are refused at /prompt, naming the input ----

@pytest.mark.parametrize("value", [float("nan"), "nan", float("inf")])
def test_non_finite_cfg_is_refused_by_prompt(faults, trained_here, value):
    errors = rejection(faults.server, generate_prompt(trained_here, cfg=value))
    assert "cfg is" in errors and "not a finite number" in errors and "from 0.0 to 30.0" in errors, errors


def test_non_finite_learning_rate_is_refused_by_prompt(faults):
    prompt = train_prompt(unique("nan_lr"))
    prompt["4"]["inputs"]["learning_rate"] = float("nan")
    errors = rejection(faults.server, prompt)
    assert "learning_rate is nan, not a finite number" in errors, errors
    assert_still_serving(faults.server)


# ---- 4 and concurrency: one checkpoint name, files with the umask's permissions ----

@pytest.fixture(scope="module")
def trained_here(faults):
    """Two training prompts on one checkpoint name queued back to back (4 steps, then resumed to 6)."""
    name = unique("twice")
    first = faults.server.queue(train_prompt(name, steps=4, checkpoint_every=2, validation_prompts=""))
    second = faults.server.queue(train_prompt(name, steps=6, checkpoint_every=2, validation_prompts=""))
    faults.server.wait(first, timeout=240)
    faults.server.wait(second, timeout=240)
    return f"{name}.safetensors"


def test_two_prompts_on_one_name_queued_back_to_back(faults, trained_here):
    from t2i_core import load_checkpoint
    from t2i_core.training.state import load_train_state
    stem = trained_here.removesuffix(".safetensors")
    state = load_train_state(faults.models / f"{stem}.t2istate")
    assert state.step == 6 and [h["step"] for h in state.history] == list(range(1, 7))
    assert load_checkpoint(faults.models / trained_here).training["step"] == 6
    assert len((faults.models / f"{stem}.loss.csv").read_text().splitlines()) == 1 + 6
    assert f"resumed {trained_here} at step 4" in faults.server.log()
    assert not (faults.models / f"{stem}.lock").exists()


def test_a_checkpoint_held_by_another_process_is_refused_then_freed(faults, trained_here):
    output = faults.models / trained_here
    stem = trained_here.removesuffix(".safetensors")
    before = (faults.models / f"{stem}.t2istate").read_bytes()
    code = ("import time; from t2i_core.training.state import TrainingLock; "
            f"TrainingLock({str(output)!r}).acquire(); print('held', flush=True); time.sleep(300)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        assert holder.stdout.readline().strip() == "held"
        error = run_failing(faults.server, train_prompt(stem, steps=8, validation_prompts=""))
        assert f"being trained by another run (process {holder.pid} " in error, error
        assert (faults.models / f"{stem}.t2istate").read_bytes() == before  # nothing written
    finally:
        holder.kill()
        holder.wait()
    faults.server.run(train_prompt(stem, steps=7, validation_prompts=""), timeout=180)  # the stale lock is taken over
    assert step_of(faults.models / f"{stem}.t2istate") == 7


def test_saved_files_get_the_umask_and_snapshots_stay_out_of_the_dropdown(faults, trained_here):
    stem = trained_here.removesuffix(".safetensors")
    snapshots = sorted((faults.models / "snapshots" / stem).glob("*.safetensors"))
    assert snapshots, "checkpoint_every=2 keeps step snapshots"
    for path in [faults.models / f"{stem}{s}" for s in (".safetensors", ".t2istate", ".loss.csv")] + snapshots:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~UMASK, (path, oct(path.stat().st_mode))
    options = faults.server.object_info("T2IMiniCheckpointLoader")["input"]["required"]["ckpt_name"][1]["options"]
    assert trained_here in options and not any("snapshots" in o for o in options), options


# ---- 2. sizes: the estimate before sampling, and Cancel inside the U-Net forward ----

def test_a_size_far_beyond_training_is_refused_with_its_cost(faults, trained_here):
    t0 = time.monotonic()
    error = run_failing(faults.server, generate_prompt(trained_here, width=1024, height=1024, batch=2))
    assert "262,144 positions" in error and "4,096x the 64 of the 16 px it was trained at" in error, error
    assert "allow_large_sizes" in error
    print(f"\nrefused 1024x1024 batch 2 in {time.monotonic() - t0:.1f} s: {error.splitlines()[0][:200]}")
    # the core MODEL (KSampler) path refuses it too
    prompt = {
        "1": {"class_type": "T2IMiniCheckpointLoader", "inputs": {"ckpt_name": trained_here}},
        "2": {"class_type": "T2IMiniTextEncode", "inputs": {"text_encoder": ["1", 1], "text": PROMPT,
                                                           "one_prompt_per_line": False}},
        "3": {"class_type": "T2IMiniEmptyConditioning", "inputs": {"text_encoder": ["1", 1]}},
        "4": {"class_type": "T2IMiniEmptyLatent", "inputs": {"codec": ["1", 2], "width": 1024, "height": 1024,
                                                            "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 3], "positive": ["2", 0], "negative": ["3", 0],
                                                  "latent_image": ["4", 0], "seed": 0, "steps": 2, "cfg": 3.0,
                                                  "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
        "7": {"class_type": "T2IMiniDecode", "inputs": {"codec": ["1", 2], "samples": ["5", 0]}},
    }
    error = run_failing(faults.server, prompt)
    assert "262,144 positions" in error and "T2I_MINI_ALLOW_LARGE_SIZES" in error, error


def test_a_size_that_would_not_fit_in_memory_is_refused_even_with_large_sizes_allowed(faults, trained_here):
    rss = faults.server.rss_bytes()
    # the largest noise the node's inputs allow: 4096 images of 8192x8192, 3.3 TB
    noise = generate_prompt(trained_here, width=8192, height=8192, batch=4096)
    error = run_failing(faults.server, noise)
    assert "a latent of 4096 images of 8192x8192 px needs about" in error and "GiB free" in error, error
    assert "no setting lifts this limit" in error and "smaller size or batch_size" in error
    # one 8192x8192 image: its noise fits, its sampling (the U-Net's activations) does not
    prompt = generate_prompt(trained_here, width=8192, height=8192, batch=1)
    prompt["5"]["inputs"]["allow_large_sizes"] = True
    error = run_failing(faults.server, prompt)
    assert "sampling 8192x8192 px (width x height) at batch 1 needs about" in error, error
    assert faults.server.rss_bytes() < rss + 2**30  # refused before the work, not after
    assert_still_serving(faults.server)
    print(f"\n{error.splitlines()[0][:300]}")


async def sample_and_cancel(server: ComfyServer, prompt: dict, node: str, after_s: float | None):
    """Queue `prompt` and POST /interrupt `after_s` seconds after `node` starts executing (None: never); returns
    (seconds from the interrupt, or from the node's start, to the end of the prompt, `node`'s progress events,
    the final event's type)."""
    import aiohttp  # a ComfyUI dependency
    client_id = uuid.uuid4().hex
    progress, interrupted_at = [], []

    async def interrupt_later(session):
        await asyncio.sleep(after_s)
        interrupted_at.append(time.monotonic())
        async with session.post(f"{server.url}/interrupt", json={}) as r:
            assert r.status == 200

    async with aiohttp.ClientSession() as session, \
            session.ws_connect(f"{server.url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
        async with session.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
            assert r.status == 200, await r.text()
            prompt_id = (await r.json())["prompt_id"]
        pending, started_at = None, None
        while True:
            msg = await asyncio.wait_for(ws.receive(), 600)
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if event["type"] == "executing" and data.get("node") == node and started_at is None:
                started_at = time.monotonic()
                if after_s is not None:
                    pending = asyncio.create_task(interrupt_later(session))
            if event["type"] == "progress" and data.get("node") == node:
                progress.append(data)
            if event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                if pending is not None:
                    await pending
                seconds = time.monotonic() - (interrupted_at[0] if interrupted_at else started_at)
                return seconds, progress, event["type"]


def test_cancel_stops_a_large_image_inside_its_first_step(faults, trained_here):
    # 256x256 from the 16 px model (16x each side), allowed on purpose: one step runs many U-Net blocks; Cancel
    # checked only between steps would wait for the step to end. (At 128x128 a fast CPU finished the whole first
    # step within the second before Cancel.)
    prompt = generate_prompt(trained_here, width=256, height=256, batch=2, steps=3, seed=21)
    prompt["5"]["inputs"]["allow_large_sizes"] = True
    seconds, progress, status = asyncio.run(sample_and_cancel(faults.server, prompt, "5", after_s=1.0))
    assert status == "execution_interrupted"
    assert len(progress) == 0, f"the first step finished before Cancel took effect: {progress}"
    # for the record: what one uninterrupted step of that size takes here
    one_step = generate_prompt(trained_here, width=256, height=256, batch=2, steps=1, seed=22)
    one_step["5"]["inputs"]["allow_large_sizes"] = True
    step_s, _, status = asyncio.run(sample_and_cancel(faults.server, one_step, "5", after_s=None))
    assert status == "execution_success"
    print(f"\ncancelled 256x256 batch 2 1.0 s into the sampler: stopped {seconds:.2f} s after /interrupt, inside "
          f"step 1; one whole step (with model load and decode) took {step_s:.1f} s")
    assert_still_serving(faults.server)


# ---- disk full during a checkpoint write ----

def test_disk_full_keeps_the_previous_checkpoint_and_says_so(faults, trained_here):
    from t2i_core import load_checkpoint
    stem = trained_here.removesuffix(".safetensors")
    needed = sum((faults.models / f"{stem}{s}").stat().st_size for s in (".safetensors", ".t2istate", ".loss.csv"))
    full = faults.models / "full"
    full.mkdir(exist_ok=True)
    # room for the first save (state, checkpoint, loss history) and not for a second state beside it
    size_kb = (needed + 512 * 1024) // 1024
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(full)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        entry = faults.server.run(train_prompt("full/x", steps=4, checkpoint_every=1, validation_prompts=""),
                                  timeout=180, check=False)
        error = execution_error(entry)
        assert entry["status"]["status_str"] == "error"
        assert "the disk is full: could not write" in error and "previous file is intact" in error, error
        model = load_checkpoint(full / "x.safetensors")  # the step-1 checkpoint survived
        assert model.training["step"] == 1
        assert not list(full.glob("*.tmp")) and not list(full.glob(".*.tmp")), list(full.iterdir())
        assert not (full / "x.lock").exists()
        print(f"\ndisk full ({size_kb} kB tmpfs): {error.splitlines()[0][:200]}")
    finally:
        subprocess.run(["umount", str(full)], check=False)
    assert_still_serving(faults.server)


# ---- SIGKILL mid-training, restart, resume (last: it ends the shared server) ----

def test_sigkill_mid_training_then_restart_resumes(faults):
    from t2i_core import load_checkpoint
    from t2i_core.training.state import load_train_state
    server, name = faults.server, unique("killed")
    ckpt, state = faults.models / f"{name}.safetensors", faults.models / f"{name}.t2istate"
    server.queue(train_prompt(name, steps=100_000, checkpoint_every=2, validation_prompts=""))
    deadline = time.monotonic() + 180
    while not state.exists() or step_of(state) < 4:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    # a write the kill cut short: atomic_write's temporary file, half of a checkpoint
    stray = faults.models / f".{name}.safetensors.k1ll3d.tmp"
    stray.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()

    killed_at = load_train_state(state).step  # both files load as they were last written
    # the state is written first, then the checkpoint: a kill between the two leaves the checkpoint one save
    # (2 steps) behind the state, and resuming continues from the state
    assert load_checkpoint(ckpt).training["step"] in (killed_at, killed_at - 2)
    assert (faults.models / f"{name}.lock").exists()  # left by the dead process

    t0 = time.monotonic()
    faults.server = server = start_server(faults.base, faults.yaml)
    print(f"\nrestarted in {time.monotonic() - t0:.1f} s after SIGKILL at step {killed_at}")
    options = server.object_info("T2IMiniCheckpointLoader")["input"]["required"]["ckpt_name"][1]["options"]
    assert ckpt.name in options and not any(o.endswith(".tmp") for o in options)
    server.run(train_prompt(name, steps=killed_at + 2, validation_prompts=""), timeout=180)
    assert f"resumed {ckpt.name} at step {killed_at}" in server.log()
    assert step_of(state) == killed_at + 2 and not (faults.models / f"{name}.lock").exists()
    images = server.images(server.run(generate_prompt(ckpt.name, steps=2, batch=1), timeout=120), "7")
    assert [im.size for im in images] == [(16, 16)]
    shutil.rmtree(faults.models / "snapshots" / name, ignore_errors=True)


def test_sigkill_of_the_server_during_a_background_run_saves_it_and_leaves_no_process(faults):
    from t2i_core import load_checkpoint
    from t2i_core.training.state import TrainingLock
    server, name = faults.server, unique("orphan")
    ckpt, lock = faults.models / f"{name}.safetensors", faults.models / f"{name}.lock"
    prompt = train_prompt(name, steps=100_000, validation_prompts="")
    prompt["4"]["inputs"].update(preset="micro", run_in_background=True)
    server.run(prompt, timeout=120)
    deadline = time.monotonic() + 120
    while not [r for r in server.get_json("/t2i_mini/runs")["runs"] if r["checkpoint"] == ckpt.name and r["step"] >= 3]:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    trainer_pid = TrainingLock(ckpt).holder()["pid"]  # the background run's own process holds the lock
    assert trainer_pid != server.proc.pid
    os.killpg(server.proc.pid, signal.SIGKILL)  # the run is in a session of its own: the kill does not reach it
    server.proc.wait()
    t0 = time.monotonic()
    while lock.exists() or psutil_alive(trainer_pid):  # it sees its parent gone, saves, lets go and ends
        assert time.monotonic() - t0 < 120, f"the background run (pid {trainer_pid}) is still training"
        time.sleep(0.2)
    saved_at = load_checkpoint(ckpt).training["step"]
    print(f"\nthe orphaned background run saved at step {saved_at} and ended {time.monotonic() - t0:.1f} s after the kill")
    faults.server = server = start_server(faults.base, faults.yaml)
    resumed = train_prompt(name, steps=saved_at + 2, validation_prompts="")
    resumed["4"]["inputs"]["preset"] = "micro"
    server.run(resumed, timeout=180)
    assert load_checkpoint(ckpt).training["step"] == saved_at + 2


def psutil_alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
