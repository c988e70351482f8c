"""Training in other processes than the caller's (the Train node inside ComfyUI, with processes > 1 or in the
background).

`launch` starts `python -m torch.distributed.run --standalone --nproc-per-node N -m t2i_core train ...` (for one
process, `python -m t2i_core train ...` alone) in a process group of its own (it imports the engine only, never
the caller's program), and follows it through a run folder:

    run/parts.safetensors    the text encoder and codec the caller holds, for every rank to load
    run/events.jsonl         rank 0 appends one JSON object per line (EventWriter), the launcher reads them:
                               {"event": "ranks", "ranks": [{"rank", "device", "name", "free_gib", "total_gib"}]}
                               {"event": "progress", "step", "total", "loss", "lr", "images_per_s", "eta_s"}
                               {"event": "validation", "step", "file"}    images in a .safetensors beside it
                               {"event": "log", "message"}
                               {"event": "error", "message"}              a TrainingError, as rank 0 saw it
                               {"event": "done", "step", "stopped", "out_of_time", "checkpoint"}
    run/stop                 created by the launcher to cancel: rank 0 sees it, saves, and every rank stops
                             at the same step (t2i_core.distributed.Distributed.decide); so does the
                             launcher's own end (--parent-pid), so a dead ComfyUI leaves no ranks training
    run/logs/                each rank's stdout and stderr (torchrun --log-dir, --redirects 3)
    run/launch.log           the group's own output: torchrun's failure summary, or the single process's output

A rank that dies (a crash, a kill, out of memory) makes torchrun end the others; the launcher then raises a
TrainingError naming the rank and its exit, with the end of that rank's log. Files are only ever written by
rank 0 through files.atomic_write, and torchrun's SIGTERM waits for a save in progress to finish
(Distributed.writing), so the last checkpoint is whole whatever happens.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..conditioning import Codec, TextEncoder
from ..files import read_safetensors, save_safetensors
from ..parts_file import save_parts
from .config import Progress, TrainCallbacks, TrainConfig, TrainResult
from .state import TrainingError, load_train_state, state_path

VALIDATION_FORMAT = "t2i-mini-validation-images"
POLL_S = 0.2
STOP_GRACE_S = 600.0  # how long rank 0 may take to save after a cancel before the group is killed
LOG_TAIL_LINES = 25
LAUNCH_LOG = "launch.log"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding t2i_core, for `-m t2i_core`


# ---- the events file ----
class EventWriter:
    """Rank 0's side of events.jsonl: whole lines, flushed at once, so a reader never acts on half a line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, **fields}) + "\n")
            f.flush()

    def validation(self, step: int, images: torch.Tensor) -> None:
        file = self.path.with_name(f"validation-{step:06d}.safetensors")
        save_safetensors({"images": images.float().cpu()}, {"format": VALIDATION_FORMAT}, file)
        self.write("validation", step=step, file=file.name)


class EventReader:
    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new(self) -> list[dict]:
        """Events appended since the last call (complete lines only)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line.strip()]


def read_validation_images(path: Path) -> torch.Tensor:
    tensors, _ = read_safetensors(path, expected_format=VALIDATION_FORMAT, what="validation image file",
                                  error=TrainingError)
    return tensors["images"]


# ---- the command ----
def config_args(config: TrainConfig) -> list[str]:
    """`config` as `python -m t2i_core train` options (t2i_core.__main__.train_parser reads them back)."""
    out = []
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if f.name == "validation_prompts":
            for prompt in value:
                out += ["--validation-prompt", prompt]
        elif value is not None:
            out += [f"--{f.name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return out


def train_command(config: TrainConfig, processes: int, run_dir: Path, python: str = sys.executable) -> list[str]:
    engine = ["-m", "t2i_core", "train", *config_args(config), f"--parts={run_dir / 'parts.safetensors'}",
              f"--events={run_dir / 'events.jsonl'}", f"--stop-file={run_dir / 'stop'}", f"--parent-pid={os.getpid()}"]
    if processes == 1:  # one rank needs no torchrun: the engine's command line trains alone
        return [python, *engine]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            f"--log-dir={run_dir / 'logs'}", "--redirects=3", *engine]


# ---- when it fails ----
def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def rank_logs(run_dir: Path, rank: int) -> list[Path]:
    # torchrun --log-dir D --redirects 3 writes D/<run id>/attempt_<k>/<local rank>/{stdout,stderr}.log
    return sorted((run_dir / "logs").glob(f"*/attempt_*/{rank}/std*.log"))


def exit_words(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def failure_message(run_dir: Path, config: TrainConfig, returncode: int) -> str:
    """Which rank failed and how, the end of its log, and what is safe on disk."""
    summary = (run_dir / LAUNCH_LOG).read_text(encoding="utf-8", errors="replace") \
        if (run_dir / LAUNCH_LOG).exists() else ""
    root = summary[summary.find("Root Cause"):] if "Root Cause" in summary else summary
    rank = re.search(r"rank\s*:\s*(\d+)", root)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", root)
    who = f"training process rank {rank.group(1)}" if rank else "a training process"
    how = exit_words(int(code.group(1))) if code else exit_words(returncode)
    ranks = [int(rank.group(1))] if rank else sorted({int(p.parent.name) for p in (run_dir / "logs").glob("*/attempt_*/*/std*.log")})
    tails = []
    for r in ranks:
        for log in rank_logs(run_dir, r):
            text = _tail(log)
            tails.append(f"--- rank {r} {log.name} (last lines) ---\n{text if text.strip() else '(empty)'}")
    if not tails:
        tails.append(f"--- {LAUNCH_LOG} (last lines) ---\n{_tail(run_dir / LAUNCH_LOG)}")
    state = state_path(config.output)
    saved = (f"the last checkpoint {config.output} is intact" if state.exists()
             else "no checkpoint had been saved yet")
    return (f"{who} failed ({how}); the others were stopped and {saved}. Fix the cause below, then queue again "
            f"with resume on to continue. Logs: {run_dir / 'logs'}\n" + "\n".join(tails))


# ---- the launcher ----
def check_processes(config: TrainConfig, processes: int) -> None:
    """TrainingError unless `processes` ranks can share `config`'s batch (a caller may check before launching)."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if config.batch_size % processes:
        raise TrainingError(f"batch_size {config.batch_size} does not split over {processes} processes: each takes "
                            f"an equal share of the global batch. Choose a multiple of {processes}")


