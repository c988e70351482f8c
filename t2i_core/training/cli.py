"""The engine's command line.

    python -m t2i_core train --dataset DIR --output model.safetensors [--steps N --resolution 16 ...]
    python -m t2i_core make-dataset shapes DIR [--count 1000 --resolution 16]   (any built-in dataset)

Every TrainConfig field is an option (`--max-minutes 3`, `--lr-schedule cosine`, `--validation-prompt TEXT`
repeated, ...); `python -m t2i_core train --help` lists them with their defaults. The text encoder is the
pretrained all-MiniLM-L6-v2 (the default, `--text-encoder minilm`), the tiny seeded one (`--text-encoder tiny`,
`--text-encoder-seed`), another BERT sentence encoder's folder (`--text-encoder-folder`), or CLIP weights from a file
(`--text-encoder-file`, with `--text-encoder-model` naming the open_clip architecture).

Under torchrun it trains data-parallel, one rank per process (t2i_core.distributed):

    torchrun --nproc-per-node 2 -m t2i_core train --dataset DIR --output model.safetensors --batch-size 64

`--batch-size` is the global batch (each of N ranks trains on batch/N of it), so the same command with any
number of processes trains the same model, and a checkpoint saved by N ranks resumes with M. Rank 0 alone
prints and writes files. `--events`, `--stop-file` and `--parts` are how t2i_core.training.launch (the Train node with
processes > 1) follows and cancels a run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from .. import distributed
from ..data.builtin import BUILTIN_DATASETS, builtin_dataset
from ..data.folder import DatasetError
from ..text_encoder import MINILM_INSTALL, TEXT_ENCODER_NAMES, TextEncoderError
from .config import Progress, TrainCallbacks, TrainConfig
from .state import TrainingError
from .trainer import train

PROGRESS_EVERY = 25  # steps between progress lines


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("1", "true", "yes", "on")


def train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model from a folder of captioned images",
                       description="Train a Text-to-Image Mini model from a folder of captioned images.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if f.name == "validation_prompts":
            p.add_argument("--validation-prompt", action="append", dest="validation_prompts", default=[],
                           help="a prompt to sample at each validation (repeat for several)")
        elif f.name in ("dataset", "output"):
            p.add_argument(flag, required=True)
        elif f.type == "bool":
            p.add_argument(flag, type=_bool, default=f.default, metavar="{true,false}")
        else:
            caster = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=caster, default=f.default)
    # minilm is the default: trained with it, a model also follows prompts worded otherwise (docs/QUALITY.md,
    # "What language buys"); tiny trains as fast and stays for tests.
    p.add_argument("--text-encoder", choices=TEXT_ENCODER_NAMES, default="minilm",
                   help="minilm (the default): the pretrained all-MiniLM-L6-v2 sentence encoder, Apache-2.0 "
                        f"({MINILM_INSTALL}); tiny: a small tower with seeded random weights, knows no language")
    p.add_argument("--text-encoder-seed", type=int, default=0, help="seed of the tiny random text encoder")
    p.add_argument("--text-encoder-folder", default=None,
                   help="a BERT sentence encoder's folder in Hugging Face's layout instead of --text-encoder")
    p.add_argument("--text-encoder-file", default=None,
                   help="CLIP text weights (.safetensors or a pickle-free .pt/.bin) instead of the tiny encoder")
    p.add_argument("--text-encoder-model", default="custom",
                   help="the open_clip model name the --text-encoder-file belongs to (e.g. ViT-L-14)")
    p.add_argument("--parts", default=None,
                   help="the text encoder and codec from a parts file (written by t2i_core.training.launch)")
    p.add_argument("--events", default=None,
                   help="rank 0 appends progress, validation images, log lines and the end as JSON lines here")
    p.add_argument("--stop-file", default=None,
                   help="when this file appears, rank 0 saves a resumable checkpoint and every rank stops")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="when this process ends (the launcher), rank 0 saves and every rank stops")
    return p


def text_encoder_from(args: dict):
    from ..text_encoder import load_bert_text_encoder, load_text_encoder_file, text_encoder_by_name
    name, seed, folder = args.pop("text_encoder"), args.pop("text_encoder_seed"), args.pop("text_encoder_folder")
    file, model = args.pop("text_encoder_file"), args.pop("text_encoder_model")
    if file:
        return load_text_encoder_file(file, model_name=model)
    return load_bert_text_encoder(folder) if folder else text_encoder_by_name(name, seed)


def show_progress(p: Progress):
    if p.step % PROGRESS_EVERY == 0 or p.step == p.total:
        print(f"step {p.step}/{p.total} loss {p.loss:.4f} {p.images_per_s:.0f} img/s eta {p.eta_s:.0f}s", flush=True)


def gone(pid: int | None) -> bool:
    """Whether process `pid` has ended (a launcher that died must not leave its ranks training)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def rank_devices(dist: distributed.Distributed) -> list[dict]:
    """Each rank's device and its memory (rank 0 reports them): GPU memory on CUDA, the machine's on the CPU."""
    import torch
    if dist.device is not None and dist.device.type == "cuda":
        free, total = torch.cuda.mem_get_info(dist.device)
        name = torch.cuda.get_device_name(dist.device)
    else:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        free, total = os.sysconf("SC_AVPHYS_PAGES") * size, pages * size
        name = "CPU memory, shared by the ranks"
    mine = {"rank": dist.rank, "device": str(dist.device or "cpu"), "name": name,
            "free_gib": free / 2**30, "total_gib": total / 2**30}
    return dist.all_gather_objects(mine)


