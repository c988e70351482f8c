"""The engine's command line.

    python -m t2i_core train --dataset DIR --output model.safetensors [--steps N --resolution 16 ...]

Every TrainConfig field is an option (`--max-minutes 3`, `--lr-schedule cosine`, `--validation-prompt TEXT`
repeated, ...); `python -m t2i_core train --help` lists them with their defaults. The text encoder is the tiny
seeded one (`--text-encoder-seed`), or CLIP weights from a file (`--text-encoder-file`, with `--text-encoder-model`
naming the open_clip architecture).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .train import Progress, TrainCallbacks, TrainConfig, train

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
    p.add_argument("--text-encoder-seed", type=int, default=0, help="seed of the tiny random text encoder")
    p.add_argument("--text-encoder-file", default=None,
                   help="CLIP text weights (.safetensors or a pickle-free .pt/.bin) instead of the tiny encoder")
    p.add_argument("--text-encoder-model", default="custom",
                   help="the open_clip model name the --text-encoder-file belongs to (e.g. ViT-L-14)")
    return p


def text_encoder_from(args: dict):
    from .text_encoder import load_text_encoder_file, tiny_text_encoder
    seed, file, model = args.pop("text_encoder_seed"), args.pop("text_encoder_file"), args.pop("text_encoder_model")
    return load_text_encoder_file(file, model_name=model) if file else tiny_text_encoder(seed)


def show_progress(p: Progress):
    if p.step % PROGRESS_EVERY == 0 or p.step == p.total:
        print(f"step {p.step}/{p.total} loss {p.loss:.4f} {p.images_per_s:.0f} img/s eta {p.eta_s:.0f}s", flush=True)


def run_train(args: dict) -> int:
    encoder = text_encoder_from(args)
    result = train(TrainConfig(**args), encoder, callbacks=TrainCallbacks(on_progress=show_progress, log=print))
    print(f"saved {result.checkpoint} at step {result.step}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2i_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train_parser(sub)
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    return {"train": run_train}[command](args)


if __name__ == "__main__":
    sys.exit(main())
