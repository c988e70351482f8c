"""Frozen parts a checkpoint names but does not contain, and the check that a model gets the parts it was
trained with.

A checkpoint embeds the weights of its own small text encoders and VAEs. A large one (a CLIP-L read from a
file) or one that belongs to another program (a ComfyUI CLIP or VAE object) is only recorded: its kind, its
file name where known, the identity (a digest of architecture and weights) and a hint saying how to load it.
Loading such a checkpoint gives an `ExternalTextEncoder` / `ExternalCodec` in its place: it knows the shapes
(width, channels, factor, the latent scaling), so sizes can be checked and noise made, and it raises
`MissingPartError` with the hint when it would have to encode or decode.
"""
from __future__ import annotations

import torch

from .codecs import LatentScale
from .conditioning import Conditioning, EncodedText


class MissingPartError(RuntimeError):
    """A part the checkpoint only names was needed; the message says which file to load and how."""


class PartMismatchError(ValueError):
    """A model was given another text encoder or VAE than the one it was trained with."""


def describe(record: dict) -> str:
    """'clip_l.safetensors (weights 1a2b3c4d)' for a part record; the identity alone when there is no name."""
    name = record.get("name") or record.get("source") or record.get("label")
    digest = f"weights {str(record.get('identity', '?'))[:8]}"
    return f"{name} ({digest})" if name else f"an unnamed {record.get('kind', 'part')} ({digest})"


def check_same_part(what: str, trained_with: dict, given: dict, *, override: str) -> None:
    """Raise PartMismatchError when `given`'s identity differs from the record of what the model was trained
    with. `override` names the switch that allows it on purpose."""
    expected, actual = trained_with.get("identity"), given.get("identity")
    if expected and actual and expected != actual:
        raise PartMismatchError(
            f"this model was trained with the {what} {describe(trained_with)}, but was given {describe(given)}. "
            f"A model only understands the {what} it was trained with: connect that one "
            f"({trained_with.get('hint') or 'the same file'}), or set {override} to use this one anyway")


class ExternalTextEncoder:
    """Stands in for a text encoder a checkpoint records but does not hold."""

    def __init__(self, record: dict):
        self._record = dict(record)
        self.width = int(record["width"])
        self.context_length = int(record.get("context_length", 77))
        self.identity = str(record["identity"])

    def _missing(self):
        raise MissingPartError(f"this model's text encoder is not inside its checkpoint: it needs "
                               f"{describe(self._record)}. {self._record.get('hint', '')}".strip())

    def encode(self, prompts: list[str]) -> EncodedText:
        self._missing()

    def empty(self) -> Conditioning:
        self._missing()

    def record(self) -> dict:
        return dict(self._record)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {}

    def process_state(self) -> None:
        return None  # nothing here to hand on: the part itself is missing

    def to(self, device) -> ExternalTextEncoder:
        return self


class ExternalCodec(LatentScale):
    """Stands in for a VAE a checkpoint records but does not hold; scaling works, encoding and decoding don't."""

    def __init__(self, record: dict):
        self._record = dict(record)
        self.channels = int(record["channels"])
        self.factor = int(record["factor"])
        self.scaling_factor = float(record.get("scaling_factor", 1.0))
        self.shift_factor = float(record.get("shift_factor", 0.0))
        self.identity = str(record["identity"])

    def _missing(self):
        raise MissingPartError(f"this model's VAE is not inside its checkpoint: it needs {describe(self._record)}. "
                               f"{self._record.get('hint', '')}".strip())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._missing()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._missing()

    def record(self) -> dict:
        return dict(self._record)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {}

    def process_state(self) -> None:
        return None  # nothing here to hand on: the part itself is missing

    def to(self, device) -> ExternalCodec:
        return self