def run_train(args: dict) -> int:
    events_file, stop_file, parts = args.pop("events"), args.pop("stop_file"), args.pop("parts")
    parent = args.pop("parent_pid")
    dist = distributed.from_environment()
    events = None
    try:
        if parts:
            from ..parts_file import load_parts
            args = {k: v for k, v in args.items() if not k.startswith("text_encoder")}
            encoder, codec = load_parts(parts)
        else:
            encoder, codec = text_encoder_from(args), None
        ranks = rank_devices(dist)
        callbacks = TrainCallbacks()
        if dist.is_main:  # the other ranks train silently and follow rank 0's decisions
            callbacks = TrainCallbacks(on_progress=show_progress, log=print)
            if dist.active:
                print(f"training with {dist.world_size} processes, {args['batch_size'] // dist.world_size} of the "
                      f"batch of {args['batch_size']} each", flush=True)
            if events_file:
                from .launch import EventWriter
                events = EventWriter(events_file)
                events.write("ranks", ranks=ranks)

                def progress(p: Progress):
                    show_progress(p)
                    events.write("progress", **dataclasses.asdict(p))

                def log(message: str):
                    print(message, flush=True)
                    events.write("log", message=message)

                callbacks = TrainCallbacks(on_progress=progress, log=log, on_validation=events.validation)
            callbacks.should_stop = lambda: bool(stop_file and Path(stop_file).exists()) or gone(parent)
        result = train(TrainConfig(**args), encoder, codec=codec, callbacks=callbacks, dist=dist)
        if dist.is_main:
            print(f"saved {result.checkpoint} at step {result.step}", flush=True)
            if events is not None:
                events.write("done", step=result.step, stopped=result.stopped, out_of_time=result.out_of_time,
                             checkpoint=str(result.checkpoint))
        return 0
    except (TrainingError, TextEncoderError, ValueError) as e:
        if events is not None:
            events.write("error", message=str(e))
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        distributed.cleanup()


def make_dataset_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("make-dataset", help="write a built-in dataset into a folder, to train on",
                       description="Write a built-in captioned dataset (PNG + .txt per image) into FOLDER. "
                                   + " ".join(d.description for d in BUILTIN_DATASETS.values()),
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("name", choices=list(BUILTIN_DATASETS))
    p.add_argument("folder", type=Path, help="a new or empty folder (or one this command wrote before)")
    p.add_argument("--count", type=int, default=1000,
                   help="; ".join(f"{d.name}: {d.count}" for d in BUILTIN_DATASETS.values()))
    p.add_argument("--resolution", type=int, default=None, help="side in pixels (default: the dataset's own, "
                   + ", ".join(f"{d.name} {d.resolution}" for d in BUILTIN_DATASETS.values()) + ")")
    p.add_argument("--seed", type=int, default=0, help="; ".join(f"{d.name}: {d.seed}" for d in BUILTIN_DATASETS.values()))
    return p


def run_make_dataset(args: dict) -> int:
    dataset = builtin_dataset(args["name"])
    try:
        folder = dataset.write(args["folder"], count=args["count"], resolution=args["resolution"], seed=args["seed"])
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{dataset.name} written to {folder}; train on it with: python -m t2i_core train --dataset {folder} "
          f"--output MODEL.safetensors --preset {dataset.preset} --resolution {args['resolution'] or dataset.resolution}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2i_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train_parser(sub)
    make_dataset_parser(sub)
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    return {"train": run_train, "make-dataset": run_make_dataset}[command](args)


if __name__ == "__main__":
    sys.exit(main())