@dataclass
class LaunchResult:
    step: int
    stopped: bool
    out_of_time: bool
    checkpoint: Path


def launch(config: TrainConfig, text_encoder: TextEncoder, codec: Codec, processes: int,
           callbacks: TrainCallbacks | None = None, *, devices: list[int] | None = None,
           run_dir: str | os.PathLike | None = None, python: str = sys.executable) -> LaunchResult:
    """Train `config` in `processes` ranks (on GPUs `devices` where CUDA is used) and wait for the end,
    passing progress, validation images and log lines to `callbacks` and a cancel (`should_stop`) to rank 0."""
    cb = callbacks or TrainCallbacks()
    check_processes(config, processes)
    own_dir = run_dir is None
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="t2i-train-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_parts(run_dir / "parts.safetensors", text_encoder, codec)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PYTHONUNBUFFERED": "1"}
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    events = EventReader(run_dir / "events.jsonl")
    done: dict | None = None
    error: str | None = None
    with open(run_dir / LAUNCH_LOG, "wb") as out:
        proc = subprocess.Popen(train_command(config, processes, run_dir, python), cwd=run_dir, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        stop_asked: float | None = None
        try:
            while True:
                finished = proc.poll() is not None
                for e in events.new():
                    kind = e.pop("event")
                    if kind == "progress" and cb.on_progress:
                        cb.on_progress(Progress(**e))
                    elif kind == "validation" and cb.on_validation:
                        cb.on_validation(e["step"], read_validation_images(run_dir / e["file"]))
                    elif kind == "log" and cb.log:
                        cb.log(e["message"])
                    elif kind == "ranks" and cb.log:
                        for r in e["ranks"]:
                            cb.log(f"rank {r['rank']}: {r['device']} ({r['name']}), {r['free_gib']:.1f} of "
                                   f"{r['total_gib']:.1f} GiB free")
                    elif kind == "error":
                        error = e["message"]
                    elif kind == "done":
                        done = e
                if finished:
                    break
                if stop_asked is None and cb.should_stop is not None and cb.should_stop():
                    (run_dir / "stop").touch()
                    stop_asked = time.monotonic()
                    if cb.log:
                        cb.log("cancel: rank 0 saves a resumable checkpoint, then every rank stops")
                if stop_asked is not None and time.monotonic() - stop_asked > STOP_GRACE_S:
                    end_group(proc)
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:  # the caller itself failed or was interrupted: ask rank 0 to save, then end
                (run_dir / "stop").touch()
                end_group(proc, grace_s=60)
    if proc.returncode != 0 or done is None:
        message = error or failure_message(run_dir, config, proc.returncode)
        raise TrainingError(message)
    if own_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    return LaunchResult(done["step"], done["stopped"], done["out_of_time"], Path(done["checkpoint"]))


def end_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End torchrun and its ranks (their own process group): wait `grace_s`, then SIGTERM, then SIGKILL."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def result_of(launched: LaunchResult, text_encoder: TextEncoder, codec: Codec, device="cpu") -> TrainResult:
    """The finished run as train() returns it: the checkpoint's U-Net (EMA weights) with the caller's own text
    encoder and codec, and the saved loss history."""
    model = load_checkpoint(launched.checkpoint)
    model.text_encoder, model.codec = text_encoder, codec
    history = load_train_state(state_path(launched.checkpoint)).history
    return TrainResult(model.to(device), launched.checkpoint, launched.step, launched.stopped, history,
                       launched.out_of_time)
