"""The Train node's runs outside ComfyUI's process (processes > 1, or run_in_background): which GPUs the ranks
get, and the run through t2i_core.training.launch.

The ranks run in a subprocess (group) that imports the engine only (not ComfyUI), so ComfyUI keeps serving
while they train. On CUDA they take GPUs that ComfyUI isn't holding, or the ones the user lists; on a
CPU ComfyUI they are gloo processes sharing the CPU.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable

import comfy.model_management as mm
import torch

from ..t2i_core.conditioning import Codec, TextEncoder
from ..t2i_core.training.config import TrainCallbacks, TrainConfig, TrainResult
from ..t2i_core.training.launch import LaunchResult, check_processes, launch, result_of
from ..t2i_core.training.state import TrainingError


def parse_devices(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise TrainingError(f"devices {text!r} is not a list of GPU numbers; write e.g. '1,2' (as ComfyUI numbers "
                            "them), or leave it empty to use the GPUs ComfyUI isn't holding") from None


def rank_gpus(processes: int, devices: str) -> list[str]:
    """The CUDA_VISIBLE_DEVICES entries for the ranks: [] (no GPU, gloo on the CPU) when ComfyUI runs on the CPU."""
    if mm.get_torch_device().type != "cuda":
        return []
    count = torch.cuda.device_count()
    if devices.strip():
        chosen = parse_devices(devices)
        wrong = [d for d in chosen if not 0 <= d < count]
        if wrong:
            raise TrainingError(f"devices lists GPU {wrong[0]}, but ComfyUI sees GPUs 0..{count - 1}; list those")
    else:
        held = mm.get_torch_device().index or 0
        chosen = [d for d in range(count) if d != held]
    if len(chosen) < processes:
        raise TrainingError(
            f"{processes} processes need {processes} GPUs, one each; "
            + (f"devices lists {len(chosen)}" if devices.strip() else
               f"this machine has {count}, and ComfyUI holds GPU {mm.get_torch_device().index or 0}")
            + ". Use fewer processes, or list the GPUs to use in devices (ComfyUI's own included: its models are "
              "unloaded first)")
    # the ranks' CUDA_VISIBLE_DEVICES names GPUs as the machine does, ours may already be a subset of them
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [visible[d] if d < len(visible) else str(d) for d in chosen[:processes]]


def train_in_processes(config: TrainConfig, text_encoder: TextEncoder, codec: Codec, processes: int,
                       devices: str, callbacks: TrainCallbacks) -> TrainResult:
    """Train with `processes` ranks in a subprocess group (the Train node has unloaded ComfyUI's models)."""
    gpus = rank_gpus(processes, devices)
    if callbacks.log:
        where = f"GPUs {','.join(gpus)}" if gpus else "the CPU (gloo)"
        callbacks.log(f"training in {processes} processes on {where}, {config.batch_size // processes} images "
                      f"each of the batch of {config.batch_size}")
    launched = launch(config, text_encoder, codec, processes, callbacks, devices=gpus)
    return result_of(launched, text_encoder, codec, device=mm.get_torch_device())


def background_gpus(processes: int, devices: str) -> list[str]:
    """A background run's GPUs: one process on a one-GPU machine shares ComfyUI's GPU (ComfyUI keeps serving
    beside it); otherwise the GPUs rank_gpus picks."""
    device = mm.get_torch_device()
    if processes == 1 and not devices.strip() and device.type == "cuda" and torch.cuda.device_count() == 1:
        return rank_gpus(1, str(device.index or 0))
    return rank_gpus(processes, devices)


def train_in_background(config: TrainConfig, text_encoder: TextEncoder, codec: Codec, processes: int, devices: str,
                        callbacks: TrainCallbacks,
                        on_end: Callable[[LaunchResult | None, BaseException | None], None]) -> threading.Thread:
    """Start the run in a subprocess (group) and return at once; a daemon thread follows it and calls
    on_end(result, None) or on_end(None, error) when it ends. If ComfyUI exits, the run sees its parent gone,
    saves and stops (launch's --parent-pid)."""
    check_processes(config, processes)
    gpus = background_gpus(processes, devices)

    def follow():
        try:
            launched = launch(config, text_encoder, codec, processes, callbacks, devices=gpus)
        except BaseException as e:  # reported through on_end: this thread has no caller to raise to
            on_end(None, e)
        else:
            on_end(launched, None)

    thread = threading.Thread(target=follow, name=f"t2i-mini-train-{os.path.basename(config.output)}", daemon=True)
    thread.start()
    return thread
