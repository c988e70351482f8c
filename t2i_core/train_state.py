"""The files a training run leaves beside its checkpoint, and reading them back to resume.

For a checkpoint `models/shapes.safetensors` (the EMA weights, enough to generate; t2i_core.checkpoint):
    models/shapes.t2istate                      what resuming needs: weights, EMA, optimizer, step, history
    models/shapes.loss.csv                      the loss history, for a spreadsheet or a plot
    models/snapshots/shapes/shapes-step000250.safetensors
                                                the last `keep_last` step-numbered checkpoints
Snapshots live in a folder of their own so that a list of models (ComfyUI's checkpoint dropdown) shows
finished models only. Every file is written atomically (t2i_core.files).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .files import atomic_write, prefixed, read_safetensors, save_safetensors, take

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
