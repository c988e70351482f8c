"""The files a training run leaves beside its checkpoint, and reading them back to resume.

For a checkpoint `models/shapes.safetensors` (the EMA weights, enough to generate; t2i_core.checkpoint):
    models/shapes.t2istate                      what resuming needs: weights, EMA, optimizer, step, history
    models/shapes.loss.csv                      the loss history, for a spreadsheet or a plot
    models/snapshots/shapes/shapes-step000250.safetensors
                                                the last `keep_last` step-numbered checkpoints
    models/shapes.lock                          while a run trains it: which process (TrainingLock)
Snapshots live in a folder of their own so that a list of models (ComfyUI's checkpoint dropdown) shows
finished models only. Every file is written atomically (t2i_core.files).
"""
from __future__ import annotations

import csv
import io
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_write, prefixed, read_safetensors, save_safetensors, take

STATE_FORMAT = "t2i-mini-train-state"
STATE_SUFFIX = ".t2istate"
CHECKPOINT_SUFFIX = ".safetensors"
SNAPSHOT_FOLDER = "snapshots"


class TrainingError(RuntimeError):
    pass


def _stem(output: Path) -> str:
    return output.name[: -len(CHECKPOINT_SUFFIX)]


def state_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(_stem(output) + STATE_SUFFIX)


def history_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(_stem(output) + ".loss.csv")


def lock_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(_stem(output) + ".lock")


def snapshot_folder(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.parent / SNAPSHOT_FOLDER / _stem(output)


def snapshot_path(output: str | os.PathLike, step: int) -> Path:
    output = Path(output)
    return snapshot_folder(output) / f"{_stem(output)}-step{step:06d}{CHECKPOINT_SUFFIX}"


@dataclass
class TrainState:
    """Everything a resumed run needs, and nothing it can recompute: all randomness is a function of
    (seed, step), so no generator state is saved."""
    step: int
    config: dict  # the TrainConfig as a dict
    history: list[dict]  # {"step", "loss", "lr"} per step
    elapsed_s: float  # training time spent so far, over all runs
    unet: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict  # torch.optim state_dict()


def save_train_state(path: str | os.PathLike, state: TrainState) -> Path:
    tensors = {**prefixed("unet", state.unet), **prefixed("ema", state.ema)}
    for pid, entries in state.optimizer["state"].items():
        for name, value in entries.items():
            tensors[f"opt.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    metadata = {"format": STATE_FORMAT, "step": str(state.step), "config": json.dumps(state.config),
                "history": json.dumps(state.history), "elapsed_s": str(state.elapsed_s),
                "opt_param_groups": json.dumps(state.optimizer["param_groups"])}
    return save_safetensors(tensors, metadata, path)


def load_train_state(path: str | os.PathLike) -> TrainState:
    tensors, meta = read_safetensors(path, expected_format=STATE_FORMAT, what="training state", error=TrainingError)
    try:
        optimizer_state: dict = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                optimizer_state.setdefault(int(pid), {})[name] = value
        return TrainState(step=int(meta["step"]), config=json.loads(meta["config"]), history=json.loads(meta["history"]),
                          elapsed_s=float(meta.get("elapsed_s", 0)), unet=take(tensors, "unet"), ema=take(tensors, "ema"),
                          optimizer={"state": optimizer_state, "param_groups": json.loads(meta["opt_param_groups"])})
    except (KeyError, ValueError) as e:
        raise TrainingError(f"{path} is a damaged training state ({type(e).__name__}: {e}); choose another "
                            "checkpoint name") from e


def write_history_csv(output: str | os.PathLike, history: list[dict]) -> Path:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["step", "loss", "lr"])
    writer.writeheader()
    writer.writerows(history)
    return atomic_write(history_path(output), lambda tmp: tmp.write_text(text.getvalue(), encoding="utf-8"))


def keep_snapshot(output: str | os.PathLike, step: int, keep_last: int) -> Path | None:
    """A step-numbered copy of the checkpoint (a hard link where the file system has them), keeping the last
    `keep_last`; 0 keeps none."""
    if keep_last <= 0:
        return None
    output = Path(output)
    snapshot = snapshot_path(output, step)
    if not snapshot.exists():
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(output, snapshot)
        except OSError:  # no hard links here (some network and FAT file systems)
            atomic_write(snapshot, lambda tmp: tmp.write_bytes(output.read_bytes()))
    for old in sorted(snapshot.parent.glob(f"{_stem(output)}-step[0-9]*{CHECKPOINT_SUFFIX}"))[:-keep_last]:
        old.unlink()
    return snapshot


def training_files(output: str | os.PathLike) -> list[Path]:
    """Every file a run writes for checkpoint `output` that exists now (for cleaning up a run)."""
    output = Path(output)
    snapshots = sorted(snapshot_folder(output).glob(f"{_stem(output)}-step[0-9]*{CHECKPOINT_SUFFIX}"))
    return [p for p in (output, state_path(output), history_path(output), *snapshots) if p.exists()]


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the lock's holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


class TrainingLock:
    """`<name>.lock` beside the checkpoint while a run trains it, so that two runs on one checkpoint name (a
    second ComfyUI, a command-line run, a queued prompt while another process trains) never interleave their
    writes: the second is refused, naming the holder. Created with O_EXCL (atomic on local file systems); it
    holds the holder's pid, host, process start time and start date. A lock whose process is gone (killed,
    crashed) is stale and is taken over."""

    STALE_EMPTY_S = 30.0  # a lock file left empty this long: its writer died between creating and writing it

    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.path = lock_path(self.output)
        self.held = False

    def holder(self) -> dict | None:
        """The lock's contents, {} for an empty or unreadable one, None when there is no lock."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            info = json.loads(text)
            return info if isinstance(info, dict) else {}
        except ValueError:
            return {}

    def _stale(self, info: dict) -> bool:
        if not info:
            try:
                return time.time() - self.path.stat().st_mtime > self.STALE_EMPTY_S
            except FileNotFoundError:
                return True
        if info.get("host") != socket.gethostname():
            return False  # another machine's process: cannot tell, so it holds
        pid = info.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            return True
        return info.get("start") is not None and _process_start(pid) not in (None, info["start"])

    def _held_error(self, holder: dict) -> TrainingError:
        who = (f"process {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
               if holder else "a process that is starting")
        mine = ": this process, a run still open" if holder.get("pid") == os.getpid() else ""
        return TrainingError(
            f"{self.output.name} is being trained by another run ({who}{mine}); nothing was written. Wait "
            f"for it to finish or cancel it, or choose another checkpoint name. If no such run exists, "
            f"delete {self.path}")

    def check_free(self) -> None:
        """Raise acquire's error now if a live run holds the lock (a run about to start elsewhere checks first)."""
        holder = self.holder()
        if holder is not None and not self._stale(holder):
            raise self._held_error(holder)

    def acquire(self) -> TrainingLock:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile
                if self._stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._held_error(holder) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(info, f)
            self.held = True
            return self
        raise TrainingError(f"could not take the lock {self.path}: it keeps changing; try again")

    def release(self) -> None:
        if self.held:
            self.held = False
            if (self.holder() or {}).get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> TrainingLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
